#!/usr/bin/env bash
# What the CSI attach path costs: fio with direct=1 (libaio) on the block device the CSI driver
# publishes (the volume file the local sheep serves through FUSE, under a loop device with direct
# I/O), side by side with
#   - the same cluster's NBD export of a second volume driven directly (fio's nbd engine): the
#     path without the attach layer, so published/nbd is the attach path's cost;
#   - a loop device over a raw file on the same disk, with direct I/O (the disk itself) and
#     buffered (the host page cache, the cache mode the sheep's store uses).
# A sheep keeps its objects in the host page cache and makes them durable on FLUSH, so only the
# flush-each workload (fsync after every write) reaches its disk; compare it with the loop device
# with direct I/O. Each workload runs on every target back to back, rotating which goes first.
# Usage: bench/csi-attach.sh [runtime-seconds]; NODES and COPIES as for nbd-vs-qemu-nbd.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${1:-15}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
NODES=${NODES:-1}
COPIES=${COPIES:-1}
WORK=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}" sheepdog-csi-bench.XXXXXX)
DOG=target/release/dog
CSI=target/release/sheepdog-csi
ATTACH=target/release/examples/csi_attach
for tool in fio losetup qemu-img; do
    command -v $tool >/dev/null || { echo "$tool is missing: run .ci/setup" >&2; exit 1; }
done
for bin in $DOG $CSI $ATTACH; do
    [ -x $bin ] || { echo "build first: cargo build --release --workspace --bins && cargo build --release -p sheepdog-e2e --example csi_attach" >&2; exit 1; }
done

PEER=$(python3 -c 'import random; print(random.randrange(20000, 40000))'); NBD=$((PEER + 100))
CSI_PID= LOOP_DIRECT= LOOP_CACHED=
cleanup() {
    [ -e "$WORK/pod/dev" ] && $ATTACH "$WORK/csi.sock" down bench "$WORK/staging" "$WORK/pod/dev" || true
    [ -n "$CSI_PID" ] && kill "$CSI_PID" 2>/dev/null && wait "$CSI_PID" 2>/dev/null || true
    for dev in $LOOP_DIRECT $LOOP_CACHED; do losetup -d "$dev" || true; done
    $DOG cluster down --dir "$WORK/cluster" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

$DOG cluster up --nodes "$NODES" --copies "$COPIES" --dir "$WORK/cluster" --base-port "$PEER" --nbd-base-port "$NBD" >/dev/null
$DOG vdi create nbd "${SIZE_MIB}M" -p "$PEER" >/dev/null
$CSI all --endpoint "unix://$WORK/csi.sock" --node-id bench --cluster "127.0.0.1:$PEER" \
    --state-dir "$WORK/csi-state" 2>"$WORK/csi.log" &
CSI_PID=$!
for _ in $(seq 100); do [ -S "$WORK/csi.sock" ] && break; sleep 0.1; done
mkdir -p "$WORK/pod"
$ATTACH "$WORK/csi.sock" up bench "$SIZE_MIB" "$WORK/staging" "$WORK/pod/dev"
qemu-img create -q -f raw "$WORK/base.raw" "${SIZE_MIB}M"
LOOP_DIRECT=$(losetup --direct-io=on --show -f "$WORK/base.raw")
qemu-img create -q -f raw "$WORK/cached.raw" "${SIZE_MIB}M"
LOOP_CACHED=$(losetup --direct-io=off --show -f "$WORK/cached.raw")

# fio JSON -> one figure: MiB/s for sequential jobs, IOPS for random ones, plus p50/p99 latency.
figure() {
    python3 -c '
import json, sys
job = json.load(sys.stdin)["jobs"][0]
side = job["write"] if job["write"]["io_bytes"] else job["read"]
lat = side["clat_ns"]["percentile"]
print("%.1f %.0f %.0f %.0f" % (side["bw_bytes"] / 2**20, side["iops"], lat["50.000000"] / 1000, lat["99.000000"] / 1000))'
}

run_fio() { # target rw bs depth runtime [extra fio options]
    local engine
    case "$1" in
        nbd://*) engine=(--ioengine=nbd --uri="$1") ;;
        *) engine=(--ioengine=libaio --direct=1 --filename="$1") ;;
    esac
    fio --name=bench "${engine[@]}" --rw="$2" --bs="$3" --iodepth="$4" \
        --size="${SIZE_MIB}M" --runtime="$5" --time_based=1 --output-format=json ${6:-} \
        --output="$WORK/fio.json" >/dev/null 2>&1
    figure <"$WORK/fio.json"
}

TARGETS=("$WORK/pod/dev" "nbd://127.0.0.1:$NBD/nbd" "$LOOP_DIRECT" "$LOOP_CACHED")
# Fill every target once, so none is measured on first allocation.
for t in "${TARGETS[@]}"; do run_fio "$t" write 1M 8 "$RUNTIME" >/dev/null; done

printf '%-28s %11s %11s %11s %11s %6s %8s %8s   %s\n' workload published nbd loop-direct loop-cached unit pub/nbd pub/loop "p50/p99 us (published | nbd | loop-direct)"
i=0
while read -r label rw bs depth unit extra; do
    declare -A got=()
    for k in 0 1 2 3; do
        t=$(((k + i) % 4))
        got[$t]=$(run_fio "${TARGETS[$t]}" "$rw" "$bs" "$depth" "$RUNTIME" "$extra")
    done
    values=() lat=()
    for t in 0 1 2 3; do
        read -r bw iops p50 p99 <<<"${got[$t]}"
        if [ "$unit" = MiB/s ]; then values+=("$bw"); else values+=("$iops"); fi
        lat+=("$p50/$p99")
    done
    ratios=$(python3 -c "v=[float(x) for x in '${values[*]}'.split()]; print('%.2fx %.2fx' % (v[0] / v[1], v[0] / v[2]))")
    read -r to_nbd to_loop <<<"$ratios"
    printf '%-28s %11s %11s %11s %11s %6s %8s %8s   %s | %s | %s\n' "$label" "${values[@]}" "$unit" "$to_nbd" "$to_loop" "${lat[0]}" "${lat[1]}" "${lat[2]}"
    unset got
    i=$((i + 1))
done <<'JOBS'
seq-write-1M-qd8 write 1M 8 MiB/s
seq-read-1M-qd8 read 1M 8 MiB/s
rand-read-4K-qd32 randread 4k 32 IOPS
rand-write-4K-qd32 randwrite 4k 32 IOPS
rand-read-4K-qd1 randread 4k 1 IOPS
rand-write-4K-qd1 randwrite 4k 1 IOPS
rand-write-4K-qd1-flush-each randwrite 4k 1 IOPS --fsync=1
JOBS
echo "published: sheepdog-csi Block volume (FUSE volume file + loop device, direct I/O); nbd: the same cluster's NBD export, fio nbd engine over loopback TCP; loop-direct/loop-cached: loop device over a raw file, --direct-io=on/off; fio direct=1 libaio on every device"
echo "sheep: $NODES node(s), $COPIES copies, store in the host page cache, durable on FLUSH; backing store: $(df --output=source,fstype "$WORK" | tail -1); size ${SIZE_MIB} MiB; ${RUNTIME}s per run; kernel $(uname -r)"
