#!/usr/bin/env bash
# Recovery speed against the cluster's own write throughput, in one run: a 4-node cluster
# (3 copies) is filled with DATA (default 1G) by fio's nbd engine (1 MiB sequential writes,
# queue depth 8: the write throughput), one node is killed with SIGKILL, and the time from the
# epoch that removes it until every node reports that epoch recovered is measured. The bytes
# re-replicated are the recovered objects times the object size. Usage: bench/recovery.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-1G}
WORK=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}" sheepdog-recovery.XXXXXX)
DOG=target/release/dog
[ -x $DOG ] || { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }
command -v fio >/dev/null || { echo "fio is missing: run .ci/setup" >&2; exit 1; }
PEER=$(python3 -c 'import random; print(random.randrange(20000, 40000))'); NBD=$((PEER + 100))
trap '$DOG cluster down --dir "$WORK/cluster" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

$DOG cluster up --nodes 4 --dir "$WORK/cluster" --base-port "$PEER" --nbd-base-port "$NBD" --failure-timeout 3s >/dev/null
$DOG vdi create data "$DATA" -p "$PEER" >/dev/null
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$NBD/data" --rw=write --bs=1M --iodepth=8 \
    --size="$DATA" --output-format=json --output="$WORK/fill.json" >/dev/null 2>&1
write_mibs=$(python3 -c "import json; print('%.1f' % (json.load(open('$WORK/fill.json'))['jobs'][0]['write']['bw_bytes'] / 2**20))")

epoch() { $DOG cluster info --json -p "$PEER" | python3 -c 'import json,sys; print(json.load(sys.stdin)["epoch"])'; }
before=$(epoch)
kill -9 "$(cat "$WORK/cluster/node3/sheep.pid")"
while [ "$(epoch)" = "$before" ]; do sleep 0.05; done
start=$(date +%s.%N)
while true; do
    status=$($DOG node recovery --json -p "$PEER")
    done_epoch=$(python3 -c "import json,sys; rows=json.loads(sys.argv[1]); print(all(r['reachable'] and r['recoveredEpoch']==r['epoch']>$before for r in rows))" "$status")
    [ "$done_epoch" = True ] && break
    sleep 0.05
done
end=$(date +%s.%N)
objects=$(python3 -c "import json,sys; print(sum(r['total'] for r in json.loads(sys.argv[1])))" "$status")
python3 - "$objects" "$start" "$end" "$write_mibs" <<'PY'
import sys
objects, start, end, write_mibs = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
mib = objects * 4
seconds = end - start
rate = mib / seconds
print(f"re-replicated {objects} objects ({mib} MiB) in {seconds:.2f} s: {rate:.1f} MiB/s = {rate * 60 / 1024:.2f} GiB/min")
print(f"cluster write throughput (3 copies, fio 1M qd8): {write_mibs} MiB/s")
print(f"recovery / write throughput: {rate / write_mibs:.2f}x")
PY
echo "4 nodes, 3 copies, one killed; failure timeout 3s (not counted); backing store: $(df --output=source,fstype "$WORK" | tail -1); page cache"
