"""Turns the raw runs of bench/bench.py into results.md, results.json and
ratios.png (imported by bench.py; matplotlib is needed for the chart only).

Four groups of workloads, each from the run that last measured it:
  files   W1-W3, one large file (issue 3)
  bulk    B1-B3, many files (issue 5)
  upload  U1, one large file uploaded (issue 6)
  tls     T1, one large file over TLS (issue 7)
A run that measured only some groups keeps the others from the results.json
already in the output folder (raw runs and that run's meta), so results.md
and ratios.png always show both; a run that measures any workload of a group
replaces that whole group.

Per contender: median wall, median client CPU, median server CPU (per GiB
served for W, per run for B), and the highest peak RSS seen over its measured
runs (client: the pipeline stages' peaks added up; server: VmHWM of the
server's processes). Per peer: the ratio fetchd/peer of each round and the
median of those ratios. Bulk rows add files/s and MB/s (10^6 bytes) from the
median wall.
"""
import json, re, statistics, sys
from pathlib import Path

MIB = 1024  # KiB per MiB
GROUPS = {"files": "One large file (W1–W3, issue 3)", "bulk": "Bulk downloads (B1–B3, issue 5)",
          "upload": "Upload (U1, issue 6)",
          "tls": "One large file over TLS (T1, issue 7)"}
PEERS = {"files": ("nginx", "rsync", "curl", "openssl", "pv"), "bulk": ("nginx", "rsync", "curl", "aria2c"),
         "upload": ("nginx", "rsync", "curl"), "tls": ("nginx", "curl", "openssl")}


def group_of(wid):
    return {"B": "bulk", "U": "upload", "T": "tls"}.get(wid[:1], "files")


def ratio_stats(a_runs, b_runs):
    ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(a_runs, b_runs)]
    return ratios, statistics.median(ratios)


def summarize(res, targets):
    rows = []
    for wid, w in res.items():
        fd = w["runs"]["fetchd"]
        for label, runs in w["runs"].items():
            hwm = [r["server_hwm_kib"] for r in runs if r["server_hwm_kib"] is not None]
            row = {"workload": wid, "title": w["title"], "label": label, "n": len(runs),
                   "wall_s": statistics.median(r["wall_s"] for r in runs),
                   "client_cpu_s": statistics.median(r["client_cpu_s"] for r in runs),
                   "server_cpu_s": statistics.median(r["server_cpu_s"] for r in runs),
                   "server_cpu_s_per_gib": statistics.median(r["server_cpu_s_per_gib"] for r in runs),
                   "client_rss_mib": max(sum(r["client_rss_kib"].values()) for r in runs) / MIB,
                   "server_rss_mib": max(hwm) / MIB if hwm else None}
            if "files" in w:
                row["files_per_s"] = w["files"] / row["wall_s"]
                row["mb_per_s"] = None if w.get("rerun") else w["bytes"] / 1e6 / row["wall_s"]
            if label in w.get("wall_target", {}):
                row["wall_target"] = w["wall_target"][label]
            row["failed"] = sum(1 for f in w.get("failures", []) if f["label"] == label)
            if label != "fetchd":
                ratios, med = ratio_stats(fd, runs)
                row.update(ratios=ratios, ratio_median=med, target=targets.get((wid, label)))
            rows.append(row)
        for a, b, target in w.get("extra", []):   # e.g. fetchd -j 32 / rsync
            ratios, med = ratio_stats(w["runs"][a], w["runs"][b])
            rows.append({"workload": wid, "title": w["title"], "label": f"{a} / {b}", "extra": True,
                         "a": a, "b": b, "ratios": ratios, "ratio_median": med, "target": target})
    return rows


def esc(text):
    return text.replace("|", "\\|")


def f2(x, unit=""):
    return "–" if x is None else f"{x:.2f}{unit}"


def tidy(cmd):
    """The command as run, with the stage wrappers and temp paths shortened."""
    cmd = re.sub(r"/usr/bin/time -f %M -o \S+ ", "", cmd)
    cmd = re.sub(r"\S*/target/release/fetchd", "target/release/fetchd", cmd)
    cmd = re.sub(r"/\S*/fetchd-bench\.[^/\s]+/bin/fetchd", "target/release/fetchd", cmd)   # the run's copy
    cmd = re.sub(r"/\S*/fetchd-bench\.[^/\s\"]+", "$WORK", cmd)
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", cmd)


def run_cell(r):
    """The contender's label, with its failed (and repeated) runs if any."""
    n = r.get("failed")
    return esc(r["label"]) + (f" (⚠ {n} failed run{'s' if n > 1 else ''}, repeated)" if n else "")


def failure_gist(error):
    """One line from a recorded failure: the client's stderr without log
    timestamps, e.g. `WARN h2::...: locally-reset streams reached limit (1024); 8 x fetchd: ...`."""
    lines = error.splitlines()
    first = next((i for i, l in enumerate(lines) if re.fullmatch(r"\(\d+ lines on stderr\)", l)), None)
    if first is None:
        return tidy(" ".join(lines[1:3]))
    out = []
    for line in lines[first + 1:]:
        if line.startswith("--- "):
            break
        line = re.sub(r"^\S+Z\s+(WARN|ERROR|INFO)\s+", r"\1 ", line)
        line = re.sub(r"^(.*?)\s+\[x(\d+)\]$", r"\2 x \1", line)
        out.append(line)
    return tidy("; ".join(out))


def failures_md(res):
    """Every run that exited non-zero and was repeated: a line each, and the
    first one's error in full."""
    rows, first = [], None
    for wid, w in res.items():
        for f in w.get("failures", []):
            first = first or f
            rows.append(f"| {wid} | {f['when']} | {esc(f['label'])} | {esc(failure_gist(f['error']))} |")
    if not rows:
        return []
    return (["### Failed runs (each repeated; their times are not in the table)", "",
             "| workload | when | run | the client's stderr (log timestamps removed) |",
             "|---|---|---|---|"] + rows +
            ["", "The first of them as the bench saw it:", "", "```",
             *[tidy(l) for l in first["error"].splitlines() if l.strip()][:20], "```", ""])


def ratio_cell(r):
    cell = f"**{r['ratio_median']:.2f}** [{min(r['ratios']):.2f}–{max(r['ratios']):.2f}]"
    if r.get("target") is not None:
        cell += f" (target ≤ {r['target']:.2f})"
    return cell


def meta_table(meta, group):
    v = meta["versions"]
    if group in ("files", "upload", "tls"):
        data = f"{meta['size_bytes'] >> 20} MiB random file on {meta['data_on']}, loopback"
        pairs = f"one warm-up of each, then {meta['pairs']} rounds: fetchd, then each peer"
    else:
        s, l, ran = meta["bulk_small"], meta["bulk_large"], meta.get("workloads", ["B1", "B2", "B3"])
        parts = []
        if {"B1", "B3"} & set(ran):
            parts.append(f"B1, B3: {s['files']:,} random files of {s['file_bytes'] >> 10} KiB in {s['folders']} "
                         f"folders ({s['files'] * s['file_bytes'] / (1 << 20):.1f} MiB)")
        if "B2" in ran:
            parts.append(f"B2: {l['files']} random files of {l['file_bytes'] >> 20} MiB in {l['folders']} "
                         f"folders ({l['files'] * l['file_bytes'] / (1 << 20):.0f} MiB)")
        data = "; ".join(parts) + f"; on {meta['data_on']}, loopback"
        pairs = (f"one warm-up of each, then {meta['bulk_pairs']} rounds (B1, B2) or {meta['pairs']} "
                 f"rounds (B3): fetchd, then each peer; a run that exits non-zero is recorded and "
                 f"its round repeated, at most {meta.get('max_failures', 3)} times per workload")
    return ["| | |", "|---|---|",
            f"| date | {meta['date']} |",
            f"| kernel (`uname -r`) | {meta['kernel']} |",
            f"| CPU | {meta['cpu']}, nproc {meta['nproc']} |",
            f"| load average at start | {' '.join(meta['loadavg_at_start'])} |",
            f"| data | {data} |",
            f"| pairs | {pairs} |",
            f"| fetchd | `{meta['fetchd_git']}`, release build"
            + (f", sha256 `{meta['fetchd_sha256']}…`, copied at the start of the run |" if meta.get("fetchd_sha256") else " |"),
            f"| peers | {', '.join(v[k] for k in PEERS[group] if k in v)} |",
            f"| command | `{meta['command']}` |", ""]


def files_section(meta, res, rows, group="files"):
    rsync_peak = meta.get("rsyncd_session_max_rss_kib")
    out = meta_table(meta, group) + [
        "| workload | run | median wall (s) | fetchd/peer: median of ratios [min–max] "
        "| client CPU (s) | server CPU (s/GiB) | client peak RSS (MiB) | server peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1]["workload"] != r["workload"]
        ratio = ratio_cell(r) if "ratios" in r else ""
        srv = f2(r["server_rss_mib"], "")
        if r["server_rss_mib"] is None and r["label"] == "rsync" and rsync_peak:
            srv = f"≤ {rsync_peak / MIB:.1f} ¹"
        name = f"{r['workload']} {esc(r['title'])}" if first else ""
        out.append(f"| {name} | {run_cell(r)} | {r['wall_s']:.3f} | {ratio} "
                   f"| {f2(r['client_cpu_s'])} | {f2(r['server_cpu_s_per_gib'])} "
                   f"| {r['client_rss_mib']:.1f} | {srv} |")
    if group != "files":   # the targets below are issue 3's
        out += [""] + failures_md(res) + ["### Commands", ""]
        for wid, w in res.items():
            for label, cmd in w["commands"].items():
                out.append(f"- {wid} {esc(label)}: `{tidy(cmd)}`")
        return out + [""]
    out += ["", "### Targets (issue 3)", "", "| target | measured | holds |", "|---|---|---|"]
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
    out += [""] + failures_md(res) + ["### Commands", ""]
    for wid, w in res.items():
        for label, cmd in w["commands"].items():
            out.append(f"- {wid} {esc(label)}: `{tidy(cmd)}`")
    return out + [""]


def upload_section(meta, res, rows):
    """U1: fetchd put against fetchd get of the same file and two upload peers."""
    rsync_peak = meta.get("rsyncd_session_max_rss_kib")
    out = meta_table(meta, "upload") + [
        "| workload | run | median wall (s) | MiB/s | fetchd put/this: median of ratios [min–max] "
        "| client CPU (s) | server CPU (s/GiB) | client peak RSS (MiB) | server peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1]["workload"] != r["workload"]
        ratio = ratio_cell(r) if "ratios" in r else ""
        srv = f2(r["server_rss_mib"], "")
        if r["server_rss_mib"] is None and r["label"] == "rsync" and rsync_peak:
            srv = f"≤ {rsync_peak / MIB:.1f} ¹"
        name = f"{r['workload']} {esc(r['title'])}" if first else ""
        out.append(f"| {name} | {run_cell(r)} | {r['wall_s']:.3f} | {(meta['size_bytes'] >> 20) / r['wall_s']:.0f} "
                   f"| {ratio} | {f2(r['client_cpu_s'])} | {f2(r['server_cpu_s_per_gib'])} "
                   f"| {r['client_rss_mib']:.1f} | {srv} |")
    out += ["", "`fetchd get, cold` is the download of the same file from the same tmpfs, with the "
            "server's digest cache missing (the source gets a new mtime before every run), so both "
            "sides hash as in an upload: the ratio on its row is upload time over download time. "
            "For it the server is the one serving the source; for the others, the receiving side.", ""]
    out += failures_md(res) + ["### Commands", "",
                               "Every target (and any temporary or partial file) is removed before every run "
                               "(not timed).", ""]
    for wid, w in res.items():
        for label, cmd in w["commands"].items():
            out.append(f"- {wid} {esc(label)}: `{tidy(cmd)}`")
    return out + [""]


def bulk_section(meta, res, rows):
    rsync_peak = meta.get("rsyncd_session_max_rss_kib")
    out = meta_table(meta, "bulk") + [
        "| workload | run | median wall (s) | files/s | MB/s | fetchd/this: median of ratios [min–max] "
        "| client CPU (s) | server CPU (s) | client peak RSS (MiB) | server peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    table = [r for r in rows if not r.get("extra")]
    for i, r in enumerate(table):
        first = i == 0 or table[i - 1]["workload"] != r["workload"]
        ratio = ratio_cell(r) if "ratios" in r else ""
        wall = f"{r['wall_s']:.3f}"
        if r.get("wall_target") is not None:
            wall = f"**{wall}** (target < {r['wall_target']:.2f})"
        srv = f2(r["server_rss_mib"], "")
        if r["server_rss_mib"] is None and r["label"] == "rsync" and rsync_peak:
            srv = f"≤ {rsync_peak / MIB:.1f} ¹"
        mbs = "–" if r["mb_per_s"] is None else f"{r['mb_per_s']:.1f}"
        name = f"{r['workload']} {esc(r['title'])}" if first else ""
        out.append(f"| {name} | {run_cell(r)} | {wall} | {r['files_per_s']:,.0f} | {mbs} | {ratio} "
                   f"| {f2(r['client_cpu_s'])} | {f2(r['server_cpu_s'])} "
                   f"| {r['client_rss_mib']:.1f} | {srv} |")
    out += ["", "MB/s is 10^6 bytes per second of the median wall. B3 transfers nothing "
            "(checked, see below), so it has files/s only: files checked per second.", "",
            "### Targets (issue 5)", "", "| target | measured | holds |", "|---|---|---|"]
    for r in rows:
        if r.get("target") is not None:
            what = (f"{r['workload']} {esc(r['label'])} ≤ {r['target']:.2f} (not the default -j; for information)"
                    if r.get("extra") else f"{r['workload']} fetchd/{esc(r['label'])} ≤ {r['target']:.2f}")
            out.append(f"| {what} | {r['ratio_median']:.2f} "
                       f"| {'yes' if r['ratio_median'] <= r['target'] else 'no'} |")
    for r in rows:
        if r.get("wall_target") is not None:
            out.append(f"| {r['workload']} {esc(r['label'])} no-change rerun < {r['wall_target']:.2f} s "
                       f"| {r['wall_s']:.3f} s | {'yes' if r['wall_s'] < r['wall_target'] else 'no'} |")
    out += [""] + failures_md(res) + ["### Commands", "",
            "DEST is removed before every B1 and B2 run (not timed); B3 reruns each tool over the "
            "complete tree it wrote itself.", ""]
    for wid, w in res.items():
        for label, cmd in w["commands"].items():
            out.append(f"- {wid} {esc(label)}: `{tidy(cmd)}`")
        for name, lines in w.get("inputs", {}).items():
            out.append(f"- {wid} {name}, first of {w['files']:,} entries: "
                       + " ⏎ ".join(f"`{esc(tidy(l))}`" for l in lines))
        for name, value in w.get("checks", {}).items():
            out.append(f"- {wid} untimed check before the runs, {name}: `{json.dumps(value)}`")
    return out + [""]


HOW_FILES = (
    "Wall: `time.perf_counter` around the client pipeline (`bash -o pipefail -c`). "
    "Client CPU: user+sys of all child processes (`RUSAGE_CHILDREN` delta), the whole pipeline. "
    "Server CPU: utime+stime+cutime+cstime from `/proc/PID/stat` of the server and its child "
    "processes (nginx master + worker; the rsync daemon's reaped per-connection children), "
    "delta around the run, per GiB served. Client peak RSS: `/usr/bin/time -f %M` around each "
    "pipeline stage, added up (for rsync the largest of its processes). Server peak RSS: VmHWM "
    "after `echo 5 > /proc/PID/clear_refs`, added up over nginx's master and worker. "
    "Medians are over the measured rounds; peak RSS is the highest over them.")
HOW_BULK = (
    "Bulk (B1–B3): the same instruments, with server CPU as seconds per run (not per GiB). "
    "fetchd serves each tree as the root of a `fetchd serve` of its own (so its command is "
    "`get -r /`), the rsync daemon as a module of its own, nginx below its one root. DEST is "
    "removed before each B1/B2 run, outside the timed region; the client's stdout goes to a "
    "file on tmpfs. Correctness: the tree each tool writes in its warm-up, and every tree "
    "fetchd writes, is compared with the source (every folder, every file's size and sha256, "
    "and nothing else, e.g. no `.part` or `.aria2` leftovers). B3: before the runs, untimed, "
    "fetchd's `--json` rerun must report every file `skipped` and rsync's `--stats` rerun "
    "0 files transferred, and both trees are compared with the source before and after.")

HOW_UPLOAD = (
    "Upload (U1): the same instruments as W1–W3; here the server is the receiving side "
    "(a second `fetchd serve --allow-upload`, the rsync daemon's writable module, nginx with "
    "`dav_methods PUT`), so server CPU per GiB is the cost of receiving and writing. fetchd "
    "hashes on both sides and the server checks the sha256 before it renames the file into "
    "place; rsync checks its own whole-file checksum; curl -T and nginx check nothing.")


def failure_note(meta):
    """The error that stopped a run, repeated lines collapsed, for results.md."""
    f = meta.get("failed")
    if not f:
        return []
    lines, last, reps = [], None, 0
    for line in f["error"].splitlines() + [None]:
        if line == last:
            reps += 1
            continue
        if reps:
            lines.append(f"    (the line above {reps} more times)")
        if line is not None:
            lines.append(line)
        last, reps = line, 0
    return [f"**The run of {meta['date']} stopped at a failure in {f['workload']}**; the workloads "
            f"after it did not run, the ones before it are reported. The error:", "", "```",
            *lines[:40], "```", ""]


def markdown(groups, targets):
    summaries = {g: summarize(groups[g]["workloads"], targets) for g in groups}
    dates = [groups[g]["meta"]["date"] for g in groups]
    out = [f"# fetchd benchmark, {max(dates)}", ""]
    notes = {}
    for g in groups:   # one note per failed run, even if it covers both groups
        notes.setdefault(groups[g]["meta"]["date"], failure_note(groups[g]["meta"]))
    for note in notes.values():
        out += note
    if len(groups) > 1:
        out += ["| workloads | run of | command |", "|---|---|---|"]
        for g in GROUPS:
            if g in groups:
                m = groups[g]["meta"]
                out.append(f"| {', '.join(groups[g]['workloads'])} | {m['date']} | `{m['command']}` |")
        out.append("")
    for g in GROUPS:
        if g in groups:
            out += [f"## {GROUPS[g]}", ""]
            if g == "tls":
                out += files_section(groups[g]["meta"], groups[g]["workloads"], summaries[g], g)
            else:
                section = {"files": files_section, "bulk": bulk_section, "upload": upload_section}[g]
                out += section(groups[g]["meta"], groups[g]["workloads"], summaries[g])
    out += ["## How it is measured", "", HOW_FILES, ""]
    if "bulk" in groups:
        out += [HOW_BULK, ""]
    if "upload" in groups:
        out += [HOW_UPLOAD, ""]
    if any(groups[g]["meta"].get("rsyncd_session_max_rss_kib") for g in groups):
        out.append("¹ The rsync daemon forks one child per connection that exits before it can be "
                   "read, so this is the peak of any rsync daemon process over the whole session "
                   "(`/usr/bin/time` around the daemon).")
    return "\n".join(out) + "\n", summaries


def ratio_panel(ax, items, title):
    """items: [(tick label, ratios, median, target, faint)]"""
    seen_target = False
    for x, (tick, ratios, med, target, faint) in enumerate(items):
        n = len(ratios)
        jitter = [(i - (n - 1) / 2) * 0.3 / max(n - 1, 1) for i in range(n)]
        ax.scatter([x + j for j in jitter], ratios, s=22, color="tab:gray" if faint else "tab:blue",
                   alpha=0.7, zorder=3, label="per pair" if x == 0 else None)
        ax.hlines(med, x - 0.3, x + 0.3, color="black", lw=2.5, zorder=4, label="median" if x == 0 else None)
        ax.annotate(f"{med:.2f}", (x + 0.32, med), va="center", fontsize=9)
        if target is not None:
            ax.hlines(target, x - 0.4, x + 0.4, color="tab:red", ls="--", lw=1.5, zorder=2,
                      label=None if seen_target else "target")
            seen_target = True
            ax.annotate(f"target {target:.2f}", (x - 0.4, target), xytext=(0, 3),
                        textcoords="offset points", fontsize=8, color="tab:red")
    ax.axhline(1.0, color="grey", lw=0.8, alpha=0.5, zorder=1)
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([i[0] for i in items], fontsize=8)
    ax.set_xlim(-0.6, len(items) - 0.4)
    top = max(max(max(i[1]) for i in items), max((i[3] or 0) for i in items), 1.05)
    ax.set_ylim(0, top * 1.18)   # the band above the highest point holds the legend
    ax.set_ylabel("wall time, fetchd / peer (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8, ncols=3)
    ax.grid(axis="y", alpha=0.3)


def chart(path, groups, summaries):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []   # one line of panels per group: [(kind, width, payload)]
    if "files" in summaries:
        items = [(f"{r['workload']}\nvs {r['label']}", r["ratios"], r["ratio_median"], r["target"], False)
                 for r in summaries["files"] if "ratios" in r]
        m = groups["files"]["meta"]
        if items:
            lines.append([("ratios", len(items), (items, f"one large file, {m['size_bytes'] >> 20} MiB, "
                                                   f"{m['pairs']} pairs, {m['date']}"))])
    if "upload" in summaries:
        items = [(f"{r['workload']} put\nvs {r['label']}", r["ratios"], r["ratio_median"], r["target"], False)
                 for r in summaries["upload"] if "ratios" in r]
        m = groups["upload"]["meta"]
        if items:
            lines.append([("ratios", len(items), (items, f"upload, {m['size_bytes'] >> 20} MiB, "
                                                   f"{m['pairs']} pairs, {m['date']}"))])
    if "bulk" in summaries:
        rows = summaries["bulk"]
        items = []   # the peers, each followed by the extra ratios against it (fetchd -j 32 vs rsync)
        for r in rows:
            if "ratios" in r and not r.get("extra") and not r["label"].startswith("fetchd"):
                items.append((f"{r['workload']}\nvs {r['label']}", r["ratios"], r["ratio_median"], r["target"], False))
                items += [(f"{e['workload']} {e['a']}\nvs {e['b']}", e["ratios"], e["ratio_median"], e["target"], True)
                          for e in rows if e.get("extra") and e["workload"] == r["workload"] and e["b"] == r["label"]]
        m = groups["bulk"]["meta"]
        line = []
        if items:
            line.append(("ratios", len(items), (items, f"bulk: B1 {m['bulk_small']['files']:,} x "
                                                f"{m['bulk_small']['file_bytes'] >> 10} KiB, B2 "
                                                f"{m['bulk_large']['files']} x "
                                                f"{m['bulk_large']['file_bytes'] >> 20} MiB, B3 rerun of B1; "
                                                f"{m['bulk_pairs']} pairs (B3: {m['pairs']}), {m['date']}")))
        if "B3" in groups["bulk"]["workloads"]:
            line.append(("walls", 2, (groups["bulk"]["workloads"]["B3"], rows)))
        if line:
            lines.append(line)
    if not lines:
        return False
    widths = [[max(2.2, 1.5 * w + 1.0) for _, w, _ in line] for line in lines]
    fig_w = max(sum(w) for w in widths)
    fig = plt.figure(figsize=(fig_w, 4.8 * len(lines)), dpi=110)
    outer = fig.add_gridspec(len(lines), 1)
    panels = []
    for i, line in enumerate(lines):
        # a line narrower than the widest is padded on the right with empty space
        ws = widths[i] + ([fig_w - sum(widths[i])] if fig_w - sum(widths[i]) > 0.1 else [])
        inner = outer[i].subgridspec(1, len(ws), width_ratios=ws, wspace=0.08 * len(ws))
        panels += [(fig.add_subplot(inner[0, j]), *line[j]) for j in range(len(line))]
    for ax, kind, _, payload in panels:
        if kind == "ratios":
            ratio_panel(ax, *payload)
            continue
        w, rows = payload   # B3: absolute seconds of each rerun, fetchd's target
        for x, label in enumerate(w["runs"]):
            walls = [r["wall_s"] for r in w["runs"][label]]
            n = len(walls)
            jitter = [(i - (n - 1) / 2) * 0.3 / max(n - 1, 1) for i in range(n)]
            med = statistics.median(walls)
            ax.scatter([x + j for j in jitter], walls, s=22, color="tab:blue", alpha=0.7, zorder=3)
            ax.hlines(med, x - 0.3, x + 0.3, color="black", lw=2.5, zorder=4)
            ax.annotate(f"{med:.3f} s", (x + 0.32, med), va="center", fontsize=9)
            target = w.get("wall_target", {}).get(label)
            if target is not None:
                ax.hlines(target, x - 0.4, x + 0.4, color="tab:red", ls="--", lw=1.5, zorder=2)
                ax.annotate(f"target < {target:.2f} s", (x - 0.4, target), xytext=(0, 3),
                            textcoords="offset points", fontsize=8, color="tab:red")
        ax.set_xticks(range(len(w["runs"])))
        ax.set_xticklabels([f"B3 {l}\nrerun" for l in w["runs"]], fontsize=8)
        ax.set_xlim(-0.6, len(w["runs"]) - 0.1)
        top = max(max(r["wall_s"] for runs in w["runs"].values() for r in runs),
                  *w.get("wall_target", {}).values())
        ax.set_ylim(0, top * 1.15)
        ax.set_ylabel("wall time (s), lower is better")
        ax.set_title(f"no-change rerun, {w['files']:,} files", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    any_meta = groups[next(iter(groups))]["meta"]
    fig.suptitle(f"fetchd vs peers on loopback, {any_meta['cpu']}, {any_meta['nproc']} CPUs", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def merge(out_dir, meta, res):
    """The groups to report: this run's, plus the other group from the
    results.json already in out_dir (old single-run files included)."""
    groups = {}
    old = out_dir / "results.json"
    if old.exists():
        try:
            prev = json.loads(old.read_text())
        except ValueError as e:
            print(f"bench: warning: cannot read {old} ({e}); writing this run's results only", file=sys.stderr)
            prev = {}
        for wid, w in prev.get("workloads", {}).items():
            g = group_of(wid)
            m = prev.get("runs", {}).get(g, prev.get("meta"))
            if m is not None:
                groups.setdefault(g, {"meta": m, "workloads": {}})["workloads"][wid] = w
    for g in {group_of(wid) for wid in res}:
        groups[g] = {"meta": meta, "workloads": {wid: w for wid, w in res.items() if group_of(wid) == g}}
    for g in groups:
        if groups[g]["meta"] is not meta:
            print(f"bench: keeping {', '.join(groups[g]['workloads'])} from the run of "
                  f"{groups[g]['meta']['date']} in {old}", file=sys.stderr)
    return {g: groups[g] for g in GROUPS if g in groups}


def write(out_dir, meta, res, targets):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = merge(out_dir, meta, res)
    md, summaries = markdown(groups, targets)
    workloads = {wid: w for g in groups.values() for wid, w in g["workloads"].items()}
    (out_dir / "results.json").write_text(json.dumps(
        {"meta": meta, "runs": {g: groups[g]["meta"] for g in groups},
         "summary": [r for g in summaries.values() for r in g], "workloads": workloads}, indent=1) + "\n")
    (out_dir / "results.md").write_text(md)
    drew = chart(out_dir / "ratios.png", groups, summaries)
    print(md)
    print(f"bench: wrote {out_dir}/results.md, results.json" + (", ratios.png" if drew else ""))
