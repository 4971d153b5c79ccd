//! Process plumbing shared by the binaries: `main`'s start-up and exit codes, logging
//! set-up and signal handling.
use std::future::Future;
use std::process::ExitCode;

use konnectivity_config::{ConfigError, Program};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// The whole `main` of proxy-server and proxy-agent around their own `serve`: parses
/// the command line (`--help` prints the usage and exits 0; a parse error is printed with
/// a pointer to `--help` and exits 1), starts logging, logs deprecation notices,
/// validates (an invalid combination is logged and printed, exit 1), warns about flags
/// that are accepted but not implemented, then runs `serve` on a multi-thread runtime
/// (an error from it is logged and printed with its causes, `{:#}`, exit 1).
pub fn main<O, F, Fut, E>(serve: F) -> ExitCode
where
    O: Program,
    F: FnOnce(O) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let opts = match O::parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(ConfigError::Help(usage)) => {
            println!("{usage}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("Error: {e}");
            eprintln!("Run '{} --help' for usage.", O::NAME);
            return ExitCode::FAILURE;
        }
    };
    init_logging(i64::from(opts.log().v), opts.log().format == "json");
    for notice in opts.deprecations() {
        warn!("{notice}");
    }
    if let Err(e) = opts.check() {
        error!("error: {e}");
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    for w in opts.unimplemented() {
        warn!("{w}");
    }
    if cfg!(target_env = "gnu") && std::env::var_os("GLIBC_TUNABLES").is_none() {
        info!(
            "GLIBC_TUNABLES is not set: bulk transfers cost more CPU (glibc's allocator returns and re-faults the data path's chunks); the image sets GLIBC_TUNABLES={ALLOCATOR_TUNABLES}"
        );
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("error: {e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The glibc allocator settings the image runs the binaries with (`ENV GLIBC_TUNABLES` in
/// the Dockerfile and Containerfile.local; a test keeps them equal to this).
///
/// With glibc's defaults the server's HTTP/2 reader allocates a fresh buffer for every
/// 256 KiB DATA frame from an agent, and glibc gives that memory back to the kernel
/// (trimming its per-thread heaps) as soon as the frame has been written on, so every
/// page is faulted in again: about 150,000 page faults per GiB downloaded through the
/// server, a third of its CPU. Serving chunks under 4 MiB from the heap
/// (`mmap_threshold`) and keeping up to 8 MiB free at a heap's top (`trim_threshold`)
/// removes them: 1.4 x the throughput, 0.6 x the server's CPU per GiB, about 5 MiB more
/// kept after a burst (BENCHMARKS.md, "The allocator's settings"). Setting
/// `trim_threshold` also stops glibc from moving `mmap_threshold` by itself, so both are
/// given. (The workspace forbids `unsafe`, so the binaries cannot call `mallopt`.)
pub const ALLOCATOR_TUNABLES: &str =
    "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=8388608";

/// Installs the global subscriber. klog's `--v` maps onto levels: ≤1 warn, 2–4 info
/// (upstream's default is 4), 5–9 debug, ≥10 trace. `RUST_LOG` overrides it.
/// `json` switches to one JSON object per line.
pub fn init_logging(v: i64, json: bool) {
    let level = match v {
        i64::MIN..=1 => "warn",
        2..=4 => "info",
        5..=9 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{level},h2=warn,hyper=warn,tower=warn,rustls=warn"))
    });
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// Cancels the returned token on the first SIGTERM/SIGINT and exits with status 1 on
/// the second (upstream's behaviour for proxy-server).
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        let mut seen = false;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            if seen {
                std::process::exit(1);
            }
            seen = true;
            tracing::info!(
                "received a termination signal, shutting down (a second one exits at once)"
            );
            t.cancel();
        }
    });
    token
}

/// Binds a TCP listener the way Go's `net.Listen("tcp", host:port)` does: an empty
/// host means every interface (dual-stack when IPv6 is available).
pub fn bind_tcp(host: &str, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let addr: std::net::SocketAddr = if host.is_empty() {
        std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
    } else {
        match (host, port).to_socket_addrs_first() {
            Some(a) => a,
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("cannot resolve bind address {host:?}"),
                ));
            }
        }
    };
    let bind = |addr: std::net::SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        if addr.is_ipv6() && host.is_empty() {
            sock.set_only_v6(false)?;
        }
        sock.set_reuse_address(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())?;
        sock.listen(1024)?;
        Ok(sock.into())
    };
    let std_listener = match bind(addr) {
        Ok(l) => l,
        Err(_) if host.is_empty() => bind(std::net::SocketAddr::from((
            std::net::Ipv4Addr::UNSPECIFIED,
            port,
        )))?,
        Err(e) => return Err(e),
    };
    tokio::net::TcpListener::from_std(std_listener)
}

trait FirstAddr {
    fn to_socket_addrs_first(&self) -> Option<std::net::SocketAddr>;
}

impl FirstAddr for (&str, u16) {
    fn to_socket_addrs_first(&self) -> Option<std::net::SocketAddr> {
        use std::net::ToSocketAddrs;
        self.to_socket_addrs().ok().and_then(|mut a| a.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_recipes_set_the_allocator_tunables() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for recipe in ["Dockerfile", "Containerfile.local"] {
            let text = std::fs::read_to_string(root.join(recipe)).expect(recipe);
            let want = format!("ENV GLIBC_TUNABLES={ALLOCATOR_TUNABLES}");
            assert!(text.lines().any(|l| l == want), "{recipe} lacks {want:?}");
        }
    }
}
