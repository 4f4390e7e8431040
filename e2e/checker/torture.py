#!/usr/bin/python3
"""Many clients on many gateways: a coherence and durability checker over NBD (libnbd).

  torture.py run URIS STATE SECONDS BLOCKS CLIENTS QD SEED
  torture.py verify URIS STATE

URIS is a comma-separated list of NBD URIs of one volume, one per gateway (node). `run` starts
CLIENTS threads; client i writes the 4 KiB blocks b with b % CLIENTS == i (so clients share
every object, and a first write or a copy-on-write of one object comes from several gateways
at once), through gateway i % len(URIS), moving to the next gateway when its connection
fails. Each keeps up to QD writes in flight (never two on one block), sets FUA on some, and
sends a FLUSH every few writes. Every block written holds (block, sequence, client, CRC32);
sequences only grow. The checker records, per block, the newest acknowledged sequence, the
sequences of writes whose outcome is unknown (failed or in flight when a connection broke),
and which acknowledged writes a completed FLUSH made durable.

While writing, each client reads back blocks other clients wrote, through its own gateway:
a read older than a write acknowledged before the read was sent is a stale read. When the
whole cluster loses power (the harness counts such cuts in the file STATE.cuts), writes
acknowledged but not flushed before it may be gone: from then on a read is judged against the
flushed writes and the writes acknowledged since, and a read that spans a cut is not judged. `verify`
reads every block through every gateway: a block older than its acknowledged write is lost,
a block with a bad checksum or wrong header is corrupt, and gateways that disagree are
counted. Both print a JSON summary; the state file carries what `verify` needs.
"""
import json
import random
import struct
import sys
import threading
import time
import zlib

import nbd

BLOCK = 4096
HEAD = struct.Struct(">QQI")
COMMAND_DEADLINE = 120.0


def record(block, seq, client):
    head = struct.pack(">QQI", block, seq, client)
    body = head + struct.pack(">I", zlib.crc32(head))
    return body + bytes(BLOCK - len(body))


def parse(data):
    """(block, seq) of a record, 'zero' for an unwritten block, None for garbage."""
    if not any(data[:24]):
        return "zero"
    block, seq, client = HEAD.unpack_from(data)
    (crc,) = struct.unpack_from(">I", data, HEAD.size)
    if zlib.crc32(struct.pack(">QQI", block, seq, client)) != crc:
        return None
    return block, seq


class Shared:
    def __init__(self, blocks, cuts_path):
        self.lock = threading.Lock()
        self.seq = 0
        self.acked = {}
        self.durable = {}
        self.uncertain = {}
        self.stale = []
        self.blocks = blocks
        # Acknowledged writes no whole-cluster power cut has happened since: a read must not
        # be older than these nor than the durable ones.
        self.floor = {}
        self.cuts_path = cuts_path
        self.cuts = 0

    def whole_cuts(self):
        """How many times the whole cluster has lost power (the harness counts them)."""
        try:
            with open(self.cuts_path) as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0

    def _refresh(self):
        """Forgets the unflushed writes of the cluster before its latest power cut (lock held)."""
        cuts = self.whole_cuts()
        if cuts != self.cuts:
            self.cuts = cuts
            self.floor = {}
        return cuts

    def next_seq(self):
        with self.lock:
            self.seq += 1
            return self.seq

    def ack(self, block, seq, cuts_at_send):
        with self.lock:
            if seq > self.acked.get(block, 0):
                self.acked[block] = seq
            # A write sent before a whole-cluster cut may be gone even if its reply came.
            if self._refresh() == cuts_at_send and seq > self.floor.get(block, 0):
                self.floor[block] = seq

    def unknown(self, block, seq):
        with self.lock:
            self.uncertain.setdefault(block, []).append(seq)

    def expected(self, block):
        """(oldest sequence a read may return, whole cuts so far)."""
        with self.lock:
            cuts = self._refresh()
            return max(self.floor.get(block, 0), self.durable.get(block, 0)), cuts


class Client(threading.Thread):
    def __init__(self, index, uris, shared, seconds, clients, qd, seed):
        super().__init__(daemon=True)
        self.index, self.uris, self.shared = index, uris, shared
        self.seconds, self.clients, self.qd = seconds, clients, qd
        self.rng = random.Random(seed * 1000 + index)
        self.gateway = index % len(uris)
        self.mine = [b for b in range(shared.blocks) if b % clients == index]
        self.stats = {"writes": 0, "errors": 0, "flushes": 0, "reads": 0, "reconnects": 0}
        self.max_stall = 0.0
        self.handle = None

    def connect(self):
        while True:
            try:
                h = nbd.NBD()
                h.connect_uri(self.uris[self.gateway])
                self.handle = h
                return
            except nbd.Error as e:
                print(f"client {self.index}: cannot connect to {self.uris[self.gateway]}: {e}",
                      file=sys.stderr)
                self.gateway = (self.gateway + 1) % len(self.uris)
                time.sleep(0.3)

    def fail_over(self, inflight):
        for cookie, (block, seq, _, _) in inflight.items():
            if seq:
                self.shared.unknown(block, seq)
        inflight.clear()
        try:
            self.handle.shutdown()
        except nbd.Error:
            pass
        self.handle = None
        self.stats["reconnects"] += 1
        self.gateway = (self.gateway + 1) % len(self.uris)
        self.connect()

    def probe(self):
        """Reads a block another client owns: never older than what was acknowledged."""
        other = [b for b in range(self.shared.blocks) if b % self.clients != self.index]
        if not other:
            return
        block = self.rng.choice(other)
        want, cuts = self.shared.expected(block)
        data = self.handle.pread(BLOCK, block * BLOCK)
        self.stats["reads"] += 1
        if self.shared.whole_cuts() != cuts:
            return
        got = parse(data)
        seq = 0 if got == "zero" else (got[1] if got and got[0] == block else -1)
        if seq < want:
            with self.shared.lock:
                self.shared.stale.append({"block": block, "acked": want, "read": seq,
                                          "gateway": self.uris[self.gateway]})

    def run(self):
        self.connect()
        start = last_ok = time.monotonic()
        inflight = {}  # cookie -> (block, seq, sent, flushed blocks)
        busy = set()
        pending_flush = None
        since_flush = []
        while time.monotonic() - start < self.seconds or inflight:
            try:
                writing = time.monotonic() - start < self.seconds
                while writing and len(inflight) < self.qd:
                    free = [b for b in self.rng.sample(self.mine, min(8, len(self.mine)))
                            if b not in busy]
                    if not free:
                        break
                    block = free[0]
                    seq = self.shared.next_seq()
                    buf = nbd.Buffer.from_bytearray(bytearray(record(block, seq, self.index)))
                    flags = nbd.CMD_FLAG_FUA if self.rng.random() < 0.1 else 0
                    cuts = self.shared.whole_cuts()
                    cookie = self.handle.aio_pwrite(buf, block * BLOCK, flags=flags)
                    inflight[cookie] = (block, seq, time.monotonic(), (buf, cuts))
                    busy.add(block)
                if writing and pending_flush is None and len(since_flush) >= 16:
                    cookie = self.handle.aio_flush()
                    pending_flush = (cookie, list(since_flush))
                    inflight[cookie] = (None, 0, time.monotonic(), None)
                    since_flush = []
                self.handle.poll(100)
                now = time.monotonic()
                for cookie in list(inflight):
                    block, seq, sent, sending = inflight[cookie]
                    if now - sent > COMMAND_DEADLINE:
                        raise nbd.Error(f"no reply in {COMMAND_DEADLINE}s")
                    if not self.handle.aio_command_completed(cookie):
                        continue
                    del inflight[cookie]
                    if block is None:
                        self.stats["flushes"] += 1
                        with self.shared.lock:
                            for b, s in pending_flush[1]:
                                if s > self.shared.durable.get(b, 0):
                                    self.shared.durable[b] = s
                        pending_flush = None
                        continue
                    busy.discard(block)
                    self.shared.ack(block, seq, sending[1])
                    since_flush.append((block, seq))
                    self.stats["writes"] += 1
                    self.max_stall = max(self.max_stall, now - last_ok)
                    last_ok = now
                    if self.stats["writes"] % 25 == 0:
                        self.probe()
            except nbd.Error as e:
                self.stats["errors"] += 1
                print(f"client {self.index} on {self.uris[self.gateway]}: {e}", file=sys.stderr)
                busy.clear()
                pending_flush = None
                # A FLUSH covers the writes of its own connection: those acknowledged on the
                # broken one were never flushed (a power cut may have taken them).
                since_flush = []
                self.fail_over(inflight)
        try:
            self.handle.flush()
            with self.shared.lock:
                for b, s in since_flush:
                    if s > self.shared.durable.get(b, 0):
                        self.shared.durable[b] = s
            self.handle.shutdown()
        except nbd.Error as e:
            print(f"client {self.index}: final flush failed: {e}", file=sys.stderr)


def run(uris, state_path, seconds, blocks, clients, qd, seed):
    shared = Shared(blocks, state_path + ".cuts")
    threads = [Client(i, uris, shared, seconds, clients, qd, seed) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = {"acked": shared.acked, "durable": shared.durable, "uncertain": shared.uncertain,
             "blocks": blocks}
    with open(state_path, "w") as f:
        json.dump(state, f)
    total = {k: sum(t.stats[k] for t in threads) for k in threads[0].stats}
    total["stale"] = len(shared.stale)
    total["stale_examples"] = shared.stale[:5]
    total["max_stall_s"] = round(max(t.max_stall for t in threads), 3)
    return total


def verify(uris, state_path, durable_only=False):
    """Every block through every gateway. A record names its block and a sequence that was
    issued for it, so a newer one than expected is an unacknowledged write that landed: fine.
    Older than acknowledged (or, after a power cut, than flushed) is lost."""
    with open(state_path) as f:
        state = json.load(f)
    blocks = state["blocks"]
    want = {int(b): s for b, s in state["durable" if durable_only else "acked"].items()}
    result = {"blocks": blocks, "gateways": len(uris), "checked": 0, "lost": 0, "corrupt": 0,
              "disagree": 0, "examples": []}
    seen = {}
    for uri in uris:
        h = nbd.NBD()
        h.connect_uri(uri)
        for first in range(0, blocks, 256):
            count = min(256, blocks - first)
            data = h.pread(count * BLOCK, first * BLOCK)
            for i in range(count):
                block = first + i
                got = parse(data[i * BLOCK:(i + 1) * BLOCK])
                seq = 0 if got == "zero" else (got[1] if got and got[0] == block else None)
                result["checked"] += 1
                if block in seen and seen[block] != seq:
                    result["disagree"] += 1
                    note(result, uri, block, f"reads {seq}, another gateway {seen[block]}")
                seen.setdefault(block, seq)
                if seq is None:
                    result["corrupt"] += 1
                    note(result, uri, block, "corrupt")
                elif seq < want.get(block, 0):
                    result["lost"] += 1
                    note(result, uri, block, f"reads {seq}, acknowledged {want[block]}")
        h.shutdown()
    return result


def note(result, uri, block, what):
    if len(result["examples"]) < 10:
        result["examples"].append(f"{uri} block {block}: {what}")


def main():
    mode, uris, state = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
    if mode == "run":
        seconds, blocks, clients, qd, seed = sys.argv[4:9]
        result = run(uris, state, float(seconds), int(blocks), int(clients), int(qd), int(seed))
    elif mode in ("verify", "verify-durable"):
        result = verify(uris, state, durable_only=mode == "verify-durable")
    else:
        sys.exit(f"unknown mode {mode}: use run, verify or verify-durable")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
