#!/usr/bin/env python3
"""The 500-client load of gets and tails (issue 14, "Real networks").

What it measures
----------------
One `fetchd serve` with its default limits (--max-transfers 256, ...) on
127.0.0.1 serves a tree of --files files of mixed sizes (1 KiB to 4 MiB,
log-uniform, deterministic pseudo-random content) and one log, app.log.
Against it, at the same time:

* --clients client loops. Each loop is a Python thread that, for --seconds,
  picks a random file and runs one `fetchd get` process for it:
      fetchd --server URL get PATH -o OUT/client-K/PATH --json --quiet --force
  A get is ok when it exits 0 within 120 s, its JSON line says status ok and
  its sha256 and bytes are the file's; then the copy is deleted (so the
  copies do not fill the tmpfs). Every tenth loop (K = 0, 10, 20, ...) runs
  its gets without --json and --quiet, so that the client's own notices
  (`fetchd: PATH: server busy, retrying in 0.4 s`) reach stderr and can be
  counted; those gets are checked by exit status and by hashing the copy.
  More gets than --max-transfers are in flight at once, so the server answers
  some with RESOURCE_EXHAUSTED and a pushback; the client must retry them
  itself: the load must end with 0 failed gets.
* --tails followers, `fetchd --server URL tail app.log -n 0`, each with
  stdout to its own file. Before the load the script appends `warmup N`
  lines until every follower has printed one (so each is really following);
  during the load a writer thread appends numbered lines
  (`line 000001 ...`) at 200 lines/s, and one final line when the clients
  are done. Every follower must print exactly the lines written after its
  warmup lines: each once, in order, nothing else.
* The server's RSS (VmRSS of /proc/PID/status) before the load (server
  started, nothing connected), sampled every 0.5 s during it (and VmHWM for
  the peak), and after it: clients done, final line delivered to every tail,
  2 s settle (the tails are still connected; the RSS after they were closed
  is shown too). The check is after <= 2 x before + 64 MiB.

The binary is a copy of target/release/fetchd taken at the start (build it
first: `cargo build --release`). Data, copies, logs and the binary live in a
temp dir on /dev/shm when it exists; everything the script starts is stopped
by PID at exit (Ctrl-C and SIGTERM included) and the temp dir removed.

The command
-----------
    python3 bench/load.py                       # 500 clients, 100 tails, 60 s
    python3 bench/load.py --clients 20 --tails 5 --seconds 10     # quick look
    LOAD_CLIENTS=200 LOAD_SECONDS=30 python3 bench/load.py

Options: --clients N (500), --tails N (100), --seconds S (60), --files N
(200), --out FILE (bench/results/load.md), --seed N (14), --max-transfers N
(not passed: the server's default, 256; a small N such as 8 makes the busy
answers and the client's retries certain on any machine). The environment
variables LOAD_CLIENTS, LOAD_TAILS and LOAD_SECONDS set the defaults of the
first three (for bench/run). Python 3.11 standard library only.

How to read the result
----------------------
The markdown report (--out, also printed) has the date, the command, the
machine (CPU model, CPUs, the one-core `openssl dgst -sha256` time of 1 GiB
on tmpfs, to compare machines), and a table: gets ok / failed, gets/s and
file bytes/s over the load's wall time, get latency, how many get processes
were alive at once, the retry notices the notice-printing loops saw and the
RESOURCE_EXHAUSTED answers the server counted (from its metrics), tails
exact / total and lines per tail, the server's RSS before / peak / after
with the RSS check, and the CPU seconds of this script, of the get processes
and of the server during the load (this script should be a small share: if
it is not, the script is the bottleneck). Failed gets are listed with their
stderr (the first 20), a tail that was not exact with its first difference.

Whether the load reached the server's limit shows in two rows: the peak of
fetchd_transfers_active against --max-transfers, and the RESOURCE_EXHAUSTED
count. On a small machine 500 client processes spend most of their time
starting and waiting for a CPU, so fewer than 256 reads may be open at once
and no get is ever refused; the run then says nothing about the retries, and
`--max-transfers 8` is the run that does.

Exit status 0 when no get failed, every tail was exact, the RSS check passed
and the server exited 0 on SIGTERM; 1 otherwise; 2 when the run could not be
set up (no binary, the server did not start, the tails never followed).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILT = REPO / "target/release/fetchd"

GET_TIMEOUT_S = 120          # one get process; longer counts as failed
READY_TIMEOUT_S = 15         # `listening on` / `metrics on`
WARMUP_TIMEOUT_S = 60        # every tail printing a warmup line
FINAL_TIMEOUT_S = 30         # every tail printing the final line
SETTLE_S = 2.0               # after the load, before the "after" RSS
SAMPLE_S = 0.5               # RSS / metrics sampling period
LINES_PER_S = 200            # writer rate
NOTICE_EVERY = 10            # every tenth client loop prints notices
MIN_SIZE, MAX_SIZE = 1024, 4 << 20
MIB = 1 << 20


def log(msg: str) -> None:
    print(f"bench/load: {msg}", file=sys.stderr, flush=True)


def die(msg: str, code: int = 2):
    log(msg)
    raise SystemExit(code)


# --- processes ------------------------------------------------------------------

class Procs:
    """Every process the script starts, so that all can be stopped by PID."""

    def __init__(self):
        self.lock = threading.Lock()
        self.live: set[subprocess.Popen] = set()
        self.closing = False

    def spawn(self, cmd, **kw) -> subprocess.Popen | None:
        """Starts cmd, or returns None once the script is shutting down."""
        with self.lock:
            if self.closing:
                return None
            p = subprocess.Popen(cmd, **kw)
            self.live.add(p)
            return p

    def forget(self, p: subprocess.Popen) -> None:
        with self.lock:
            self.live.discard(p)

    def count(self) -> int:
        return len(self.live)

    def stop_all(self) -> None:
        with self.lock:
            self.closing = True
            procs = list(self.live)
        for p in procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        with self.lock:
            self.live.clear()


PROCS = Procs()


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def read_line_with(p: subprocess.Popen, prefix: str, timeout_s: float) -> str:
    """The rest of the first stdout line of p that starts with prefix."""
    found: list[str] = []

    def reader():
        for raw in p.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith(prefix):
                found.append(line[len(prefix):].strip())
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout_s)
    if not found:
        return ""
    return found[0]


# --- /proc ------------------------------------------------------------------------

def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def server_cpu_s(pid: int) -> float:
    """utime + stime of pid, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rusage_s(ru) -> float:
    return ru.ru_utime + ru.ru_stime


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def openssl_one_core(work: Path) -> float | None:
    """Seconds of `taskset -c 0 openssl dgst -sha256` over a 1 GiB file on work."""
    if not shutil.which("openssl"):
        return None
    big = work / "openssl-1GiB.bin"
    chunk = os.urandom(MIB)
    try:
        with open(big, "wb") as f:
            for _ in range(1024):
                f.write(chunk)
        taskset = ["taskset", "-c", "0"] if shutil.which("taskset") else []
        t0 = time.monotonic()
        subprocess.run(taskset + ["openssl", "dgst", "-sha256", str(big)], check=True,
                       stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        return time.monotonic() - t0
    finally:
        big.unlink(missing_ok=True)


# --- data ---------------------------------------------------------------------------

@dataclass
class DataFile:
    rel: str
    size: int
    sha256: str


def make_tree(root: Path, n: int, seed: int) -> list[DataFile]:
    """n files of 1 KiB..4 MiB (log-uniform) in a small tree, seeded content."""
    rng = random.Random(seed)
    files = []
    for i in range(n):
        top = f"d{i % 8}"
        rel = f"{top}/f{i:04d}.bin" if i % 3 else f"{top}/sub{i % 5}/f{i:04d}.bin"
        size = int(MIN_SIZE * (MAX_SIZE / MIN_SIZE) ** rng.random())
        data = rng.randbytes(size)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append(DataFile(rel, size, hashlib.sha256(data).hexdigest()))
    return files


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- the get clients --------------------------------------------------------------

@dataclass
class ClientStats:
    ok: int = 0
    failed: int = 0
    bytes_ok: int = 0
    notices: int = 0            # "retrying in" lines (notice-printing loops only)
    other_stderr: int = 0       # other stderr lines of ok gets in those loops
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def client_loop(k: int, fetchd: str, url: str, files: list[DataFile], out: Path,
                deadline: float, seed: int, stop: threading.Event, st: ClientStats) -> None:
    rng = random.Random(seed * 1_000_003 + k)
    quiet = k % NOTICE_EVERY != 0
    base = out / f"client-{k}"
    while not stop.is_set() and time.monotonic() < deadline:
        f = rng.choice(files)
        dest = base / f.rel
        cmd = [fetchd, "--server", url, "get", f.rel, "-o", str(dest), "--force"]
        if quiet:
            cmd += ["--json", "--quiet"]
        t0 = time.monotonic()
        try:
            p = PROCS.spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
        except OSError as err:          # fork/exec limits: a failure of the setup
            st.failed += 1
            st.failures.append(f"client {k}: {f.rel}: could not start fetchd get: {err}")
            time.sleep(0.1)
            continue
        if p is None:
            return
        timed_out = False
        try:
            stdout, stderr = p.communicate(timeout=GET_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            timed_out = True
            p.kill()
            stdout, stderr = p.communicate()
        finally:
            PROCS.forget(p)
        took = time.monotonic() - t0
        if stop.is_set() and p.returncode is not None and p.returncode < 0:
            return                       # killed by the shutdown, not a result
        err_text = stderr.decode(errors="replace")
        problem = ""
        if timed_out:
            problem = f"timed out after {GET_TIMEOUT_S} s"
        elif p.returncode != 0:
            problem = f"exit status {p.returncode}"
        elif quiet:
            try:
                doc = json.loads(stdout.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                doc = None
            if not isinstance(doc, dict):
                problem = f"no JSON line on stdout: {stdout[:200]!r}"
            elif doc.get("status") != "ok":
                problem = f"JSON status {doc.get('status')!r}: {doc.get('error')!r}"
            elif doc.get("sha256") != f.sha256 or doc.get("bytes") != f.size:
                problem = (f"JSON sha256/bytes {doc.get('sha256')}/{doc.get('bytes')}, "
                           f"want {f.sha256}/{f.size}")
            elif not dest.is_file() or dest.stat().st_size != f.size:
                problem = "DEST missing or of the wrong size after exit 0"
        else:
            try:
                got = sha256_file(dest)
            except OSError as err:
                got = f"unreadable ({err})"
            if got != f.sha256:
                problem = f"sha256 of DEST {got}, want {f.sha256}"
        if not quiet:
            lines = [l for l in err_text.splitlines() if l.strip()]
            st.notices += sum(1 for l in lines if "retrying in" in l)
            if not problem:
                st.other_stderr += sum(1 for l in lines if "retrying in" not in l)
        if problem:
            st.failed += 1
            st.failures.append(
                f"client {k} ({'--json --quiet' if quiet else 'notices'}): get {f.rel} "
                f"({f.size} B) after {took:.2f} s: {problem}\n"
                f"  command: {shlex.join(cmd)}\n"
                + "".join(f"  stderr: {l}\n" for l in err_text.splitlines()[-15:]))
        else:
            st.ok += 1
            st.bytes_ok += f.size
            st.latencies.append(took)
        try:
            dest.unlink()
        except FileNotFoundError:
            pass


# --- the log writer and the tails -----------------------------------------------------

class Writer(threading.Thread):
    """Appends numbered lines to the log at a steady rate until stopped, then a
    final line; `written` is every line, in order."""

    def __init__(self, path: Path, rate: int):
        super().__init__(daemon=True)
        self.path, self.rate = path, rate
        self.stop = threading.Event()
        self.written: list[bytes] = []
        self.final = b""
        self.error: BaseException | None = None

    @staticmethod
    def line(n: int, tail: str) -> bytes:
        return f"line {n:06d} {tail}\n".encode()

    def run(self):
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                t0 = time.monotonic()
                n = 0
                while not self.stop.is_set():
                    due = int((time.monotonic() - t0) * self.rate)
                    batch = []
                    while n < due:
                        n += 1
                        batch.append(self.line(n, f"{'abcdefghij' * (1 + n % 7)}"))
                    if batch:
                        os.write(fd, b"".join(batch))
                        self.written.extend(batch)
                    self.stop.wait(0.01)
                self.final = self.line(n + 1, "final")
                os.write(fd, self.final)
                self.written.append(self.final)
            finally:
                os.close(fd)
        except BaseException as err:   # reported by the main thread
            self.error = err


@dataclass
class Tail:
    idx: int
    proc: subprocess.Popen
    out: Path
    err: Path
    rc: int | None = None

    def text(self) -> bytes:
        try:
            return self.out.read_bytes()
        except OSError:
            return b""


WARMUP_RE = re.compile(rb"^warmup (\d+)$")


def check_tail(t: Tail, warmups: int, expected: list[bytes]) -> tuple[bool, str, int]:
    """(exact, first difference, numbered lines printed)."""
    data = t.text()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
        partial = b""
    else:
        partial = lines.pop() if lines else b""
    i = 0
    seen = []
    while i < len(lines) and (m := WARMUP_RE.match(lines[i])):
        seen.append(int(m.group(1)))
        i += 1
    body = [l + b"\n" for l in lines[i:]]
    if partial:
        body.append(partial)
    problems = []
    if not seen:
        problems.append("no warmup line first")
    elif seen != list(range(seen[0], warmups + 1)):
        problems.append(f"warmup lines {seen}, want {seen[0]}..{warmups}")
    if body != expected:
        for j, (got, want) in enumerate(zip(body, expected)):
            if got != want:
                problems.append(f"line {j + 1} after the warmups is {got[:60]!r}, "
                                f"want {want[:60]!r}")
                break
        else:
            if len(body) < len(expected):
                problems.append(f"ends after {len(body)} of {len(expected)} lines; "
                                f"next wanted {expected[len(body)][:60]!r}")
            else:
                problems.append(f"{len(body) - len(expected)} extra lines after the final "
                                f"one, first {body[len(expected)][:60]!r}")
        problems.append(f"{len(body)} lines printed, {len(expected)} written, "
                        f"{len(set(body))} distinct")
    if t.rc not in (0, None):
        problems.append(f"exit status {t.rc} on SIGTERM")
    return not problems, "; ".join(problems), len(body)


# --- the server ------------------------------------------------------------------------

def scrape(metrics_addr: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        mname, _, lab = head.partition("{")
        if mname != name:
            continue
        if all(f'{k}="{v}"' in lab for k, v in labels.items()):
            try:
                total += float(value)
            except ValueError:
                pass
    return total


class Sampler(threading.Thread):
    """Every SAMPLE_S: server VmRSS/VmHWM, active transfers, live get processes."""

    def __init__(self, pid: int, metrics_addr: str):
        super().__init__(daemon=True)
        self.pid, self.metrics_addr = pid, metrics_addr
        self.stop = threading.Event()
        self.rss: list[int] = []
        self.hwm = 0
        self.transfers: list[float] = []
        self.live_gets: list[int] = []

    def run(self):
        while not self.stop.is_set():
            try:
                self.rss.append(status_kib(self.pid, "VmRSS"))
                self.hwm = max(self.hwm, status_kib(self.pid, "VmHWM"))
            except (OSError, KeyError):
                pass
            text = scrape(self.metrics_addr)
            if text:
                self.transfers.append(metric_sum(text, "fetchd_transfers_active"))
            self.live_gets.append(PROCS.count())
            self.stop.wait(SAMPLE_S)


# --- report ----------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def render(r: dict) -> str:
    m = r["machine"]
    ossl = (f"{m['openssl_s']:.2f} s ({1024 / m['openssl_s']:.0f} MiB/s)"
            if m["openssl_s"] else "not measured (no openssl)")
    rows = [
        ("clients (get loops) / tails / seconds",
         f"{r['clients']} / {r['tails']} / {r['seconds']}"),
        ("files served", f"{r['files']} ({r['tree_mib']:.1f} MiB, {MIN_SIZE // 1024} KiB to "
                         f"{MAX_SIZE // MIB} MiB, log-uniform)"),
        ("gets ok", f"{r['ok']:,}"),
        ("gets failed", f"{r['failed']:,}"),
        ("gets/s", f"{r['gets_s']:,.1f}"),
        ("file bytes/s", f"{r['bytes_s'] / MIB:,.1f} MiB/s ({r['bytes_ok'] / MIB:,.0f} MiB in "
                         f"{r['wall']:.1f} s)"),
        ("get latency p50 / p99 / max (process start to exit)",
         f"{r['lat_p50']:.2f} / {r['lat_p99']:.2f} / {r['lat_max']:.2f} s"),
        ("get processes alive at once: mean / max", f"{r['live_mean']:.0f} / {r['live_max']}"),
        ("server fetchd_transfers_active (read calls until answered, refused ones too): "
         "mean / max", f"{r['xfer_mean']:.0f} / {r['xfer_max']:.0f}"),
        (f"retry notices seen (the {r['notice_loops']} loops without --json, "
         f"{r['notice_gets']:,} gets)", f"{r['notices']:,}"),
        ("server RESOURCE_EXHAUSTED answers (metrics, all gets)", f"{r['busy']:,.0f}"),
        ("tails exact / total", f"{r['tails_exact']} / {r['tails']}"),
        ("lines per tail (written after the warmup, final line included)",
         f"{r['lines']:,}"),
        ("server RSS before / peak (VmHWM) / after", f"{r['rss_before'] / 1024:.1f} / "
         f"{r['rss_peak'] / 1024:.1f} / {r['rss_after'] / 1024:.1f} MiB"),
        ("server RSS after the tails closed too", f"{r['rss_closed'] / 1024:.1f} MiB"),
        ("after <= 2 x before + 64 MiB", f"{'PASS' if r['rss_ok'] else 'FAIL'} "
         f"({r['rss_after'] / 1024:.1f} <= {r['rss_limit'] / 1024:.1f} MiB)"),
        ("server exit status on SIGTERM", f"{r['server_rc']}"),
        ("CPU seconds during the load: this script / the get processes / the server",
         f"{r['cpu']['script']:.1f} / {r['cpu']['gets']:.1f} / {r['cpu']['server']:.1f} "
         f"(of {r['machine']['nproc'] * r['wall']:.0f} CPU-seconds)"),
    ]
    md = [
        "# Load: gets and tails at once (issue 14)\n",
        f"Run of {r['date']}; `{r['command']}`; data on {r['data_on']}; fetchd "
        f"{r['git']} (binary sha256 {r['bin_sha']}); run took {r['total_s']:.0f} s.\n",
        f"Machine: {m['cpu']}, {m['nproc']} CPUs, Linux {m['kernel']}, load average "
        f"{' '.join(m['loadavg'])} at the start; one-core `openssl dgst -sha256` of 1 GiB "
        f"on tmpfs: {ossl}.\n",
        f"Every get: `fetchd --server URL get PATH -o OUT/client-K/PATH --force --json --quiet` "
        f"(every {NOTICE_EVERY}th loop without `--json --quiet`, to count notices), one "
        f"process per get, {GET_TIMEOUT_S} s timeout. Every tail: `fetchd --server URL tail "
        f"app.log -n 0` while app.log grows by {LINES_PER_S} lines/s. Server: `fetchd serve "
        f"--root DIR --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0{r['limits']}`"
        f"{' (default limits)' if not r['limits'] else ''}.\n",
        "| measure | value |", "|---|---|",
    ]
    md += [f"| {a} | {b} |" for a, b in rows]
    md.append(f"\nResult: **{'PASS' if r['passed'] else 'FAIL'}** (0 failed gets: "
              f"{'yes' if r['failed'] == 0 else 'no'}; every tail exact: "
              f"{'yes' if r['tails_exact'] == r['tails'] else 'no'}; RSS check: "
              f"{'yes' if r['rss_ok'] else 'no'}; server exit 0: "
              f"{'yes' if r['server_rc'] == 0 else 'no'}).\n")
    if r["failures"]:
        md.append(f"## Failed gets (first {len(r['failures'])} of {r['failed']})\n")
        md.append("```")
        md += [f.rstrip("\n") for f in r["failures"]]
        md.append("```\n")
    if r["tail_problems"]:
        md.append(f"## Tails that were not exact (first {len(r['tail_problems'])})\n")
        md += [f"- {p}" for p in r["tail_problems"]]
        md.append("")
    if r["other_stderr"]:
        md.append(f"Note: the notice-printing gets that succeeded wrote {r['other_stderr']} "
                  f"stderr lines other than retry notices.\n")
    return "\n".join(md)


# --- main ------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    env = os.environ
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=int(env.get("LOAD_CLIENTS", 500)))
    ap.add_argument("--tails", type=int, default=int(env.get("LOAD_TAILS", 100)))
    ap.add_argument("--seconds", type=float, default=float(env.get("LOAD_SECONDS", 60)))
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--max-transfers", type=int, default=None,
                    help="pass --max-transfers N to the server (default: its own default, 256); "
                         "a small N makes the busy answers and the client's retries happen")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/load.md")
    a = ap.parse_args()
    if a.clients < 1 or a.tails < 0 or a.seconds <= 0 or a.files < 1:
        ap.error("--clients and --files must be >= 1, --tails >= 0, --seconds > 0")
    return a


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    threading.stack_size(512 << 10)
    if not BUILT.is_file():
        die(f"{BUILT} missing: run `cargo build --release` first")

    t_start = time.monotonic()
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="fetchd-load.", dir=base))
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        return run(args, work, stop, threads, t_start)
    finally:
        stop.set()
        for t in threads:
            if isinstance(getattr(t, "stop", None), threading.Event):
                t.stop.set()             # the writer and the sampler
        PROCS.stop_all()
        for t in threads:
            t.join(timeout=5)
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path, stop: threading.Event, threads: list, t_start: float) -> int:
    fetchd = str(work / "bin/fetchd")
    (work / "bin").mkdir()
    shutil.copy2(BUILT, fetchd)
    bin_sha = sha256_file(Path(fetchd))[:16]
    git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip() or "?"
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    command = "python3 bench/load.py " + shlex.join(
        ["--clients", str(args.clients), "--tails", str(args.tails),
         "--seconds", f"{args.seconds:g}", "--files", str(args.files)]
        + ([] if args.max_transfers is None else ["--max-transfers", str(args.max_transfers)]))

    log(f"work dir {work}; timing openssl dgst -sha256 of 1 GiB on one core")
    openssl_s = openssl_one_core(work)
    if openssl_s:
        log(f"openssl: {openssl_s:.2f} s")

    root, out = work / "root", work / "out"
    root.mkdir()
    log(f"making {args.files} files")
    files = make_tree(root, args.files, args.seed)
    tree_mib = sum(f.size for f in files) / MIB
    logfile = root / "app.log"
    logfile.write_bytes(b"")
    dirs = sorted({str(Path(f.rel).parent) for f in files})
    for k in range(args.clients):
        for d in dirs:
            (out / f"client-{k}" / d).mkdir(parents=True, exist_ok=True)

    # The server.
    serve_err = work / "serve.err"
    limits = [] if args.max_transfers is None else ["--max-transfers", str(args.max_transfers)]
    server = PROCS.spawn([fetchd, "serve", "--root", str(root), "--listen", "127.0.0.1:0",
                          "--metrics-listen", "127.0.0.1:0"] + limits,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=open(serve_err, "wb"))
    addr = read_line_with(server, "listening on ", READY_TIMEOUT_S)
    maddr = read_line_with(server, "metrics on ", READY_TIMEOUT_S) if addr else ""
    if not addr or not maddr:
        die(f"the server did not print `listening on`/`metrics on` within {READY_TIMEOUT_S} s: "
            f"{serve_err.read_text(errors='replace')[-2000:]}")
    url = f"http://{addr}"
    log(f"server {server.pid} on {addr}, metrics on {maddr}")
    time.sleep(0.5)
    rss_before = status_kib(server.pid, "VmRSS")

    # The tails.
    tails: list[Tail] = []
    tdir = work / "tails"
    tdir.mkdir()
    for i in range(args.tails):
        o, e = tdir / f"tail-{i}.out", tdir / f"tail-{i}.err"
        p = PROCS.spawn([fetchd, "--server", url, "tail", "app.log", "-n", "0"],
                        stdin=subprocess.DEVNULL, stdout=open(o, "wb"), stderr=open(e, "wb"))
        tails.append(Tail(i, p, o, e))
    warmups = 0
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    next_warmup = 0.0
    with open(logfile, "ab", buffering=0) as lf:
        while True:
            waiting = [t for t in tails if b"warmup " not in t.text()]
            if not waiting:
                break
            dead = [t for t in waiting if t.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                t = (dead or waiting)[0]
                die(f"{len(waiting)} of {len(tails)} tails never printed a warmup line "
                    f"(e.g. tail {t.idx}, exit {t.proc.poll()}: "
                    f"{t.err.read_text(errors='replace')[-500:]!r})")
            if time.monotonic() >= next_warmup:
                warmups += 1
                lf.write(f"warmup {warmups}\n".encode())
                next_warmup = time.monotonic() + 1.0
            time.sleep(0.1)
    log(f"{len(tails)} tails following (after {warmups} warmup lines); "
        f"server RSS before the load {rss_before / 1024:.1f} MiB")

    # The load.
    sampler = Sampler(server.pid, maddr)
    writer = Writer(logfile, LINES_PER_S)
    stats = [ClientStats() for _ in range(args.clients)]
    cpu0 = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN),
            server_cpu_s(server.pid))
    t0 = time.monotonic()
    load_deadline = t0 + args.seconds
    sampler.start()
    writer.start()
    threads += [sampler, writer]
    clients = []
    for k in range(args.clients):
        c = threading.Thread(target=client_loop, daemon=True,
                             args=(k, fetchd, url, files, out, load_deadline, args.seed, stop,
                                   stats[k]))
        c.start()
        clients.append(c)
    threads += clients
    log(f"{args.clients} client loops started for {args.seconds:g} s")
    next_report = t0 + 10
    while alive := [c for c in clients if c.is_alive()]:
        alive[0].join(timeout=0.5)
        if time.monotonic() >= next_report:
            log(f"t={time.monotonic() - t0:.0f} s: {sum(s.ok for s in stats)} ok, "
                f"{sum(s.failed for s in stats)} failed, "
                f"{max(0, PROCS.count() - len(tails) - 1)} gets running, server RSS "
                f"{(sampler.rss or [0])[-1] / 1024:.1f} MiB")
            next_report = time.monotonic() + 10
    wall = time.monotonic() - t0
    cpu1 = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN),
            server_cpu_s(server.pid))
    cpu = {"script": rusage_s(cpu1[0]) - rusage_s(cpu0[0]),
           "gets": rusage_s(cpu1[1]) - rusage_s(cpu0[1]), "server": cpu1[2] - cpu0[2]}
    log(f"clients done after {wall:.1f} s")

    writer.stop.set()
    writer.join(timeout=10)
    if writer.error or writer.is_alive():
        die(f"the log writer failed: {writer.error!r}")
    final = writer.final
    deadline = time.monotonic() + FINAL_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(t.text().endswith(final) for t in tails):
            break
        time.sleep(0.1)
    slow = [t.idx for t in tails if not t.text().endswith(final)]
    log(f"final line delivered to {len(tails) - len(slow)} of {len(tails)} tails "
        f"after {time.monotonic() - (deadline - FINAL_TIMEOUT_S):.1f} s")
    time.sleep(SETTLE_S)
    rss_after = status_kib(server.pid, "VmRSS")
    metrics = scrape(maddr)
    sampler.stop.set()
    sampler.join(timeout=5)

    for t in tails:
        if t.proc.poll() is None:
            os.kill(t.proc.pid, signal.SIGTERM)
    for t in tails:
        try:
            t.rc = t.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(t.proc.pid, signal.SIGKILL)
            t.rc = t.proc.wait()
        PROCS.forget(t.proc)
    time.sleep(1.0)
    rss_closed = status_kib(server.pid, "VmRSS")
    rss_peak = max(sampler.hwm, status_kib(server.pid, "VmHWM"))

    os.kill(server.pid, signal.SIGTERM)
    try:
        server_rc = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server_rc = "did not exit within 30 s of SIGTERM"
    PROCS.forget(server)

    # Results.
    expected = writer.written
    tails_exact, tail_problems = 0, []
    lines_seen = []
    for t in tails:
        exact, why, n = check_tail(t, warmups, expected)
        lines_seen.append(n)
        if exact:
            tails_exact += 1
        elif len(tail_problems) < 20:
            errs = t.err.read_text(errors="replace").strip().splitlines()
            tail_problems.append(f"tail {t.idx}: {why}"
                                 + (f"; stderr: {' | '.join(errs[-5:])}" if errs else ""))
    ok = sum(s.ok for s in stats)
    failed = sum(s.failed for s in stats)
    bytes_ok = sum(s.bytes_ok for s in stats)
    lat = [x for s in stats for x in s.latencies]
    failures = [f for s in stats for f in s.failures][:20]
    live = [max(0, n - len(tails) - 1) for n in sampler.live_gets]
    rss_limit = 2 * rss_before + 64 * 1024
    rss_ok = rss_after <= rss_limit
    passed = failed == 0 and tails_exact == len(tails) and rss_ok and server_rc == 0
    r = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command, "git": git, "bin_sha": bin_sha,
        "data_on": "tmpfs (/dev/shm)" if str(work).startswith("/dev/shm") else str(work.parent),
        "machine": {"cpu": cpu_model(), "nproc": os.cpu_count(), "kernel": platform.release(),
                    "loadavg": loadavg, "openssl_s": openssl_s},
        "clients": args.clients, "tails": len(tails), "seconds": f"{args.seconds:g}",
        "files": args.files, "tree_mib": tree_mib,
        "ok": ok, "failed": failed, "bytes_ok": bytes_ok, "wall": wall,
        "gets_s": ok / wall, "bytes_s": bytes_ok / wall,
        "lat_p50": pct(lat, 0.5), "lat_p99": pct(lat, 0.99), "lat_max": max(lat, default=0),
        "live_mean": statistics.fmean(live) if live else 0, "live_max": max(live, default=0),
        "xfer_mean": statistics.fmean(sampler.transfers) if sampler.transfers else 0,
        "xfer_max": max(sampler.transfers, default=0),
        "notice_loops": len(range(0, args.clients, NOTICE_EVERY)),
        "notice_gets": sum(stats[k].ok + stats[k].failed
                           for k in range(0, args.clients, NOTICE_EVERY)),
        "notices": sum(s.notices for s in stats),
        "other_stderr": sum(s.other_stderr for s in stats),
        "busy": metric_sum(metrics, "fetchd_calls_total", code="RESOURCE_EXHAUSTED"),
        "tails_exact": tails_exact, "lines": len(expected), "tail_problems": tail_problems,
        "lines_min": min(lines_seen, default=0),
        "rss_before": rss_before, "rss_peak": rss_peak, "rss_after": rss_after,
        "rss_closed": rss_closed, "rss_limit": rss_limit, "rss_ok": rss_ok,
        "server_rc": server_rc, "failures": failures, "passed": passed, "cpu": cpu,
        "limits": "".join(" " + a for a in limits),
        "total_s": time.monotonic() - t_start,
    }
    if server_rc != 0:
        log(f"server exit {server_rc}; its stderr ends: "
            f"{serve_err.read_text(errors='replace')[-1500:]}")
    md = render(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md + "\n")
    print(md)
    log(f"wrote {args.out}; {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
