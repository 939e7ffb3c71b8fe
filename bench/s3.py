#!/usr/bin/env python3
"""Object-store roots (issue 17): fetchd serving an S3 bucket, side by side with the store's own
clients, everything on loopback.

    cargo build --release                 # target/release/fetchd
    python3 bench/s3.py                   # or: BENCH_ONLY=S3 bash bench/run (installs rclone, awscli)

The store is s3s-fs 0.14.1 (target/tools/s3s-fs-0.14.1/bin/s3s-fs, as .ci/run installs it, or
S3_S3S_FS) over a folder on /dev/shm. s3s-fs leaves Nagle on, which makes every small GET on a
kept-alive connection wait 40 ms for the client's delayed ACK; so the main store runs with
TCP_NODELAY set by a small LD_PRELOAD shim built here with cc (S3_NODELAY=0: without), and a
second s3s-fs over the same folder, as shipped, serves one section of its own. The objects are
uploaded through the S3 API by rclone, so the store keeps their ETags; none was uploaded by
`fetchd put`, so none has its sha256 in its metadata. `fetchd serve --root s3://bkt` talks to the
store directly. One warm-up round (the `cold` column: for fetchd the first read since its server
started), then S3_ROUNDS (3) rounds, contenders interleaved in each round, medians:

S3_FETCHD names another fetchd binary to measure (S3_FETCHD_REV: what to call it in the results).

O1  a S3_SIZE_MIB (1024) MiB object, verified: `fetchd get big.bin -o -` into /dev/null (the
    client checks the whole-file sha256 before it exits 0) against `rclone cat s3:bkt/big.bin |
    sha256sum` and `aws s3 cp s3://bkt/big.bin - | sha256sum` straight from the store; also
    `fetchd get -o FILE` and `rclone copyto` to tmpfs. Goal: fetchd <= 1.0x the faster client.
O2  S3_SMALL_FILES (10,000) objects of 4 KiB under small/ (100 folders), into a fresh folder:
    `fetchd get -r small -o OUT` against `rclone copy s3:bkt/small/ OUT` (default --transfers 4;
    the trailing slash keeps rclone 1.60 from HEADing the folder first, which s3s-fs answers with
    500 and rclone retries for 100 s). Also `get -r /` from a second server whose root is the
    prefix (`s3://bkt/small`), which names no folder key. Goal: <= 0.5x.
O3  the no-change rerun of O2's `get -r` into the same folder, same server process (and rclone's
    rerun, for scale). Goal < 0.3 s. Then the main server restarted: its first and second rerun
    (the digests of objects fetchd did not upload were only in the old process's memory).
    Store traffic: a third server reaches the store through a counting relay (threads of this
    script: bytes each way, HTTP requests by kind) for a fresh get -r, a rerun (goal: far below
    the 40 MB the objects hold, no object bodies) and the first rerun after a restart.
Then O2 on one folder (100 objects) against the stock s3s-fs, and what the store alone serves to
a plain keep-alive client of this script (HEAD and GET rates of the small objects, 8 at once; the
big one as fetchd's 4 MiB ranges 4 at once, and as one GET), both stores.

Client CPU is user + sys of the client's processes (pipelines included: rclone + sha256sum);
fetchd server and store CPU from /proc. Records the CPU model, the one-core `openssl dgst
-sha256` time of the big object, the versions, the load average before and after. Writes
bench/results/s3.md and s3.json (BENCH_OUT). Every process it starts is stopped by PID at the
end, failures included. About 10 minutes on a 2-core VM (the store streams 70-200 MiB/s).
"""

import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wan  # noqa: E402  (process start/stop, machine, sha256)

REPO = wan.REPO
BIN = os.environ.get("S3_FETCHD", str(wan.BIN))
S3S_FS = os.environ.get("S3_S3S_FS", str(REPO / "target/tools/s3s-fs-0.14.1/bin/s3s-fs"))
AWS = os.environ.get("S3_AWS", str(REPO / "bench/.venv-aws/bin/aws"))
SIZE_MIB = int(os.environ.get("S3_SIZE_MIB", "1024"))
SMALL_FILES = int(os.environ.get("S3_SMALL_FILES", "10000"))
ROUNDS = int(os.environ.get("S3_ROUNDS", "3"))
NODELAY = os.environ.get("S3_NODELAY", "1") != "0"
OUT = Path(os.environ.get("BENCH_OUT", REPO / "bench/results"))
ACCESS_KEY, SECRET_KEY, BUCKET = "bench", "bench-secret", "bkt"


def say(msg):
    print(f"s3: {msg}", file=sys.stderr, flush=True)


def cpu_s(pid):
    """User + system CPU seconds of a running process, from /proc."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(argv, env, stdout=subprocess.DEVNULL):
    """Runs argv to completion: (wall s, client CPU s, stdout text or None)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                       stderr=subprocess.PIPE, timeout=900)
    took = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"s3: {' '.join(argv)} exited {r.returncode}:\n"
                         f"{r.stderr.decode(errors='replace')[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return took, cpu, (r.stdout.decode() if stdout == subprocess.PIPE else None)


class CountingRelay:
    """A TCP relay on threads of this process, between fetchd and the store: counts the bytes
    each way and the HTTP/1.1 requests that cross it, by kind (LIST, GET of an object, HEAD)."""

    REQUEST = re.compile(rb"^(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/1\.[01]\r\n")

    def __init__(self, upstream):
        self.upstream = upstream
        self.lock = threading.Lock()
        self.up = self.down = 0
        self.requests = {}
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def snapshot(self):
        with self.lock:
            return {"bytes_up": self.up, "bytes_down": self.down, **self.requests}

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.requests["connections"] = self.requests.get("connections", 0) + 1
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _count_requests(self, pending):
        """Counts the request heads in `pending` (GET/HEAD carry no body); returns the rest."""
        while True:
            end = pending.find(b"\r\n\r\n")
            if end < 0:
                return pending[-65536:]
            head, pending = pending[:end + 4], pending[end + 4:]
            m = self.REQUEST.match(head)
            if not m:
                kind = "other"
            elif m.group(1) == b"GET":
                target = m.group(2)
                kind = "LIST" if (b"list-type=" in target or b"delimiter=" in target
                                  or b"prefix=" in target) else "GET object"
            else:
                kind = m.group(1).decode()
            with self.lock:
                self.requests[kind] = self.requests.get(kind, 0) + 1
            length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
            if length and int(length.group(1)):
                # A request with a body (an upload): this benchmark sends none.
                with self.lock:
                    self.requests["with body"] = self.requests.get("with body", 0) + 1
                return b""

    def _pipe(self, src, dst, upward):
        pending = b""
        try:
            while data := src.recv(1 << 16):
                with self.lock:
                    if upward:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                if upward:
                    pending = self._count_requests(pending + data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                try:
                    s.shutdown(how)
                except OSError:
                    pass


def sign(method, path, host, query=""):
    """The headers of an S3 request signed with SigV4 (unsigned payload)."""
    import hashlib
    import hmac
    from urllib.parse import quote
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    day = now[:8]
    canonical_path = quote(path, safe="/-_.~")
    headers = {"host": host, "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "x-amz-date": now}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, canonical_path, query,
                           "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed,
                           "UNSIGNED-PAYLOAD"])
    scope = f"{day}/us-east-1/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", now, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + SECRET_KEY).encode()
    for part in (day, "us-east-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    return headers


def store_alone(endpoint, keys, big_size, threads):
    """What s3s-fs itself delivers to a plain keep-alive HTTP/1.1 client (threads of this
    script): HEADs and GETs of the small objects, `threads` at once, and the big object as the
    4 MiB ranged GETs fetchd asks for, 4 at once. Returns {figure: value}."""
    import http.client
    host = endpoint.removeprefix("http://")

    def worker(jobs, method, ranged, sink):
        conn = http.client.HTTPConnection(host, timeout=60)
        got = 0
        for job in jobs:
            key, start = job if ranged else (job, None)
            headers = sign(method, f"/{BUCKET}/{key}", host)
            if start is not None:
                headers["range"] = f"bytes={start}-{min(start + (4 << 20), big_size) - 1}"
            conn.request(method, f"/{BUCKET}/{key}", headers=headers)
            resp = conn.getresponse()
            if resp.status not in (200, 206):
                raise SystemExit(f"s3: store alone: {method} {key}: {resp.status} {resp.read(200)!r}")
            while chunk := resp.read(1 << 20):
                got += len(chunk)
        sink.append(got)
        conn.close()

    def timed_threads(method, jobs, n, ranged=False):
        sink = []
        parts = [jobs[i::n] for i in range(n)]
        t0 = time.monotonic()
        ts = [threading.Thread(target=worker, args=(p, method, ranged, sink)) for p in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        took = time.monotonic() - t0
        if len(sink) != n:
            raise SystemExit(f"s3: store alone: {method} failed")
        return took, sum(sink)

    out = {}
    took, _ = timed_threads("HEAD", keys, threads)
    out[f"HEAD of {len(keys)} objects, {threads} at once: requests/s"] = round(len(keys) / took)
    took, _ = timed_threads("GET", keys, threads)
    out[f"GET of {len(keys)} 4 KiB objects, {threads} at once: objects/s"] = round(len(keys) / took)
    blocks = [("big.bin", s) for s in range(0, big_size, 4 << 20)]
    took, got = timed_threads("GET", blocks, 4, ranged=True)
    out["GET of the big object as 4 MiB ranges, 4 at once: MiB/s"] = round(got / took / (1 << 20))
    took, got = timed_threads("GET", ["big.bin"], 1)
    out["GET of the big object, one request: MiB/s"] = round(got / took / (1 << 20))
    return out


NODELAY_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

/* Every accepted TCP connection gets TCP_NODELAY (a no-op error for other sockets). */
static int with_nodelay(int fd) {
    int one = 1;
    if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    return with_nodelay(real(fd, addr, len, flags));
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    return with_nodelay(real(fd, addr, len));
}
"""


def start_s3s_fs(work, store, name, nodelay):
    """s3s-fs over the folder `store` (buckets are its subfolders); returns (process, endpoint).

    s3s-fs leaves Nagle on: the body of a GET follows its headers only once the client ACKs
    them, and the client delays that ACK (40 ms on Linux), so every small GET on a kept-alive
    connection takes 40 ms. With `nodelay` an LD_PRELOAD shim (NODELAY_C, built here with cc)
    sets TCP_NODELAY on its connections, as stores that serve real traffic do."""
    env = {**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"}
    if nodelay:
        shim = work / "nodelay.so"
        if not shim.exists():
            (work / "nodelay.c").write_text(NODELAY_C)
            subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(work / "nodelay.c"),
                            "-ldl"], check=True)
        env["LD_PRELOAD"] = str(shim)
    log_path = work / f"{name}.log"
    p = wan.spawn([S3S_FS, "--host", "127.0.0.1", "--port", "0", "--access-key", ACCESS_KEY,
                   "--secret-key", SECRET_KEY, str(store)],
                  stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"server is running at (http://[0-9.]+:\d+)", log_path.read_text(errors="replace"))
        if m:
            return p, m.group(1)
        if p.poll() is not None:
            raise SystemExit(f"s3: s3s-fs exited {p.returncode}: {log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    raise SystemExit("s3: s3s-fs printed no `server is running at` line within 30 s")


def client_env(endpoint):
    """The environment of every client and server here: this store's settings only (an inherited
    AWS_CA_BUNDLE, for one, makes rclone refuse plain http)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update({
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "RCLONE_CONFIG": "/dev/null",
        "RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "Other",
        "RCLONE_CONFIG_S3_ENDPOINT": endpoint, "RCLONE_CONFIG_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": SECRET_KEY, "RCLONE_CONFIG_S3_REGION": "us-east-1",
        "RUST_LOG": "warn",
    })
    return env


def serve(env, root, endpoint):
    p = wan.spawn([BIN, "serve", "--root", root, "--listen", "127.0.0.1:0"],
                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                  env={**env, "AWS_ENDPOINT_URL": endpoint})
    return p, "http://" + wan.first_line(p, "listening on ")


def make_data(src):
    """The big object and the small tree, in src; returns the big one's sha256."""
    return wan.sha256(wan.make_data(src, SIZE_MIB, SMALL_FILES, suffix=".bin"))


def tree_matches(out, src):
    """True when out holds exactly the files of src/small, byte for byte."""
    want = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    got = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    return want == got and all((out / p).read_bytes() == (src / p).read_bytes() for p in want)


def versions():
    def first(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"
    if "S3_FETCHD" in os.environ:
        return {"fetchd": os.environ.get("S3_FETCHD_REV", os.environ["S3_FETCHD"]),
                "s3s-fs": first([S3S_FS, "--version"]), "rclone": first(["rclone", "version"]),
                "aws": first([AWS, "--version"])}
    rev = first(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "Cargo.toml",
                            "Cargo.lock", "build.rs", "proto"], capture_output=True, text=True).stdout
    return {"fetchd": rev + (" + uncommitted changes in src/ (built from the work tree)" if dirty.strip() else ""),
            "s3s-fs": first([S3S_FS, "--version"]), "rclone": first(["rclone", "version"]),
            "aws": first([AWS, "--version"])}


def measure(res, work, env, endpoint, src, digest, store_pid):
    main_srv, url = serve(env, f"s3://{BUCKET}", endpoint)
    prefix_srv, url_prefix = serve(env, f"s3://{BUCKET}/small", endpoint)
    out = work / "out"
    out.mkdir()
    dest = out / "big.bin"
    sha_pipe = "set -o pipefail; {} | sha256sum"
    o1 = {
        "fetchd get -o - (verified) > /dev/null":
            ([BIN, "--server", url, "get", "big.bin", "-o", "-", "-q"], None),
        "rclone cat | sha256sum":
            (["bash", "-c", sha_pipe.format(f"rclone cat s3:{BUCKET}/big.bin")], "stdout"),
        "aws s3 cp - | sha256sum":
            (["bash", "-c", sha_pipe.format(f"{AWS} --endpoint-url {endpoint} s3 cp "
                                            f"s3://{BUCKET}/big.bin -")], "stdout"),
        "fetchd get -o FILE (tmpfs, verified)":
            ([BIN, "--server", url, "get", "big.bin", "-o", str(dest), "--force", "-q"], "file"),
        "rclone copyto FILE (tmpfs)":
            (["rclone", "copyto", f"s3:{BUCKET}/big.bin", str(dest)], "file"),
    }
    o2 = {
        "fetchd get -r small": (url, "small"),
        "fetchd get -r / (root s3://bkt/small)": (url_prefix, "/"),
        "rclone copy s3:bkt/small/": (None, None),
    }
    runs = {}

    def record(group, name, took, cpu, servers, warm):
        row = runs.setdefault(group, {}).setdefault(name, {"runs": [], "client_cpu": [], "server_cpu": [],
                                                           "store_cpu": [], "cold": None})
        if warm:
            row["cold"] = round(took, 3)
            return
        row["runs"].append(round(took, 3))
        row["client_cpu"].append(round(cpu, 3))
        row["server_cpu"].append(round(servers[0], 3))
        row["store_cpu"].append(round(servers[1], 3))

    def timed(argv, srv, capture=False):
        """Runs argv: wall, client CPU, (fetchd server CPU, store CPU), stdout if captured."""
        before = (cpu_s(srv.pid) if srv else 0.0, cpu_s(store_pid))
        took, cpu, stdout = run(argv, env, stdout=subprocess.PIPE if capture else subprocess.DEVNULL)
        after = (cpu_s(srv.pid) if srv else 0.0, cpu_s(store_pid))
        return took, cpu, (after[0] - before[0], after[1] - before[1]), stdout

    for round_ in range(ROUNDS + 1):
        warm = round_ == 0
        tag = " (warm-up: first read since the server started)" if warm else ""
        for name, (argv, check) in o1.items():
            dest.unlink(missing_ok=True)
            took, cpu, servers, stdout = timed(argv, main_srv if argv[0] == BIN else None,
                                               capture=check == "stdout")
            if check == "stdout" and stdout.split()[0] != digest:
                raise SystemExit(f"s3: O1 {name}: sha256 {stdout.split()[0]}, not {digest}")
            if check == "file" and wan.sha256(dest) != digest:
                raise SystemExit(f"s3: O1 {name}: {dest} is not the object")
            record("O1", name, took, cpu, servers, warm)
            say(f"O1 {name}: {took:.3f} s, client CPU {cpu:.2f} s, fetchd server {servers[0]:.2f} s, "
                f"store {servers[1]:.2f} s{tag}")
        dest.unlink(missing_ok=True)
        for name, (server_url, path) in o2.items():
            tree = out / "tree"
            shutil.rmtree(tree, ignore_errors=True)
            srv = main_srv if server_url == url else prefix_srv
            if server_url:
                argv = [BIN, "--server", server_url, "get", "-r", path, "-o", str(tree), "-q"]
            else:
                # The trailing slash: without it rclone 1.60 first HEADs `small` to see whether
                # it is a file; s3s-fs answers 500 for a folder and rclone retries for 100 s.
                argv = ["rclone", "copy", f"s3:{BUCKET}/small/", str(tree)]
                srv = None
            took, cpu, servers, _ = timed(argv, srv)
            if (warm or round_ == ROUNDS) and not tree_matches(tree, src / "small"):
                raise SystemExit(f"s3: O2 {name}: {tree} is not the tree")
            record("O2", name, took, cpu, servers, warm)
            say(f"O2 {name}: {took:.3f} s, client CPU {cpu:.2f} s{tag}")
            # O3: the no-change rerun into the same folder, same server process.
            rerun = {"fetchd get -r small": "fetchd get -r small, rerun",
                     "fetchd get -r / (root s3://bkt/small)": "fetchd get -r /, rerun (prefix root)",
                     "rclone copy s3:bkt/small/": "rclone copy, rerun"}[name]
            took, cpu, servers, _ = timed(argv, srv)
            record("O3", rerun, took, cpu, servers, warm)
            say(f"O3 {rerun}: {took:.3f} s, client CPU {cpu:.2f} s")
    shutil.rmtree(out / "tree", ignore_errors=True)

    # The same server after a restart: the digests it had are gone.
    tree = out / "tree"
    argv_fresh = [BIN, "--server", url, "get", "-r", "small", "-o", str(tree), "-q"]
    run(argv_fresh, env)
    main_srv.terminate()
    main_srv.wait(timeout=10)
    main_srv, url = serve(env, f"s3://{BUCKET}", endpoint)
    argv = [BIN, "--server", url, "get", "-r", "small", "-o", str(tree), "-q"]
    restart = {}
    for label in ("first rerun after a server restart", "second rerun after the restart"):
        took, cpu, servers, _ = timed(argv, main_srv)
        restart[label] = {"wall": round(took, 3), "client_cpu": round(cpu, 3),
                          "server_cpu": round(servers[0], 3), "store_cpu": round(servers[1], 3)}
        say(f"O3 {label}: {took:.3f} s, fetchd server CPU {servers[0]:.2f} s")
    shutil.rmtree(tree, ignore_errors=True)

    # The store's traffic of a rerun, counted by a relay between a third server and s3s-fs.
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    relay = CountingRelay((host, int(port)))
    counted_srv, counted_url = serve(env, f"s3://{BUCKET}", "http://" + relay.addr)
    argv = [BIN, "--server", counted_url, "get", "-r", "small", "-o", str(tree), "-q"]
    traffic = []

    def counted(label):
        before = relay.snapshot()
        took, _, _ = run(argv, env)
        after = relay.snapshot()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        traffic.append({"run": label, "wall": round(took, 3), **delta})
        say(f"relay: {label}: {took:.3f} s, store sent {delta['bytes_down']:,} bytes, requests "
            + ", ".join(f"{k} {v}" for k, v in delta.items() if not k.startswith("bytes")))

    counted("fresh get -r (through the relay)")
    counted("no-change rerun, same server process")
    counted_srv.terminate()
    counted_srv.wait(timeout=10)
    counted_srv, counted_url = serve(env, f"s3://{BUCKET}", "http://" + relay.addr)
    argv[2] = counted_url
    counted("first rerun after a server restart")
    shutil.rmtree(tree, ignore_errors=True)

    res["runs"] = runs
    res["restart"] = restart
    res["relay"] = traffic


def stock(res, work, endpoint, src, store_pid):
    """O2 against s3s-fs as shipped (Nagle on), on one folder of small/ (1 % of the objects):
    `get -r /` from a server whose root is that folder (so no folder HEAD, see the README)
    against `rclone copy` of it, fresh, ROUNDS rounds after a warm-up."""
    env = client_env(endpoint)
    folder = "small/d00"
    srv, url = serve(env, f"s3://{BUCKET}/{folder}", endpoint)
    tree = work / "stock-tree"
    want = sum(1 for _ in (src / folder).iterdir())
    contenders = {
        "fetchd get -r / (root s3://bkt/small/d00)": [BIN, "--server", url, "get", "-r", "/", "-o",
                                                       str(tree), "-q"],
        "rclone copy s3:bkt/small/d00/": ["rclone", "copy", f"s3:{BUCKET}/{folder}/", str(tree)],
    }
    rows = {}
    for round_ in range(ROUNDS + 1):
        for name, argv in contenders.items():
            shutil.rmtree(tree, ignore_errors=True)
            before = (cpu_s(srv.pid), cpu_s(store_pid))
            took, cpu, _ = run(argv, env)
            after = (cpu_s(srv.pid), cpu_s(store_pid))
            files = sum(1 for p in tree.rglob("*") if p.is_file())
            if files != want:
                raise SystemExit(f"s3: stock store: {name} fetched {files} files")
            row = rows.setdefault(name, {"runs": [], "client_cpu": [], "server_cpu": [],
                                         "store_cpu": [], "cold": None})
            if round_ == 0:
                row["cold"] = round(took, 3)
            else:
                row["runs"].append(round(took, 3))
                row["client_cpu"].append(round(cpu, 3))
                row["server_cpu"].append(round(after[0] - before[0], 3) if name.startswith("fetchd") else 0)
                row["store_cpu"].append(round(after[1] - before[1], 3))
            say(f"stock store: {name}: {files} files in {took:.3f} s")
    shutil.rmtree(tree, ignore_errors=True)
    srv.terminate()
    srv.wait(timeout=10)
    res["runs"]["stock"] = rows
    res["stock_files"] = files


def summarise(res):
    """Medians and the ratios against the goals."""
    for group in res["runs"].values():
        for row in group.values():
            for key in ("runs", "client_cpu", "server_cpu", "store_cpu"):
                row[f"median_{key}" if key != "runs" else "median"] = round(statistics.median(row[key]), 3)
    o1, o2, o3 = (res["runs"][g] for g in ("O1", "O2", "O3"))
    fetchd = o1["fetchd get -o - (verified) > /dev/null"]["median"]
    peers = {n: o1[n]["median"] for n in ("rclone cat | sha256sum", "aws s3 cp - | sha256sum")}
    best = min(peers, key=peers.get)
    small_bytes = SMALL_FILES * 4096
    reruns = [t for t in res["relay"] if t["run"].startswith("no-change rerun")]
    restarted = [t for t in res["relay"] if t["run"].startswith("first rerun after")]
    res["goals"] = {
        "O1": {"fetchd_s": fetchd, "peer": best, "peer_s": peers[best],
               "ratio": round(fetchd / peers[best], 2), "goal": "<= 1.0"},
        "O2": {"fetchd_s": o2["fetchd get -r small"]["median"],
               "peer_s": o2["rclone copy s3:bkt/small/"]["median"],
               "ratio": round(o2["fetchd get -r small"]["median"] / o2["rclone copy s3:bkt/small/"]["median"], 2),
               "ratio_prefix_root": round(o2["fetchd get -r / (root s3://bkt/small)"]["median"]
                                          / o2["rclone copy s3:bkt/small/"]["median"], 2),
               "goal": "<= 0.5"},
        "O3": {"fetchd_s": o3["fetchd get -r small, rerun"]["median"],
               "fetchd_prefix_root_s": o3["fetchd get -r /, rerun (prefix root)"]["median"],
               "goal": "< 0.3 s",
               "store_bytes_down": int(statistics.median(t["bytes_down"] for t in reruns)),
               "object_bytes": small_bytes,
               "object_gets": max(t.get("GET object", 0) for t in reruns),
               "after_restart_s": res["restart"]["first rerun after a server restart"]["wall"],
               "after_restart_store_bytes_down": restarted[0]["bytes_down"],
               "after_restart_object_gets": restarted[0].get("GET object", 0)},
    }


def report(res):
    m, g = res["machine"], res["goals"]
    v = res["versions"]
    rows = [
        "# Object-store roots (issue 17)", "",
        f"Run of {m['date']}: `{m['command']}`. CPU: {m['cpu']} ({m['cores']} cores); one-core "
        f"`openssl dgst -sha256` of the {SIZE_MIB} MiB object: {m['openssl_sha256_s']} s. Load "
        f"average {m['load_before']} before, {m['load_after']} after. Versions: fetchd {v['fetchd']}; "
        f"{v['s3s-fs']}; {v['rclone']}; {v['aws']}. Store: s3s-fs on 127.0.0.1 over /dev/shm, "
        f"{'with TCP_NODELAY (an LD_PRELOAD shim, see bench/s3.py; the stock store has its own section)' if NODELAY else 'as shipped (Nagle on)'}; "
        f"objects uploaded by rclone (ETags stored, no fetchd sha256 in their metadata). Medians of "
        f"{ROUNDS} rounds after a warm-up; the warm-up is the `cold` column (for fetchd: the first "
        "read since its server started, so the server hashes as it reads).", "",
        "## Goals", "",
        "| | fetchd | peer | ratio / figure | goal | met |", "|---|---|---|---|---|---|",
        f"| O1 verified {SIZE_MIB} MiB get to a discard | {g['O1']['fetchd_s']} s | {cell(g['O1']['peer'])} "
        f"{g['O1']['peer_s']} s | {g['O1']['ratio']}x | <= 1.0x | {yes(g['O1']['ratio'] <= 1.0)} |",
        f"| O2 {SMALL_FILES:,} x 4 KiB, fresh `get -r small` | {g['O2']['fetchd_s']} s | rclone copy "
        f"{g['O2']['peer_s']} s | {g['O2']['ratio']}x (prefix root: {g['O2']['ratio_prefix_root']}x) "
        f"| <= 0.5x | {yes(g['O2']['ratio'] <= 0.5)} |",
        f"| O3 no-change rerun, same server | {g['O3']['fetchd_s']} s (prefix root: "
        f"{g['O3']['fetchd_prefix_root_s']} s) | | | < 0.3 s | {yes(g['O3']['fetchd_s'] < 0.3)} |",
        f"| O3 store bytes sent for a rerun | {g['O3']['store_bytes_down']:,} B, "
        f"{g['O3']['object_gets']} object GETs | | {g['O3']['store_bytes_down'] / g['O3']['object_bytes']:.2f} "
        f"of the {g['O3']['object_bytes']:,} B the objects hold | far below, no bodies | "
        f"{yes(g['O3']['object_gets'] == 0 and g['O3']['store_bytes_down'] < g['O3']['object_bytes'] / 2)} |",
        f"| O3 rerun after a server restart | {g['O3']['after_restart_s']} s, store sent "
        f"{g['O3']['after_restart_store_bytes_down']:,} B, {g['O3']['after_restart_object_gets']} object "
        f"GETs | | | (reported) | |",
        "",
    ]
    for group, title in (("O1", f"O1: one {SIZE_MIB} MiB object"),
                         ("O2", f"O2: {SMALL_FILES:,} objects of 4 KiB into a fresh folder"),
                         ("O3", "O3: the no-change rerun (same folder, same server process)")):
        rows += [f"## {title}", "",
                 "| contender | median s | runs | cold | client CPU s | fetchd server CPU s | store CPU s |",
                 "|---|---|---|---|---|---|---|"]
        for name, r in res["runs"][group].items():
            server = r["median_server_cpu"] if name.startswith("fetchd") else ""
            rows.append(f"| {cell(name)} | {r['median']} | {', '.join(map(str, r['runs']))} | {r['cold']} | "
                        f"{r['median_client_cpu']} | {server} | {r['median_store_cpu']} |")
        rows.append("")
    rows += ["## O3 after a server restart (`--root s3://bkt`, direct)", "",
             "| run | wall s | client CPU s | fetchd server CPU s | store CPU s |", "|---|---|---|---|---|"]
    for label, r in res["restart"].items():
        rows.append(f"| {label} | {r['wall']} | {r['client_cpu']} | {r['server_cpu']} | {r['store_cpu']} |")
    kinds = sorted({k for t in res["relay"] for k in t if k not in ("run", "wall", "bytes_up", "bytes_down")})
    rows += ["", "## Store traffic, counted by a relay between a fetchd server and s3s-fs", "",
             "| run | wall s | store sent (B) | fetchd sent (B) | " + " | ".join(kinds) + " |",
             "|---|---|---|---|" + "---|" * len(kinds)]
    for t in res["relay"]:
        rows.append(f"| {t['run']} | {t['wall']} | {t['bytes_down']:,} | {t['bytes_up']:,} | "
                    + " | ".join(str(t.get(k, 0)) for k in kinds) + " |")
    if "stock" in res["runs"]:
        rows += ["", f"## s3s-fs as shipped (Nagle on): {res['stock_files']} objects of 4 KiB, fresh", "",
                 "| contender | median s | runs | cold | client CPU s | fetchd server CPU s | store CPU s |",
                 "|---|---|---|---|---|---|---|"]
        for name, r in res["runs"]["stock"].items():
            server = r["median_server_cpu"] if name.startswith("fetchd") else ""
            rows.append(f"| {cell(name)} | {r['median']} | {', '.join(map(str, r['runs']))} | {r['cold']} | "
                        f"{r['median_client_cpu']} | {server} | {r['median_store_cpu']} |")
    stores = list(res["store_alone"])
    rows += ["", "## The store alone (a keep-alive HTTP/1.1 client in this script, SigV4)", "",
             "| figure | " + " | ".join(f"s3s-fs {k}" for k in stores) + " |",
             "|---|" + "---|" * len(stores)]
    for name in res["store_alone"][stores[0]]:
        rows.append(f"| {name} | " + " | ".join(f"{res['store_alone'][k][name]:,}" for k in stores) + " |")
    rows.append("")
    return "\n".join(rows)


def cell(text):
    """Text for a markdown table cell."""
    return text.replace("|", "\\|")


def yes(ok):
    return "yes" if ok else "**no**"


def main():
    # A SIGTERM ends the run through the `finally` below, which stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for tool in (BIN, S3S_FS, AWS):
        if not Path(tool).exists():
            raise SystemExit(f"s3: {tool} missing (BENCH_ONLY=S3 bash bench/run builds and installs it)")
    if not shutil.which("rclone"):
        raise SystemExit("s3: rclone missing (BENCH_ONLY=S3 bash bench/run installs it)")
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    work = Path(tempfile.mkdtemp(prefix="fetchd-s3-", dir=base))
    res = {"machine": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "command": os.environ.get("S3_COMMAND", "python3 bench/s3.py"),
                       "cores": os.cpu_count(),
                       "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())},
           "sizes": {"big_mib": SIZE_MIB, "small_files": SMALL_FILES, "rounds": ROUNDS}}
    try:
        src = work / "src"
        say(f"making {SIZE_MIB} MiB of random data and {SMALL_FILES} objects of 4 KiB in {work}")
        digest = make_data(src)
        model, openssl_s = wan.machine(src / "big.bin")
        res["machine"].update(cpu=model, openssl_sha256_s=round(openssl_s, 3))
        res["versions"] = versions()
        store = work / "store"
        (store / BUCKET).mkdir(parents=True)
        store_proc, endpoint = start_s3s_fs(work, store, "s3s-fs", NODELAY)
        env = client_env(endpoint)
        t0 = time.monotonic()
        run(["rclone", "copyto", str(src / "big.bin"), f"s3:{BUCKET}/big.bin"], env)
        run(["rclone", "copy", str(src / "small"), f"s3:{BUCKET}/small/", "--transfers", "16"], env)
        stored = sum(1 for _ in (work / "store").glob(".bucket-*.internal.json"))
        if stored < SMALL_FILES + 1:
            raise SystemExit(f"s3: s3s-fs keeps an ETag for {stored} of {SMALL_FILES + 1} objects")
        say(f"uploaded through the S3 API in {time.monotonic() - t0:.1f} s")
        (src / "big.bin").unlink()
        measure(res, work, env, endpoint, src, digest, store_proc.pid)
        if NODELAY:
            stock_proc, stock_endpoint = start_s3s_fs(work, store, "s3s-fs-stock", False)
            stock(res, work, stock_endpoint, src, stock_proc.pid)
        keys = [f"small/{p.relative_to(src / 'small')}" for p in sorted((src / "small").rglob("*.bin"))]
        res["store_alone"] = {"with TCP_NODELAY" if NODELAY else "stock": store_alone(endpoint, keys, SIZE_MIB << 20, 8)}
        if NODELAY:
            res["store_alone"]["stock"] = store_alone(stock_endpoint, keys, SIZE_MIB << 20, 8)
        say(f"store alone: {res['store_alone']}")
    finally:
        wan.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    res["machine"]["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    summarise(res)
    wan.write_results(OUT, "s3", res, report(res))


if __name__ == "__main__":
    main()
