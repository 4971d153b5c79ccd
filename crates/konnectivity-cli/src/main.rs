//! `konnectivity`: the operator CLI.
//!
//! - `demo`: a self-contained tunnel on loopback (server, agent, HTTP backend, fresh
//!   certificates), exercised through both frontends, then left running for `curl`.
//! - `dial`: open a connection through a running proxy-server and relay stdin/stdout.
//! - `doctor`: names the cause when kube-apiserver cannot reach a node through the
//!   tunnel (`doctor server` on the control plane, `doctor agent` on a node).
//! - `bench`: throughput, latency, memory and scale on loopback, as ratios against
//!   baselines measured in the same run (the `konnectivity-bench` crate).
//! - `completion`: shell completion scripts (bash, zsh, fish, …).
//!
//! Installed (or linked) as `kubectl-konnectivity`, the same binary is the kubectl plugin
//! `kubectl konnectivity …`, and as `kubectl_complete-konnectivity` its completion helper
//! (see `shell.rs`).
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod demo;
mod dial;
mod doctor;
mod shell;

#[derive(Parser, Debug)]
#[command(
    name = "konnectivity",
    version,
    about = "Operate and diagnose a Konnectivity tunnel (konnectivity-rs)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a complete tunnel on loopback and show it carrying traffic.
    Demo {
        /// Exit after the checks instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Keep the generated certificates and socket here instead of a temp dir.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Open ADDRESS (host:port, as seen from the node) through a proxy-server frontend
    /// and relay standard input and output.
    Dial(dial::DialArgs),
    /// Find why the control plane cannot reach a node through the tunnel (exit code 0
    /// when every check passes, 1 otherwise).
    Doctor(doctor::DoctorArgs),
    /// Measure the tunnel on loopback against a direct connection and a "null tunnel"
    /// (same hops, no protocol); writes JSON results and prints a table of targets.
    Bench(Box<konnectivity_bench::BenchArgs>),
    /// Internal: the echo backend process of `bench` (prints its address, runs until
    /// standard input closes).
    #[command(hide = true)]
    BenchBackend,
    /// Internal: the null tunnel process of `bench` (prints one entrance address per
    /// --target, runs until standard input closes).
    #[command(hide = true)]
    BenchNull(konnectivity_bench::NullArgs),
    /// Print a shell completion script: `source <(konnectivity completion bash)`, or
    /// save it where your shell loads completions from.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next();
    if shell::is_kubectl_completion(argv0.as_deref()) {
        let words: Vec<String> = std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        print!("{}", shell::kubectl_completions(&Cli::command(), &words));
        return ExitCode::SUCCESS;
    }
    let name = shell::display_name(argv0.as_deref());
    let matches = Cli::command().bin_name(name).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Cmd::Completion { shell } = cli.cmd {
        shell::write_completion(shell, &Cli::command(), &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    konnectivity_runtime::process::init_logging(
        std::env::var("KONNECTIVITY_V")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        false,
    );
    konnectivity_tls::install_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Cmd::Doctor(a) = cli.cmd {
        return match rt.block_on(doctor::run(a)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let r = rt.block_on(async {
        match cli.cmd {
            Cmd::Demo { once, dir } => demo::run(once, dir).await,
            Cmd::Dial(a) => dial::run(a).await,
            Cmd::Bench(a) => konnectivity_bench::run(*a).await,
            Cmd::BenchBackend => konnectivity_bench::backend_helper().await,
            Cmd::BenchNull(a) => konnectivity_bench::null_helper(a).await,
            Cmd::Doctor(_) | Cmd::Completion { .. } => Ok(()),
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long the CLI waits for a dial.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds a frontend description from CLI flags.
/// How `dial` and `doctor server` reach the server's gRPC or HTTP-CONNECT frontend.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct FrontendArgs {
    /// The server's frontend UNIX socket (`--uds-name`).
    #[arg(long)]
    uds: Option<PathBuf>,
    /// The server's frontend TCP address (mTLS).
    #[arg(long)]
    tcp: Option<String>,
    /// CA that signed the server certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Server name to verify (default: the host of --tcp).
    #[arg(long)]
    server_name: Option<String>,
    /// Use the HTTP-CONNECT protocol instead of gRPC.
    #[arg(long)]
    http_connect: bool,
}

impl FrontendArgs {
    /// The frontend: `--uds`, or `--tcp` with mTLS.
    pub(crate) fn frontend(&self) -> anyhow::Result<konnectivity_client::Frontend> {
        let a = self.clone();
        frontend(a.uds, a.tcp, a.ca, a.cert, a.key, a.server_name)
    }
}

fn frontend(
    uds: Option<PathBuf>,
    tcp: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
) -> anyhow::Result<konnectivity_client::Frontend> {
    match (uds, tcp) {
        (Some(p), None) => Ok(konnectivity_client::Frontend::Uds(p)),
        (None, Some(addr)) => {
            let (Some(ca), Some(cert), Some(key)) = (ca, cert, key) else {
                anyhow::bail!("--tcp needs --ca, --cert and --key (the frontend requires mTLS)");
            };
            let tls = konnectivity_tls::client(&ca, Some((&cert, &key)), &[])?;
            let host = addr
                .rsplit_once(':')
                .map_or(addr.as_str(), |(h, _)| h)
                .to_owned();
            Ok(konnectivity_client::Frontend::Tcp {
                addr,
                tls: Arc::new(tls),
                server_name: server_name.unwrap_or(host),
            })
        }
        _ => anyhow::bail!("give exactly one of --uds or --tcp"),
    }
}
