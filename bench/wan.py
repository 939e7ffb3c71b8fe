#!/usr/bin/env python3
"""Long fat links: fetchd against scp and rsync over ssh through a delaying relay.

    BENCH_ONLY=WAN bash bench/run                  # installs sshd/rsync, builds, runs this
    python3 bench/wan.py                           # the same, once the binaries are built

Every contender crosses the same relay (`examples/relay.rs`, the fault-injecting
relay of the tests, run as its own process): it adds a one-way delay to every
chunk in both directions, pipelined, so the round trip is 2 x delay and the
link's rate is not limited by the relay. Workloads, each at RTT 50 ms and
100 ms (`WAN_RTTS_MS`), side by side in one run, `WAN_ROUNDS` rounds each,
medians reported:

  L1  one verified 1 GiB file (`WAN_SIZE_MIB`):  fetchd get   vs  scp  vs  rsync -e ssh
      (and fetchd on plain loopback, without the relay, for the 1.5x goal)
  L2  10,000 files of 4 KiB (`WAN_SMALL_FILES`), fresh:  fetchd get -r  vs  rsync -a -e ssh
      (at RTT 50 ms only, as the issue asks)

plus the fetchd server's peak RSS (VmHWM, reset before each run) during L1 at
each RTT and on loopback. ssh runs with its defaults (cipher, window: OpenSSH's
2 MiB channel window is what limits it on such links), against a private sshd on
127.0.0.1 with keys made for the run. Results: bench/results/wan.md and .json,
with the CPU model and the one-core `openssl dgst -sha256` time of the test file.
"""

import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "target/release/fetchd"
RELAY = REPO / "target/release/examples/relay"
SIZE_MIB = int(os.environ.get("WAN_SIZE_MIB", "1024"))
ROUNDS = int(os.environ.get("WAN_ROUNDS", "3"))
RTTS_MS = [int(x) for x in os.environ.get("WAN_RTTS_MS", "50,100").split(",") if x]
SMALL_FILES = int(os.environ.get("WAN_SMALL_FILES", "10000"))
OUT = Path(os.environ.get("BENCH_OUT", REPO / "bench/results"))
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]

started = []


def say(msg):
    print(f"wan: {msg}", file=sys.stderr, flush=True)


def spawn(argv, **kw):
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
    started.append(p)
    return p


def stop_all():
    for p in reversed(started):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def first_line(p, prefix, timeout=30):
    """The first stdout line of `p` that starts with `prefix`, read with a deadline."""
    deadline = time.monotonic() + timeout
    os.set_blocking(p.stdout.fileno(), False)
    buf = b""
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise SystemExit(f"wan: {p.args[0]} exited with {p.returncode} at start")
        chunk = p.stdout.read()
        if chunk:
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
        time.sleep(0.02)
    raise SystemExit(f"wan: no `{prefix}` line from {p.args[0]} within {timeout} s")


def wait_port(port, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"wan: nothing accepts on port {port}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def clear_hwm(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def relay(upstream, delay_ms):
    p = spawn([str(RELAY), "--listen", "127.0.0.1:0", "--upstream", upstream,
               "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return first_line(p, "relay on ")


def machine(big):
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                  if l.startswith("model name")), platform.processor())
    t0 = time.monotonic()
    taskset = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    subprocess.run(taskset + ["openssl", "dgst", "-sha256", str(big)], check=True,
                   stdout=subprocess.DEVNULL)
    return model, time.monotonic() - t0


def timed(argv, env=None):
    t0 = time.monotonic()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, env=env, timeout=1800)
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"wan: {' '.join(map(str, argv))} exited {r.returncode}:\n"
                         f"{r.stderr.decode(errors='replace')[-2000:]}")
    return took


def sha256(path):
    out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True)
    return out.stdout.split()[0]


def make_data(dest, size_mib, small_files, suffix=""):
    """`size_mib` MiB of random bytes at dest/big.bin and `small_files` random files of 4 KiB
    under dest/small, in 100 folders (d00/f00000SUFFIX, ...). Returns the big file's path."""
    (dest / "small").mkdir(parents=True)
    big = dest / "big.bin"
    with open(big, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    for i in range(small_files):
        d = dest / "small" / f"d{i % 100:02}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:05}{suffix}").write_bytes(os.urandom(4096))
    return big


def write_results(out, name, res, text):
    """Writes out/NAME.md (the report `text`) and out/NAME.json (`res`), and prints the report."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text if text.endswith("\n") else text + "\n")
    (out / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    print(text)


def main():
    for tool in (BIN, RELAY):
        if not tool.exists():
            raise SystemExit(f"wan: {tool} is missing: cargo build --release --examples")
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    work = Path(tempfile.mkdtemp(prefix="fetchd-wan-", dir=base))
    try:
        run(work)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


def run(work):
    data = work / "data"
    say(f"making {SIZE_MIB} MiB of random data and {SMALL_FILES} small files in {work}")
    big = make_data(data, SIZE_MIB, SMALL_FILES)
    want = sha256(big)
    model, openssl_s = machine(big)
    say(f"{model}; openssl dgst -sha256 of the file on one core: {openssl_s:.2f} s")

    # sshd on loopback, keys made for the run.
    keys = work / "ssh"
    keys.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "user")], check=True)
    shutil.copy(keys / "user.pub", keys / "authorized_keys")
    os.chmod(keys / "authorized_keys", 0o600)
    ssh_port = free_port()
    conf = keys / "sshd_config"
    conf.write_text(f"""Port {ssh_port}
ListenAddress 127.0.0.1
HostKey {keys}/host
AuthorizedKeysFile {keys}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile {keys}/sshd.pid
Subsystem sftp internal-sftp
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    spawn([sshd, "-D", "-e", "-f", str(conf)], stderr=open(work / "sshd.log", "wb"))
    wait_port(ssh_port)

    server = spawn([str(BIN), "serve", "--root", str(data), "--listen", "127.0.0.1:0"],
                   stdout=subprocess.PIPE, stderr=open(work / "serve.log", "wb"))
    fetchd_addr = first_line(server, "listening on ")
    user = os.environ.get("USER", "root")
    results = {"machine": {"cpu": model, "openssl_sha256_s": openssl_s, "size_mib": SIZE_MIB,
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
               "L1": {}, "L2": {}}

    def fetchd_get(url, dest):
        return [str(BIN), "--server", url, "get", "big.bin", "-o", str(dest), "--quiet"]

    def l1_round(label, argv, dest, measure_rss=False):
        if dest.exists():
            dest.unlink()
        if measure_rss:
            clear_hwm(server.pid)
        took = timed(argv)
        rss = hwm_kib(server.pid) if measure_rss else None
        if sha256(dest) != want:
            raise SystemExit(f"wan: {label}: wrong bytes in {dest}")
        dest.unlink()
        return took, rss

    out = work / "out"
    out.mkdir()
    # Loopback baseline.
    loop = {"fetchd": [], "rss_kib": []}
    for r in range(ROUNDS):
        took, rss = l1_round("loopback", fetchd_get(f"http://{fetchd_addr}", out / "big.bin"),
                             out / "big.bin", measure_rss=True)
        loop["fetchd"].append(took)
        loop["rss_kib"].append(rss)
        say(f"L1 loopback round {r + 1}: fetchd {took:.2f} s, server peak RSS {rss / 1024:.0f} MiB")
    results["L1"]["loopback"] = loop

    for rtt in RTTS_MS:
        f_url = "http://" + relay(fetchd_addr, rtt // 2)
        s_addr = relay(f"127.0.0.1:{ssh_port}", rtt // 2)
        s_port = s_addr.rsplit(":", 1)[1]
        ssh = ["ssh", "-p", s_port, "-i", str(keys / "user"), *SSH_OPTS]
        row = {"fetchd": [], "scp": [], "rsync": [], "rss_kib": []}
        for r in range(ROUNDS):
            took, rss = l1_round("fetchd", fetchd_get(f_url, out / "big.bin"), out / "big.bin",
                                 measure_rss=True)
            row["fetchd"].append(took)
            row["rss_kib"].append(rss)
            took_scp, _ = l1_round("scp", ["scp", "-q", "-P", s_port, "-i", str(keys / "user"),
                                           *SSH_OPTS, f"{user}@127.0.0.1:{big}", str(out / "big.bin")],
                                   out / "big.bin")
            row["scp"].append(took_scp)
            took_rsync, _ = l1_round("rsync", ["rsync", "--whole-file", "-e", " ".join(ssh),
                                               f"{user}@127.0.0.1:{big}", str(out / "big.bin")],
                                     out / "big.bin")
            row["rsync"].append(took_rsync)
            say(f"L1 RTT {rtt} ms round {r + 1}: fetchd {took:.2f} s (server peak {rss / 1024:.0f} MiB), "
                f"scp {took_scp:.2f} s, rsync {took_rsync:.2f} s")
        results["L1"][f"{rtt}ms"] = row

        if rtt == RTTS_MS[0]:
            l2 = {"fetchd": [], "rsync": []}
            for r in range(ROUNDS):
                for name in ("fetchd", "rsync"):
                    dest = out / f"small-{name}"
                    shutil.rmtree(dest, ignore_errors=True)
                    if name == "fetchd":
                        argv = [str(BIN), "--server", f_url, "get", "-r", "small", "-o", str(dest), "--quiet"]
                    else:
                        argv = ["rsync", "-a", "-e", " ".join(ssh), f"{user}@127.0.0.1:{data}/small/", f"{dest}/"]
                    took = timed(argv)
                    count = sum(1 for _ in dest.rglob("f*"))
                    if count != SMALL_FILES:
                        raise SystemExit(f"wan: L2 {name}: {count} of {SMALL_FILES} files")
                    l2[name].append(took)
                say(f"L2 RTT {rtt} ms round {r + 1}: fetchd {l2['fetchd'][-1]:.2f} s, rsync {l2['rsync'][-1]:.2f} s")
            results["L2"][f"{rtt}ms"] = l2
    report(results)


def med(xs):
    return statistics.median(xs)


def report(res):
    m = res["machine"]
    lines = [f"# Long fat links (bench/wan.py, {m['date']})", "",
             f"Machine: {m['cpu']}, {os.cpu_count()} CPUs; one-core `openssl dgst -sha256` of the "
             f"{m['size_mib']} MiB file: {m['openssl_sha256_s']:.2f} s. "
             f"Medians of {ROUNDS} rounds; every contender through the same delaying relay.", "",
             "## L1: one verified file", "",
             "| RTT | fetchd | scp | rsync -e ssh | fetchd / scp | fetchd / rsync | fetchd / own loopback | fetchd server peak RSS |",
             "|---|---|---|---|---|---|---|---|"]
    loop = res["L1"]["loopback"]
    lt = med(loop["fetchd"])
    lines.append(f"| loopback | {lt:.2f} s | | | | | 1.00 | {med(loop['rss_kib']) / 1024:.0f} MiB |")
    for rtt in RTTS_MS:
        row = res["L1"][f"{rtt}ms"]
        f, s, r = med(row["fetchd"]), med(row["scp"]), med(row["rsync"])
        lines.append(f"| {rtt} ms | {f:.2f} s ({m['size_mib'] / f:.0f} MiB/s) | {s:.2f} s | {r:.2f} s | "
                     f"{f / s:.2f} | {f / r:.2f} | {f / lt:.2f} | {med(row['rss_kib']) / 1024:.0f} MiB |")
    lines += ["", f"## L2: {SMALL_FILES:,} files of 4 KiB, fresh", "",
              "| RTT | fetchd get -r | rsync -a -e ssh | ratio |", "|---|---|---|---|"]
    for key, row in res["L2"].items():
        f, r = med(row["fetchd"]), med(row["rsync"])
        lines.append(f"| {key.replace('ms', ' ms')} | {f:.2f} s | {r:.2f} s | {f / r:.2f} |")
    write_results(OUT, "wan", res, "\n".join(lines) + "\n")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
