#!/usr/bin/env python3
"""Chart of `konnectivity bench` throughput and latency ratios.

Usage: python3 scripts/bench_chart.py [bench-results.json] [docs/bench.png]
Needs matplotlib (`pip install matplotlib`).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src = sys.argv[1] if len(sys.argv) > 1 else "bench-results.json"
dst = sys.argv[2] if len(sys.argv) > 2 else "docs/bench.png"
with open(src) as f:
    data = json.load(f)
targets = {t["id"]: t for t in data["targets"]}

# (id, label, target bound); higher is better
THROUGHPUT = [
    ("bulk_1conn", "bulk 1 conn, gRPC ÷ null", 0.85),
    ("bulk_1conn_connect", "bulk 1 conn, CONNECT ÷ null", 0.85),
    ("bulk_1conn_upload", "upload 1 conn, gRPC ÷ null", 0.85),
    ("bulk_parallel", "bulk 16 conns, gRPC ÷ null", 0.85),
    ("stalled_reader", "beside stalled reader ÷ alone", 0.90),
]
# lower is better; rtt_p99_loaded is shown as a multiple of its 1 ms budget
LATENCY = [
    ("dial_p50", "dial+1st byte p50, gRPC ÷ null", 1.2),
    ("dial_p50_connect", "dial+1st byte p50, CONNECT ÷ null", 1.2),
    ("dial_p99", "dial+1st byte p99, gRPC ÷ null*", 1.5),
    ("rtt_p50", "RTT p50 alone, gRPC ÷ null*", 1.25),
    ("rtt_p99_loaded", "RTT p99 beside bulk ÷ 1 ms", 1.0),
]


def value(tid):
    t = targets.get(tid)
    if t is None:
        return None
    if tid == "rtt_p99_loaded":
        return t["judged"] / 1000.0
    return t["ratio"]


def panel(ax, rows, higher_better, title):
    rows = [(tid, lbl, b, value(tid)) for tid, lbl, b in rows if value(tid) is not None]
    labels = [r[1] for r in rows][::-1]
    vals = [r[3] for r in rows][::-1]
    bounds = [r[2] for r in rows][::-1]
    colors = [
        ("#2e7d32" if (v >= b if higher_better else v <= b) else "#c62828")
        for v, b in zip(vals, bounds)
    ]
    y = range(len(rows))
    log = not higher_better and max(vals + bounds) > 8 * min(vals + bounds)
    base = min(0.5, min(vals) / 1.5) if log else 0.0
    ax.barh(y, [v - base for v in vals], left=base, color=colors, height=0.6)
    for i, (v, b) in enumerate(zip(vals, bounds)):
        ax.plot([b, b], [i - 0.4, i + 0.4], color="black", lw=2)
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=9)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_title(title, fontsize=11)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(base, max(vals + bounds) * 2.5)
    else:
        ax.set_xlim(0, max(vals + bounds) * 1.25)
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.grid(axis="x", alpha=0.3)


fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6.5))
panel(a, THROUGHPUT, True, "Throughput ratio (higher is better; black tick = target)")
panel(b, LATENCY, False, "Latency ratio (lower is better; black tick = target)")
m = data["machine"]
fig.suptitle(
    f"konnectivity bench ({data['mode']}, {m['build']}): {m['cpus']} CPUs, {m['cpu_model']}\n"
    "null = null tunnel in the same run (same hops, no protocol); * = research target",
    fontsize=10,
)
fig.tight_layout()
fig.savefig(dst, dpi=110)
print(f"wrote {dst}")
