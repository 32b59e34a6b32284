#!/usr/bin/env python3
"""Plots of a chatlog-bench run: benches/plot.py RESULTS_JSON OUT_DIR [MORE_RESULTS_JSON...]

- goals.png: the headline — every figure against its goal (how many times the goal it reaches,
  log scale; right of 1 = met), from RESULTS_JSON and any MORE_RESULTS_JSON (e.g. the
  `--only mutations` and `--only cache` runs' files);
- throughput.png: every cumulative counter of the run as a rate over time (one line per scenario;
  the scenarios run one after another, so the lines follow each other along the time axis);
- latency_cdf.png: P4's acknowledgement -> Redis window visibility latency, as a CDF;
- rss.png: the consumer's resident memory over time (P7).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rates(series, window=0.5):
    """(t, v) cumulative samples -> (t, rate) over windows of about `window` seconds."""
    out_t, out_r = [], []
    if not series:
        return out_t, out_r
    t0, v0 = series[0]
    for t, v in series[1:]:
        if t - t0 >= window:
            out_t.append(t)
            out_r.append((v - v0) / (t - t0))
            t0, v0 = t, v
    return out_t, out_r


def flat(series):
    """A counter that moves in a few big steps (the loader counts whole slices): its mean rate as
    one flat segment from its first move to its last."""
    first, last = series[0][1], series[-1][1]
    t0 = max((t for t, v in series if v == first), default=series[0][0])
    t1 = min((t for t, v in series if v == last), default=series[-1][0])
    if t1 <= t0:
        return [], []
    r = (last - first) / (t1 - t0)
    return [t0, t1], [r, r]


def headline(figures, path):
    """Each figure as a multiple of its goal: value / goal for "at least", goal / value for "at
    most" (so right of 1 is always better than the goal)."""
    rows = []
    def order(kv):
        # P1 … P10 by number; P3′ and P8-cql right after P3 and P8.
        digits = "".join(c for c in kv[0][1:] if c.isdigit())
        return (int(digits or 0), kv[0])

    for name, f in sorted(figures.items(), key=order):
        goal, value = f.get("goal") or {}, f.get("value")
        if not value:
            continue
        if "at_least" in goal:
            x = value / goal["at_least"]
        elif "at_most" in goal:
            x = goal["at_most"] / value
        else:
            continue
        label = f"{name}: {f.get('what', '')[:46]} ({value:.3g} vs {f.get('goal_text', '')})"
        rows.append((label, x, bool(f.get("met"))))
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(rows) + 1.4))
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, [x for _, x, _ in rows], color=["tab:green" if m else "tab:red" for *_, m in rows])
    ax.set_yticks(ys, [label for label, *_ in rows], fontsize=8)
    ax.axvline(1.0, color="black", linewidth=1.0, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("multiple of the goal (log; >= 1: met)")
    ax.set_title("chatlog-bench: every figure against its goal (green: met, red: missed)")
    ax.grid(alpha=0.3, axis="x", which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    results = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    os.makedirs(out, exist_ok=True)
    figs = results["figures"]
    merged = dict(figs)
    for more in sys.argv[3:]:
        merged.update(json.load(open(more)).get("figures", {}))
    headline(merged, os.path.join(out, "goals.png"))
    cpus = results["machine"]["cpus"]

    fig, ax = plt.subplots(figsize=(11, 5))
    for name, series in sorted(results["series"].items()):
        if "(ms)" in name or "(MiB)" in name:
            continue  # not cumulative counters
        if not series:
            continue
        span = series[-1][0] - series[0][0]
        if len({v for _, v in series}) < 8:
            t, r = flat(series)
        else:
            t, r = rates(series, window=min(0.5, max(0.1, span / 12)))
        if t:
            ax.plot(t, r, label=name, linewidth=1.2)
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("messages (rows) per second, log scale")
    ax.set_yscale("log")
    title = "chatlog-bench: throughput over time"
    if "P1" in figs:
        p1 = figs["P1"]
        title += f" (P1 drain {p1['ours']:.0f} msg/s = {p1['value']:.2f}x the raw loader)"
    ax.set_title(title + f"; {cpus} CPUs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "throughput.png"), dpi=110)
    plt.close(fig)

    cdf = results.get("latency_cdf") or []
    if cdf:
        worst = next((s for n, s in results["series"].items() if n.startswith("P4 worst")), [])
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
        if worst:
            ax2.plot([t for t, _ in worst], [v for _, v in worst], linewidth=1.0)
            ax2.axhline(100, color="red", alpha=0.5, linestyle="--")
            ax2.set_title("P4: slowest message per 250 ms")
            ax2.set_xlabel("seconds since the run started")
            ax2.set_ylabel("ms")
            ax2.grid(alpha=0.3)
        qs = [q for q, _ in cdf]
        ms = [v for _, v in cdf]
        ax.plot(ms, qs, drawstyle="steps-post", linewidth=1.5)
        ax.set_ylim(0, 1.01)
        for q in (0.5, 0.9, 0.99):
            v = next((m for qq, m in cdf if qq >= q), None)
            if v is not None:
                ax.axhline(q, color="grey", alpha=0.3, linewidth=0.8)
                ax.annotate(f"p{int(q * 100)} {v:.1f} ms", (v, q), fontsize=8,
                            xytext=(5, -12), textcoords="offset points")
        ax.axvline(100, color="red", alpha=0.5, linestyle="--", label="goal: p99 <= 100 ms")
        d = results["details"].get("P4", {})
        ax.set_title(
            "P4: Logic ack -> visible in the Redis window\n"
            f"({d.get('achieved_rate', 0):.0f} msg/s, {d.get('samples', 0)} samples)")
        ax.set_xlabel("latency, ms (log)")
        ax.set_xscale("log")
        ax.set_ylabel("fraction of messages")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "latency_cdf.png"), dpi=110)
        plt.close(fig)

    rss = [s for n, s in results["series"].items() if "(MiB)" in n]
    if rss and rss[0]:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot([t for t, _ in rss[0]], [v for _, v in rss[0]], linewidth=1.2)
        ax.axhline(200, color="red", alpha=0.5, linestyle="--", label="goal: peak <= 200 MiB")
        ax.set_title("P7: chatlog-consumer resident memory")
        ax.set_xlabel("seconds since the run started")
        ax.set_ylabel("VmRSS, MiB")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "rss.png"), dpi=110)
        plt.close(fig)
    print(f"plots: {out}/goals.png, throughput.png, latency_cdf.png, rss.png")


if __name__ == "__main__":
    main()
