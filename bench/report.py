"""Turns the raw runs of bench/bench.py into results.md, results.json and
ratios.png (imported by bench.py; matplotlib is needed for the chart only).

Per contender: median wall, median client CPU, median server CPU per GiB
served, and the highest peak RSS seen over its measured runs (client: the
pipeline stages' peaks added up; server: VmHWM of the server's processes).
Per peer: the ratio fetchd/peer of each round and the median of those ratios.
"""
import json, re, statistics
from pathlib import Path

MIB = 1024  # KiB per MiB


def summarize(res, targets):
    rows = []
    for wid, w in res.items():
        fd = w["runs"]["fetchd"]
        for label, runs in w["runs"].items():
            hwm = [r["server_hwm_kib"] for r in runs if r["server_hwm_kib"] is not None]
            row = {"workload": wid, "title": w["title"], "label": label, "n": len(runs),
                   "wall_s": statistics.median(r["wall_s"] for r in runs),
                   "client_cpu_s": statistics.median(r["client_cpu_s"] for r in runs),
                   "server_cpu_s_per_gib": statistics.median(r["server_cpu_s_per_gib"] for r in runs),
                   "client_rss_mib": max(sum(r["client_rss_kib"].values()) for r in runs) / MIB,
                   "server_rss_mib": max(hwm) / MIB if hwm else None}
            if label != "fetchd":
                ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(fd, runs)]
                row.update(ratios=ratios, ratio_median=statistics.median(ratios),
                           target=targets.get((wid, label)))
            rows.append(row)
    return rows


def esc(text):
    return text.replace("|", "\\|")


def f2(x, unit=""):
    return "–" if x is None else f"{x:.2f}{unit}"


def tidy(cmd, meta):
    """The command as run, with the stage wrappers and temp paths shortened."""
    cmd = re.sub(r"/usr/bin/time -f %M -o \S+ ", "", cmd)
    cmd = re.sub(r"\S*/target/release/fetchd", "target/release/fetchd", cmd)
    cmd = re.sub(r"/\S*/fetchd-bench\.[^/\s]+", "$WORK", cmd)
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", cmd)


def markdown(meta, res, rows):
    v = meta["versions"]
    rsync_peak = meta.get("rsyncd_session_max_rss_kib")
    out = [f"# fetchd benchmark, {meta['date']}", "",
           "| | |", "|---|---|",
           f"| date | {meta['date']} |",
           f"| kernel (`uname -r`) | {meta['kernel']} |",
           f"| CPU | {meta['cpu']}, nproc {meta['nproc']} |",
           f"| load average at start | {' '.join(meta['loadavg_at_start'])} |",
           f"| data | {meta['size_bytes'] >> 20} MiB random file on {meta['data_on']}, loopback |",
           f"| pairs | one warm-up of each, then {meta['pairs']} rounds: fetchd, then each peer |",
           f"| fetchd | `{meta['fetchd_git']}`, release build |",
           f"| peers | {', '.join(v.values())} |",
           f"| command | `{meta['command']}` |", "",
           "| workload | run | median wall (s) | fetchd/peer: median of ratios [min–max] "
           "| client CPU (s) | server CPU (s/GiB) | client peak RSS (MiB) | server peak RSS (MiB) |",
           "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1]["workload"] != r["workload"]
        ratio = ""
        if "ratios" in r:
            ratio = f"**{r['ratio_median']:.2f}** [{min(r['ratios']):.2f}–{max(r['ratios']):.2f}]"
            if r["target"] is not None:
                ratio += f" (target ≤ {r['target']:.2f})"
        srv = f2(r["server_rss_mib"], "")
        if r["server_rss_mib"] is None and r["label"] == "rsync" and rsync_peak:
            srv = f"≤ {rsync_peak / MIB:.1f} ¹"
        name = f"{r['workload']} {esc(r['title'])}" if first else ""
        out.append(f"| {name} | {esc(r['label'])} | {r['wall_s']:.3f} | {ratio} "
                   f"| {f2(r['client_cpu_s'])} | {f2(r['server_cpu_s_per_gib'])} "
                   f"| {r['client_rss_mib']:.1f} | {srv} |")
    out += ["", "## Targets (issue 3)", "", "| target | measured | holds |", "|---|---|---|"]
    for r in rows:
        if r.get("target") is not None:
            out.append(f"| {r['workload']} fetchd/{esc(r['label'])} ≤ {r['target']:.2f} "
                       f"| {r['ratio_median']:.2f} | {'yes' if r['ratio_median'] <= r['target'] else 'no'} |")
    for r in rows:
        if r["label"] == "fetchd" and r["workload"] == "W3":
            out.append(f"| W3 server peak RSS < 32 MiB | {f2(r['server_rss_mib'])} MiB "
                       f"| {'yes' if (r['server_rss_mib'] or 0) < 32 else 'no'} |")
            out.append(f"| W3 client peak RSS < 64 MiB | {r['client_rss_mib']:.2f} MiB "
                       f"| {'yes' if r['client_rss_mib'] < 64 else 'no'} |")
    for r in rows:
        if r["label"] == "fetchd" and r["workload"] in ("W1", "W2"):
            out.append(f"| {r['workload']} server CPU ≤ 0.45 s/GiB | {r['server_cpu_s_per_gib']:.2f} "
                       f"| {'yes' if r['server_cpu_s_per_gib'] <= 0.45 else 'no'} |")
    out += ["", "## Commands", ""]
    for wid, w in res.items():
        for label, cmd in w["commands"].items():
            out.append(f"- {wid} {esc(label)}: `{tidy(cmd, meta)}`")
    out += ["", "## How it is measured", "",
            "Wall: `time.perf_counter` around the client pipeline (`bash -o pipefail -c`). "
            "Client CPU: user+sys of all child processes (`RUSAGE_CHILDREN` delta), the whole pipeline. "
            "Server CPU: utime+stime+cutime+cstime from `/proc/PID/stat` of the server and its child "
            "processes (nginx master + worker; the rsync daemon's reaped per-connection children), "
            "delta around the run, per GiB served. Client peak RSS: `/usr/bin/time -f %M` around each "
            "pipeline stage, added up (for rsync the largest of its processes). Server peak RSS: VmHWM "
            "after `echo 5 > /proc/PID/clear_refs`, added up over nginx's master and worker. "
            "Medians are over the measured rounds; peak RSS is the highest over them.", ""]
    if rsync_peak:
        out.append("¹ The rsync daemon forks one child per connection that exits before it can be "
                   "read, so this is the peak of any rsync daemon process over the whole session "
                   "(`/usr/bin/time` around the daemon).")
    return "\n".join(out) + "\n"


def chart(path, meta, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = [r for r in rows if "ratios" in r]
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * len(peers) + 1.5), 4.8), dpi=120)
    for x, r in enumerate(peers):
        n = len(r["ratios"])
        jitter = [(i - (n - 1) / 2) * 0.3 / max(n - 1, 1) for i in range(n)]
        ax.scatter([x + j for j in jitter], r["ratios"], s=22, color="tab:blue", alpha=0.7,
                   zorder=3, label="per pair" if x == 0 else None)
        ax.hlines(r["ratio_median"], x - 0.3, x + 0.3, color="black", lw=2.5, zorder=4,
                  label="median" if x == 0 else None)
        ax.annotate(f"{r['ratio_median']:.2f}", (x + 0.32, r["ratio_median"]), va="center", fontsize=9)
        if r["target"] is not None:
            ax.hlines(r["target"], x - 0.4, x + 0.4, color="tab:red", ls="--", lw=1.5, zorder=2,
                      label="target" if not any(p["target"] is not None for p in peers[:x]) else None)
            ax.annotate(f"target {r['target']:.2f}", (x - 0.4, r["target"]), xytext=(0, 3),
                        textcoords="offset points", fontsize=8, color="tab:red")
    ax.axhline(1.0, color="grey", lw=0.8, alpha=0.5, zorder=1)
    ax.set_xticks(range(len(peers)))
    ax.set_xticklabels([f"{r['workload']}\nvs {r['label']}" for r in peers])
    ax.set_xlim(-0.6, len(peers) - 0.4)
    top = max(max(max(r["ratios"]) for r in peers), 1.05)
    ax.set_ylim(0, top * 1.1)
    ax.set_ylabel("wall time, fetchd / peer (lower is better)")
    ax.set_title(f"fetchd vs peers, {meta['size_bytes'] >> 20} MiB, {meta['pairs']} pairs\n"
                 f"{meta['date']}, {meta['cpu']}, {meta['nproc']} CPUs", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(out_dir, meta, res, targets):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(res, targets)
    (out_dir / "results.json").write_text(json.dumps(
        {"meta": meta, "summary": rows, "workloads": res}, indent=1) + "\n")
    md = markdown(meta, res, rows)
    (out_dir / "results.md").write_text(md)
    if any("ratios" in r for r in rows):
        chart(out_dir / "ratios.png", meta, rows)
    print(md)
    print(f"bench: wrote {out_dir}/results.md, results.json"
          + (", ratios.png" if any("ratios" in r for r in rows) else ""))
