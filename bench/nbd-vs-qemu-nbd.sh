#!/usr/bin/env bash
# Side-by-side NBD benchmark: a sheep cluster (default one node, copies=1; set NODES and COPIES,
# e.g. NODES=3 COPIES=3) against qemu-nbd serving a raw file,
# both on the same disk, both with the host page cache (sheep: buffered I/O; qemu-nbd:
# --cache=writeback --aio=threads), driven by fio's nbd engine over loopback TCP.
# Each workload runs against both targets back to back, alternating which goes first, and the
# ratio sheep/qemu-nbd is printed. Usage: bench/nbd-vs-qemu-nbd.sh [runtime-seconds]
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${1:-15}
SIZE=${BENCH_SIZE:-1G}
NODES=${NODES:-1}
COPIES=${COPIES:-1}
WORK=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}" sheepdog-bench.XXXXXX)
DOG=target/release/dog
for tool in fio qemu-nbd qemu-img; do
    command -v $tool >/dev/null || { echo "$tool is missing: run .ci/setup" >&2; exit 1; }
done
[ -x $DOG ] || { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Ports: a block of NODES + 1 (the coordinator sits just below node 0).
PEER=$(python3 -c 'import random; print(random.randrange(20000, 40000))'); NBD=$((PEER + 100)); QPORT=$(free_port)

QEMU_PID=
cleanup() {
    [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null || true
    $DOG cluster down --dir "$WORK/cluster" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

$DOG cluster up --nodes "$NODES" --copies "$COPIES" --dir "$WORK/cluster" --base-port "$PEER" --nbd-base-port "$NBD" >/dev/null
$DOG vdi create bench "$SIZE" -p "$PEER" >/dev/null
qemu-img create -q -f raw "$WORK/base.raw" "$SIZE"
qemu-nbd -f raw -x bench -b 127.0.0.1 -p "$QPORT" -t -e 8 --cache=writeback --aio=threads "$WORK/base.raw" &
QEMU_PID=$!
for _ in $(seq 50); do nbdinfo "nbd://127.0.0.1:$QPORT/bench" >/dev/null 2>&1 && break; sleep 0.1; done

SHEEP_URI="nbd://127.0.0.1:$NBD/bench"
QEMU_URI="nbd://127.0.0.1:$QPORT/bench"

# fio JSON -> one figure: MiB/s for sequential jobs, IOPS for random ones, plus p50/p99 latency.
figure() {
    python3 -c '
import json, sys
job = json.load(sys.stdin)["jobs"][0]
side = job["write"] if job["write"]["io_bytes"] else job["read"]
lat = side["clat_ns"]["percentile"]
print("%.1f %.0f %.1f %.1f" % (side["bw_bytes"] / 2**20, side["iops"], lat["50.000000"] / 1000, lat["99.000000"] / 1000))'
}

run_fio() { # uri rw bs depth runtime [extra fio options]
    fio --name=bench --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" \
        --size="$SIZE" --runtime="$5" --time_based=1 --output-format=json ${6:-} \
        --output="$WORK/fio.json" >/dev/null 2>&1
    figure <"$WORK/fio.json"
}

# Fill both targets once, so neither is measured on first allocation.
run_fio "$SHEEP_URI" write 1M 8 "$RUNTIME" >/dev/null
run_fio "$QEMU_URI" write 1M 8 "$RUNTIME" >/dev/null

printf '%-28s %14s %14s %7s   %s\n' workload sheep qemu-nbd ratio "latency p50/p99 us (sheep | qemu-nbd)"
i=0
while read -r label rw bs depth unit extra; do
    if ((i % 2)); then
        q=$(run_fio "$QEMU_URI" "$rw" "$bs" "$depth" "$RUNTIME" "$extra"); s=$(run_fio "$SHEEP_URI" "$rw" "$bs" "$depth" "$RUNTIME" "$extra")
    else
        s=$(run_fio "$SHEEP_URI" "$rw" "$bs" "$depth" "$RUNTIME" "$extra"); q=$(run_fio "$QEMU_URI" "$rw" "$bs" "$depth" "$RUNTIME" "$extra")
    fi
    read -r s_bw s_iops s_p50 s_p99 <<<"$s"
    read -r q_bw q_iops q_p50 q_p99 <<<"$q"
    if [ "$unit" = MiB/s ]; then sv=$s_bw; qv=$q_bw; else sv=$s_iops; qv=$q_iops; fi
    ratio=$(python3 -c "print('%.2f' % ($sv / $qv))")
    printf '%-28s %8s %-5s %8s %-5s %6sx   %s/%s | %s/%s\n' "$label" "$sv" "$unit" "$qv" "$unit" "$ratio" "$s_p50" "$s_p99" "$q_p50" "$q_p99"
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
echo "sheep: $NODES node(s), $COPIES copies, client on node 0; backing store: $(df --output=source,fstype "$WORK" | tail -1); cache: host page cache on both (sheep buffered, qemu-nbd --cache=writeback); size $SIZE; ${RUNTIME}s per run"
