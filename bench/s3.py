"""Object-store roots (issue 17), side by side on loopback, against the
clients people already use for a store.

    python3 bench/s3.py [ROUNDS]            # or: BENCH_ONLY=S3 bash bench/run

Needs target/release/fetchd, s3s-fs (target/tools/s3s-fs-0.14.1, as .ci/run
installs it), rclone (Debian) and aws (awscli from PyPI) on PATH. Starts
s3s-fs over a folder on /dev/shm and `fetchd serve --root s3://bkt` against
it, then, after one warm-up, in each of ROUNDS (3) rounds:

- O1: a 1 GiB object, verified: `fetchd get big.bin -o -` into /dev/null
  (the client checks the sha256) against `rclone cat s3:bkt/big.bin |
  sha256sum` and `aws s3 cp s3://bkt/big.bin - | sha256sum` (the store's
  own clients, straight from the S3 server). Goal: fetchd <= 1.0x.
- O2: 10,000 objects of 4 KiB, `fetchd get -r small -o OUT` into a fresh
  folder against `rclone copy s3:bkt/small OUT` (default --transfers).
  Goal: <= 0.5x.
- O3: the no-change rerun of O2's `get -r` on the same server: goal
  < 0.3 s, and the bytes the store sent for it, counted by a relay between
  a second fetchd server and s3s-fs (goal: no object bodies, far below the
  40 MB the objects hold). Also the rerun after that server restarted
  (objects fetchd did not upload are hashed again then).

Prints the CPU model, the one-core `openssl dgst -sha256` time of the 1 GiB
file and the medians, and writes bench/results/s3.md. Every process it
started is stopped and the data removed at the end.
"""
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FETCHD = os.path.join(ROOT, "target/release/fetchd")
S3S = os.environ.get("FETCHD_S3S_FS", os.path.join(ROOT, "target/tools/s3s-fs-0.14.1/bin/s3s-fs"))
KEY, SECRET = "bench", "bench-secret"
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
BIG_MIB = int(os.environ.get("BENCH_S3_MIB", "1024"))
SMALL = int(os.environ.get("BENCH_S3_SMALL", "10000"))

procs = []


def start(cmd, env=None, pattern=None):
    """Starts cmd; with pattern, waits for a line matching it (stdout or
    stderr) and returns (proc, match)."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs.append(p)
    if pattern is None:
        return p, None
    deadline = time.time() + 60
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            raise SystemExit(f"{cmd[0]} exited before printing {pattern!r}")
        m = re.search(pattern, line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
            return p, m
    raise SystemExit(f"{cmd[0]}: no {pattern!r} within 60 s")


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def timed(cmd, env=None, shell=False):
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {cmd}\n{r.stderr[-2000:]}")
    return wall, r.stdout


class CountingRelay:
    """A TCP relay on its own thread that counts server->client bytes."""

    def __init__(self, upstream_port):
        self.down = 0
        self.port = None
        self.upstream_port = upstream_port
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()

        async def pipe(reader, writer, count):
            try:
                while data := await reader.read(65536):
                    if count:
                        self.down += len(data)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def handle(cr, cw):
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            await asyncio.gather(pipe(cr, uw, False), pipe(ur, cw, True))

        async def main():
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await server.serve_forever()

        threading.Thread(target=lambda: self.loop.run_until_complete(main()), daemon=True).start()
        ready.wait(10)


def main():
    for tool in ("rclone", "aws", "openssl", "sha256sum"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found (BENCH_ONLY=S3 bash bench/run installs it)")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    work = tempfile.mkdtemp(dir="/dev/shm", prefix="fetchd-s3-bench-")
    try:
        data = os.path.join(work, "store")
        os.makedirs(os.path.join(data, "bkt"))
        s3, m = start([S3S, "--host", "127.0.0.1", "--port", "0", "--access-key", KEY, "--secret-key", SECRET, data],
                      env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"}, pattern=r"running at (http://[0-9.:]+)")
        endpoint = m.group(1)
        env = {**os.environ,
               "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true",
               "RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "Other",
               "RCLONE_CONFIG_S3_ENDPOINT": endpoint, "RCLONE_CONFIG_S3_ACCESS_KEY_ID": KEY,
               "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": SECRET, "RCLONE_CONFIG_S3_REGION": "us-east-1",
               "RUST_LOG": "warn"}
        # A CA bundle from the environment breaks rclone's plain-http client.
        env.pop("AWS_CA_BUNDLE", None)

        # The objects, uploaded through the S3 API (so the store keeps their ETags).
        big = os.path.join(work, "big.bin")
        with open(big, "wb") as f:
            for _ in range(BIG_MIB):
                f.write(os.urandom(1 << 20))
        openssl, _ = timed(["taskset", "-c", "0", "openssl", "dgst", "-sha256", big])
        small = os.path.join(work, "small")
        for i in range(SMALL):
            d = os.path.join(small, f"d{i % 50:02d}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
                f.write(os.urandom(4096))
        timed(["rclone", "copyto", big, "s3:bkt/big.bin"], env=env)
        timed(["rclone", "copy", small, "s3:bkt/small", "--transfers", "32"], env=env)
        os.remove(big)

        srv, m = start([FETCHD, "serve", "--root", "s3://bkt", "--listen", "127.0.0.1:0"], env=env,
                       pattern=r"listening on ([0-9.:]+)")
        url = "http://" + m.group(1)
        rows = {k: [] for k in ("fetchd O1", "rclone cat O1", "aws s3 cp O1", "fetchd O2", "rclone copy O2", "fetchd O3")}
        for rnd in range(ROUNDS + 1):
            r = {}
            r["fetchd O1"], _ = timed(f"{FETCHD} --server {url} get big.bin -o - > /dev/null", env=env, shell=True)
            r["rclone cat O1"], _ = timed("rclone cat s3:bkt/big.bin | sha256sum", env=env, shell=True)
            r["aws s3 cp O1"], _ = timed(f"aws --endpoint-url {endpoint} s3 cp s3://bkt/big.bin - | sha256sum", env=env, shell=True)
            out = os.path.join(work, "out")
            shutil.rmtree(out, ignore_errors=True)
            r["fetchd O2"], _ = timed([FETCHD, "--server", url, "get", "-r", "small", "-o", out, "--quiet"], env=env)
            r["fetchd O3"], _ = timed([FETCHD, "--server", url, "get", "-r", "small", "-o", out, "--quiet"], env=env)
            shutil.rmtree(out, ignore_errors=True)
            r["rclone copy O2"], _ = timed(["rclone", "copy", "s3:bkt/small", out], env=env)
            shutil.rmtree(out, ignore_errors=True)
            tag = "warm-up" if rnd == 0 else f"round {rnd}"
            print(tag, " ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)
            if rnd:
                for k, v in r.items():
                    rows[k].append(v)
        stop(srv)

        # O3's bytes: a second server whose store traffic a relay counts.
        relay = CountingRelay(int(endpoint.rsplit(":", 1)[1]))
        renv = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{relay.port}"}
        srv2, m = start([FETCHD, "serve", "--root", "s3://bkt", "--listen", "127.0.0.1:0"], env=renv,
                        pattern=r"listening on ([0-9.:]+)")
        url2 = "http://" + m.group(1)
        out = os.path.join(work, "out3")
        timed([FETCHD, "--server", url2, "get", "-r", "small", "-o", out, "--quiet"], env=env)
        before = relay.down
        rerun_wall, _ = timed([FETCHD, "--server", url2, "get", "-r", "small", "-o", out, "--quiet"], env=env)
        rerun_bytes = relay.down - before
        stop(srv2)
        srv3, m = start([FETCHD, "serve", "--root", "s3://bkt", "--listen", "127.0.0.1:0"], env=renv,
                        pattern=r"listening on ([0-9.:]+)")
        url3 = "http://" + m.group(1)
        before = relay.down
        restart_wall, _ = timed([FETCHD, "--server", url3, "get", "-r", "small", "-o", out, "--quiet"], env=env)
        restart_bytes = relay.down - before
        stop(srv3)

        med = {k: statistics.median(v) for k, v in rows.items()}
        rclone_v = subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout.split("\n")[0]
        aws_v = subprocess.run(["aws", "--version"], capture_output=True, text=True)
        aws_v = (aws_v.stdout or aws_v.stderr).split()[0]
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        lines = [
            "# Object-store roots (issue 17)", "",
            f"`python3 bench/s3.py {ROUNDS}` on {time.strftime('%Y-%m-%d')}: {cpu}, {os.cpu_count()} cores; "
            f"one-core `openssl dgst -sha256` of the {BIG_MIB} MiB file: {openssl:.2f} s. "
            f"fetchd {rev}, s3s-fs 0.14.1, {rclone_v}, {aws_v}; everything on loopback, data on /dev/shm. "
            f"Medians of {ROUNDS} rounds after a warm-up.", "",
            "| workload | fetchd | peer | ratio | goal |", "|---|---|---|---|---|",
            f"| O1 verified {BIG_MIB} MiB get | {med['fetchd O1']:.3f} s | rclone cat \\| sha256sum {med['rclone cat O1']:.3f} s | {med['fetchd O1'] / med['rclone cat O1']:.2f}x | <= 1.0x |",
            f"| O1 | | aws s3 cp - \\| sha256sum {med['aws s3 cp O1']:.3f} s | {med['fetchd O1'] / med['aws s3 cp O1']:.2f}x | <= 1.0x |",
            f"| O2 {SMALL} x 4 KiB get -r | {med['fetchd O2']:.3f} s | rclone copy {med['rclone copy O2']:.3f} s | {med['fetchd O2'] / med['rclone copy O2']:.2f}x | <= 0.5x |",
            f"| O3 no-change rerun | {med['fetchd O3']:.3f} s | | | < 0.3 s |",
            "", f"O3 through a counting relay (a second server, cache warmed by one get -r): rerun {rerun_wall:.3f} s, "
            f"the store sent {rerun_bytes:,} bytes (the objects hold {SMALL * 4096:,}). After that server restarted: "
            f"{restart_wall:.3f} s, {restart_bytes:,} bytes (objects fetchd did not upload are hashed again).", "",
            "Rounds: " + "; ".join(f"{k} " + ", ".join(f"{x:.3f}" for x in v) for k, v in rows.items()),
        ]
        text = "\n".join(lines) + "\n"
        print(text)
        os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
        with open(os.path.join(ROOT, "bench/results/s3.md"), "w") as f:
            f.write(text)
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
