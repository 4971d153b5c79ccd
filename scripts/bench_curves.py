#!/usr/bin/env python3
"""Charts of `konnectivity bench` curves over time: the server restart and the soak.

Usage: python3 scripts/bench_curves.py RESULTS.json OUT.png
Needs matplotlib (`pip install matplotlib`). Draws measurements.restart (agents back
after a proxy-server SIGKILL and restart, with the server's RSS) or measurements.soak
(RSS, descriptors and threads of proxy-server and proxy-agent over the run, warm-up
shaded), whichever the file has; both stacked when it has both.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
with open(src) as f:
    m = json.load(f)["measurements"]

panels = []
if "restart" in m:
    panels.append("restart")
if "soak" in m:
    panels.append("soak")
if not panels:
    sys.exit(f"{src} has neither measurements.restart nor measurements.soak")
rows = sum(1 if p == "restart" else 3 for p in panels)
fig, axes = plt.subplots(rows, 1, figsize=(9, 3.2 * rows), squeeze=False)
axes = [a[0] for a in axes]

if "restart" in m:
    r = m["restart"]
    ax = axes.pop(0)
    t = [p[0] for p in r["curve"]]
    ready = [p[1] for p in r["curve"]]
    rss = [p[2] / 1024 for p in r["curve"]]
    ax.plot(t, ready, color="tab:blue", label="agents ready")
    if len(r["curve"][0]) > 3:
        fds = [p[3] for p in r["curve"]]
        ax.plot(t, fds, color="tab:blue", linestyle="--", linewidth=1,
                label="server descriptors (connections accepted)")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel("seconds since SIGKILL of proxy-server")
    ax.set_ylabel("agents ready", color="tab:blue")
    ax.set_ylim(0, r["agents"] * 1.05)
    for key, frac in (("back_50_seconds", "50 %"), ("back_90_seconds", "90 %"), ("back_100_seconds", "100 %")):
        if r.get(key) is not None:
            ax.axvline(r[key], color="grey", linestyle=":", linewidth=1)
            ax.annotate(f"{frac} {r[key]:.1f} s", (r[key], r["agents"] * 0.05), rotation=90,
                        fontsize=8, color="grey", ha="right")
    ax2 = ax.twinx()
    ax2.plot(t, rss, color="tab:red", linewidth=1, label="server RSS")
    ax2.set_ylabel("proxy-server RSS, MiB", color="tab:red")
    ax2.set_ylim(0, max(rss + [1]) * 1.2)
    tcp = r.get("tcp", {})
    ax.set_title(
        f"{r['agents']} agents, proxy-server killed and restarted: all back after "
        f"{r['back_100_seconds']} s; {tcp.get('connects_per_agent', '?')} connects/agent",
        fontsize=10,
    )

if "soak" in m:
    s = m["soak"]
    cols = s["sample_columns"]
    data = {c: [row[i] for row in s["samples"]] for i, c in enumerate(cols)}
    t = [x / 60 for x in data["seconds"]]
    for what, unit, scale in (("rss_kib", "RSS, MiB", 1 / 1024), ("fds", "open descriptors", 1),
                              ("threads", "threads", 1)):
        ax = axes.pop(0)
        for who, color in (("server", "tab:blue"), ("agent", "tab:orange")):
            ax.plot(t, [v * scale for v in data[f"{who}_{what}"]], color=color,
                    label=f"proxy-{who}", linewidth=1)
        ax.axvspan(0, s["warmup_seconds"] / 60, color="grey", alpha=0.15, label="warm-up")
        ax.axvline(s["seconds"] / 60, color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left")
        if what == "rss_kib":
            ax.set_title(
                f"soak: {s['rounds']} rounds in {s['seconds'] / 60:.1f} min, "
                f"{s['failed_steps']} failed steps, bound {'met' if s['bound_met'] else 'MISSED'} "
                f"(MALLOC_ARENA_MAX={s.get('malloc_arena_max') or 'unset'})",
                fontsize=10,
            )
    ax.set_xlabel("minutes (dotted: load ends, the processes idle)")

fig.tight_layout()
fig.savefig(dst, dpi=110)
print(f"wrote {dst}")
