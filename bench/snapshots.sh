#!/usr/bin/env bash
# Snapshot and clone latency, and space before and after deletes: a 3-node cluster
# (3 copies) holds a SIZE (default 10G) volume with DATA (default 1G) written by fio's nbd
# engine (1 MiB writes spread over the volume). Times `dog vdi snapshot` and `dog vdi clone`
# (ROUNDS each, the whole command: connect, lock, freeze, inode writes), then the first 4 KiB
# write to a clone (one object copied on write), then the stored bytes on every node as
# snapshots, clones and the volume are deleted. Usage: bench/snapshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${SIZE:-10G}
DATA=${DATA:-1G}
ROUNDS=${ROUNDS:-5}
WORK=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}" sheepdog-snapshots.XXXXXX)
DOG=target/release/dog
[ -x $DOG ] || { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }
command -v fio >/dev/null || { echo "fio is missing: run .ci/setup" >&2; exit 1; }
PEER=$(python3 -c 'import random; print(random.randrange(20000, 40000))'); NBD=$((PEER + 100))
trap '$DOG cluster down --dir "$WORK/cluster" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

$DOG cluster up --nodes 3 --dir "$WORK/cluster" --base-port "$PEER" --nbd-base-port "$NBD" --failure-timeout 3s >/dev/null
$DOG vdi create vm "$SIZE" -p "$PEER" >/dev/null
# 1 MiB writes at random offsets until DATA is written: about DATA / 4 MiB objects or more.
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$NBD/vm" --rw=randwrite --bs=1M --iodepth=8 \
    --size="$SIZE" --io_size="$DATA" --randrepeat=1 --output-format=json --output="$WORK/fill.json" >/dev/null 2>&1
qemu-io -f raw -c "write -P 1 0 4M" "nbd://127.0.0.1:$NBD/vm" >/dev/null   # object 0, shared by every clone

allocated() { du -sB1 "$WORK"/cluster/node*/obj | awk '{s+=$1} END {printf "%.0f", s/1048576}'; }
ms() { python3 -c "import sys; print('%.1f' % ((float(sys.argv[2]) - float(sys.argv[1])) * 1000))" "$1" "$2"; }
time_ms() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); ms "$s" "$e"; }

echo "# snapshots and clones: 3 nodes, 3 copies, $SIZE volume with $DATA written (4 MiB objects), host page cache, ext4"
used=$($DOG vdi list --json -p "$PEER" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["used"] // 2**20)')
echo "volume used: $used MiB; allocated on disk by all nodes: $(allocated) MiB"
snap=(); clone=()
for i in $(seq 1 "$ROUNDS"); do
    snap+=("$(time_ms $DOG vdi snapshot -s "s$i" vm -p "$PEER")")
    clone+=("$(time_ms $DOG vdi clone -s "s$i" vm "c$i" -p "$PEER")")
done
echo "snapshot latency ms (each of $ROUNDS): ${snap[*]}"
echo "clone latency ms (each of $ROUNDS): ${clone[*]}"
echo "for scale, dog cluster info ms: $(time_ms $DOG cluster info -p "$PEER") (one gRPC round trip and process start)"
cow=$(time_ms qemu-io -f raw -c "write -P 7 0 4k" "nbd://127.0.0.1:$NBD/c1")
owned=$(time_ms qemu-io -f raw -c "write -P 7 8k 4k" "nbd://127.0.0.1:$NBD/c1")
echo "qemu-io run with one 4 KiB write to a clone, ms: $cow when it copies the 4 MiB object, $owned when the clone owns it"
echo "allocated after $ROUNDS snapshots and clones: $(allocated) MiB"
for i in $(seq 1 "$ROUNDS"); do $DOG vdi delete "c$i" -p "$PEER"; done
echo "allocated after deleting the clones: $(allocated) MiB"
for i in $(seq 1 "$ROUNDS"); do $DOG vdi delete -s "s$i" vm -p "$PEER"; done
echo "allocated after deleting the snapshots (the volume still reads their objects): $(allocated) MiB"
$DOG vdi delete vm -p "$PEER"
echo "allocated after deleting the volume: $(allocated) MiB; object files left: $(find "$WORK"/cluster/node*/obj -type f | wc -l)"
