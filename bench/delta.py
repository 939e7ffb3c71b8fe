#!/usr/bin/env python3
"""Delta transfer: fetchd get onto an older copy against rsync's delta algorithm.

    BENCH_ONLY=DELTA bash bench/run              # installs rsync, builds, runs this
    python3 bench/delta.py                       # the same, once the binaries are built

One old file of DELTA_SIZE_MIB (1024) MiB of random bytes; the client holds it as DEST
(mtime set back a year, so rsync's quick check never skips), the server holds a new
version. Workloads, each `DELTA_ROUNDS` (3) rounds after a warm-up round, medians:

  D1  100 scattered 4 KiB overwrites        D2  1 MiB inserted in the middle
  D3  1 MiB deleted from the middle         D4  the same bytes, a new mtime
  D5  entirely new content (fetchd's delta against its own --whole-file)
  D1 at 50 ms RTT (25 ms each way through the relay), and D1 with a cold manifest
  (the fetchd server restarted before each round, so it reads and cuts the file).

Contenders: `fetchd get NAME -o DEST` (default: delta) and `fetchd get --whole-file`,
against `rsync --no-whole-file --stats` from an rsync daemon (its rolling-checksum
delta; rsync also verifies the whole file, with its own checksum). Every run goes
through its own `examples/relay.rs` (no delay on loopback), whose byte counts are
the bytes on the wire each way, for both tools. The DEST is checked against the
server's sha256 after every run and reset to the old copy before the next. Page
cache warm; manifests cached on the fetchd server (after the warm-up round) except
in the cold row. CPU: the client's from GNU time, the server's from /proc (for the
rsync daemon, the children it reaped). Peak RSS: the client's (GNU time) and the fetchd
server's VmHWM (reset before each run); the rsync daemon's children are not
measured one by one. Results: bench/results/delta.md and .json, with the CPU model
and the one-core `openssl dgst -sha256` time of the test file.
"""

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wan import (BIN, RELAY, clear_hwm, first_line, free_port, hwm_kib, machine, sha256,  # noqa: E402
                 spawn, started, stop_all, wait_port, write_results)

SIZE_MIB = int(os.environ.get("DELTA_SIZE_MIB", "1024"))
ROUNDS = int(os.environ.get("DELTA_ROUNDS", "3"))
RTT_MS = int(os.environ.get("DELTA_RTT_MS", "50"))
OUT = Path(os.environ.get("BENCH_OUT", Path(__file__).resolve().parent / "results"))
MIB = 1 << 20
CLK = os.sysconf("SC_CLK_TCK")
OLD_MTIME = time.time() - 365 * 86400


def say(msg):
    print(f"delta: {msg}", file=sys.stderr, flush=True)


def cpu_s(pid):
    """utime+stime+cutime+cstime of `pid` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK


def write_random(path, size, seed):
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(rng.randbytes(MIB))


def make_versions(data, old):
    """The new versions D1-D5 of `old` under `data`."""
    size = old.stat().st_size
    rng = random.Random(7)
    d1 = data / "d1.bin"
    shutil.copyfile(old, d1)
    with open(d1, "r+b") as f:
        for _ in range(100):
            f.seek(rng.randrange(size - 4096))
            f.write(rng.randbytes(4096))
    mid = size // 2
    with open(old, "rb") as src:
        head = src.read(mid)
        tail = src.read()
    (data / "d2.bin").write_bytes(head + rng.randbytes(MIB) + tail)
    (data / "d3.bin").write_bytes(head + tail[MIB:])
    del head, tail
    shutil.copyfile(old, data / "d4.bin")
    write_random(data / "d5.bin", size, 8)


class Server:
    """A server process and the address it listens on."""

    def __init__(self, proc, addr):
        self.proc, self.addr = proc, addr


def start_fetchd(data, work):
    proc = spawn([str(BIN), "serve", "--root", str(data), "--listen", "127.0.0.1:0"],
                 stdout=subprocess.PIPE, stderr=open(work / "serve.log", "ab"))
    return Server(proc, first_line(proc, "listening on "))


def stop(server):
    server.proc.terminate()
    server.proc.wait(timeout=30)
    started.remove(server.proc)


def start_rsyncd(data, work):
    port, conf = free_port(), work / "rsyncd.conf"
    conf.write_text(f"""use chroot = no
uid = {os.getuid()}
gid = {os.getgid()}
[data]
    path = {data}
    read only = yes
""")
    proc = spawn(["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}"],
                 stderr=open(work / "rsyncd.log", "ab"))
    wait_port(port)
    return Server(proc, f"127.0.0.1:{port}")


def measure(upstream, delay_ms, argv_of, server_pid):
    """One run through a relay: wall, client CPU and RSS, server CPU (and fetchd's
    peak RSS), bytes each way, the client's stdout."""
    relay = spawn([str(RELAY), "--listen", "127.0.0.1:0", "--upstream", upstream,
                   "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    addr = first_line(relay, "relay on ")
    argv = argv_of(addr)
    clear_hwm(server_pid)
    # Write back what resetting DEST dirtied, so no run pays for the one before.
    os.sync()
    server_cpu = cpu_s(server_pid)
    t0 = time.monotonic()
    # GNU time forks the client from its own small process: a child forked from
    # this Python would inherit Python's peak RSS into its ru_maxrss.
    with tempfile.NamedTemporaryFile("r", prefix="delta-time-") as usage:
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%U %S %M", "-o", usage.name, *argv],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=1800)
        took = time.monotonic() - t0
        user_s, sys_s, rss_kib = usage.read().split()[-3:]
    server_cpu = cpu_s(server_pid) - server_cpu
    server_rss = hwm_kib(server_pid)
    relay.terminate()
    _, relay_err = relay.communicate(timeout=30)
    started.remove(relay)
    if proc.returncode != 0:
        raise SystemExit(f"delta: {' '.join(argv)} exited {proc.returncode}:\n{err.decode()[-2000:]}")
    words = relay_err.decode().split()
    return {
        "wall_s": took,
        "client_cpu_s": float(user_s) + float(sys_s),
        "client_rss_kib": int(rss_kib),
        "server_cpu_s": server_cpu,
        "server_rss_kib": server_rss,
        "bytes_up": int(words[words.index("bytes_up") + 1]),
        "bytes_down": int(words[words.index("bytes_down") + 1]),
        "stdout": out.decode(errors="replace"),
    }


def main():
    for tool in (BIN, RELAY):
        if not tool.exists():
            raise SystemExit(f"delta: {tool} is missing: cargo build --release --examples")
    if not shutil.which("rsync"):
        raise SystemExit("delta: rsync is missing (bash bench/run installs it)")
    work = Path(tempfile.mkdtemp(prefix="fetchd-delta-", dir=os.environ.get("DELTA_TMP")))
    try:
        run(work)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


def run(work):
    data, out = work / "data", work / "out"
    data.mkdir()
    out.mkdir()
    old = work / "old.bin"
    say(f"making {SIZE_MIB} MiB of random data and its five new versions in {work}")
    write_random(old, SIZE_MIB * MIB, 1)
    make_versions(data, old)
    want = {f"d{i}": sha256(data / f"d{i}.bin") for i in range(1, 6)}
    model, openssl_s = machine(old)
    say(f"{model}; openssl dgst -sha256 of the old file on one core: {openssl_s:.2f} s")
    rsync_version = subprocess.run(["rsync", "--version"], capture_output=True,
                                   text=True).stdout.splitlines()[0]
    fetchd = start_fetchd(data, work)
    rsyncd = start_rsyncd(data, work)

    def reset(dest):
        shutil.copyfile(old, dest)
        os.utime(dest, (OLD_MTIME, OLD_MTIME))

    def fetchd_argv(name, dest, *extra):
        return lambda addr: [str(BIN), "--server", f"http://{addr}", "get", f"{name}.bin", "-o",
                             str(dest), "--json", *extra]

    def rsync_argv(name, dest):
        return lambda addr: ["rsync", "--no-whole-file", "--stats", f"rsync://{addr}/data/{name}.bin",
                             str(dest)]

    def one(label, name, server, argv_of, delay_ms=0):
        dest = out / f"{name}.bin"
        reset(dest)
        row = measure(server.addr, delay_ms, argv_of(name, dest), server.proc.pid)
        if sha256(dest) != want[name]:
            raise SystemExit(f"delta: {label} {name}: DEST is not the server's file")
        if label.startswith("fetchd"):
            line = json.loads(row["stdout"].splitlines()[0])
            row["received"], row["reused"] = line["received"], line["reused"]
        else:
            stats = {}
            for text in row["stdout"].splitlines():
                key, _, value = text.partition(":")
                if value.strip():
                    stats[key.strip()] = value.split()[0].replace(",", "")
            row["literal"] = int(stats.get("Literal data", 0))
            row["matched"] = int(stats.get("Matched data", 0))
            row["stats_sent"] = int(stats.get("Total bytes sent", 0))
            row["stats_received"] = int(stats.get("Total bytes received", 0))
        del row["stdout"]
        return row

    contenders = {
        "fetchd": (fetchd, lambda name, dest: fetchd_argv(name, dest)),
        "fetchd --whole-file": (fetchd, lambda name, dest: fetchd_argv(name, dest, "--whole-file")),
        "rsync": (rsyncd, rsync_argv),
    }
    plan = [("D1", "d1", ["fetchd", "rsync"]), ("D2", "d2", ["fetchd", "rsync"]),
            ("D3", "d3", ["fetchd", "rsync"]), ("D4", "d4", ["fetchd", "rsync"]),
            ("D5", "d5", ["fetchd", "fetchd --whole-file", "rsync"])]
    results = {"machine": {"cpu": model, "openssl_sha256_s": openssl_s, "size_mib": SIZE_MIB,
                           "rounds": ROUNDS, "rtt_ms": RTT_MS, "rsync": rsync_version,
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
               "rows": {}}
    say("warm-up round (fills the page cache and the server's manifest cache)")
    for _, name, who in plan:
        for label in who:
            server, argv_of = contenders[label]
            one(label, name, server, argv_of)
    for wid, name, who in plan:
        rows = {label: [] for label in who}
        for r in range(ROUNDS):
            # Alternate who goes first, so neither always has the warmer cache.
            order = who if r % 2 == 0 else list(reversed(who))
            for label in order:
                server, argv_of = contenders[label]
                rows[label].append(one(label, name, server, argv_of))
            say(f"{wid} round {r + 1}: " + ", ".join(
                f"{label} {rows[label][-1]['wall_s']:.2f} s" for label in who))
        results["rows"][wid] = rows

    wan = {"fetchd": [], "rsync": []}
    for r in range(ROUNDS):
        for label in ("fetchd", "rsync"):
            server, argv_of = contenders[label]
            wan[label].append(one(label, "d1", server, argv_of, delay_ms=RTT_MS // 2))
        say(f"D1 at {RTT_MS} ms RTT round {r + 1}: fetchd {wan['fetchd'][-1]['wall_s']:.2f} s, "
            f"rsync {wan['rsync'][-1]['wall_s']:.2f} s")
    results["rows"][f"D1 {RTT_MS} ms"] = wan

    cold = {"fetchd": []}
    for r in range(ROUNDS):
        stop(fetchd)
        fetchd = start_fetchd(data, work)
        cold["fetchd"].append(one("fetchd", "d1", fetchd, contenders["fetchd"][1]))
        say(f"D1 cold manifest round {r + 1}: fetchd {cold['fetchd'][-1]['wall_s']:.2f} s")
    results["rows"]["D1 cold"] = cold
    report(results)


def med(rows, key):
    return statistics.median(row[key] for row in rows)


def mib(n):
    return f"{n / MIB:.2f}"


def report(res):
    m = res["machine"]
    lines = [
        f"# Delta transfer: fetchd vs rsync --no-whole-file ({m['size_mib']} MiB file)",
        "",
        f"{m['date']}; {m['cpu']}, 2 cores; one-core `openssl dgst -sha256` of the file "
        f"{m['openssl_sha256_s']:.2f} s; {m['rsync']}. Medians of {m['rounds']} rounds after a "
        "warm-up round. Bytes on the wire counted by a relay in front of each server (both "
        "directions, framing and protocol included); `fetchd received` is the file bytes "
        "fetched, `rsync literal` the bytes rsync sent as new data. CPU in seconds, RSS in MiB. "
        "Measured by `BENCH_ONLY=DELTA bash bench/run` (bench/delta.py).",
        "",
        "| workload | tool | wall s | wire down MiB | wire up MiB | file bytes MiB | "
        "client CPU | server CPU | client RSS | server RSS | wall vs rsync | wire vs rsync |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for wid, rows in res["rows"].items():
        rsync = rows.get("rsync")
        for label, runs in rows.items():
            wall, down, up = med(runs, "wall_s"), med(runs, "bytes_down"), med(runs, "bytes_up")
            payload = med(runs, "received") if "received" in runs[0] else med(runs, "literal")
            ratio_wall = ratio_wire = ""
            if rsync and label != "rsync":
                ratio_wall = f"{wall / med(rsync, 'wall_s'):.2f}x"
                ratio_wire = (f"{(down + up) / (med(rsync, 'bytes_down') + med(rsync, 'bytes_up')):.2f}x")
            server_rss = f"{med(runs, 'server_rss_kib') / 1024:.0f}" if label != "rsync" else "n/a"
            lines.append(
                f"| {wid} | {label} | {wall:.3f} | {mib(down)} | {mib(up)} | {mib(payload)} | "
                f"{med(runs, 'client_cpu_s'):.2f} | {med(runs, 'server_cpu_s'):.2f} | "
                f"{med(runs, 'client_rss_kib') / 1024:.0f} | {server_rss} | {ratio_wall} | {ratio_wire} |")
    d5 = res["rows"]["D5"]
    lines += ["", f"D5: fetchd's delta took {med(d5['fetchd'], 'wall_s') / med(d5['fetchd --whole-file'], 'wall_s'):.2f}x "
              "the time of its own `--whole-file` (goal <= 1.1x)."]
    write_results(OUT, "delta", res, "\n".join(lines))


if __name__ == "__main__":
    main()
