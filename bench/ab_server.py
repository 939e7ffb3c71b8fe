"""Server CPU per GiB of two (or more) fetchd builds, side by side.

    python3 bench/ab_server.py PAIRS OLD_BINARY NEW_BINARY [MORE...]

Makes a 1 GiB random file on /dev/shm, starts one `fetchd serve` per binary
on 127.0.0.1:0, then downloads the file with `get -o -` (client: the first
binary, so only the server differs) from each server in turn, PAIRS rounds
after one warm-up, and prints the median wall time and the median server
CPU (utime + stime from /proc) of each. Every server it started is killed
and the data removed at the end.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

pairs = int(sys.argv[1])
bins = {os.path.basename(b): b for b in sys.argv[2:]}
client = sys.argv[2]
d = tempfile.mkdtemp(dir="/dev/shm")
big = os.path.join(d, "big")
subprocess.run(["head", "-c", str(1 << 30), "/dev/urandom"], stdout=open(big, "wb"), check=True)
tck = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tck


servers = {}
res = {k: [] for k in bins}
try:
    for name, b in bins.items():
        p = subprocess.Popen([b, "serve", "--root", d, "--listen", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        servers[name] = (p, p.stdout.readline().strip().split()[-1])
    for i in range(pairs + 1):
        for name in bins:
            p, addr = servers[name]
            c0, t0 = cpu(p.pid), time.perf_counter()
            subprocess.run([client, "get", "--server", f"http://{addr}", "big", "-o", "-"],
                           stdout=subprocess.DEVNULL, check=True)
            t1, c1 = time.perf_counter(), cpu(p.pid)
            if i:
                res[name].append((t1 - t0, c1 - c0))
    for name, r in res.items():
        print(f"{name}: wall median {statistics.median(x[0] for x in r):.3f} s, "
              f"server CPU median {statistics.median(x[1] for x in r):.3f} s/GiB")
finally:
    for p, _ in servers.values():
        p.kill()
        p.wait()
    os.remove(big)
    os.rmdir(d)
