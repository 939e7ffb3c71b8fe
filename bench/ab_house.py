"""W1, W2 and the tail latency of two (or more) fetchd builds, side by side:
the check that a restructuring changed nothing a user can measure.

    python3 bench/ab_house.py ROUNDS OLD_BINARY NEW_BINARY [MORE...]

(B1 and B3 side by side: bench/ab_bulk.py.) Makes a BENCH_SIZE_MIB (1024)
random file on /dev/shm and starts one `fetchd serve` per binary on
127.0.0.1:0; each binary is the client of its own server. In each of ROUNDS
rounds (after one warm-up), every binary in turn:

- W1: `get big -o -` into /dev/null (the client still verifies the sha256);
- W2: `get big -o DEST` onto /dev/shm (DEST removed before, untimed);
- tail: BENCH_TAIL_SAMPLES (50) lines appended one at a time to a log that
  `tail LOG -n 0` follows, each timed from the write until the line is on
  the follower's stdout.

Prints the CPU model, the one-core `openssl dgst -sha256` time of the test
file, and per binary the median W1 and W2 wall time and the p50/p99 of the
tail latency. Every process it started is stopped and the data removed.
"""
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

rounds = int(sys.argv[1])
bins = sys.argv[2:]
names = [f"{i}:{os.path.basename(os.path.dirname(os.path.dirname(b))) or b}" for i, b in enumerate(bins)]
size_mib = int(os.environ.get("BENCH_SIZE_MIB", "1024"))
samples = int(os.environ.get("BENCH_TAIL_SAMPLES", "50"))

d = tempfile.mkdtemp(dir="/dev/shm")
root = os.path.join(d, "root")
os.mkdir(root)
big = os.path.join(root, "big")
subprocess.run(["head", "-c", str(size_mib << 20), "/dev/urandom"], stdout=open(big, "wb"), check=True)
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
t0 = time.perf_counter()
subprocess.run(["taskset", "-c", "0", "openssl", "dgst", "-sha256", big], stdout=subprocess.DEVNULL, check=True)
sha_secs = time.perf_counter() - t0

procs = []


def wait_line(stream, timeout):
    """The next line of a pipe, or None after `timeout` seconds."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else None


servers = []
try:
    for b in bins:
        p = subprocess.Popen([b, "serve", "--root", root, "--listen", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(p)
        line = wait_line(p.stdout, 30)
        if not line or "listening on" not in line:
            sys.exit(f"{b}: no `listening on` line")
        servers.append("http://" + line.strip().split()[-1])

    w1 = {n: [] for n in names}
    w2 = {n: [] for n in names}
    for r in range(rounds + 1):
        order = list(range(len(bins)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            t = time.perf_counter()
            subprocess.run([bins[i], "get", "--server", servers[i], "big", "-o", "-"],
                           stdout=subprocess.DEVNULL, check=True)
            if r:
                w1[names[i]].append(time.perf_counter() - t)
            dest = os.path.join(d, f"out{i}")
            if os.path.exists(dest):
                os.remove(dest)
            t = time.perf_counter()
            subprocess.run([bins[i], "get", "--server", servers[i], "big", "-o", dest, "--quiet"],
                           check=True)
            if r:
                w2[names[i]].append(time.perf_counter() - t)
            os.remove(dest)

    lat = {n: [] for n in names}
    followers = []
    for i, b in enumerate(bins):
        log = os.path.join(root, f"log{i}")
        open(log, "w").close()
        f = subprocess.Popen([b, "tail", "--server", servers[i], f"log{i}", "-n", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(f)
        followers.append((log, f))
    # A first line each, so that every follower is surely following.
    for i, (log, f) in enumerate(followers):
        deadline = time.time() + 30
        while time.time() < deadline:
            with open(log, "a") as w:
                w.write("ready\n")
            if wait_line(f.stdout, 0.5):
                break
        else:
            sys.exit(f"{bins[i]}: the tail never showed a line")
        # Drain the extra "ready" lines.
        while wait_line(f.stdout, 0.2):
            pass
    for s in range(samples):
        for i, (log, f) in enumerate(followers):
            with open(log, "a") as w:
                t = time.perf_counter()
                w.write(f"line {s}\n")
            line = wait_line(f.stdout, 5)
            if line is None or line.strip() != f"line {s}":
                sys.exit(f"{bins[i]}: tail showed {line!r}, not line {s}")
            lat[names[i]].append((time.perf_counter() - t) * 1000)
        time.sleep(0.02)

    print(f"CPU: {cpu_model}; openssl dgst -sha256 of the {size_mib} MiB file on one core: {sha_secs:.2f} s")
    print(f"{'build':<24} {'W1 median s':>12} {'W2 median s':>12} {'tail p50 ms':>12} {'tail p99 ms':>12}")
    for n in names:
        q = statistics.quantiles(lat[n], n=100)
        print(f"{n:<24} {statistics.median(w1[n]):>12.3f} {statistics.median(w2[n]):>12.3f} "
              f"{statistics.median(lat[n]):>12.2f} {q[98]:>12.2f}")
finally:
    for p in procs:
        p.kill()
        p.wait()
    shutil.rmtree(d, ignore_errors=True)
