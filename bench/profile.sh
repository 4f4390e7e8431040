#!/usr/bin/env bash
# Profiles the gateway's hot path under 4 KiB random writes at queue depth 1 (fio's nbd engine),
# on NODES nodes with COPIES copies (default 3 and 3), release build with debug info:
#   - perf: `perf record -g` of node 0 (the gateway fio talks to) for the run; prints the
#     top functions by self time, and writes perf.data and folded stacks to OUT (default
#     bench/results/profile) for a flamegraph (`inferno-flamegraph < OUT/stacks.folded`);
#   - callgrind (CALLGRIND=1): node 0 runs under valgrind for a fixed count of writes, and
#     the instruction count per write is printed: a figure that does not depend on noise.
# Usage: bench/profile.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${1:-10}
NODES=${NODES:-3}
COPIES=${COPIES:-3}
OUT=${OUT:-bench/results/profile}
WORK=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}" sheepdog-profile.XXXXXX)
BIN=${BIN:-target/release}
DOG=$BIN/dog
SHEEP=$BIN/sheep
for tool in fio perf; do
    command -v $tool >/dev/null || { echo "$tool is missing: apt-get install fio linux-perf" >&2; exit 1; }
done
[ -x $DOG ] || { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }
PEER=$(python3 -c 'import random; print(random.randrange(20000, 40000))'); NBD=$((PEER + 100))
mkdir -p "$OUT"
trap '$DOG cluster down --dir "$WORK/cluster" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

$DOG cluster up --nodes "$NODES" --copies "$COPIES" --dir "$WORK/cluster" --base-port "$PEER" --nbd-base-port "$NBD" >/dev/null
$DOG vdi create bench 1G -p "$PEER" >/dev/null
URI="nbd://127.0.0.1:$NBD/bench"
# Allocate every object first, so that the profile is of steady-state overwrites.
fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 --size=1G >/dev/null 2>&1

if [ "${CALLGRIND:-0}" = 1 ]; then
    command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
    # Restart node 0 under callgrind with the same command line.
    pid=$(cat "$WORK/cluster/node0/sheep.pid")
    mapfile -d '' args < "/proc/$pid/cmdline"
    kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" "$SHEEP" "${args[@]:1}" \
        >"$WORK/valgrind.log" 2>&1 &
    VG=$!
    for _ in $(seq 300); do $DOG vdi list -p "$PEER" >/dev/null 2>&1 && break; sleep 0.2; done
    COUNT=${COUNT:-2000}
    fio --name=warm --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=1 --number_ios=200 --size=1G >/dev/null 2>&1
    callgrind_control -z "$VG" >/dev/null
    fio --name=prof --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=1 --number_ios="$COUNT" --size=1G --output-format=json --output="$WORK/prof.json" >"$WORK/fio.log" 2>&1 || { cat "$WORK/fio.log" "$WORK/valgrind.log" >&2; exit 1; }
    python3 -c "import json,sys; print(\"fio wrote\", json.load(open(sys.argv[1]))[\"jobs\"][0][\"write\"][\"total_ios\"], \"requests\")" "$WORK/prof.json"
    rm -f "$OUT"/callgrind.out*
    callgrind_control -d "$VG" >/dev/null
    sleep 1
    dump=$(ls -t "$OUT"/callgrind.out* | head -1)
    cp "$dump" "$OUT/callgrind.writes"
    dump="$OUT/callgrind.writes"
    kill "$VG"; wait "$VG" 2>/dev/null || true
    total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo "callgrind: $COUNT 4 KiB writes, copies=$COPIES, nodes=$NODES: $((total / COUNT)) instructions per write on the gateway node"
    echo "top functions by their own instructions (valgrind 3.19 also lists the thread entry points at 100%; they are left out):"
    callgrind_annotate --threshold=100 "$dump" 2>/dev/null | sed -n "/file:function/,\$p" | grep -v "(100.0%)" | grep "%)" | head -15 | cut -c1-160
    exit 0
fi

pid=$(cat "$WORK/cluster/node0/sheep.pid")
perf record -F 999 -g --call-graph dwarf,16384 -p "$pid" -o "$OUT/perf.data" -- sleep "$RUNTIME" >/dev/null 2>&1 &
PERF=$!
sleep 0.5
fio --name=prof --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=1 --size=1G \
    --runtime="$((RUNTIME - 1))" --time_based=1 --output-format=json --output="$WORK/fio.json" >/dev/null 2>&1
wait "$PERF" || true
python3 -c '
import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print("fio 4 KiB random write qd1, copies=%s: %.0f IOPS, p50 %.1f us" % (sys.argv[2], w["iops"], w["clat_ns"]["percentile"]["50.000000"] / 1000))' "$WORK/fio.json" "$COPIES"
perf report -i "$OUT/perf.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | head -30
perf script -i "$OUT/perf.data" 2>/dev/null | python3 bench/fold_stacks.py > "$OUT/stacks.folded"
echo "folded stacks: $OUT/stacks.folded ($(wc -l < "$OUT/stacks.folded") lines)"
