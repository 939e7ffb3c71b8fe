#!/usr/bin/env python3
"""Fleets: one command over many servers, side by side with what people use today.

    cargo build --release --bin fetchd --example relay
    python3 bench/fleet.py            # or: BENCH_ONLY=FLEET bash bench/run

F1  striping: a FLEET_SIZE_MIB (1024) file from 3 replicas, each behind its own relay limited to
    FLEET_RATE_MIB (100) MiB/s (`examples/relay.rs --rate-down`, one rate per relay over all of
    its connections: a 100 MiB/s link to each host). Contenders, interleaved, FLEET_ROUNDS (3)
    rounds after a warm-up, median wall time: `fetchd get` from one replica, `fetchd get` from
    the three (verified against the agreed sha256), and `aria2c` from three nginx mirrors behind
    the same kind of relay (`-s 6 -x 2`, its split over mirrors), with and without aria2c's own
    `--checksum=sha-256=` check. Output on tmpfs.
F2  put to 10 servers: a FLEET_PUT_MIB (256) file uploaded by one `fetchd put` to 1 server and to
    10 servers, and by 10 separate `fetchd put`s at once (what a loop over hosts does), tmpfs
    roots, --force, FLEET_ROUNDS rounds, median wall and client CPU. Each server behind its own
    relay limited to FLEET_PUT_RATE_MIB (50) MiB/s upwards (0: plain loopback, where the 10
    servers' own hashing on this machine's cores sets the time).
F3  fan-out tail: FLEET_TAILS (100) `fetchd serve` processes, one `fetchd tail --json -n 1` over
    all of them; start-up = client start until the last line of every server is printed; then
    every server's log gets one line a second (FLEET_TAIL_SECS, 20) carrying its write time, and
    the latency is stdout arrival minus write time (CLOCK_MONOTONIC, one clock for every process);
    client peak RSS (VmHWM) at the end.

Writes bench/results/fleet.md and fleet.json.
"""

import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wan  # noqa: E402  (process start/stop, relay, /proc helpers)

REPO = wan.REPO
BIN = str(wan.BIN)
RELAY = str(wan.RELAY)
SIZE_MIB = int(os.environ.get("FLEET_SIZE_MIB", "1024"))
RATE_MIB = int(os.environ.get("FLEET_RATE_MIB", "100"))
ROUNDS = int(os.environ.get("FLEET_ROUNDS", "3"))
PUT_MIB = int(os.environ.get("FLEET_PUT_MIB", "256"))
PUT_SERVERS = int(os.environ.get("FLEET_PUT_SERVERS", "10"))
PUT_RATE_MIB = int(os.environ.get("FLEET_PUT_RATE_MIB", "50"))
TAILS = int(os.environ.get("FLEET_TAILS", "100"))
TAIL_SECS = int(os.environ.get("FLEET_TAIL_SECS", "20"))
ONLY = [x for x in os.environ.get("FLEET_ONLY", "F1,F2,F3").split(",") if x]
OUT = Path(os.environ.get("BENCH_OUT", REPO / "bench/results"))


def say(msg):
    print(f"fleet: {msg}", file=sys.stderr, flush=True)


def serve(root, extra=()):
    p = wan.spawn([BIN, "serve", "--root", str(root), "--listen", "127.0.0.1:0", *extra],
                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return p, wan.first_line(p, "listening on ")


def rate_relay(upstream, flag="--rate-down", mib=RATE_MIB):
    p = wan.spawn([RELAY, "--listen", "127.0.0.1:0", "--upstream", upstream,
                   flag, str(mib << 20)],
                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return wan.first_line(p, "relay on ")


def nginx(work, data, name):
    port = wan.free_port()
    tmp = work / f"{name}-tmp"
    tmp.mkdir()
    conf = work / f"{name}.conf"
    user = ""
    if os.geteuid() == 0:
        import grp
        import pwd
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    conf.write_text(f"""{user}
daemon off;
master_process on;
worker_processes 1;
pid {work}/{name}.pid;
error_log {work}/{name}-error.log warn;
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
    server {{ listen 127.0.0.1:{port}; root {data}; }}
}}
""")
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    wan.spawn([binary, "-p", str(work), "-e", f"{work}/{name}-error.log", "-c", str(conf)])
    wan.wait_port(port)
    return f"127.0.0.1:{port}"


def striping(work, res):
    data = work / "data"
    data.mkdir()
    big = data / "big.bin"
    with open(big, "wb") as f:
        for _ in range(SIZE_MIB):
            f.write(os.urandom(1 << 20))
    model, sha_s = wan.machine(big)
    digest = wan.sha256(big)
    res.update(cpu=model, openssl_sha256_s=round(sha_s, 3), size_mib=SIZE_MIB, rate_mib=RATE_MIB)
    fetchd = [f"r{i}=http://" + rate_relay(serve(data)[1]) for i in range(3)]
    mirrors = ["http://" + rate_relay(nginx(work, data, f"nginx{i}")) + "/big.bin"
               for i in range(3)]
    out = Path("/dev/shm") / f"fleet-bench-{os.getpid()}"
    out.mkdir()
    dest = out / "big.bin"

    def servers(n):
        return [a for s in fetchd[:n] for a in ("--server", s)]

    contenders = {
        "fetchd get, 1 replica": [BIN, *servers(1), "get", "big.bin", "-o", str(dest), "--force",
                                  "-q"],
        "fetchd get, 3 replicas": [BIN, *servers(3), "get", "big.bin", "-o", str(dest),
                                   "--force", "-q"],
        "aria2c, 3 nginx mirrors": ["aria2c", "-q", "-s", "6", "-x", "2", "-k", "16M",
                                    "--file-allocation=none", "--allow-overwrite=true",
                                    "-d", str(out), "-o", "big.bin", *mirrors],
        "aria2c --checksum, 3 nginx mirrors": ["aria2c", "-q", "-s", "6", "-x", "2", "-k", "16M",
                                               "--file-allocation=none",
                                               "--allow-overwrite=true",
                                               f"--checksum=sha-256={digest}",
                                               "-d", str(out), "-o", "big.bin", *mirrors],
    }
    times = {name: [] for name in contenders}
    try:
        for round_ in range(ROUNDS + 1):
            for name, argv in contenders.items():
                if dest.exists():
                    dest.unlink()
                took = wan.timed(argv)
                got = wan.sha256(dest)
                if got != digest:
                    raise SystemExit(f"fleet: {name} delivered a wrong file")
                if round_ > 0:
                    times[name].append(took)
                say(f"F1 {name}: {took:.2f} s" + (" (warm-up)" if round_ == 0 else ""))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    res["F1"] = {name: {"runs": [round(t, 3) for t in ts], "median": round(statistics.median(ts), 3)}
                 for name, ts in times.items()}


def put_many(work, res):
    src = Path("/dev/shm") / f"fleet-put-{os.getpid()}.bin"
    with open(src, "wb") as f:
        for _ in range(PUT_MIB):
            f.write(os.urandom(1 << 20))
    roots = []
    urls = []
    try:
        for i in range(PUT_SERVERS):
            root = Path("/dev/shm") / f"fleet-put-root-{os.getpid()}-{i}"
            root.mkdir()
            roots.append(root)
            addr = serve(root, ["--allow-upload"])[1]
            if PUT_RATE_MIB:
                addr = rate_relay(addr, "--rate-up", PUT_RATE_MIB)
            urls.append(f"s{i}=http://" + addr)

        def argv(servers):
            return [BIN, *[a for u in servers for a in ("--server", u)], "put", str(src),
                    "up.bin", "--force", "-q"]

        separate = " & ".join(" ".join(argv([u])) for u in urls) + " & wait"
        contenders = {
            "1 server": argv(urls[:1]),
            f"{PUT_SERVERS} servers, one fetchd put": argv(urls),
            f"{PUT_SERVERS} servers, {PUT_SERVERS} separate puts at once":
                ["bash", "-c", separate],
        }
        times = {name: [] for name in contenders}
        cpus = {name: [] for name in contenders}
        for round_ in range(ROUNDS + 1):
            for name, command in contenders.items():
                took, cpu = timed_cpu(command)
                if round_ > 0:
                    times[name].append(took)
                    cpus[name].append(cpu)
                say(f"F2 put to {name}: {took:.2f} s, client CPU {cpu:.2f} s"
                    + (" (warm-up)" if round_ == 0 else ""))
        digest = wan.sha256(src)
        for root in roots:
            if wan.sha256(root / "up.bin") != digest:
                raise SystemExit(f"fleet: {root}/up.bin is not the file")
        res["F2"] = {name: {"runs": [round(t, 3) for t in ts],
                            "median": round(statistics.median(ts), 3),
                            "client_cpu_s": round(statistics.median(cpus[name]), 3)}
                     for name, ts in times.items()}
    finally:
        src.unlink(missing_ok=True)
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def timed_cpu(argv):
    """Wall time and the CPU time (user + sys) of `argv` and its children."""
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    took = wan.timed(argv)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return took, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def fanout_tail(work, res):
    logs = []
    lines = []
    for i in range(TAILS):
        root = work / f"tail-{i}"
        root.mkdir()
        log = root / "app.log"
        log.write_text(f"ready {i}\n")
        logs.append(log)
        lines.append(f"h{i}=http://" + serve(root)[1])
    servers_file = work / "servers.txt"
    servers_file.write_text("# the fan-out fleet\n" + "\n".join(lines) + "\n")
    t0 = time.monotonic()
    client = wan.spawn([BIN, "tail", "--servers-file", str(servers_file), "--json", "-n", "1",
                        "app.log"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    fd = client.stdout.fileno()
    os.set_blocking(fd, False)
    buf = b""
    ready = set()
    latencies = []

    def pump(deadline):
        nonlocal buf
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                return
            chunk = os.read(fd, 1 << 16)
            now = time.monotonic_ns()
            if not chunk:
                raise SystemExit("fleet: the tail client exited")
            buf += chunk
            *whole, buf = buf.split(b"\n")
            for line in whole:
                obj = json.loads(line)
                text = obj["line"]
                if text.startswith("ready "):
                    ready.add(obj["server"])
                elif text.startswith("t "):
                    latencies.append((now - int(text.split()[1])) / 1e6)
            if len(ready) == TAILS and not latencies and deadline == start_deadline:
                return

    start_deadline = time.monotonic() + 30
    pump(start_deadline)
    startup = time.monotonic() - t0
    if len(ready) < TAILS:
        raise SystemExit(f"fleet: only {len(ready)} of {TAILS} servers followed within 30 s")
    say(f"F3 all {TAILS} following after {startup:.3f} s")
    # One line a second per server, spread evenly over the second.
    step = 1.0 / TAILS
    next_at = time.monotonic()
    end = next_at + TAIL_SECS
    i = 0
    while next_at < end:
        pump(next_at)
        with open(logs[i % TAILS], "a") as f:
            f.write(f"t {time.monotonic_ns()} from {i % TAILS}\n")
        i += 1
        next_at += step
    pump(time.monotonic() + 2)
    rss_mib = wan.hwm_kib(client.pid) / 1024
    client.terminate()
    client.wait(timeout=10)
    latencies.sort()
    if len(latencies) < i:
        raise SystemExit(f"fleet: {i} lines written, {len(latencies)} printed")

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))], 3)

    res["F3"] = {"servers": TAILS, "lines": len(latencies), "startup_s": round(startup, 3),
                 "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": round(latencies[-1], 3),
                 "client_rss_mib": round(rss_mib, 1)}
    say(f"F3 {res['F3']}")


def report(res):
    rows = ["# Fleets", "",
            f"CPU: {res.get('cpu', '?')}; one-core `openssl dgst -sha256` of the "
            f"{res.get('size_mib', SIZE_MIB)} MiB file: {res.get('openssl_sha256_s', '?')} s. "
            "Command: `python3 bench/fleet.py` (see its docstring).", ""]
    if "F1" in res:
        one = res["F1"]["fetchd get, 1 replica"]["median"]
        rows += [f"## F1: {res['size_mib']} MiB from 3 replicas, each link {res['rate_mib']} MiB/s",
                 "", "| contender | median s | runs | speed-up over 1 replica |", "|---|---|---|---|"]
        for name, r in res["F1"].items():
            rows.append(f"| {name} | {r['median']} | {r['runs']} | {one / r['median']:.2f}x |")
        rows.append("")
    if "F2" in res:
        link = f", each link {PUT_RATE_MIB} MiB/s" if PUT_RATE_MIB else ", loopback"
        rows += [f"## F2: put of a {PUT_MIB} MiB file{link}", "",
                 "| put to | median s | runs | client CPU s (median) |", "|---|---|---|---|"]
        for name, r in res["F2"].items():
            rows.append(f"| {name} | {r['median']} | {r['runs']} | {r['client_cpu_s']} |")
        runs = list(res["F2"].values())
        rows += ["", f"wall, one put to {PUT_SERVERS} : one put to 1 = "
                 f"{runs[1]['median'] / runs[0]['median']:.2f}; client CPU "
                 f"{runs[1]['client_cpu_s'] / max(runs[0]['client_cpu_s'], 1e-9):.2f}x. "
                 f"All {PUT_SERVERS} servers share this machine's cores.", ""]
    if "F3" in res:
        f3 = res["F3"]
        rows += [f"## F3: tail over {f3['servers']} servers, one line a second each", "",
                 "| start-up to all following | lines | p50 ms | p99 ms | max ms | client peak RSS |",
                 "|---|---|---|---|---|---|",
                 f"| {f3['startup_s']} s | {f3['lines']} | {f3['p50_ms']} | {f3['p99_ms']} | "
                 f"{f3['max_ms']} | {f3['client_rss_mib']} MiB |", ""]
    return "\n".join(rows)


def main():
    for tool in [BIN, RELAY]:
        if not Path(tool).exists():
            raise SystemExit(f"fleet: {tool} missing; cargo build --release --bin fetchd --example relay")
    work = Path(os.environ.get("FLEET_WORK", "/tmp")) / f"fleet-bench-{os.getpid()}"
    work.mkdir(parents=True)
    res = {}
    try:
        if "F1" in ONLY:
            striping(work, res)
        if "F2" in ONLY:
            put_many(work, res)
        if "F3" in ONLY:
            fanout_tail(work, res)
    finally:
        wan.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    wan.write_results(OUT, "fleet", res, report(res))


if __name__ == "__main__":
    main()
