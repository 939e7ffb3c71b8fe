"""B1/B3 (and optionally B2) of two or more fetchd builds side by side, with
`rsync -a` from a daemon as the yardstick (and for B2 also `curl --parallel`
against nginx, B2's target).

    python3 bench/ab_bulk.py ROUNDS OLD_BINARY NEW_BINARY [MORE...]
    AB_MODE=server python3 bench/ab_bulk.py ...   # client: the first binary
    AB_MODE=client python3 bench/ab_bulk.py ...   # server: the first binary
    AB_WORKLOADS=B1,B2,B3 python3 bench/ab_bulk.py ...

Makes the B1 tree (10,000 random files of 4 KiB in 50 folders; B2: 100 of
10 MiB) on /dev/shm, starts one `fetchd serve` per binary and an rsync
daemon on 127.0.0.1, then in each of ROUNDS rounds (after one warm-up) runs
every contender in turn: B1 a fresh `get -r /` (the destination removed
before, untimed), B3 a rerun over the complete tree that contender wrote,
B2 a fresh `get -r /` of the large tree (and `curl --parallel
--parallel-max 16` of it from nginx with sendfile, as bench/bench.py runs it). AB_MODE (default `both`) says
which side changes: `both` pairs each binary with its own server. Prints
the median wall of each, its median ratio to rsync's run of the same round,
and the median server CPU (utime + stime from /proc). Every process it
started is stopped and the data removed at the end.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench   # bench/bench.py: its nginx set-up and process clean-up

rounds = int(sys.argv[1])
bins = {os.path.basename(b): os.path.abspath(b) for b in sys.argv[2:]}
first = next(iter(bins.values()))
mode = os.environ.get("AB_MODE", "both")
workloads = os.environ.get("AB_WORKLOADS", "B1,B3").split(",")
tck = os.sysconf("SC_CLK_TCK")
work = tempfile.mkdtemp(dir="/dev/shm")
trees = {"B1": (10000, 4 << 10, [f"d{a:02}/s{b}" for a in range(10) for b in range(5)]),
         "B2": (100, 10 << 20, [f"p{a}" for a in range(4)])}


def make_tree(root, spec):
    n, size, leaves = spec
    for i in range(n):
        d = os.path.join(root, leaves[i % len(leaves)])
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i // len(leaves):04}.bin"), "wb") as f:
            f.write(os.urandom(size))


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tck


procs = []
try:
    data = {}
    for w in sorted({"B2" if w == "B2" else "B1" for w in workloads}):
        data[w] = os.path.join(work, w)
        make_tree(data[w], trees[w])
    conf = os.path.join(work, "rsyncd.conf")
    with open(conf, "w") as f:
        f.write(f"use chroot = no\nuid = {os.getuid()}\ngid = {os.getgid()}\n" + "".join(
            f"[{w}]\n    path = {d}\n    read only = yes\n" for w, d in data.items()))
    rsync = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                              "--port=28731", f"--log-file={work}/rsyncd.log"])
    procs.append(rsync)
    servers = {}
    for name, b in bins.items():
        server_bin = first if mode == "client" else b
        for w, d in data.items():
            p = subprocess.Popen([server_bin, "serve", "--root", d, "--listen", "127.0.0.1:0"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(p)
            servers[name, w] = (p, "http://" + p.stdout.readline().strip().split()[-1])
    curl_cfg = os.path.join(work, "b2.curl")
    if "B2" in data:
        # nginx exactly as bench/bench.py runs it (sendfile on, one worker).
        bench.work = Path(work)
        nginx_url = bench.start_nginx(data["B2"]).url
        with open(curl_cfg, "w") as f:
            for d, _, files in os.walk(data["B2"]):
                for name in files:
                    rel = os.path.relpath(os.path.join(d, name), data["B2"])
                    f.write(f'url = "{nginx_url}/{rel}"\n'
                            f'output = "{work}/dest-B2-curl/{rel}"\n')
    time.sleep(0.3)

    def run(cmd):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[:2000]}")
        return time.perf_counter() - t0

    res = {}
    for i in range(rounds + 1):
        for w in workloads:
            tree = "B2" if w == "B2" else "B1"
            peers = [("rsync", None)] + ([("curl", None)] if w == "B2" else [])
            for name, b in list(bins.items()) + peers:
                dest = os.path.join(work, f"dest-{w}-{name}")
                if w != "B3" or not os.path.isdir(dest):
                    shutil.rmtree(dest, ignore_errors=True)
                    if w == "B3":   # the tree to rerun over, untimed
                        if b:
                            subprocess.run([first if mode == "server" else b, "--server",
                                            servers[name, tree][1], "get", "-r", "/", "-o", dest,
                                            "-q"], check=True)
                        else:
                            run(["rsync", "-a", f"rsync://127.0.0.1:28731/{tree}/", dest + "/"])
                if b:
                    client = first if mode == "server" else b
                    p, url = servers[name, tree]
                    c0 = cpu(p.pid)
                    wall = run([client, "--server", url, "get", "-r", "/", "-o", dest, "-q"])
                    server_cpu = cpu(p.pid) - c0
                elif name == "curl":
                    wall = run(["curl", "--no-progress-meter", "-f", "--parallel",
                                "--parallel-max", "16", "--create-dirs", "-K", curl_cfg])
                    server_cpu = 0.0
                else:
                    wall = run(["rsync", "-a", f"rsync://127.0.0.1:28731/{tree}/", dest + "/"])
                    server_cpu = 0.0
                if i:
                    res.setdefault((w, name), []).append((wall, server_cpu))
    for w in workloads:
        peers = ["rsync"] + (["curl"] if w == "B2" else [])
        for name in list(bins) + peers:
            r = res[w, name]
            line = f"{w} {name:>16}: wall median {statistics.median(x[0] for x in r):.3f} s"
            for peer in peers:
                ratios = [x[0] / y[0] for x, y in zip(r, res[w, peer])]
                line += (f", /{peer} median {statistics.median(ratios):.2f} "
                         f"[{min(ratios):.2f}-{max(ratios):.2f}]")
            print(line + f", server CPU median {statistics.median(x[1] for x in r):.2f} s")
finally:
    while bench.started:   # nginx, started by bench.start_nginx
        bench.stop(*bench.started.pop())
    for p in procs:
        p.terminate()   # fetchd serve and the rsync daemon exit cleanly on SIGTERM
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    shutil.rmtree(work, ignore_errors=True)
