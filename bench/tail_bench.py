#!/usr/bin/env python3
"""The tail benchmark (issue 4), run by `bash bench/tail`.

Three measurements, on loopback, in one run:

1. Append-to-stdout latency: a writer appends one line (sequence number and
   timestamp) to a log and waits until that line shows on the follower's
   stdout (read non-blocking with poll). Followers: `fetchd tail LOG -n 0`
   (against the default server, and against one with `--workers 2`), local
   `tail -F -n 0 LOG` and `ssh 127.0.0.1 tail -F -n 0 LOG` through a
   private sshd. All run at once, each on its own log, and the samples
   are interleaved in rounds (the order rotating each round) so they see the
   same machine conditions. p50, p99 and max in ms.
2. Lines per second for one client: the writer appends BENCH_TAIL_LINES short
   lines in 1 MiB writes as fast as it can; the time until the follower's
   stdout has every newline. fetchd tail, tail -F and ssh tail -F in turn.
3. Fan-out: a fresh `fetchd serve`; examples/tail_fanout opens
   BENCH_TAIL_CLIENTS tail streams (one connection each) on one file; a writer
   appends BENCH_TAIL_FAN_LINES lines of 64 bytes (bursts of 100 lines, 10 ms
   apart); every client must receive every byte (byte count and FNV-1a hash
   compared with what was written). Server peak RSS (VmHWM after
   `echo 5 > clear_refs`), server CPU (utime+stime), inotify watches.

Writes bench/results/tail.md and tail.json (BENCH_OUT to change the folder).
Python 3.11 standard library only. Everything it starts is stopped by PID at
exit and its temp dir removed.
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import platform
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FETCHD = REPO / "target/release/fetchd"
FANOUT = REPO / "target/release/examples/tail_fanout"

SAMPLES = int(os.environ.get("BENCH_TAIL_SAMPLES", "2000"))
SPACING_S = float(os.environ.get("BENCH_TAIL_SPACING_MS", "2")) / 1000
TPUT_LINES = int(os.environ.get("BENCH_TAIL_LINES", "2000000"))
FAN_CLIENTS = int(os.environ.get("BENCH_TAIL_CLIENTS", "1000"))
FAN_LINES = int(os.environ.get("BENCH_TAIL_FAN_LINES", "10000"))
OUT = Path(os.environ.get("BENCH_OUT", REPO / "bench/results"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Latency followers: fetchd against the default server and against one with
# `--workers 2` (the default is half the CPUs), local tail -F, ssh tail -F.
LAT_FOLLOWERS = ("fetchd", "fetchd-w2", "tail", "ssh")


def log(msg: str) -> None:
    print(f"bench/tail: {msg}", file=sys.stderr, flush=True)


# --- processes ----------------------------------------------------------------

started: list[subprocess.Popen] = []


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    p = subprocess.Popen(cmd, **kw)
    started.append(p)
    return p


def children_of(pid: int) -> list[int]:
    """All descendants of pid (by PPid in /proc), deepest first."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    out: list[int] = []

    def walk(p: int) -> None:
        for c in kids.get(p, []):
            walk(c)
            out.append(c)

    walk(pid)
    return out


def stop(p: subprocess.Popen, with_children: bool = False) -> None:
    if p.poll() is None:
        if with_children:
            for pid in children_of(p.pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in started:
        started.remove(p)


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


# --- /proc readings -------------------------------------------------------------


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def inotify_watches(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            n += sum(1 for l in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                     if l.startswith("inotify wd:"))
        except OSError:
            pass
    return n


# --- followers -------------------------------------------------------------------


class Follower:
    """A follower process whose stdout is read non-blocking with poll."""

    def __init__(self, name: str, cmd: list[str], stderr_path: Path):
        self.name = name
        self.cmd = cmd
        self.proc = spawn(cmd, stdout=subprocess.PIPE, stderr=open(stderr_path, "wb"),
                          stdin=subprocess.DEVNULL)
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self.buf = b""

    def _read(self, timeout_ms: int) -> int:
        """Waits up to timeout_ms for output; returns bytes read (-1 at EOF)."""
        if not self.poller.poll(timeout_ms):
            return 0
        try:
            chunk = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return 0
        if not chunk:
            return -1
        self.buf += chunk
        return len(chunk)

    def wait_for(self, needle: bytes, timeout_s: float) -> bool:
        """Until needle is in the output; drops the output up to and including it."""
        deadline = time.monotonic() + timeout_s
        while True:
            i = self.buf.find(needle)
            if i >= 0:
                self.buf = self.buf[i + len(needle):]
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._read(max(1, int(left * 1000))) < 0:
                raise RuntimeError(f"{self.name} exited: {self.proc.wait()}")

    def count_newlines(self, want: int, timeout_s: float) -> tuple[int, int]:
        """Reads until `want` newlines arrived; returns (newlines, bytes)."""
        deadline = time.monotonic() + timeout_s
        lines = self.buf.count(b"\n")
        nbytes = len(self.buf)
        self.buf = b""
        while lines < want and time.monotonic() < deadline:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                self.poller.poll(100)
                continue
            if not chunk:
                break
            lines += chunk.count(b"\n")
            nbytes += len(chunk)
        return lines, nbytes


def append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def sync(followers: list[Follower], logs: dict[str, Path]) -> None:
    """Appends marker lines until every follower shows one (it is following)."""
    pending = list(followers)
    n = 0
    deadline = time.monotonic() + 60
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError("followers did not start: " + ", ".join(f.name for f in pending))
        n += 1
        for f in pending:
            append(logs[f.name], b"sync %d\n" % n)
        time.sleep(0.1)
        for f in list(pending):
            f._read(0)
            if b"sync" in f.buf:
                pending.remove(f)
    for f in followers:  # drain the rest of the markers
        while f._read(50) > 0:
            pass
        f.buf = b""


def pct(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    k = max(0, min(len(sorted_ms) - 1, int(-(-p * len(sorted_ms) // 1)) - 1))
    return sorted_ms[k]


# --- the run --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fetchd(root: Path, work: Path, tag: str,
                 extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    out = open(work / f"serve-{tag}.out", "wb")
    p = spawn([str(FETCHD), "serve", "--root", str(root), "--listen", "127.0.0.1:0", *extra],
              stdout=subprocess.PIPE, stderr=open(work / f"serve-{tag}.err", "wb"))
    line = p.stdout.readline().decode()
    out.write(line.encode())
    if not line.startswith("listening on "):
        raise RuntimeError(f"fetchd serve did not start: {line!r}; see {work}/serve-{tag}.err")
    return p, "http://" + line.split()[-1]


def start_sshd(work: Path) -> tuple[subprocess.Popen, list[str]]:
    d = work / "ssh"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_ed25519")],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_ed25519")],
                   check=True)
    shutil.copy(d / "client_ed25519.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_ed25519
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
LogLevel ERROR
""")
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    p = spawn([sshd, "-D", "-e", "-f", str(d / "sshd_config")],
              stdout=subprocess.DEVNULL, stderr=open(d / "sshd.err", "wb"))
    ssh = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
           "-i", str(d / "client_ed25519"), "-p", str(port), f"{getpass.getuser()}@127.0.0.1"]
    for _ in range(100):
        if p.poll() is not None:
            raise RuntimeError("sshd exited: " + (d / "sshd.err").read_text())
        r = subprocess.run(ssh + ["true"], stdin=subprocess.DEVNULL, capture_output=True)
        if r.returncode == 0:
            return p, ssh
        time.sleep(0.1)
    raise RuntimeError("cannot ssh to the private sshd: " + r.stderr.decode())


def latency(work: Path, root: Path, url: str, url_w2: str, ssh: list[str]) -> dict:
    logs = {name: root / f"lat-{name}.log" for name in LAT_FOLLOWERS}
    for p in logs.values():
        p.write_bytes(b"")
    cmds = {
        "fetchd": [str(FETCHD), "--server", url, "tail", logs["fetchd"].name, "-n", "0"],
        "fetchd-w2": [str(FETCHD), "--server", url_w2, "tail", logs["fetchd-w2"].name, "-n", "0"],
        "tail": ["tail", "-F", "-n", "0", str(logs["tail"])],
        "ssh": ssh + ["tail", "-F", "-n", "0", str(logs["ssh"])],
    }
    followers = [Follower(n, c, work / f"lat-{n}.err") for n, c in cmds.items()]
    try:
        sync(followers, logs)
        fds = {n: os.open(p, os.O_WRONLY | os.O_APPEND) for n, p in logs.items()}
        samples: dict[str, list[float]] = {f.name: [] for f in followers}
        warmup = 20
        for i in range(warmup + SAMPLES):
            k = i % len(followers)
            order = followers[k:] + followers[:k]
            for f in order:
                t0 = time.perf_counter_ns()
                line = b"%d %d\n" % (i, t0)
                os.write(fds[f.name], line)
                if not f.wait_for(line, 10):
                    raise RuntimeError(f"{f.name}: line {i} did not arrive within 10 s")
                dt = time.perf_counter_ns() - t0
                if i >= warmup:
                    samples[f.name].append(dt / 1e6)
                time.sleep(SPACING_S)
        for fd in fds.values():
            os.close(fd)
    finally:
        for f in followers:
            stop(f.proc)
        for p in logs.values():  # a remote tail whose ssh is gone exits at its next write
            append(p, b"end\n")
    out = {}
    for f in followers:
        s = sorted(samples[f.name])
        out[f.name] = {"command": shlex.join(f.cmd), "samples": len(s), "p50_ms": pct(s, 0.50),
                       "p99_ms": pct(s, 0.99), "max_ms": s[-1]}
    return out


def throughput(work: Path, root: Path, url: str, ssh: list[str]) -> dict:
    data = b"".join(b"%015d\n" % i for i in range(TPUT_LINES))
    chunk = 1 << 20
    out = {}
    for name in ("fetchd", "tail", "ssh"):
        path = root / f"tput-{name}.log"
        path.write_bytes(b"")
        cmd = {
            "fetchd": [str(FETCHD), "--server", url, "tail", path.name, "-n", "0"],
            "tail": ["tail", "-F", "-n", "0", str(path)],
            "ssh": ssh + ["tail", "-F", "-n", "0", str(path)],
        }[name]
        f = Follower(name, cmd, work / f"tput-{name}.err")
        try:
            sync([f], {name: path})
            wrote = {}

            def writer():
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                view = memoryview(data)
                while view:
                    n = os.write(fd, view[:chunk])
                    view = view[n:]
                os.close(fd)
                wrote["t"] = time.perf_counter()

            t0 = time.perf_counter()
            th = threading.Thread(target=writer)
            th.start()
            lines, nbytes = f.count_newlines(TPUT_LINES, 300)
            t1 = time.perf_counter()
            th.join()
        finally:
            stop(f.proc)
            append(path, b"end\n")
        ok = lines == TPUT_LINES and nbytes == len(data)
        out[name] = {"command": shlex.join(cmd), "lines": TPUT_LINES, "bytes": len(data),
                     "received_lines": lines, "received_bytes": nbytes, "complete": ok,
                     "seconds": t1 - t0, "writer_seconds": wrote["t"] - t0,
                     "lines_per_s": lines / (t1 - t0)}
        log(f"  {name}: {lines / (t1 - t0):,.0f} lines/s ({'all' if ok else 'INCOMPLETE'})")
        path.unlink()
    return out


def fnv1a(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def fanout(work: Path, root: Path) -> dict:
    path = root / "fan.log"
    path.write_bytes(b"")
    server, url = start_fetchd(root, work, "fan")
    pid = server.pid
    try:
        time.sleep(0.2)
        rss_start = status_kib(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        cpu0 = cpu_s(pid)
        lines = [b"%063d\n" % i for i in range(FAN_LINES)]
        data = b"".join(lines)
        cmd = [str(FANOUT), url, path.name, str(FAN_CLIENTS), str(len(data)), "600"]
        t_open = time.perf_counter()
        p = spawn(cmd, stdout=subprocess.PIPE, stderr=open(work / "fanout.err", "wb"))
        first = p.stdout.readline()
        if first.strip() != b"ready":
            raise RuntimeError(f"tail_fanout: {first!r}; see {work}/fanout.err")
        open_s = time.perf_counter() - t_open
        cpu_open = cpu_s(pid) - cpu0
        watches = inotify_watches(pid)
        rss_idle = status_kib(pid, "VmRSS")
        cpu1 = cpu_s(pid)
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        for i, line in enumerate(lines):
            os.write(fd, line)
            if i % 100 == 99:
                time.sleep(0.01)
        os.close(fd)
        t_write = time.perf_counter() - t0
        result_line = p.stdout.readline()
        p.wait()
        started.remove(p)
        cpu_deliver = cpu_s(pid) - cpu1
        hwm = status_kib(pid, "VmHWM")
        threads = status_kib(pid, "Threads")
    finally:
        stop(server)
    result = json.loads(result_line)
    want_hash = fnv1a(data)
    every = (result.get("complete") == FAN_CLIENTS
             and result.get("hashes") == {want_hash: FAN_CLIENTS})
    return {"command": shlex.join(cmd), "clients": FAN_CLIENTS, "lines": FAN_LINES,
            "bytes_each": len(data), "every_client_every_byte": every, "client_report": result,
            "expected_hash": want_hash, "connect_s": open_s, "writer_s": t_write,
            "last_client_done_s": result.get("last_done_s"),
            "server_rss_start_mib": rss_start / 1024, "server_rss_clients_idle_mib": rss_idle / 1024,
            "server_peak_rss_mib": hwm / 1024, "server_cpu_connect_s": cpu_open,
            "server_cpu_deliver_s": cpu_deliver, "server_threads": threads,
            "inotify_watches": watches}


def machine() -> dict:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release()}


def render(res: dict) -> str:
    m = res["machine"]
    lat, tput, fan = res["latency"], res["throughput"], res["fanout"]
    label = {"fetchd": "fetchd tail", "fetchd-w2": "fetchd tail (`serve --workers 2`)",
             "tail": "tail -F (local)", "ssh": "ssh 127.0.0.1 tail -F"}
    md = [f"# Tail benchmark\n",
          f"Run of {res['date']} on {m['nproc']} cores ({m['cpu']}), Linux {m['kernel']}; "
          f"`{res['invocation']}`; logs on {res['log_fs']}. The machine is shared, so "
          f"treat the figures as provisional.\n",
          f"## Append-to-stdout latency over loopback ({SAMPLES} samples each, interleaved)\n",
          "| follower | p50 (ms) | p99 (ms) | max (ms) |", "|---|---|---|---|"]
    for k in LAT_FOLLOWERS:
        r = lat[k]
        p99 = f"{r['p99_ms']:.3f}"
        if k == "fetchd":
            p99 += " (target ≤ 1 ms: " + ("met" if r["p99_ms"] <= 1 else "**not met**") + ")"
        md.append(f"| {label[k]} | {r['p50_ms']:.3f} | {p99} | {r['max_ms']:.3f} |")
    md += ["", f"## Lines per second, one client ({TPUT_LINES:,} lines of 16 bytes, 1 MiB writes)\n",
           "| follower | seconds | lines/s | all received |", "|---|---|---|---|"]
    for k in ("fetchd", "tail", "ssh"):
        r = tput[k]
        md.append(f"| {label[k]} | {r['seconds']:.3f} | {r['lines_per_s']:,.0f} | "
                  f"{'yes' if r['complete'] else '**no**'} |")
    md += ["", f"## {fan['clients']:,} concurrent tail clients on one file "
           f"({fan['lines']:,} lines of 64 bytes, bursts of 100 every 10 ms)\n",
           "| measure | value |", "|---|---|",
           f"| every client got every byte (count and hash) | "
           f"{'yes' if fan['every_client_every_byte'] else '**no**'} |",
           f"| server peak RSS (VmHWM) | {fan['server_peak_rss_mib']:.1f} MiB (target < 256 MiB: "
           + ("met" if fan["server_peak_rss_mib"] < 256 else "**not met**") + ") |",
           f"| server RSS: before clients / {fan['clients']} clients idle | "
           f"{fan['server_rss_start_mib']:.1f} / {fan['server_rss_clients_idle_mib']:.1f} MiB |",
           f"| server CPU to accept {fan['clients']} tails | {fan['server_cpu_connect_s']:.2f} s |",
           f"| server CPU to deliver {fan['lines']:,} lines to every client | "
           f"{fan['server_cpu_deliver_s']:.2f} s |",
           f"| writer time / last client complete after ready | {fan['writer_s']:.2f} s / "
           f"{fan['last_client_done_s']:.2f} s |",
           f"| server inotify watches | {fan['inotify_watches']} |",
           f"| server threads | {fan['server_threads']} |",
           "", "## Commands measured\n", "```"]
    md += [lat[k]["command"] for k in LAT_FOLLOWERS]
    md += [tput[k]["command"] for k in ("fetchd", "tail", "ssh")]
    md += [res["servers"]["fetchd"], res["servers"]["fetchd-w2"], res["servers"]["sshd"],
           fan["command"], "```", ""]
    md = [line.replace(res["work"], "$WORK").replace(str(REPO) + "/", "") for line in md]
    md += ["Latency: the writer takes a timestamp, appends `SEQ TIMESTAMP\\n` with one write(2) "
           "and polls the follower's stdout pipe until that line is there; "
           f"{SPACING_S * 1000:g} ms between samples, the followers' samples interleaved "
           "round by round (rotating order) after 20 unmeasured rounds. Lines/s: from the "
           "writer's start until the follower's stdout has every newline. Fan-out: peak RSS is "
           "VmHWM after `echo 5 > /proc/PID/clear_refs` just before the clients connect; CPU is "
           "utime+stime from /proc/PID/stat; watches are `inotify wd:` lines in "
           "/proc/PID/fdinfo/*; the load generator is `examples/tail_fanout.rs`. `$WORK` is "
           "the run's temp dir (removed at exit).", ""]
    return "\n".join(md)


def main() -> int:
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    for tool in (FETCHD, FANOUT):
        if not tool.exists():
            log(f"missing {tool}; run bash bench/tail")
            return 1
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="fetchd-tail.", dir=base))
    made_run_sshd = False
    try:
        root = work / "root"
        root.mkdir()
        if not os.path.isdir("/run/sshd"):  # sshd's privilege separation dir
            os.makedirs("/run/sshd", mode=0o755)
            made_run_sshd = True
        sshd, ssh = start_sshd(work)
        server, url = start_fetchd(root, work, "main")
        server_w2, url_w2 = start_fetchd(root, work, "w2", ("--workers", "2"))
        log(f"fetchd at {url}, sshd pid {sshd.pid}, work dir {work}")
        res = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "machine": machine(), "invocation": os.environ.get("BENCH_TAIL_INVOCATION",
                                                                   "bash bench/tail"),
               "log_fs": "tmpfs (/dev/shm)" if base else "/tmp", "work": str(work),
               "servers": {"fetchd": shlex.join(server.args),
                           "fetchd-w2": shlex.join(server_w2.args),
                           "sshd": shlex.join(sshd.args)}}
        log(f"latency: {SAMPLES} samples each, interleaved")
        res["latency"] = latency(work, root, url, url_w2, ssh)
        stop(server_w2)
        for k, r in res["latency"].items():
            log(f"  {k}: p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, max {r['max_ms']:.3f} ms")
        log(f"lines/s: {TPUT_LINES:,} lines")
        res["throughput"] = throughput(work, root, url, ssh)
        stop(server)
        log(f"fan-out: {FAN_CLIENTS} clients, {FAN_LINES} lines")
        res["fanout"] = fanout(work, root)
        f = res["fanout"]
        log(f"  every client every byte: {f['every_client_every_byte']}, peak RSS "
            f"{f['server_peak_rss_mib']:.1f} MiB, watches {f['inotify_watches']}")
        md = render(res)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "tail.md").write_text(md)
        (OUT / "tail.json").write_text(json.dumps(res, indent=2) + "\n")
        print(md)
        log(f"wrote {OUT}/tail.md and tail.json")
        ok = (f["every_client_every_byte"]
              and all(r["complete"] for r in res["throughput"].values()))
        return 0 if ok else 1
    finally:
        for p in list(reversed(started)):
            stop(p, with_children=(p.args[0].endswith("sshd")))
        if made_run_sshd:
            shutil.rmtree("/run/sshd", ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
