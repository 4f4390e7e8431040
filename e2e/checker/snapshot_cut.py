#!/usr/bin/python3
"""Checks where a snapshot cuts a stream of writes, over NBD with libnbd (python3-libnbd).

  snapshot_cut.py URI SNAPSHOT_URI SECONDS BLOCKS -- DOG_SNAPSHOT_COMMAND...

Writes versioned 4 KiB blocks (block number, sequence number, CRC32) to URI one at a time,
for SECONDS. Halfway through, another thread runs the snapshot command, noting when it
started (t0) and returned (t1). Then it reads every block of SNAPSHOT_URI and checks the
snapshot's promise: each block holds at least the newest write acknowledged before t0, and
nothing issued after t1. It also checks that the volume itself holds every acknowledged
write. Prints a JSON summary; exits 1 if the snapshot command failed.
"""
import json
import random
import struct
import subprocess
import sys
import threading
import time
import zlib

import nbd

BLOCK = 4096


def record(block, seq):
    head = struct.pack(">QQ", block, seq)
    body = head + struct.pack(">I", zlib.crc32(head))
    return body + bytes(BLOCK - len(body))


def parse(data):
    if not any(data):
        return 0
    block, seq, crc = struct.unpack_from(">QQI", data)
    if zlib.crc32(struct.pack(">QQ", block, seq)) != crc:
        return None
    return seq


def main():
    uri, snapshot_uri, seconds, blocks = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    command = sys.argv[sys.argv.index("--") + 1:]
    h = nbd.NBD()
    h.connect_uri(uri)
    cut = {}

    def snapshot():
        time.sleep(seconds / 2)
        cut["t0"] = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True)
        cut["t1"] = time.monotonic()
        cut["rc"] = result.returncode
        cut["stderr"] = result.stderr

    thread = threading.Thread(target=snapshot)
    thread.start()
    writes = []  # (block, seq, issued, acknowledged)
    rng = random.Random(7)
    seq = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds or thread.is_alive():
        block = rng.randrange(blocks)
        seq += 1
        issued = time.monotonic()
        h.pwrite(record(block, seq), block * BLOCK)
        writes.append((block, seq, issued, time.monotonic()))
    thread.join()
    if cut["rc"] != 0:
        print(json.dumps({"error": "snapshot command failed", "stderr": cut["stderr"]}))
        sys.exit(1)
    t0, t1 = cut["t0"], cut["t1"]
    issued_at = {s: i for (_, s, i, _) in writes}
    newest_before, newest = {}, {}
    for block, s, issued, acked in writes:
        newest[block] = s
        if acked < t0:
            newest_before[block] = s
    snap = nbd.NBD()
    snap.connect_uri(snapshot_uri)
    violations = []
    for block in range(blocks):
        held = parse(snap.pread(BLOCK, block * BLOCK))
        live = parse(h.pread(BLOCK, block * BLOCK))
        if held is None:
            violations.append({"block": block, "problem": "corrupt block in the snapshot"})
            continue
        if held < newest_before.get(block, 0):
            violations.append({"block": block, "problem": "missing a write acknowledged before the snapshot",
                               "held": held, "acknowledged": newest_before[block]})
        if held and issued_at.get(held, 0) > t1:
            violations.append({"block": block, "problem": "holds a write issued after the snapshot returned",
                               "held": held})
        if live != newest.get(block, 0):
            violations.append({"block": block, "problem": "the volume lost an acknowledged write",
                               "held": live, "acknowledged": newest.get(block, 0)})
    print(json.dumps({
        "writes": len(writes),
        "acknowledged_before": sum(1 for w in writes if w[3] < t0),
        "issued_after": sum(1 for w in writes if w[2] > t1),
        "snapshot_seconds": round(t1 - t0, 3),
        "violations": violations[:20],
        "violation_count": len(violations),
    }))


if __name__ == "__main__":
    main()
