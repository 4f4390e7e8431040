#!/usr/bin/python3
"""Versioned-block workload checker over NBD, driven by libnbd (Debian python3-libnbd).

  workload.py write URI STATE SECONDS [BLOCKS]   write versioned blocks until SECONDS pass
  workload.py verify URI STATE                    read every block back and check it

Each 4 KiB block written holds (block number, sequence number, CRC32 of both); sequence
numbers only grow. `write` records the newest acknowledged sequence of every block, every
failed write (whose block may then hold either version), the longest stall between two
acknowledged writes, and stale reads: a read-back older than the newest acknowledged write.
`verify` reads every block and counts lost writes (older than acknowledged), corrupt blocks
and stale reads. Both print a JSON summary; the state file carries results between them.
"""
import json
import random
import struct
import sys
import time
import zlib

import nbd

BLOCK = 4096
HEADER = struct.Struct(">QQI")


def record(block, seq):
    head = struct.pack(">QQ", block, seq)
    body = head + struct.pack(">I", zlib.crc32(head))
    return body + bytes(BLOCK - len(body))


def parse(data):
    block, seq, crc = HEADER.unpack_from(data)
    if zlib.crc32(struct.pack(">QQ", block, seq)) != crc:
        return None
    return block, seq


def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def write(uri, state_path, seconds, blocks):
    h = connect(uri)
    acked, uncertain = {}, {}
    writes = errors = stale = 0
    seq = 0
    start = last_ok = time.monotonic()
    max_stall = 0.0
    rng = random.Random(42)
    while time.monotonic() - start < seconds:
        block = rng.randrange(blocks)
        seq += 1
        t0 = time.monotonic()
        try:
            h.pwrite(record(block, seq), block * BLOCK)
        except nbd.Error as e:
            errors += 1
            uncertain.setdefault(block, []).append(seq)
            print(f"write error after {t0 - start:.1f}s: {e}", file=sys.stderr)
            try:
                h.shutdown()
            except nbd.Error:
                pass
            time.sleep(0.5)
            h = connect(uri)
            continue
        now = time.monotonic()
        max_stall = max(max_stall, now - last_ok)
        last_ok = now
        acked[block] = seq
        writes += 1
        if writes % 10 == 0:
            probe = rng.choice(list(acked))
            got = parse(h.pread(BLOCK, probe * BLOCK))
            if got is None or got[1] < acked[probe]:
                stale += 1
    h.flush()
    h.shutdown()
    state = {"acked": acked, "uncertain": uncertain}
    with open(state_path, "w") as f:
        json.dump(state, f)
    return {"writes": writes, "errors": errors, "stale": stale, "max_stall_s": round(max_stall, 3)}


def verify(uri, state_path):
    with open(state_path) as f:
        state = json.load(f)
    acked = {int(b): s for b, s in state["acked"].items()}
    uncertain = {int(b): s for b, s in state["uncertain"].items()}
    h = connect(uri)
    lost = corrupt = 0
    for block, seq in acked.items():
        got = parse(h.pread(BLOCK, block * BLOCK))
        if got is None or got[0] != block:
            corrupt += 1
        elif got[1] < seq:
            lost += 1
        elif got[1] > seq and got[1] not in uncertain.get(block, []):
            corrupt += 1
    h.shutdown()
    return {"verified": len(acked), "lost": lost, "corrupt": corrupt}


def main():
    mode, uri, state = sys.argv[1:4]
    if mode == "write":
        blocks = int(sys.argv[5]) if len(sys.argv) > 5 else 4096
        result = write(uri, state, float(sys.argv[4]), blocks)
    elif mode == "verify":
        result = verify(uri, state)
    else:
        sys.exit(f"unknown mode {mode}: use write or verify")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
