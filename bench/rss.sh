#!/usr/bin/env bash
# Memory bound of one download: serves a 1 GiB random file and fetches it
# twice, once at full speed into a discard and once through a slow reader,
# and reports the peak RSS (VmHWM from /proc) of the server and the client.
#
#   bash bench/rss.sh            # 1 GiB, slow reader at 64 MiB/s
#   SIZE_MIB=256 RATE=20M bash bench/rss.sh
#
# Everything it starts is ended by PID; its data lives in a temp dir
# (on /dev/shm when there is one) that is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-1024}
RATE=${RATE:-64M}
cargo build --release --quiet
BIN=$PWD/target/release/fetchd

base=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && base=/dev/shm
work=$(mktemp -d "$base/fetchd-rss.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/root"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$work/root/big.bin"
want=$(sha256sum "$work/root/big.bin" | cut -d' ' -f1)

"$BIN" serve --root "$work/root" --listen 127.0.0.1:0 > "$work/serve.out" 2> "$work/serve.err" &
server=$!
pids+=("$server")
for _ in $(seq 200); do
    grep -q '^listening on ' "$work/serve.out" && break
    sleep 0.05
done
addr=$(sed -n 's/^listening on //p' "$work/serve.out")
[ -n "$addr" ] || { echo "server did not start" >&2; cat "$work/serve.err" >&2; exit 1; }

hwm() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$1/status"; }

# Runs one client in the background and samples its VmHWM until it exits.
measure() {
    local label=$1; shift
    local start end client client_peak=0 now
    start=$(date +%s.%N)
    "$BIN" --server "http://$addr" "$@" &
    client=$!
    while kill -0 "$client" 2>/dev/null; do
        now=$(hwm "$client" 2>/dev/null || echo 0)
        [ "${now:-0}" -gt "$client_peak" ] && client_peak=$now
        sleep 0.05
    done
    wait "$client"
    end=$(date +%s.%N)
    printf '| %s | %.2f s | %s MiB | %s MiB |\n' >&3 "$label" "$(echo "$end - $start" | bc)" \
        "$client_peak" "$(hwm "$server")"
}

exec 3>&1
echo "| run (${SIZE_MIB} MiB) | wall | client peak RSS | server peak RSS so far |"
echo "|---|---|---|---|"
measure "get -o - > /dev/null" get big.bin -o - --quiet > /dev/null
measure "get -o - --limit-rate $RATE" get big.bin -o - --quiet --limit-rate "$RATE" > /dev/null
measure "get -o FILE (tmpfs)" get big.bin -o "$work/copy.bin" --quiet
got=$(sha256sum "$work/copy.bin" | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "copy differs!" >&2; exit 1; }
echo
echo "sha256 verified: $got"
