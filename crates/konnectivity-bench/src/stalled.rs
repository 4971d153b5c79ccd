//! The absence of head-of-line blocking: a healthy download alone and beside a
//! connection of the same agent whose reader stopped, alternating; the stalled
//! connection must then resume with every byte intact.
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Cfg;
use crate::load::{download, pattern_at};
use crate::report::{Results, progress};
use crate::stats::{gbps, human_bytes, median, round, summary};
use crate::world::{BoxIo, PathKind, World};
use crate::{MAX_IO, MIB, STEP};

/// A fresh download of `n` bytes on path `p`, in Gbit/s; `what` names it in errors.
async fn healthy(w: &World, p: PathKind, n: u64, what: &'static str) -> anyhow::Result<f64> {
    let mut io = w.open(p, &w.source).await?;
    let start = Instant::now();
    let end = download(&mut io, n).await.context(what)?;
    Ok(gbps(n, end - start))
}

/// Reads the MiB of the source's pattern that starts at `offset` within [`STEP`] (else the
/// error `late`) and checks every byte (else the error `wrong`).
async fn read_mib(
    io: &mut BoxIo,
    offset: u64,
    (late, wrong): (&'static str, &'static str),
) -> anyhow::Result<()> {
    let mut got = vec![0u8; MIB as usize];
    tokio::time::timeout(STEP, io.read_exact(&mut got))
        .await
        .context(late)??;
    ensure!(
        got.chunks(MAX_IO)
            .enumerate()
            .all(|(i, c)| c == pattern_at(offset + (i * MAX_IO) as u64, c.len())),
        "{wrong}"
    );
    Ok(())
}

pub(crate) async fn phase_stalled(w: &World, cfg: &Cfg, res: &mut Results) -> anyhow::Result<()> {
    let n = cfg.stall_size();
    let p = PathKind::Grpc;
    let mut io = w.open(p, &w.source).await?;
    let t = Instant::now();
    download(&mut io, (8 * MIB).min(n)).await?;
    let _ = t;
    let reps = cfg.transfer.reps.max(if cfg.smoke { 1 } else { 3 });
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        alone.push(healthy(w, p, n, "healthy transfer alone").await?);

        // A connection asks for 1 TiB, reads 1 MiB, then stops reading.
        let mut stalled = w.open(p, &w.source).await?;
        stalled.write_u64(1 << 40).await?;
        stalled.flush().await?;
        let first = (
            "stalled connection: first MiB",
            "stalled connection: corrupted first MiB",
        );
        read_mib(&mut stalled, 0, first).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let what = "healthy transfer beside a stalled reader";
        beside.push(healthy(w, p, n, what).await?);
        // The stalled connection is intact and resumes where it stopped.
        let more = (
            "stalled connection did not resume",
            "stalled connection: data lost or corrupted after resuming",
        );
        read_mib(&mut stalled, MIB, more).await?;
        drop(stalled);
        progress(format!(
            "stalled reader rep {}/{reps}: alone {:.2}, beside stalled {:.2} Gbit/s",
            rep + 1,
            alone[rep],
            beside[rep]
        ));
    }
    let ratio = median(&beside) / median(&alone);
    res.measurements.insert(
        "stalled_reader".into(),
        json!({
            "path": p.key(),
            "bytes": n,
            "what": "a healthy download alone, and beside a connection of the same agent that asked for 1 TiB, read 1 MiB and stopped reading (alternating)",
            "alone_gbps": summary(&alone),
            "beside_stalled_gbps": summary(&beside),
            "ratio": round(ratio),
            "stalled_connection_resumed_intact": true,
        }),
    );
    res.ratio_row(
        "stalled_reader",
        format!("healthy conn beside a stalled reader ({})", human_bytes(n)),
        format!("{:.2} Gbit/s", median(&beside)),
        format!("alone {:.2}", median(&alone)),
        ratio,
        true,
        0.9,
        "issue",
    );
    Ok(())
}
