#!/usr/bin/env python3
"""Chart of `konnectivity bench` throughput and latency ratios.

Usage: python3 scripts/bench_chart.py [bench-results.json] [docs/bench.png]
Needs matplotlib (`pip install matplotlib`). Draws the target panels when the run has
them, and ours beside upstream (the four server + agent pairings) when it has
measurements.upstream (e.g. `konnectivity bench --only upstream`).
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

# The targets charted: (id, label, target bound, higher is better). Those where higher is
# better make the throughput panel, the others the latency panel (PANELS); rtt_p99_loaded
# is shown as a multiple of its 1 ms budget.
TARGETS = [
    ("bulk_1conn", "bulk 1 conn, gRPC ÷ null", 0.85, True),
    ("bulk_1conn_connect", "bulk 1 conn, CONNECT ÷ null", 0.85, True),
    ("bulk_1conn_upload", "upload 1 conn, gRPC ÷ null", 0.85, True),
    ("bulk_parallel", "bulk 16 conns, gRPC ÷ null", 0.85, True),
    ("stalled_reader", "beside stalled reader ÷ alone", 0.90, True),
    ("dial_p50", "dial+1st byte p50, gRPC ÷ null", 1.2, False),
    ("dial_p50_connect", "dial+1st byte p50, CONNECT ÷ null", 1.2, False),
    ("dial_p99", "dial+1st byte p99, gRPC ÷ null*", 1.5, False),
    ("rtt_p50", "RTT p50 alone, gRPC ÷ null*", 1.25, False),
    ("rtt_p99_loaded", "RTT p99 beside bulk ÷ 1 ms", 1.0, False),
]
PANELS = [
    (True, "Throughput ratio (higher is better; black tick = target)"),
    (False, "Latency ratio (lower is better; black tick = target)"),
]

def value(tid):
    t = targets.get(tid)
    if t is None:
        return None
    if tid == "rtt_p99_loaded":
        return t["judged"] / 1000.0
    return t["ratio"]


def panel(ax, higher_better, title):
    rows = [
        (tid, lbl, b, value(tid))
        for tid, lbl, b, higher in TARGETS
        if higher == higher_better and value(tid) is not None
    ]
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


# Ours beside upstream (measurements.upstream): each pairing (server+agent) as a
# multiple of the null tunnel of the same run, and memory in MiB / KiB.
PAIRINGS = [
    ("ours_ours", "ours+ours", "#1565c0"),
    ("ours_upstream", "our server + upstream agent", "#64b5f6"),
    ("upstream_ours", "upstream server + our agent", "#ffb74d"),
    ("upstream_upstream", "upstream+upstream", "#e65100"),
]
UP_SPEED = [
    ("bulk_1conn", "bulk 1 conn ÷ null"),
    ("bulk_parallel", "bulk N conns ÷ null"),
    ("dial_p50", "dial+1st byte p50 ÷ null"),
    ("dial_p99", "dial+1st byte p99 ÷ null"),
    ("rtt_p50", "RTT p50 alone ÷ null"),
    ("rtt_p99_beside_bulk", "RTT p99 beside bulk ÷ null"),
]
up = data.get("measurements", {}).get("upstream", {})
has_up = up.get("available") is True
UP_SPEED = [(i, lbl.replace(" N ", f" {up.get('parallel', 'N')} ")) for i, lbl in UP_SPEED]


def grouped(ax, rows, values, title, log):
    """Horizontal bars, one group per row, one bar per pairing; missing = failed."""
    h = 0.8 / len(PAIRINGS)
    for j, (key, label, color) in enumerate(PAIRINGS):
        ys, vs = [], []
        for i, (rid, _) in enumerate(rows[::-1]):
            v = values(rid, key)
            y = i - 0.4 + h * (len(PAIRINGS) - 1 - j) + h / 2
            if v is None:
                ax.text(1.0 if log else 0, y, " failed", va="center", fontsize=7, color=color)
                continue
            ys.append(y)
            vs.append(v)
            ax.text(v, y, f" {v:.2f}" if v < 100 else f" {v:.0f}", va="center", fontsize=7)
        ax.barh(ys, vs, height=h, color=color, label=label)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[1] for r in rows][::-1], fontsize=9)
    ax.set_title(title, fontsize=11)
    if log:
        ax.set_xscale("log")
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(right=ax.get_xlim()[1] * (2.0 if log else 1.15))
    ax.grid(axis="x", alpha=0.3)


def up_ratio(rid, key):
    v = up.get("ratios_vs_null", {}).get(rid, {}).get(key)
    return v if isinstance(v, (int, float)) and v > 0 else None


def up_memory(rid, key):
    m = up.get("pairings", {}).get(key, {}).get("memory", {})
    if rid == "server_mib":
        v = m.get("idle_rss_kib", {}).get("server")
        return v / 1024 if v else None
    if rid == "agent_mib":
        v = m.get("idle_rss_kib", {}).get("agent")
        return v / 1024 if v else None
    return m.get("kib_per_conn", {}).get("total")


# The target panels when the run has their rows (not in an `--only upstream` run), the
# upstream panels when it has measurements.upstream.
has_main = any(value(t[0]) is not None for t in TARGETS)
heights = ([1, 1] if has_main else []) + ([1.7, 0.9] if has_up else [])
if not heights:
    sys.exit(f"{src}: nothing to draw")
fig, axes = plt.subplots(
    len(heights),
    1,
    figsize=(9, 3.3 * sum(heights)),
    gridspec_kw={"height_ratios": heights},
    squeeze=False,
)
axes = list(axes[:, 0])
if has_main:
    for ax, (higher_better, title) in zip(axes, PANELS):
        panel(ax, higher_better, title)
if has_up:
    c, d = axes[-2:]
    grouped(
        c,
        UP_SPEED,
        up_ratio,
        "Ours beside upstream v0.36.0, separate processes, ÷ null tunnel\n"
        "(throughput: higher is better; latency: lower is better)",
        True,
    )
    c.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.06))
    grouped(
        d,
        [
            ("server_mib", "idle proxy-server RSS, MiB"),
            ("agent_mib", "idle proxy-agent RSS, MiB"),
            ("per_conn", "RSS per idle conn (server+agent), KiB"),
        ],
        up_memory,
        "Memory (lower is better)",
        False,
    )
m = data["machine"]
fig.suptitle(
    f"konnectivity bench ({data['mode']}, {m['build']}): {m['cpus']} CPUs, {m['cpu_model']}\n"
    "null = null tunnel in the same run (same hops, no protocol); * = research target",
    fontsize=10,
)
fig.tight_layout()
fig.savefig(dst, dpi=110)
print(f"wrote {dst}")
