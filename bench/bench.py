#!/usr/bin/env python3
"""fetchd side-by-side benchmark harness (run it through `bash bench/run`).

bench/run installs the peers, builds the release binary and then runs this
file with bench/.venv's Python. It needs only the standard library, except
matplotlib for the chart. Settings come from the environment (see bench/run):
BENCH_SIZE_MIB, BENCH_PAIRS, BENCH_BULK_PAIRS, BENCH_SMALL_FILES,
BENCH_LARGE_FILES, BENCH_ONLY, BENCH_SLOW_RATE, BENCH_OUT.

What it does:
  * makes a random file DATA/big.bin in a temp work dir (on /dev/shm if any),
    when a W workload is selected;
  * starts `fetchd serve`, nginx (private config, sendfile on, 1 worker) and an
    rsync daemon (modules `data`, `small`, `large`, read only) on 127.0.0.1,
    each on its own port;
  * W1 verified transfer   fetchd get -o - > /dev/null  vs  curl | openssl dgst
    W2 download to tmpfs   fetchd get -o DEST  vs  rsync --whole-file  vs  curl -o
    W3 slow reader, once   fetchd get -o - | pv -q -L RATE > /dev/null
    Paired workloads: one warm-up of each, then BENCH_PAIRS rounds of
    fetchd, peer(s) in turn; the ratio fetchd/peer is taken per round.
  * bulk workloads (issue 5), after W1-W3 and with big.bin removed first:
    DATA/bulk-small (10,000 random files of 4 KiB in 10 x 5 folders) and
    DATA/bulk-large (100 random files of 10 MiB in 4 folders), each also the
    root of a `fetchd serve` of its own (so the fetchd command is `get -r /`)
    and an rsync module (`small`, `large`); nginx serves them below DATA.
    B1 fresh tree of small files  fetchd get -r / (default -j, and -j 32)
                                  vs rsync -a, curl --parallel, aria2c -i
    B2 fresh tree of large files  fetchd get -r /  vs the same three
    B3 no-change rerun of B1      fetchd get -r /  vs rsync -a, each over the
                                  complete tree it wrote itself
    DEST is removed before every B1/B2 run, outside the timed region. Every
    tree a tool writes in a warm-up, and every tree fetchd writes, is compared
    with the source (names, folders, sizes, sha256). B1 and B2 run
    BENCH_BULK_PAIRS rounds, B3 (short) BENCH_PAIRS rounds.
  * T1 (issue 7), one large file over TLS, with big.bin still there: a
    second `fetchd serve` with a certificate (CA and server certificate for
    127.0.0.1 made by openssl in WORK/tls) and a second nginx with TLS on the
    same data (default TLS settings, no kTLS);
    T1 verified transfer over TLS   fetchd get -o - over https  vs  fetchd
                                    over plain http  vs  curl https | openssl dgst
  * upload workload (issue 6), on the same DATA/big.bin, before it is removed:
    U1 upload to tmpfs     fetchd put big.bin (to a second `fetchd serve
                           --allow-upload` whose root is WORK/upload/fetchd)
                           vs fetchd get of the same file (the download it
                           should match; big.bin gets a new mtime before every
                           run, so the server's digest cache misses and both
                           sides hash, as in an upload), rsync --whole-file
                           pushing to a writable rsync module, curl -T (HTTP
                           PUT) to nginx with dav_methods PUT. Every target is removed before
                           every run (not timed); every fetchd copy and each
                           peer's warm-up copy is checked by sha256.
  * C1 (issue 8), only as BENCH_ONLY=C1: `get -o - --compress none|gzip|zstd`
    of a generated access log and of random data (BENCH_C1_MIB each), wire
    bytes from fetchd's /metrics; writes BENCH_OUT/compression.md and .json
    (see compression_workload);
  * per run: wall (perf_counter around the client), client CPU (RUSAGE_CHILDREN
    delta; covers whole pipelines), client peak RSS (/usr/bin/time %M around
    each pipeline stage, summed), server CPU (utime+stime+cutime+cstime from
    /proc of the server and its child processes) and server peak RSS (VmHWM
    after `echo 5 > clear_refs`). The rsync daemon forks one child per
    connection that is gone before it can be read, so its peak RSS is the
    maximum over the whole session, from /usr/bin/time wrapped around it;
  * writes BENCH_OUT/results.md, results.json and ratios.png. A run of only
    some groups of workloads (W, B, U) keeps the other groups from the
    results.json that is already there (see bench/report.py).
Nothing runs in parallel with a measured run. A client that exits non-zero
is recorded (shown in results.md) and its warm-up or round repeated, at most
BENCH_MAX_FAILURES times per workload; a wrong output (digest, tree) stops the
run, and what finished before a stop is still reported. Servers and clients
run a copy of target/release/fetchd taken at the start. Every process started
is stopped by PID at exit (also on Ctrl-C / SIGTERM) and the work dir removed.
"""
import atexit, datetime, hashlib, json, os, platform, pwd, grp, re, resource, shutil
import signal, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILT = REPO / "target/release/fetchd"
BIN = BUILT   # main() points this at a copy taken at the start (see there)
CLK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
SIZE = int(os.environ.get("BENCH_SIZE_MIB", "1024")) << 20
PAIRS = int(os.environ.get("BENCH_PAIRS", "11"))
BULK_PAIRS = int(os.environ.get("BENCH_BULK_PAIRS", "7"))
KNOWN = ["W1", "W2", "W3", "B1", "B2", "B3", "U1", "T1"]
ONLY = {w.strip().upper() for w in os.environ.get("BENCH_ONLY", ",".join(KNOWN)).split(",") if w.strip()}
SLOW_RATE = os.environ.get("BENCH_SLOW_RATE", "20m")
OUT = Path(os.environ.get("BENCH_OUT", REPO / "bench/results"))
MAX_FAILURES = int(os.environ.get("BENCH_MAX_FAILURES", "3"))   # failed runs repeated per workload
# fetchd/peer ratio of medians to reach, per (workload, peer label)
TARGETS = {("W1", "curl | openssl"): 0.75, ("W2", "rsync"): 1.0,
           ("B1", "rsync"): 0.7, ("B2", "curl --parallel"): 1.0}
B3_TARGET_S = 0.15          # median wall of fetchd's no-change rerun of B1
EXTRA_JOBS = 32             # B1 also runs fetchd with -j EXTRA_JOBS, as a row of its own
# The bulk trees: (files, bytes per file, leaf folders)
SMALL = (int(os.environ.get("BENCH_SMALL_FILES", "10000")), 4 << 10,
         [f"d{a:02}/s{b}" for a in range(10) for b in range(5)])
LARGE = (int(os.environ.get("BENCH_LARGE_FILES", "100")), 10 << 20, [f"p{a}" for a in range(4)])
ARIA2_OPTS = ("-j 16 --allow-overwrite=true --auto-file-renaming=false "
              "--console-log-level=warn --summary-interval=0 --file-allocation=none")

started = []      # [(name, Popen)] in start order; stopped in reverse at exit
current = None    # the client pipeline running right now, if any
work = None


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Failed(SystemExit):
    """A run or check failed: the workloads finished before it are still reported."""


class RunFailed(Failed):
    """A measured client command exited non-zero (paired() may run it again)."""


def die(msg):
    raise Failed(f"bench: FAILED: {msg}")


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


def gist(path, head=12, end=6):
    """A long stderr in short: runs of equal lines collapsed (with a count),
    the first `head` and the last `end` of what is left."""
    try:
        return gist_text(Path(path).read_text(errors="replace"), head, end)
    except FileNotFoundError:
        return ""


def gist_text(text, head=12, end=6):
    lines, out = text.splitlines(), []
    for line in lines:
        if out and out[-1][0] == line:
            out[-1][1] += 1
        else:
            out.append([line, 1])
    shown = [f"{l}  [x{n}]" if n > 1 else l for l, n in out]
    if len(shown) > head + end:
        shown = shown[:head] + [f"... {len(shown) - head - end} more distinct lines ..."] + shown[-end:]
    return f"({len(lines)} lines on stderr)\n" + "\n".join(shown)


def tail(path, n=15):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def start_fetchd(data, name="fetchd", extra=(), scheme="http"):
    out = work / f"{name}.stdout"
    p = spawn(name, [str(BIN), "serve", "--root", str(data), "--listen", "127.0.0.1:0", *extra],
              stdout=open(out, "wb"))
    deadline, addr = time.monotonic() + 15, None
    while addr is None and time.monotonic() < deadline:
        for line in out.read_text().splitlines():
            if line.startswith("listening on "):
                addr = line.split()[-1]
        if addr is None:
            if p.poll() is not None:
                die(f"{name} serve exited with {p.returncode}:\n{tail(work / f'{name}.log')}")
            time.sleep(0.02)
    if addr is None:
        die(f"{name} serve printed no `listening on` line within 15 s")
    wait_ready(name, p, int(addr.rsplit(":", 1)[1]))
    return Server(name, p.pid, f"{scheme}://{addr}")


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
        location /upload/ {{   # U1: HTTP PUT into WORK/upload/nginx/upload/
            root {work}/upload/nginx;
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
        }}
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
[small]
    path = {data}/bulk-small
    read only = yes
    use chroot = no
[large]
    path = {data}/bulk-large
    read only = yes
    use chroot = no
[upload]
    path = {work}/upload/rsync
    read only = no
    use chroot = no
""")
    # /usr/bin/time around the daemon: the max RSS of it and every child it forked.
    p = spawn("rsyncd", ["/usr/bin/time", "-f", "%M", "-o", str(work / "rsyncd.maxrss"),
                         "rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}"])
    wait_ready("rsyncd", p, port)
    kids = children(p.pid)
    if len(kids) != 1:
        die(f"cannot find the rsync daemon under /usr/bin/time (pid {p.pid})")
    srv = Server("rsyncd", kids[0], f"rsync://127.0.0.1:{port}/data", forks=True)
    srv.base = f"rsync://127.0.0.1:{port}"   # + /MODULE
    return srv


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
    with open(work / "client.err", "wb") as err, open(work / "client.out", "wb") as out:
        t0 = time.perf_counter()
        current = subprocess.Popen(["bash", "-o", "pipefail", "-c", cmd], stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=err, start_new_session=True)
        rc = current.wait()
        wall = time.perf_counter() - t0
    current = None
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server.settle()
    s1 = server.cpu()
    if rc != 0:
        raise RunFailed(f"bench: FAILED: exit status {rc} from:\n  {cmd}\n{gist(work / 'client.err')}\n"
            f"--- its stdout:\n{tail(work / 'client.out')}\n"
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
        die(f"exit status {r.returncode} from:\n  {cmd}\n{gist_text(r.stderr)}")
    return r.stdout


def paired(wid, title, contenders, prepare, verify, pairs=PAIRS, size=SIZE):
    """contenders: [(label, cmd, server)], fetchd first. One warm-up of each,
    then `pairs` rounds of all in turn. verify(label, measured) checks output.
    size: bytes served per run (for server CPU per GiB).

    A run that exits non-zero is recorded in "failures" and its warm-up or
    whole round is done again (so the pairs stay pairs), at most
    MAX_FAILURES times per workload; a wrong output is never retried."""
    say(f"{wid}: {title}: warm-up")
    runs = {label: [] for label, _, _ in contenders}
    warm, failures = {}, []

    def failed(when, label, err):
        failures.append({"when": when, "label": label, "error": str(err)})
        if len(failures) > MAX_FAILURES:
            raise Failed(f"{err}\n(bench: {len(failures)} failed runs in {wid}, "
                         f"more than BENCH_MAX_FAILURES={MAX_FAILURES})")
        say(f"{wid}: {label} FAILED in the {when} ({len(failures)} of at most {MAX_FAILURES}); again:"
            f"\n{str(err)[:2000]}")
    for label, cmd, server in contenders:
        while label not in warm:
            prepare()
            try:
                warm[label] = run(cmd, server, size)
            except RunFailed as err:
                failed("warm-up", label, err)
                continue
            verify(label, False)
    i = 0
    while i < pairs:
        line, got = [], {}
        for label, cmd, server in contenders:
            prepare()
            try:
                got[label] = run(cmd, server, size)
            except RunFailed as err:
                failed(f"round {i + 1}", label, err)
                break
            verify(label, True)
            line.append(f"{label} {got[label]['wall_s']:.3f} s")
        if len(got) < len(contenders):
            continue
        for label in got:
            runs[label].append(got[label])
        i += 1
        fd = got[contenders[0][0]]["wall_s"]
        ratios = [f"{fd / got[l]['wall_s']:.2f}" for l, _, _ in contenders[1:]]
        say(f"{wid} {i:2}/{pairs}  " + "  ".join(line) + "  ratio " + " ".join(ratios))
    return {"title": title, "warmup": warm, "runs": runs, "failures": failures,
            "commands": {l: c for l, c, _ in contenders}}


def workloads(fetchd, nginx, rsyncd, digest, res):
    """Runs the selected W workloads, adding each to res as it finishes."""
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


# ----------------------------------------------------------------- TLS ---
def make_certs():
    """A CA and a server certificate for 127.0.0.1 and localhost signed by
    it (ECDSA P-256, as a typical deployment would use), in WORK/tls."""
    d = work / "tls"
    d.mkdir()
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    shell_out(f"cd {d} && openssl req -x509 {ec} -keyout ca.key -out ca.pem -days 2 "
              f"-subj /CN=fetchd-bench-ca 2>&1 && "
              f"openssl req {ec} -keyout server.key -out server.csr -subj /CN=localhost 2>&1 && "
              f"openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
              f"-days 2 -extfile ext -out server.pem 2>&1")
    return d


def start_nginx_tls(data, certs):
    """nginx serving DATA over TLS (its own config, like start_nginx's)."""
    port, tmp = free_port(), work / "nginx-tls-tmp"
    tmp.mkdir()
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    conf = work / "nginx-tls.conf"
    conf.write_text(f"""{user}
daemon off;
master_process on;
worker_processes 1;
pid {work}/nginx-tls.pid;
error_log {work}/nginx-tls-error.log warn;
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
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {certs}/server.pem;
        ssl_certificate_key {certs}/server.key;
        ssl_protocols TLSv1.3;
        root {data};
    }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    p = spawn("nginx-tls", [nginx, "-p", str(work), "-e", f"{work}/nginx-tls-error.log", "-c", str(conf)])
    wait_ready("nginx-tls", p, port)
    return Server("nginx-tls", p.pid, f"https://127.0.0.1:{port}")


def tls_workloads(data, fetchd, digest, res):
    """T1: the W1 transfer over TLS, beside fetchd in plain text and beside
    nginx with TLS. Both TLS sides negotiate TLS 1.3 (fetchd: rustls with
    ring; nginx and curl: OpenSSL)."""
    certs = make_certs()
    ca = certs / "ca.pem"
    fetchd_tls = start_fetchd(data, "fetchd-tls", ["--tls-cert", str(certs / "server.pem"),
                                                   "--tls-key", str(certs / "server.key")], "https")
    nginx_tls = start_nginx_tls(data, certs)
    say(f"T1 servers: fetchd {fetchd_tls.url}, nginx {nginx_tls.url}")
    fget_tls = f"{BIN} --server {fetchd_tls.url} --ca-cert {ca} get big.bin"
    fget = f"{BIN} --server {fetchd.url} get big.bin"
    url = f"{nginx_tls.url}/big.bin"
    for cmd, field in ((f"{fget_tls} -o - --quiet | sha256sum", 0),
                       (f"curl -sf --cacert {ca} {url} | openssl dgst -sha256", -1)):
        if shell_out(cmd).split()[field] != digest:
            die(f"wrong digest from: {cmd}")
    res["T1"] = paired("T1", "verified transfer over TLS to a discard (fetchd: https)", [
        # "fetchd" (the row the ratios are taken from) is fetchd over https.
        ("fetchd", f"{timed('fetchd')} {fget_tls} -o - --quiet > /dev/null", fetchd_tls),
        ("fetchd plain http", f"{timed('fetchd')} {fget} -o - --quiet > /dev/null", fetchd),
        ("curl https | openssl", f"{timed('curl')} curl -sf --cacert {ca} {url} | "
                                 f"{timed('openssl')} openssl dgst -sha256 > /dev/null", nginx_tls),
    ], prepare=lambda: None, verify=lambda label, measured: None)


# -------------------------------------------------------------- upload ---
def upload_workload(data, fetchd, nginx, rsyncd, digest, res):
    """U1: the 1 GiB file uploaded to tmpfs, fetchd put vs fetchd get of the
    same file, an rsync push to the daemon and an HTTP PUT to nginx."""
    up = work / "upload"
    dest = {"fetchd": up / "fetchd/big.bin", "fetchd get, cold": up / "get/big.bin",
            "rsync": up / "rsync/big.bin", "curl -T": up / "nginx/upload/big.bin"}
    for path in dest.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    fup = start_fetchd(up / "fetchd", "fetchd-upload", ["--allow-upload"])
    say(f"U1: fetchd-upload {fup.url} (root {up / 'fetchd'})")
    src = data / "big.bin"

    def prepare():   # no target (and no temp or partial file) before any run
        for path in dest.values():
            for f in path.parent.iterdir():
                f.unlink()
        # A new mtime (a day back, so not "racy") is a new file version: the
        # server's digest cache misses, and the download hashes on both sides
        # as the upload must.
        day_ago = time.time_ns() - 86400 * 10**9
        os.utime(src, ns=(day_ago, day_ago))

    def verify(label, measured):   # every fetchd copy, each peer's warm-up copy
        if (label == "fetchd" or not measured) and sha256_file(dest[label]) != digest:
            die(f"U1: the copy written by {label} differs from the source")
    res["U1"] = paired("U1", "verified upload to a file on tmpfs", [
        ("fetchd", f"{timed('fetchd')} {BIN} --server {fup.url} put {src} big.bin --quiet", fup),
        ("fetchd get, cold", f"{timed('fetchd')} {BIN} --server {fetchd.url} get big.bin "
                             f"-o {dest['fetchd get, cold']} --quiet", fetchd),
        ("rsync", f"{timed('rsync')} rsync --whole-file {src} {rsyncd.base}/upload/big.bin", rsyncd),
        ("curl -T", f"{timed('curl')} curl -sf -T {src} {nginx.url}/upload/big.bin", nginx),
    ], prepare, verify)
    prepare()


# ---------------------------------------------------------------- bulk ---
def make_tree(root, spec):
    """Writes spec = (files, size, leaf folders) of random files below root,
    spread evenly over the folders; returns the tree's manifest."""
    n, size, leaves = spec
    for i in range(n):
        d = root / leaves[i % len(leaves)]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i // len(leaves):04}.bin").write_bytes(os.urandom(size))
    return manifest(root)


def manifest(root):
    """{"files": {relpath: [size, sha256]}, "dirs": [relpath], "odd": [relpath]} of a tree;
    odd: anything that is neither a regular file nor a folder (symlinks too)."""
    files, dirs, odd = {}, [], []
    for top, dnames, fnames in os.walk(root):
        rel = Path(top).relative_to(root)
        for d in dnames:
            (odd if os.path.islink(Path(top) / d) else dirs).append(str(rel / d))
        for f in fnames:
            path = Path(top) / f
            if path.is_symlink() or not path.is_file():
                odd.append(str(rel / f))
            else:
                files[str(rel / f)] = [path.stat().st_size, sha256_file(path)]
    return {"files": files, "dirs": sorted(dirs), "odd": sorted(odd)}


def check_tree(wid, label, dest, want):
    """Dies unless the tree at dest is the source tree: same folders, same
    files with the same sizes and sha256, nothing else (no .part leftovers)."""
    got = manifest(dest) if dest.is_dir() else {"files": {}, "dirs": [], "odd": []}
    if got == want:
        return
    gf, wf = got["files"], want["files"]
    missing = sorted(set(wf) - set(gf))
    extra = sorted(set(gf) - set(wf)) + got["odd"]
    differ = sorted(k for k in set(wf) & set(gf) if wf[k] != gf[k])
    dirs = sorted(set(want["dirs"]) ^ set(got["dirs"]))
    die(f"{wid}: the tree written by {label} in {dest} differs from the source: "
        f"{len(missing)} missing {missing[:3]}, {len(extra)} extra {extra[:3]}, "
        f"{len(differ)} different {differ[:3]}, folders differing {dirs[:3]}")


def input_files(name, prefix, want, dest_of, nginx):
    """The curl config (url = / output = lines) and the aria2c input file
    (URL, then an indented out= line) for every file of a tree; returns their
    paths and the first entry of each, to show in the report."""
    paths = sorted(want["files"])
    curl_cfg, aria_lst = work / f"{name}.curl", work / f"{name}.aria2"
    curl_cfg.write_text("".join(f'url = "{nginx.url}/{prefix}/{p}"\noutput = "{dest_of}/{p}"\n'
                                for p in paths))
    aria_lst.write_text("".join(f"{nginx.url}/{prefix}/{p}\n  out={p}\n" for p in paths))
    return curl_cfg, aria_lst, {"curl config": curl_cfg.read_text().split("\n", 2)[:2],
                                "aria2c input": aria_lst.read_text().split("\n", 2)[:2]}


def bulk_workloads(data, nginx, rsyncd, res):
    """Runs the selected B workloads, adding each to res as it finishes."""
    if ONLY & {"B1", "B3"}:
        say(f"bulk: writing {SMALL[0]} files of {SMALL[1] >> 10} KiB in {len(SMALL[2])} folders")
        small = make_tree(data / "bulk-small", SMALL)
        fsmall = start_fetchd(data / "bulk-small", "fetchd-small")
        say(f"bulk: fetchd-small {fsmall.url} (root {data / 'bulk-small'})")
    if ONLY & {"B2"}:
        say(f"bulk: writing {LARGE[0]} files of {LARGE[1] >> 20} MiB in {len(LARGE[2])} folders")
        large = make_tree(data / "bulk-large", LARGE)
        flarge = start_fetchd(data / "bulk-large", "fetchd-large")
        say(f"bulk: fetchd-large {flarge.url} (root {data / 'bulk-large'})")

    def fresh(wid, title, spec, want, fsrv, module, prefix, extra_jobs):
        dest = work / f"dest-{wid.lower()}"
        curl_cfg, aria_lst, inputs = input_files(wid.lower(), prefix, want, dest, nginx)
        fget = f"{BIN} --server {fsrv.url} get -r / -o {dest} -q"
        contenders = [("fetchd", f"{timed('fetchd')} {fget}", fsrv)]
        if extra_jobs:
            contenders.append((f"fetchd -j {extra_jobs}", f"{timed('fetchd')} {fget} -j {extra_jobs}", fsrv))
        contenders += [
            ("rsync", f"{timed('rsync')} rsync -a {rsyncd.base}/{module}/ {dest}/", rsyncd),
            ("curl --parallel", f"{timed('curl')} curl --no-progress-meter -f --parallel "
                                f"--parallel-max 16 --create-dirs -K {curl_cfg}", nginx),
            ("aria2c -i", f"{timed('aria2c')} aria2c -i {aria_lst} -d {dest} {ARIA2_OPTS}", nginx)]

        def prepare():   # a fresh DEST for every run, outside the timed region
            shutil.rmtree(dest, ignore_errors=True)

        def verify(label, measured):   # every fetchd tree, each peer's warm-up tree
            if label.startswith("fetchd") or not measured:
                check_tree(wid, label, dest, want)
        total = spec[0] * spec[1]
        w = paired(wid, title, contenders, prepare, verify, pairs=BULK_PAIRS, size=total)
        prepare()
        w.update(files=spec[0], bytes=total, inputs=inputs)
        if extra_jobs:
            w["extra"] = [[f"fetchd -j {extra_jobs}", "rsync", TARGETS.get((wid, "rsync"))]]
        return w

    if "B1" in ONLY:
        res["B1"] = fresh("B1", f"{SMALL[0]:,} files of {SMALL[1] >> 10} KiB, fresh tree",
                          SMALL, small, fsmall, "small", "bulk-small", EXTRA_JOBS)
    if "B2" in ONLY:
        res["B2"] = fresh("B2", f"{LARGE[0]} files of {LARGE[1] >> 20} MiB, fresh tree",
                          LARGE, large, flarge, "large", "bulk-large", None)
        shutil.rmtree(data / "bulk-large")   # 1 GiB less on tmpfs for what follows
    if "B3" in ONLY:
        # Each tool reruns over the complete tree it wrote itself (rsync -a keeps
        # mtimes, which its quick check needs; fetchd compares size and sha256).
        dest_f, dest_r = work / "dest-b3-fetchd", work / "dest-b3-rsync"
        fget = f"{BIN} --server {fsmall.url} get -r / -o {dest_f}"
        rs_args = f"{rsyncd.base}/small/ {dest_r}/"
        rs = f"rsync -a {rs_args}"
        say("B3: writing the complete trees the reruns start from")
        prep_failures = []
        while True:   # a failed fetchd run is recorded and repeated, as in paired()
            try:
                shell_out(f"{fget} -q")
                break
            except Failed as err:
                prep_failures.append({"when": "writing the tree to rerun over", "label": "fetchd",
                                      "error": str(err)})
                if len(prep_failures) > MAX_FAILURES:
                    raise
                say(f"B3: fetchd FAILED writing the tree to rerun over; again:\n{str(err)[:2000]}")
                shutil.rmtree(dest_f, ignore_errors=True)
        shell_out(rs)
        check_tree("B3", "fetchd", dest_f, small)
        check_tree("B3", "rsync", dest_r, small)
        # Untimed proof that a rerun transfers nothing.
        status = {}
        for line in shell_out(f"{fget} --json").splitlines():
            st = json.loads(line).get("status")
            status[st] = status.get(st, 0) + 1
        if status != {"skipped": SMALL[0]}:
            die(f"B3: fetchd's rerun over a complete tree did not skip every file: {status}")
        m = re.search(r"Number of regular files transferred: ([\d,]+)", shell_out(f"rsync -a --stats {rs_args}"))
        if not m or m.group(1) != "0":
            die(f"B3: rsync's rerun over a complete tree transferred files: {m and m.group(1)}")

        w = paired("B3", f"no-change rerun of B1 ({SMALL[0]:,} files)", [
            ("fetchd", f"{timed('fetchd')} {fget} -q", fsmall),
            ("rsync", f"{timed('rsync')} {rs}", rsyncd),
        ], prepare=lambda: None, verify=lambda label, measured: None, size=SMALL[0] * SMALL[1])
        check_tree("B3", "fetchd (after the reruns)", dest_f, small)
        check_tree("B3", "rsync (after the reruns)", dest_r, small)
        w["failures"] = prep_failures + w["failures"]
        w.update(files=SMALL[0], bytes=SMALL[0] * SMALL[1], rerun=True,
                 wall_target={"fetchd": B3_TARGET_S},
                 checks={"fetchd --json statuses": status, "rsync --stats files transferred": 0})
        res["B3"] = w
        shutil.rmtree(dest_f)
        shutil.rmtree(dest_r)


def rate_mib(rate):
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1 << 20}
    r = rate.strip().lower()
    return float(r[:-1]) * units[r[-1]] if r[-1] in units else float(r) / (1 << 20)


def main():
    global work
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(cleanup)
    if ONLY == {"C1"}:   # the compression workload (issue 8) needs none of the peers
        return compression_main()
    if not ONLY <= set(KNOWN):
        die(f"BENCH_ONLY={os.environ['BENCH_ONLY']}: known workloads are {', '.join(KNOWN)}"
            " (and C1, alone)")
    files_w, bulk_w = ONLY & {"W1", "W2", "W3", "T1"}, ONLY & {"B1", "B2", "B3"}
    upload_w = ONLY & {"U1"}
    if PAIRS < 11 and (files_w or "B3" in ONLY):
        say(f"warning: BENCH_PAIRS={PAIRS}; the issue asks for at least 11 pairs")
    if not BUILT.exists():
        die(f"{BUILT} missing: run `cargo build --release` (bench/run does)")
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="fetchd-bench.", dir=base))
    # Every server and client runs this copy: a `cargo build` by someone else
    # during the run replaces target/release/fetchd, and must not change what
    # is measured halfway through.
    global BIN
    (work / "bin").mkdir()
    BIN = work / "bin/fetchd"
    shutil.copy2(BUILT, BIN)
    data = work / "data"
    for d in (data, data / "bulk-small", data / "bulk-large"):
        d.mkdir()
    digest = None
    if files_w or upload_w:
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
    else:
        say(f"work dir {work}")
    meta = machine_meta(work)
    fetchd = start_fetchd(data) if files_w or upload_w else None
    nginx, rsyncd = start_nginx(data), start_rsyncd(data)
    say(f"servers: fetchd {fetchd.url if fetchd else '(not needed)'}, nginx {nginx.url}, rsync {rsyncd.base}")
    res, failure = {}, None
    try:
        if files_w:
            workloads(fetchd, nginx, rsyncd, digest, res)
            if "T1" in ONLY:
                tls_workloads(data, fetchd, digest, res)
        if upload_w:
            upload_workload(data, fetchd, nginx, rsyncd, digest, res)
        if files_w or upload_w:
            (data / "big.bin").unlink()   # room on tmpfs for the bulk trees
        if bulk_w:
            bulk_workloads(data, nginx, rsyncd, res)
    except Failed as e:   # report what finished, then fail
        failure = {"workload": next((w for w in KNOWN if w in ONLY and w not in res), "?"),
                   "error": str(e)}
        say(f"{failure['workload']} failed; writing the results of {', '.join(res) or 'nothing'}")
    meta["failed"] = failure
    while started:   # stop the servers now: the rsync daemon's peak RSS is known at its exit
        stop(*started.pop())
    maxrss = (work / "rsyncd.maxrss").read_text().split() if (work / "rsyncd.maxrss").exists() else []
    meta["rsyncd_session_max_rss_kib"] = int(maxrss[-1]) if maxrss and maxrss[-1].isdigit() else None
    import report   # bench/report.py: tables and chart
    if res:
        report.write(OUT, meta, res, TARGETS)
    if failure:
        raise SystemExit(failure["error"])


# ------------------------------------------------ C1: compression (issue 8) ---
C1_MIB = int(os.environ.get("BENCH_C1_MIB", "128"))
C1_ROUNDS = int(os.environ.get("BENCH_C1_ROUNDS", "5"))
C1_CODECS = ["none", "gzip", "zstd"]


def c1_write_log(path, size, seed=8):
    """A web-server access log of `size` bytes: timestamps, addresses, paths,
    statuses, sizes and agents drawn from a seeded generator, so it compresses
    like a real log (far from a repeated line)."""
    import random
    rnd = random.Random(seed)
    paths = [f"/api/v1/{w}" for w in ("items", "users", "orders", "search", "carts", "login")]
    agents = ["curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
              "Go-http-client/2.0", "python-requests/2.32", "kube-probe/1.30"]
    t = 1_764_000_000.0
    with open(path, "w") as out:
        written, lines = 0, []
        while written < size:
            t += rnd.expovariate(200.0)
            stamp = time.strftime("%d/%b/%Y:%H:%M:%S", time.gmtime(t))
            line = (f'10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)} - - '
                    f'[{stamp} +0000] "GET {rnd.choice(paths)}/{rnd.randrange(100000)}'
                    f'?page={rnd.randrange(50)} HTTP/1.1" {rnd.choice((200, 200, 200, 304, 404, 500))} '
                    f'{rnd.randrange(100, 90000)} "-" "{rnd.choice(agents)}" rt={rnd.random():.3f}\n')
            lines.append(line)
            written += len(line)
            if len(lines) == 10000:
                out.write("".join(lines))
                lines = []
        out.write("".join(lines))
        out.truncate(size)


def c1_scrape(metrics_addr, name):
    """One counter from fetchd's /metrics."""
    import urllib.request
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    die(f"{name} missing from /metrics")


def c1_start_fetchd(data):
    """fetchd serve with --metrics-listen, both addresses read from stdout."""
    out = work / "fetchd.stdout"
    p = spawn("fetchd", [str(BIN), "serve", "--root", str(data), "--listen", "127.0.0.1:0",
                         "--metrics-listen", "127.0.0.1:0"], stdout=open(out, "wb"))
    deadline, addrs = time.monotonic() + 15, {}
    while len(addrs) < 2 and time.monotonic() < deadline:
        for line in out.read_text().splitlines():
            for key in ("listening on ", "metrics on "):
                if line.startswith(key):
                    addrs[key] = line.split()[-1]
        if len(addrs) < 2:
            if p.poll() is not None:
                die(f"fetchd serve exited with {p.returncode}:\n{tail(work / 'fetchd.log')}")
            time.sleep(0.02)
    if len(addrs) < 2:
        die("fetchd serve printed no `listening on` / `metrics on` lines within 15 s")
    return Server("fetchd", p.pid, f"http://{addrs['listening on ']}"), addrs["metrics on "]


def compression_workload(data, res):
    """C1: `fetchd get -o - --compress none|gzip|zstd` of a text log and of
    random data, C1_MIB MiB each, over loopback. One warm-up of each, then
    C1_ROUNDS rounds of all six in turn; medians. Wire bytes come from the
    server's fetchd_wire_sent_bytes_total. Loopback has no bandwidth limit to
    speak of, so the wall time is the cost of (de)compression; from it
    follows the link speed below which compression is faster:
    plain needs SIZE/link, compressed max(wall_compressed, WIRE/link), so
    compression wins on links slower than SIZE/wall_compressed when it
    shrinks the data at all."""
    size = C1_MIB << 20
    say(f"C1: writing a {C1_MIB} MiB access log and {C1_MIB} MiB of random data")
    c1_write_log(data / "access.log", size)
    with open("/dev/urandom", "rb") as src, open(data / "random.bin", "wb") as dst:
        left = size
        while left:
            chunk = src.read(min(left, 1 << 22))
            dst.write(chunk)
            left -= len(chunk)
    digests = {name: sha256_file(data / name) for name in ("access.log", "random.bin")}
    fetchd, metrics_addr = c1_start_fetchd(data)
    say(f"C1: fetchd {fetchd.url}, metrics {metrics_addr}")
    cases = [(name, codec) for name in ("access.log", "random.bin") for codec in C1_CODECS]
    runs = {case: [] for case in cases}
    for round_no in range(C1_ROUNDS + 1):   # round 0 is the warm-up
        for name, codec in cases:
            cmd = (f"{timed('get')} {BIN} --server {fetchd.url} get {name} -o - "
                   f"--compress {codec} | sha256sum > {work}/c1.sum")
            wire0 = c1_scrape(metrics_addr, "fetchd_wire_sent_bytes_total")
            m = run(cmd, fetchd, size)
            m["wire_bytes"] = c1_scrape(metrics_addr, "fetchd_wire_sent_bytes_total") - wire0
            got = (work / "c1.sum").read_text().split()[0]
            if got != digests[name]:
                die(f"C1: {name} with --compress {codec}: sha256 {got}, want {digests[name]}")
            if round_no:
                runs[(name, codec)].append(m)
        say(f"C1: {'warm-up' if round_no == 0 else f'round {round_no}/{C1_ROUNDS}'} done")
    rows = []
    for name, codec in cases:
        med = lambda key: statistics.median(r[key] for r in runs[(name, codec)])
        wall, wire = med("wall_s"), med("wire_bytes")
        plain_wall = statistics.median(r["wall_s"] for r in runs[(name, "none")])
        shrinks = wire < size
        rows.append({"data": name, "compress": codec, "size_bytes": size, "wire_bytes": wire,
                     "ratio": size / wire, "wall_s": wall, "mib_per_s": (size >> 20) / wall,
                     "client_cpu_s": med("client_cpu_s"), "server_cpu_s": med("server_cpu_s"),
                     "vs_plain_loopback": wall / plain_wall,
                     "pays_below_mib_per_s": ((size >> 20) / wall) if codec != "none" and shrinks
                     else None,
                     "rounds": runs[(name, codec)]})
    res["C1"] = rows
    stop("fetchd", next(p for n, p in started if n == "fetchd"))
    return rows


def compression_report(meta, rows):
    """bench/results/compression.md and .json."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "compression.json").write_text(json.dumps({"meta": meta, "C1": rows}, indent=1))
    md = [f"# C1: compression on `fetchd get` ({meta['date']})", "",
          f"`{meta['command']}` — {C1_MIB} MiB each, {C1_ROUNDS} rounds after a warm-up, "
          f"medians; {meta['cpu']}, {meta['nproc']} cores, data on {meta['data_on']}, "
          f"loopback. Wire bytes: the server's `fetchd_wire_sent_bytes_total`.", "",
          "| data | --compress | wire MiB | ratio | wall s | MiB/s | client CPU s | server CPU s "
          "| wall vs none | faster than none on links below |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        pays = (f"{r['pays_below_mib_per_s']:.0f} MiB/s ({r['pays_below_mib_per_s'] * 8.388608:.0f} Mbit/s)"
                if r["pays_below_mib_per_s"] else ("—" if r["compress"] == "none" else "never (no smaller)"))
        md.append(f"| {r['data']} | {r['compress']} | {r['wire_bytes'] / (1 << 20):.1f} | "
                  f"{r['ratio']:.2f} | {r['wall_s']:.2f} | {r['mib_per_s']:.0f} | "
                  f"{r['client_cpu_s']:.2f} | {r['server_cpu_s']:.2f} | {r['vs_plain_loopback']:.2f}x | {pays} |")
    md += ["", "Plain needs SIZE/link seconds on a link; compressed needs about "
           "max(wall on loopback, WIRE/link). So compression is faster on any link slower than "
           "SIZE / (its loopback wall) when it shrinks the data, and never when it does not."]
    (OUT / "compression.md").write_text("\n".join(md) + "\n")
    say(f"C1: wrote {OUT / 'compression.md'}")


def compression_main():
    """BENCH_ONLY=C1: only the compression workload (no peers needed)."""
    global work, BIN
    if not BUILT.exists():
        die(f"{BUILT} missing: run `cargo build --release` (bench/run does)")
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="fetchd-bench.", dir=base))
    (work / "bin").mkdir()
    BIN = work / "bin/fetchd"
    shutil.copy2(BUILT, BIN)
    data = work / "data"
    data.mkdir()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    env = " ".join(f"{k}={os.environ[k]}" for k in sorted(os.environ) if k.startswith("BENCH_"))
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": (env + " " if env else "") + "bash bench/run", "cpu": cpu,
            "nproc": os.cpu_count(), "kernel": platform.release(),
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
            "data_on": "tmpfs (/dev/shm)" if str(work).startswith("/dev/shm") else str(work.parent),
            "fetchd_sha256": sha256_file(BIN)[:16]}
    rows = compression_workload(data, {})
    compression_report(meta, rows)


def machine_meta(work):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    env = " ".join(f"{k}={os.environ[k]}" for k in sorted(os.environ) if k.startswith("BENCH_"))
    def ver(cmd, pattern):   # e.g. "rsync  version 3.2.7  protocol version 32" -> "rsync 3.2.7"
        m = re.search(pattern, shell_out(cmd + " 2>&1"))
        return f"{cmd.split()[0].rsplit('/', 1)[-1]} {m.group(1)}" if m else "?"
    rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip() or "?"
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "fetchd_sha256": sha256_file(BIN)[:16],
            "kernel": platform.release(), "cpu": cpu, "nproc": os.cpu_count(),
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
            "command": (env + " " if env else "") + "bash bench/run",
            "workloads": [w for w in KNOWN if w in ONLY],
            "size_bytes": SIZE, "pairs": PAIRS, "bulk_pairs": BULK_PAIRS, "max_failures": MAX_FAILURES,
            "bulk_small": {"files": SMALL[0], "file_bytes": SMALL[1], "leaf_folders": len(SMALL[2]),
                           "folders": len(SMALL[2]) + len({l.split("/")[0] for l in SMALL[2]})},
            "bulk_large": {"files": LARGE[0], "file_bytes": LARGE[1], "leaf_folders": len(LARGE[2]),
                           "folders": len(LARGE[2])},
            "data_on": "tmpfs (/dev/shm)" if str(work).startswith("/dev/shm") else str(work.parent),
            "fetchd_git": rev,
            "versions": {"nginx": ver(f"{shutil.which('nginx') or '/usr/sbin/nginx'} -v", r"nginx/(\S+)"),
                         "rsync": ver("rsync --version", r"version (\S+)"),
                         "curl": ver("curl --version", r"curl (\S+)"),
                         "openssl": ver("openssl version", r"OpenSSL (\S+)"),
                         "pv": ver("pv --version", r"pv (\S+)"),
                         "aria2c": ver("aria2c --version", r"aria2 version (\S+)")}}


if __name__ == "__main__":
    main()
