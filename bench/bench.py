#!/usr/bin/env python3
"""fetchd side-by-side benchmark harness (run it through `bash bench/run`).

bench/run installs the peers, builds the release binary and then runs this
file with bench/.venv's Python. It needs only the standard library, except
matplotlib for the chart. Settings come from the environment (see bench/run):
BENCH_SIZE_MIB, BENCH_PAIRS, BENCH_ONLY, BENCH_SLOW_RATE, BENCH_OUT.

What it does:
  * makes a random file DATA/big.bin in a temp work dir (on /dev/shm if any);
  * starts `fetchd serve`, nginx (private config, sendfile on, 1 worker) and an
    rsync daemon (module `data`, read only) on 127.0.0.1, each on its own port;
  * W1 verified transfer   fetchd get -o - > /dev/null  vs  curl | openssl dgst
    W2 download to tmpfs   fetchd get -o DEST  vs  rsync --whole-file  vs  curl -o
    W3 slow reader, once   fetchd get -o - | pv -q -L RATE > /dev/null
    Paired workloads: one warm-up of each, then BENCH_PAIRS rounds of
    fetchd, peer(s) in turn; the ratio fetchd/peer is taken per round.
  * per run: wall (perf_counter around the client), client CPU (RUSAGE_CHILDREN
    delta; covers whole pipelines), client peak RSS (/usr/bin/time %M around
    each pipeline stage, summed), server CPU (utime+stime+cutime+cstime from
    /proc of the server and its child processes) and server peak RSS (VmHWM
    after `echo 5 > clear_refs`). The rsync daemon forks one child per
    connection that is gone before it can be read, so its peak RSS is the
    maximum over the whole session, from /usr/bin/time wrapped around it;
  * writes BENCH_OUT/results.md, results.json and ratios.png.
Nothing runs in parallel with a measured run. Every process started is
stopped by PID at exit (also on Ctrl-C / SIGTERM) and the work dir removed.
"""
import atexit, datetime, hashlib, os, platform, pwd, grp, re, resource, shutil
import signal, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "target/release/fetchd"
CLK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
SIZE = int(os.environ.get("BENCH_SIZE_MIB", "1024")) << 20
PAIRS = int(os.environ.get("BENCH_PAIRS", "11"))
ONLY = {w.strip().upper() for w in os.environ.get("BENCH_ONLY", "W1,W2,W3").split(",") if w.strip()}
SLOW_RATE = os.environ.get("BENCH_SLOW_RATE", "20m")
OUT = Path(os.environ.get("BENCH_OUT", REPO / "bench/results"))
TARGETS = {("W1", "curl | openssl"): 0.75, ("W2", "rsync"): 1.0}

started = []      # [(name, Popen)] in start order; stopped in reverse at exit
current = None    # the client pipeline running right now, if any
work = None


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def die(msg):
    raise SystemExit(f"bench: FAILED: {msg}")


# ---------------------------------------------------------------- /proc ---
def children(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


def cpu_seconds(pid):
    """utime+stime+cutime+cstime of one process, in seconds (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return sum(int(x) for x in fields[11:15]) / CLK


def hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def clear_hwm(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        die(f"cannot reset the peak RSS of pid {pid} ({e}); run as root or as the server's owner")


# ------------------------------------------------------------- servers ---
class Server:
    """A server to measure: `pid` plus its child processes (nginx workers,
    the rsync daemon's per-connection children, reaped into cutime)."""

    def __init__(self, name, pid, url, forks=False):
        self.name, self.pid, self.url, self.forks = name, pid, url, forks

    def procs(self):
        return [self.pid] + children(self.pid)

    def cpu(self):
        return sum(cpu_seconds(p) for p in self.procs())

    def settle(self):
        """Wait (bounded) until per-connection children are reaped."""
        deadline = time.monotonic() + 10
        while self.forks and children(self.pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def clear_hwm(self):
        if not self.forks:
            for p in self.procs():
                clear_hwm(p)

    def hwm(self):
        return None if self.forks else sum(hwm_kib(p) for p in self.procs())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(name, argv, **kw):
    log = open(work / f"{name}.log", "wb")
    out = kw.pop("stdout", log)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                         start_new_session=True, **kw)
    started.append((name, p))
    return p


def wait_ready(name, proc, port, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            die(f"{name} exited with {proc.returncode} at start:\n{tail(work / f'{name}.log')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    die(f"{name} did not accept connections on port {port} within {timeout} s")


def tail(path, n=15):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def start_fetchd(data):
    out = work / "fetchd.stdout"
    p = spawn("fetchd", [str(BIN), "serve", "--root", str(data), "--listen", "127.0.0.1:0"],
              stdout=open(out, "wb"))
    deadline, addr = time.monotonic() + 15, None
    while addr is None and time.monotonic() < deadline:
        for line in out.read_text().splitlines():
            if line.startswith("listening on "):
                addr = line.split()[-1]
        if addr is None:
            if p.poll() is not None:
                die(f"fetchd serve exited with {p.returncode}:\n{tail(work / 'fetchd.log')}")
            time.sleep(0.02)
    if addr is None:
        die("fetchd serve printed no `listening on` line within 15 s")
    wait_ready("fetchd", p, int(addr.rsplit(":", 1)[1]))
    return Server("fetchd", p.pid, f"http://{addr}")


def start_nginx(data):
    port, tmp = free_port(), work / "nginx-tmp"
    tmp.mkdir()
    user = ""
    if os.geteuid() == 0:   # keep the worker as the invoking user, like the other servers
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    conf = work / "nginx.conf"
    conf.write_text(f"""{user}
daemon off;
master_process on;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/client;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {data};
    }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    p = spawn("nginx", [nginx, "-p", str(work), "-e", f"{work}/nginx-error.log", "-c", str(conf)])
    wait_ready("nginx", p, port)
    return Server("nginx", p.pid, f"http://127.0.0.1:{port}")


def start_rsyncd(data):
    port, conf = free_port(), work / "rsyncd.conf"
    conf.write_text(f"""use chroot = no
log file = {work}/rsyncd-transfers.log
uid = {os.getuid()}
gid = {os.getgid()}
[data]
    path = {data}
    read only = yes
    use chroot = no
""")
    # /usr/bin/time around the daemon: the max RSS of it and every child it forked.
    p = spawn("rsyncd", ["/usr/bin/time", "-f", "%M", "-o", str(work / "rsyncd.maxrss"),
                         "rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}"])
    wait_ready("rsyncd", p, port)
    kids = children(p.pid)
    if len(kids) != 1:
        die(f"cannot find the rsync daemon under /usr/bin/time (pid {p.pid})")
    return Server("rsyncd", kids[0], f"rsync://127.0.0.1:{port}/data", forks=True)


def stop(name, proc):
    if proc.poll() is not None:
        return
    target = children(proc.pid) if name == "rsyncd" else [proc.pid]   # time(1) writes on exit
    for pid in target or [proc.pid]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # its own session: the group id is its PID
        proc.wait()


def cleanup():
    global current
    if current is not None and current.poll() is None:
        os.killpg(current.pid, signal.SIGKILL)
        current.wait()
    while started:
        stop(*started.pop())
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)


def on_signal(signum, _frame):
    raise SystemExit(f"bench: interrupted by signal {signum}; cleaning up")


# ---------------------------------------------------------------- runs ---
def timed(stage):
    """A pipeline stage wrapped so its peak RSS lands in WORK/rss/STAGE."""
    return f"/usr/bin/time -f %M -o {work}/rss/{stage}"


def run(cmd, server, size=SIZE):
    """Runs one client pipeline (nothing else runs meanwhile) and measures it."""
    global current
    rss_dir = work / "rss"
    shutil.rmtree(rss_dir, ignore_errors=True)
    rss_dir.mkdir()
    server.settle()
    server.clear_hwm()
    s0, r0 = server.cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(work / "client.err", "wb") as err:
        t0 = time.perf_counter()
        current = subprocess.Popen(["bash", "-o", "pipefail", "-c", cmd], stdin=subprocess.DEVNULL,
                                   stderr=err, start_new_session=True)
        rc = current.wait()
        wall = time.perf_counter() - t0
    current = None
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server.settle()
    s1 = server.cpu()
    if rc != 0:
        die(f"exit status {rc} from:\n  {cmd}\n{tail(work / 'client.err')}\n"
            f"--- {server.name} log:\n{tail(work / (server.name + '.log'))}")
    stages = {f.name: int(f.read_text().split()[-1]) for f in rss_dir.iterdir()}
    return {"wall_s": wall,
            "client_user_s": r1.ru_utime - r0.ru_utime, "client_sys_s": r1.ru_stime - r0.ru_stime,
            "client_cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
            "client_rss_kib": stages, "server_cpu_s": s1 - s0,
            "server_cpu_s_per_gib": (s1 - s0) / (size / GIB), "server_hwm_kib": server.hwm()}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def shell_out(cmd):
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
    if r.returncode != 0:
        die(f"exit status {r.returncode} from:\n  {cmd}\n{r.stderr[-2000:]}")
    return r.stdout


def paired(wid, title, contenders, prepare, verify):
    """contenders: [(label, cmd, server)], fetchd first. One warm-up of each,
    then PAIRS rounds of all in turn. verify(label, measured) checks output."""
    say(f"{wid}: {title}: warm-up")
    runs = {label: [] for label, _, _ in contenders}
    warm = {}
    for label, cmd, server in contenders:
        prepare()
        warm[label] = run(cmd, server)
        verify(label, False)
    for i in range(PAIRS):
        line = []
        for label, cmd, server in contenders:
            prepare()
            r = run(cmd, server)
            verify(label, True)
            runs[label].append(r)
            line.append(f"{label} {r['wall_s']:.3f} s")
        fd = runs[contenders[0][0]][-1]["wall_s"]
        ratios = [f"{fd / runs[l][-1]['wall_s']:.2f}" for l, _, _ in contenders[1:]]
        say(f"{wid} {i + 1:2}/{PAIRS}  " + "  ".join(line) + "  ratio " + " ".join(ratios))
    return {"title": title, "warmup": warm, "runs": runs,
            "commands": {l: c for l, c, _ in contenders}}


def workloads(fetchd, nginx, rsyncd, digest):
    res = {}
    fget = f"{BIN} --server {fetchd.url} get big.bin"
    url = f"{nginx.url}/big.bin"
    if "W1" in ONLY:
        # Untimed check that both sides of W1 really see the right bytes.
        for cmd, field in ((f"{fget} -o - --quiet | sha256sum", 0),
                           (f"curl -sf {url} | openssl dgst -sha256", -1)):
            if shell_out(cmd).split()[field] != digest:
                die(f"wrong digest from: {cmd}")
        res["W1"] = paired("W1", "verified transfer to a discard", [
            ("fetchd", f"{timed('fetchd')} {fget} -o - --quiet > /dev/null", fetchd),
            ("curl | openssl", f"{timed('curl')} curl -sf {url} | "
                               f"{timed('openssl')} openssl dgst -sha256 > /dev/null", nginx),
        ], prepare=lambda: None, verify=lambda label, measured: None)
    if "W2" in ONLY:
        dest_dir = work / "dest"
        dest_dir.mkdir()
        dest = dest_dir / "big.bin"

        def prepare():   # DEST, DEST.part and rsync's temp files go before every run
            for f in dest_dir.iterdir():
                f.unlink()

        def verify(label, measured):   # every fetchd copy, each peer's warm-up copy
            if (label == "fetchd" or not measured) and sha256_file(dest) != digest:
                die(f"W2: the copy written by {label} differs from the source")
        res["W2"] = paired("W2", "verified download to a file on tmpfs", [
            ("fetchd", f"{timed('fetchd')} {fget} -o {dest} --quiet", fetchd),
            ("rsync", f"{timed('rsync')} rsync --whole-file {rsyncd.url}/big.bin {dest}", rsyncd),
            ("curl -o", f"{timed('curl')} curl -sf -o {dest} {url}", nginx),
        ], prepare, verify)
        prepare()
    if "W3" in ONLY:
        say(f"W3: slow reader at {SLOW_RATE}/s, once (about {SIZE / (1 << 20) / rate_mib(SLOW_RATE):.1f} s)")
        cmd = f"{timed('fetchd')} {fget} -o - --quiet | pv -q -L {SLOW_RATE} > /dev/null"
        res["W3"] = {"title": f"slow reader (pv -L {SLOW_RATE})", "commands": {"fetchd": cmd},
                     "runs": {"fetchd": [run(cmd, fetchd)]}}
    return res


def rate_mib(rate):
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1 << 20}
    r = rate.strip().lower()
    return float(r[:-1]) * units[r[-1]] if r[-1] in units else float(r) / (1 << 20)


def main():
    global work
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(cleanup)
    if PAIRS < 11:
        say(f"warning: BENCH_PAIRS={PAIRS}; the issue asks for at least 11 pairs")
    if not ONLY <= {"W1", "W2", "W3"}:
        die(f"BENCH_ONLY={os.environ['BENCH_ONLY']}: known workloads are W1, W2, W3")
    if not BIN.exists():
        die(f"{BIN} missing: run `cargo build --release` (bench/run does)")
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="fetchd-bench.", dir=base))
    data = work / "data"
    data.mkdir()
    say(f"work dir {work}; writing {SIZE >> 20} MiB of random data")
    h = hashlib.sha256()
    with open("/dev/urandom", "rb") as src, open(data / "big.bin", "wb") as dst:
        left = SIZE
        while left:
            chunk = src.read(min(left, 1 << 22))
            h.update(chunk)
            dst.write(chunk)
            left -= len(chunk)
    digest = h.hexdigest()
    meta = machine_meta(work)
    fetchd, nginx, rsyncd = start_fetchd(data), start_nginx(data), start_rsyncd(data)
    say(f"servers: fetchd {fetchd.url}, nginx {nginx.url}, rsync {rsyncd.url}")
    res = workloads(fetchd, nginx, rsyncd, digest)
    while started:   # stop the servers now: the rsync daemon's peak RSS is known at its exit
        stop(*started.pop())
    maxrss = (work / "rsyncd.maxrss").read_text().split() if (work / "rsyncd.maxrss").exists() else []
    meta["rsyncd_session_max_rss_kib"] = int(maxrss[-1]) if maxrss and maxrss[-1].isdigit() else None
    import report   # bench/report.py: tables and chart
    report.write(OUT, meta, res, TARGETS)


def machine_meta(work):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    env = " ".join(f"{k}={os.environ[k]}" for k in sorted(os.environ) if k.startswith("BENCH_"))
    def ver(cmd, pattern):   # e.g. "rsync  version 3.2.7  protocol version 32" -> "rsync 3.2.7"
        m = re.search(pattern, shell_out(cmd + " 2>&1"))
        return f"{cmd.split()[0].rsplit('/', 1)[-1]} {m.group(1)}" if m else "?"
    rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip() or "?"
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "kernel": platform.release(), "cpu": cpu, "nproc": os.cpu_count(),
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
            "command": (env + " " if env else "") + "bash bench/run",
            "size_bytes": SIZE, "pairs": PAIRS, "data_on": "tmpfs (/dev/shm)" if str(work).startswith("/dev/shm") else str(work.parent),
            "fetchd_git": rev,
            "versions": {"nginx": ver(f"{shutil.which('nginx') or '/usr/sbin/nginx'} -v", r"nginx/(\S+)"),
                         "rsync": ver("rsync --version", r"version (\S+)"),
                         "curl": ver("curl --version", r"curl (\S+)"),
                         "openssl": ver("openssl version", r"OpenSSL (\S+)"),
                         "pv": ver("pv --version", r"pv (\S+)")}}


if __name__ == "__main__":
    main()
