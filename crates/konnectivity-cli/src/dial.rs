//! `konnectivity dial`: one tunneled connection, relayed to stdin/stdout (like `nc`).
use std::path::PathBuf;

use clap::Args;
use tokio::io::AsyncWriteExt;

/// Arguments of `konnectivity dial`.
#[derive(Args, Debug)]
pub struct DialArgs {
    /// Destination, host:port as the agent's node sees it.
    address: String,
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

/// Runs the relay until both directions end.
pub async fn run(a: DialArgs) -> anyhow::Result<()> {
    let f = crate::frontend(a.uds, a.tcp, a.ca, a.cert, a.key, a.server_name)?;
    type R = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
    type W = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
    let (mut r, mut w): (R, W) = if a.http_connect {
        let (io, rest) =
            konnectivity_client::connect_dial(&f, &a.address, crate::DIAL_TIMEOUT).await?;
        tokio::io::stdout().write_all(&rest).await?;
        let (r, w) = tokio::io::split(io);
        (Box::new(r), Box::new(w))
    } else {
        let io = konnectivity_client::grpc_dial(&f, &a.address, crate::DIAL_TIMEOUT).await?;
        let (r, w) = tokio::io::split(io);
        (Box::new(r), Box::new(w))
    };
    let to = async {
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut w).await;
        let _ = w.shutdown().await;
    };
    let from = async {
        let _ = tokio::io::copy(&mut r, &mut tokio::io::stdout()).await;
    };
    tokio::join!(to, from);
    Ok(())
}
