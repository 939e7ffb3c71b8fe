#!/usr/bin/env bash
# Two fetchd builds side by side on the delta workloads, in one run:
#
#   bash bench/ab_delta.sh OLD_FETCHD NEW_FETCHD [ROUNDS]
#
# Makes a 1 GiB random old file and its D1 (100 scattered 4 KiB overwrites),
# D2 (1 MiB inserted in the middle) and D4 (the same bytes) versions under a
# temporary folder, serves them with NEW_FETCHD on loopback, then for each
# round and workload runs `get` with OLD, then NEW, onto a fresh copy of the
# old file (mtime a year back, `sync` before each run), plus a whole-file get
# (`--whole-file`, the D2 file). Prints the median wall seconds of each.
set -euo pipefail
old=$1 new=$2 rounds=${3:-3}
work=$(mktemp -d "${TMPDIR:-/tmp}/fetchd-ab-XXXXXX")
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/srv" "$work/cli"
python3 - "$work" <<'PY'
import random, shutil, sys
w = sys.argv[1]
rng = random.Random(7)
with open(f"{w}/cli/old.bin", "wb") as f:
    for _ in range(1024):
        f.write(rng.randbytes(1 << 20))
shutil.copyfile(f"{w}/cli/old.bin", f"{w}/srv/d1.bin")
shutil.copyfile(f"{w}/cli/old.bin", f"{w}/srv/d4.bin")
with open(f"{w}/srv/d1.bin", "r+b") as f:
    for _ in range(100):
        f.seek(rng.randrange(0, (1 << 30) - 4096))
        f.write(rng.randbytes(4096))
old = open(f"{w}/cli/old.bin", "rb").read()
mid = len(old) // 2
open(f"{w}/srv/d2.bin", "wb").write(old[:mid] + rng.randbytes(1 << 20) + old[mid:])
PY
"$new" serve --root "$work/srv" --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
server=$!
for _ in $(seq 100); do grep -q 'listening on' "$work/serve.out" && break; sleep 0.1; done
addr=$(grep -o '127.0.0.1:[0-9]*' "$work/serve.out" | head -1)
for _ in $(seq "$rounds"); do
  for w in d1 d2 d4 whole; do
    for b in old new; do
      bin=$old; [ "$b" = new ] && bin=$new
      name=$w.bin extra=
      [ "$w" = whole ] && name=d2.bin extra=--whole-file
      cp "$work/cli/old.bin" "$work/cli/x.bin"
      touch -d '1 year ago' "$work/cli/x.bin"
      sync
      /usr/bin/time -f "$w $b %e" -a -o "$work/times" \
        "$bin" get --server "http://$addr" "$name" -o "$work/cli/x.bin" $extra 2>/dev/null
      rm "$work/cli/x.bin"
    done
  done
done
python3 - "$work/times" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    w, b, t = line.split()
    runs.setdefault((w, b), []).append(float(t))
for (w, b), ts in sorted(runs.items()):
    print(f"{w:6} {b:4} median {statistics.median(ts):.2f} s  runs {' '.join(f'{t:.2f}' for t in ts)}")
PY
