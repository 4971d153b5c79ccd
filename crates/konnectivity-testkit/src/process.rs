//! Child processes for end-to-end tests and the bench: spawning our (or upstream's)
//! binaries with their output in a log file, killing them by their own PID when
//! dropped, free ports in the range upstream's flags accept, a blocking HTTP GET for
//! health and metrics endpoints, what `/proc` says about a process (resident
//! memory, file descriptors, CPU time), and assertions on a finished command's output.
//!
//! One harness for every caller, so a fix to how a process is started or stopped
//! reaches the e2e tests and the bench alike.
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port in upstream's allowed range (1024..=49151); the kernel's ephemeral
/// range starts above it, so port 0 cannot be used with upstream's flag validation.
/// Each call returns a different port (a per-process counter from a PID-derived seed),
/// so parallel tests and processes rarely race for one. 0 when all 12,000 candidates
/// (20000..32000) are taken.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 600) as u16 * 20;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + seed.wrapping_add(n) % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return port;
        }
    }
    0
}

/// A running child process, killed (by its own PID) and reaped when dropped; its log
/// is printed when it is dropped during a panic.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Its combined stdout/stderr log.
    pub log: PathBuf,
    name: String,
}

impl Proc {
    /// Starts `program args…`, optionally inside network namespace `netns`, with
    /// standard output and error appended to `log_dir/NAME.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        netns: Option<&str>,
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        Self::spawn_with_env(name, program, args, &[], netns, log_dir)
    }

    /// [`Proc::spawn`] with `env` added to the inherited environment.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        netns: Option<&str>,
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .envs(env.iter().copied())
            .stdout(f.try_clone()?)
            .stderr(f)
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", program.display()))?;
        Ok(Proc {
            child,
            log,
            name: name.to_owned(),
        })
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`"TERM"`, `"KILL"`, …).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails, with the last 20 lines of its log, if the process has exited.
    pub fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(st) = self.child.try_wait()? {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            anyhow::bail!(
                "{} exited ({st}); last log lines:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// Whether the process is still running (and not a zombie).
    pub fn child_alive(&self) -> bool {
        std::fs::metadata(format!("/proc/{}", self.pid())).is_ok()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
                .unwrap_or_default()
                .contains(") Z ")
    }

    /// Resident memory in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// Number of open file descriptors.
    pub fn fds(&self) -> usize {
        fds(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}", self.name, self.log_text());
        }
    }
}

/// A field of `/proc/PID/status` in KiB (e.g. `"VmRSS:"`), 0 when unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Open file descriptors of a process.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// CPU seconds (user + system) of process `pid` (a number or `"self"`); assumes
/// USER_HZ = 100 (the Linux default). NaN when unreadable.
pub fn cpu_s(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let k: f64 = f.get(12)?.parse().ok()?;
            Some((u + k) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// A blocking HTTP/1.1 GET (`Connection: close`) over plain TCP: (status, body). Reads
/// and writes time out after 5 s; at most 16 MiB of answer are read.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.take(16 << 20).read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("timed out after {timeout:?} waiting for {what}")
}

/// Asserts that the finished command `what` succeeded (else fails with its standard
/// error) and printed exactly `want` on standard output.
pub fn assert_prints(what: &str, out: &std::process::Output, want: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{what}");
}

/// Asserts that a finished command failed and that its standard error contains `want`.
pub fn assert_fails_with(out: &std::process::Output, want: &str) {
    assert!(!out.status.success(), "expected a failure with {want:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(want), "expected {want:?} in: {stderr}");
}
