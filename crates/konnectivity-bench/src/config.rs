//! What to run: the `konnectivity bench` flags ([`BenchArgs`], [`Phase`]) and the
//! configuration resolved from them ([`Cfg`]: full-run or smoke defaults, sorted
//! counts, the phases to run). Everything else reads `Cfg`, never the flags.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::{GIB, KIB, MIB};

/// Which measurements to run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bulk throughput, one connection (download and upload).
    Bulk,
    /// Bulk throughput, parallel connections.
    Parallel,
    /// Connection set-up: dial + first byte.
    Dial,
    /// Interactive 1-byte round trips, alone and beside a bulk transfer: in-process,
    /// and through separate proxy-server, proxy-agent and null-tunnel processes.
    Rtt,
    /// A healthy connection beside one whose reader stopped.
    Stalled,
    /// Resident memory of proxy-server and proxy-agent processes with idle connections.
    Memory,
    /// N agents connecting to one proxy-server process.
    Scale,
    /// A proxy-server process killed and started again with the largest `--agents`
    /// count connected: the curve of agents back over time.
    Restart,
    /// Mixed traffic in rounds through proxy-server and proxy-agent processes for
    /// `--soak-seconds`, their memory, descriptors and threads sampled every second.
    Soak,
    /// Ours beside upstream's binaries (v0.36.0, `tests/upstream/build.sh`) in the four
    /// server + agent pairings, through separate processes, against the null tunnel.
    Upstream,
    /// UDP round trips (p50/p99) and loss to a UDP echo, direct, through the gRPC
    /// frontend's protocol "udp" and through SOCKS5 UDP ASSOCIATE (proxy-server and
    /// proxy-agent processes), idle and beside a bulk transfer; our server with
    /// upstream's agent too when upstream's binaries are built.
    Udp,
    /// Faults between two network namespaces, ours and upstream's binaries: transfers
    /// under random loss, a partition, an agent killed mid-transfer. Needs root; not
    /// in the default set.
    Faults,
}

/// `konnectivity bench` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// A seconds-long run with tiny sizes and counts (for CI). Byte counts and
    /// contents are still checked, so it fails when the tunnel breaks.
    #[arg(long)]
    pub smoke: bool,
    /// Bytes per bulk transfer (suffix KiB, MiB or GiB) [default: 1GiB; smoke 8MiB].
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Parallel connections of the parallel bulk test; each moves SIZE/N [default: 16].
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Dials per path in the connection set-up test [default: 2000; smoke 40].
    #[arg(long)]
    pub dials: Option<usize>,
    /// 1-byte round trips per path [default: 10000; smoke 300].
    #[arg(long)]
    pub rtt_samples: Option<usize>,
    /// Repetitions of each throughput measurement, interleaved across paths; the
    /// median is reported [default: 5; smoke 1].
    #[arg(long)]
    pub reps: Option<usize>,
    /// Idle tunneled connection counts of the memory test, ascending
    /// [default: 1000,10000; smoke 20,100].
    #[arg(long, value_delimiter = ',')]
    pub idle_conns: Option<Vec<usize>>,
    /// Agent counts of the scale test [default: 1000,10000; smoke 10,50].
    #[arg(long, value_delimiter = ',')]
    pub agents: Option<Vec<usize>>,
    /// Length of the soak phase, in seconds [default: 3600; smoke 3].
    #[arg(long)]
    pub soak_seconds: Option<u64>,
    /// Datagrams per run of the UDP test, one per millisecond [default: 2000; smoke 200].
    #[arg(long)]
    pub udp_datagrams: Option<usize>,
    /// Run only these measurements (comma list) [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Option<Vec<Phase>>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    pub out: PathBuf,
    /// Directory holding proxy-server and proxy-agent [default: next to this binary].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Exit with failure when a target is missed (not only when a check fails).
    #[arg(long)]
    pub strict: bool,
    /// Directory holding upstream's `upstream-proxy-server` and `upstream-proxy-agent`
    /// (built by `bash tests/upstream/build.sh`) [default: $KONNECTIVITY_UPSTREAM_BIN_DIR,
    /// else `upstream` beside the directory of proxy-server, i.e. target/upstream].
    #[arg(long)]
    pub upstream_bin_dir: Option<PathBuf>,
    /// The Go konnectivity-client driver (`tests/go-interop`, built with `go build`),
    /// to drive the upstream pairings with the real Go client as well
    /// [default: konnectivity-interop next to proxy-server, when it is there].
    #[arg(long)]
    pub go_client: Option<PathBuf>,
    /// Per-connection flow-control window of the in-process tunnel (both directions),
    /// for experiments; the processes use the binaries' default [default: 1MiB].
    #[arg(long, value_parser = parse_size)]
    pub window: Option<u64>,
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = [
        ("GiB", GIB),
        ("MiB", MIB),
        ("KiB", KIB),
        ("G", GIB),
        ("M", MIB),
        ("K", KIB),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|e| format!("invalid size {s:?}: {e}"))?;
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))?;
    if v < 16 * KIB {
        return Err(format!("size {s:?} is below 16KiB"));
    }
    Ok(v)
}

/// The sizes a phase steps through: the given ones (else `default`), ascending, each once,
/// without 0.
fn steps(given: &Option<Vec<usize>>, default: &[usize]) -> Vec<usize> {
    let mut v = given.clone().unwrap_or_else(|| default.to_vec());
    v.sort_unstable();
    v.dedup();
    v.retain(|&n| n > 0);
    v
}

/// Resolved configuration: which phases run, and how much each one measures.
#[derive(Debug, Clone)]
pub(crate) struct Cfg {
    /// The seconds-long CI run (`--smoke`): tiny sizes and counts, shorter caps.
    pub(crate) smoke: bool,
    pub(crate) phases: Vec<Phase>,
    pub(crate) transfer: Transfer,
    /// Dials per path of the connection set-up phases.
    pub(crate) dials: usize,
    /// 1-byte round trips per path.
    pub(crate) rtt_samples: usize,
    /// Datagrams per run of the UDP phase.
    pub(crate) udp_datagrams: usize,
    /// Idle tunneled connection counts of the memory phase, ascending.
    pub(crate) idle_conns: Vec<usize>,
    /// Agent counts of the scale phase (the largest is the restart phase's), ascending.
    pub(crate) agents: Vec<usize>,
    /// Per-connection flow-control window of the in-process tunnel (both directions).
    pub(crate) window: u32,
    /// How long the soak phase starts new rounds.
    pub(crate) soak: Duration,
}

impl Cfg {
    pub(crate) fn from(a: &BenchArgs) -> anyhow::Result<Self> {
        let smoke = a.smoke;
        let pick = Defaults { smoke };
        let idle_conns = steps(&a.idle_conns, pick.of(&[1000, 10_000], &[20, 100]));
        let agents = steps(&a.agents, pick.of(&[1000, 10_000], &[10, 50]));
        let phases = a.only.clone().unwrap_or_else(|| {
            vec![
                Phase::Bulk,
                Phase::Parallel,
                Phase::Dial,
                Phase::Rtt,
                Phase::Udp,
                Phase::Stalled,
                Phase::Memory,
                Phase::Scale,
                Phase::Restart,
                Phase::Upstream,
                Phase::Soak,
            ]
        });
        ensure!(
            !phases.contains(&Phase::Memory) || !idle_conns.is_empty(),
            "--idle-conns is empty"
        );
        ensure!(
            !(phases.contains(&Phase::Scale) || phases.contains(&Phase::Restart))
                || !agents.is_empty(),
            "--agents is empty"
        );
        Ok(Self {
            smoke,
            phases,
            transfer: Transfer {
                size: a.size.unwrap_or(pick.of(GIB, 8 * MIB)),
                parallel: a.parallel.unwrap_or(16).max(1),
                reps: a.reps.unwrap_or(pick.of(5, 1)).max(1),
            },
            dials: a.dials.unwrap_or(pick.of(2000, 40)).max(1),
            rtt_samples: a.rtt_samples.unwrap_or(pick.of(10_000, 300)).max(1),
            udp_datagrams: a
                .udp_datagrams
                .unwrap_or(pick.of(2000, 200))
                .clamp(1, 1_000_000),
            idle_conns,
            agents,
            window: match a.window {
                Some(w) => u32::try_from(w).context("--window must be below 4GiB")?,
                None => konnectivity_core::flow::DEFAULT_WINDOW,
            },
            soak: Duration::from_secs(a.soak_seconds.unwrap_or(pick.of(3600, 3))),
        })
    }

    fn defaults(&self) -> Defaults {
        Defaults { smoke: self.smoke }
    }

    /// Bytes the healthy connection of the stalled-reader phase moves.
    pub(crate) fn stall_size(&self) -> u64 {
        (self.transfer.size / 4).max(MIB)
    }

    /// Dials before the measured ones (connection pools, page faults).
    pub(crate) fn warmup_dials(&self) -> usize {
        self.defaults().of(50, 3)
    }

    /// The longest a path's round trips may take.
    pub(crate) fn rtt_time_cap(&self) -> Duration {
        Duration::from_secs(self.defaults().of(60, 10))
    }

    /// How long the scale phase waits for every agent.
    pub(crate) fn scale_deadline(&self) -> Duration {
        Duration::from_secs(self.defaults().of(120, 30))
    }

    /// How long the restart phase waits for every agent to be back.
    pub(crate) fn restart_window(&self) -> Duration {
        Duration::from_secs(60)
    }

    pub(crate) fn has(&self, p: Phase) -> bool {
        self.phases.contains(&p)
    }
}

/// What each bulk measurement moves, and how often.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transfer {
    /// Bytes per bulk transfer (split over the connections of the parallel phase).
    pub(crate) size: u64,
    pub(crate) parallel: usize,
    /// Repetitions of each throughput measurement, interleaved across paths.
    pub(crate) reps: usize,
}

/// Which of two defaults applies: the full run's or the smoke run's.
#[derive(Clone, Copy)]
struct Defaults {
    smoke: bool,
}

impl Defaults {
    fn of<T>(self, full: T, smoke_run: T) -> T {
        if self.smoke { smoke_run } else { full }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Ok(GIB));
        assert_eq!(parse_size("64MiB"), Ok(64 * MIB));
        assert_eq!(parse_size("100000"), Ok(100_000));
        assert!(parse_size("1").is_err());
        assert!(parse_size("x").is_err());
    }

    fn cfg(flags: &[&str]) -> Cfg {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let cli = <Cli as clap::Parser>::parse_from(
            std::iter::once("bench").chain(flags.iter().copied()),
        );
        Cfg::from(&cli.bench).expect("valid flags")
    }

    #[test]
    fn smoke_run_takes_the_smoke_defaults_and_flags_win_over_both() {
        let full = cfg(&[]);
        assert_eq!(
            (full.transfer.size, full.transfer.reps, full.dials),
            (GIB, 5, 2000)
        );
        assert_eq!(
            (full.warmup_dials(), full.soak),
            (50, Duration::from_secs(3600))
        );
        assert_eq!(full.stall_size(), GIB / 4);
        let smoke = cfg(&["--smoke"]);
        assert_eq!(
            (smoke.transfer.size, smoke.transfer.reps, smoke.dials),
            (8 * MIB, 1, 40)
        );
        assert_eq!(
            (smoke.warmup_dials(), smoke.soak),
            (3, Duration::from_secs(3))
        );
        assert_eq!(smoke.stall_size(), 2 * MIB);
        assert_eq!(smoke.idle_conns, [20, 100]);
        let flagged = cfg(&["--smoke", "--dials", "7", "--agents", "5,0,5,2"]);
        assert_eq!((flagged.dials, flagged.agents.as_slice()), (7, &[2, 5][..]));
    }
}
