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
use crate::world::{PathKind, World};
use crate::{MAX_IO, MIB, STEP};

pub(crate) async fn phase_stalled(w: &World, cfg: &Cfg, res: &mut Results) -> anyhow::Result<()> {
    let n = cfg.stall_size;
    let p = PathKind::Grpc;
    let mut io = w.open(p, &w.source).await?;
    let t = Instant::now();
    download(&mut io, (8 * MIB).min(n)).await?;
    let _ = t;
    let reps = cfg.reps.max(if cfg.smoke { 1 } else { 3 });
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let mut io = w.open(p, &w.source).await?;
        let start = Instant::now();
        let end = download(&mut io, n)
            .await
            .context("healthy transfer alone")?;
        alone.push(gbps(n, end - start));

        // A connection asks for 1 TiB, reads 1 MiB, then stops reading.
        let mut stalled = w.open(p, &w.source).await?;
        stalled.write_u64(1 << 40).await?;
        stalled.flush().await?;
        let mut first = vec![0u8; MIB as usize];
        tokio::time::timeout(STEP, stalled.read_exact(&mut first))
            .await
            .context("stalled connection: first MiB")??;
        ensure!(
            first
                .chunks(MAX_IO)
                .enumerate()
                .all(|(i, c)| c == pattern_at((i * MAX_IO) as u64, c.len())),
            "stalled connection: corrupted first MiB"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut io = w.open(p, &w.source).await?;
        let start = Instant::now();
        let end = download(&mut io, n)
            .await
            .context("healthy transfer beside a stalled reader")?;
        beside.push(gbps(n, end - start));
        // The stalled connection is intact and resumes where it stopped.
        let mut more = vec![0u8; MIB as usize];
        tokio::time::timeout(STEP, stalled.read_exact(&mut more))
            .await
            .context("stalled connection did not resume")??;
        ensure!(
            more.chunks(MAX_IO)
                .enumerate()
                .all(|(i, c)| c == pattern_at(MIB + (i * MAX_IO) as u64, c.len())),
            "stalled connection: data lost or corrupted after resuming"
        );
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
