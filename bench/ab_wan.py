"""One large verified get by two or more fetchd builds side by side, on
loopback and through the delaying relay (examples/relay.rs) at each RTT.

    cargo build --release --example relay
    python3 bench/ab_wan.py ROUNDS OLD_BINARY NEW_BINARY [MORE...]
    AB_SIZE_MIB=1024 AB_RTTS_MS=0,50,100 python3 bench/ab_wan.py 5 old new

Makes one random file on /dev/shm, starts one `fetchd serve` per binary and,
per RTT, one relay per server; after one warm-up, each round runs every
binary in turn (its own server, `get -o DEST --quiet`, DEST removed after
its sha256 is checked). Prints the median wall of each binary at each RTT
(0 = loopback, no relay) and the server's peak RSS (VmHWM, reset before each
run). Everything it started is stopped, and the data removed, at the end.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import wan   # bench/wan.py: process start/stop, relay, /proc helpers

rounds = int(sys.argv[1])
bins = [os.path.abspath(b) for b in sys.argv[2:]]
size_mib = int(os.environ.get("AB_SIZE_MIB", "1024"))
rtts = [int(x) for x in os.environ.get("AB_RTTS_MS", "0,50,100").split(",")]
work = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
try:
    data = work / "data"
    data.mkdir()
    with open(data / "big.bin", "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    want = wan.sha256(data / "big.bin")
    servers = []
    for b in bins:
        p = wan.spawn([b, "serve", "--root", str(data), "--listen", "127.0.0.1:0"],
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        servers.append((b, p, wan.first_line(p, "listening on ")))
    dest = work / "out.bin"
    for rtt in rtts:
        urls = [f"http://{addr}" if rtt == 0 else "http://" + wan.relay(addr, rtt // 2)
                for _, _, addr in servers]
        walls = {b: [] for b in bins}
        rss = {b: [] for b in bins}
        for r in range(rounds + 1):
            for (b, p, _), url in zip(servers, urls):
                wan.clear_hwm(p.pid)
                t0 = time.monotonic()
                subprocess.run([b, "--server", url, "get", "big.bin", "-o", str(dest), "--quiet"],
                               check=True, stdin=subprocess.DEVNULL)
                took = time.monotonic() - t0
                if wan.sha256(dest) != want:
                    raise SystemExit(f"{b}: wrong bytes")
                dest.unlink()
                if r > 0:   # round 0 is the warm-up
                    walls[b].append(took)
                    rss[b].append(wan.hwm_kib(p.pid))
        for b in bins:
            print(f"RTT {rtt:3} ms  {os.path.basename(b):>12}: wall median {statistics.median(walls[b]):.2f} s "
                  f"[{min(walls[b]):.2f}-{max(walls[b]):.2f}], server peak RSS "
                  f"{statistics.median(rss[b]) / 1024:.0f} MiB", flush=True)
finally:
    wan.stop_all()
    shutil.rmtree(work, ignore_errors=True)
