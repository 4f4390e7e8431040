#!/usr/bin/python3
"""Long-lived NBD connections driven line by line, with libnbd (Debian python3-libnbd).

  two_gateways.py            reads commands on stdin, answers one line each on stdout

Commands (offsets and lengths in bytes, BYTE a number such as 0xa1):

  open KEY URI                      connect KEY to URI and keep the connection open
  close KEY                         shut KEY down
  write KEY OFF LEN BYTE            pwrite LEN bytes of BYTE at OFF
  flush KEY                         NBD_CMD_FLUSH
  check KEY OFF LEN BYTE            pread and compare with BYTE
  race KEY_A KEY_B OFF BLOCKS QD    both connections at once, QD writes in flight on each:
                                    KEY_A writes the even 4 KiB blocks of OFF+BLOCKS*4K,
                                    KEY_B the odd ones; each block names itself; then flush
  verify KEY OFF BLOCKS             pread the blocks of a race and check each one
  chase KEY_A KEY_B OFF SECONDS [URI]
                                    for SECONDS, round after round: write a numbered 4 KiB
                                    block through KEY_A (into object n % 4 from OFF, with
                                    objects of 4 MiB), then read it through KEY_B, which must
                                    return that write, or what URI (a snapshot a rollback
                                    went back to, read at the end) holds there: the rollback
                                    came between; answers with the slowest read

Answers start with "ok" or "bad" (a wrong read: what was found) or "error" (an NBD error).
"""
import select
import struct
import sys
import time
import zlib

import nbd

BLOCK = 4096
handles = {}


def race_block(index):
    """Block `index` of a race: its number, its writer (even: A, odd: B), a CRC, then fill."""
    head = struct.pack(">QQ", index, index % 2)
    body = head + struct.pack(">I", zlib.crc32(head))
    return body + bytes([0x40 + index % 2]) * (BLOCK - len(body))


def describe(data, want):
    """Where `data` first differs from `want` and which byte values it holds."""
    first = next(i for i, (a, b) in enumerate(zip(data, want)) if a != b)
    values = sorted(set(data))
    shown = ",".join(hex(v) for v in values[:8]) + (",..." if len(values) > 8 else "")
    return f"first difference at +{first} (found {data[first]:#x}); byte values {shown}"


def pump(active):
    """One round of the event loop over several handles with commands in flight."""
    readers, writers = [], []
    for h in active:
        fd, direction = h.aio_get_fd(), h.aio_get_direction()
        if direction & nbd.AIO_DIRECTION_READ:
            readers.append(fd)
        if direction & nbd.AIO_DIRECTION_WRITE:
            writers.append(fd)
    readable, writable, _ = select.select(readers, writers, [], 1.0)
    for h in active:
        fd = h.aio_get_fd()
        if fd in readable:
            h.aio_notify_read()
        if fd in writable:
            h.aio_notify_write()


def race(a, b, offset, blocks, depth):
    queues = {a: list(range(0, blocks, 2)), b: list(range(1, blocks, 2))}
    for q in queues.values():
        q.reverse()
    inflight = {a: [], b: []}
    errors = []
    done = 0
    while any(queues.values()) or any(inflight.values()):
        for h in (a, b):
            while queues[h] and len(inflight[h]) < depth:
                index = queues[h].pop()
                cookie = h.aio_pwrite(race_block(index), offset + index * BLOCK)
                inflight[h].append((cookie, index))
        pump([h for h in (a, b) if inflight[h]])
        for h in (a, b):
            still = []
            for cookie, index in inflight[h]:
                try:
                    finished = h.aio_command_completed(cookie)
                except nbd.Error as e:
                    errors.append(f"block {index}: {e}")
                    continue
                if finished:
                    done += 1
                else:
                    still.append((cookie, index))
            inflight[h] = still
    for h in (a, b):
        h.flush()
    if errors:
        return f"error {len(errors)} of {blocks} writes failed: {'; '.join(errors[:4])}"
    return f"ok {done} writes"


def verify(h, offset, blocks):
    data = h.pread(blocks * BLOCK, offset)
    wrong = []
    for index in range(blocks):
        got = data[index * BLOCK:(index + 1) * BLOCK]
        if got != race_block(index):
            if len(set(got)) == 1:
                wrong.append(f"{index}:all-{got[0]:#x}")
            else:
                owner, writer = struct.unpack_from(">QQ", got)
                wrong.append(f"{index}:holds-block-{owner}-writer-{writer}")
    if wrong:
        return f"bad {len(wrong)} of {blocks} blocks wrong: {' '.join(wrong[:12])}"
    return "ok"


def chase_block(round_):
    """Round `round_` of a chase: its number, a CRC, then fill."""
    head = struct.pack(">Q", round_)
    body = head + struct.pack(">I", zlib.crc32(head))
    return body + bytes([0x5a]) * (BLOCK - len(body))


def chase(a, b, offset, seconds, rolled_back_to=None):
    rounds, wrong, slowest = 0, [], 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rounds += 1
        at = offset + (rounds % 4) * 4 * 1024 * 1024
        block = chase_block(rounds)
        a.pwrite(block, at)
        start = time.monotonic()
        got = b.pread(BLOCK, at)
        slowest = max(slowest, time.monotonic() - start)
        if got != block:
            wrong.append((rounds, at, got))
    if rolled_back_to is not None:
        snapshot = nbd.NBD()
        snapshot.connect_uri(rolled_back_to)
        wrong = [(r, at, got) for (r, at, got) in wrong if got != snapshot.pread(BLOCK, at)]
        snapshot.shutdown()
    stale = []
    for r, at, got in wrong:
        if not any(got):
            found = "zeros"
        else:
            (was,) = struct.unpack_from(">Q", got)
            found = f"round {was}" if got == chase_block(was) else "garbage"
        stale.append(f"round {r} at {at:#x} read {found}")
    if stale:
        return f"bad {len(stale)} of {rounds} reads stale: {'; '.join(stale[:6])}"
    return f"ok {rounds} rounds, slowest read {slowest * 1000:.0f} ms"


def command(words):
    op = words[0]
    if op == "open":
        h = nbd.NBD()
        h.connect_uri(words[2])
        handles[words[1]] = h
        return "ok"
    if op == "close":
        handles.pop(words[1]).shutdown()
        return "ok"
    h = handles[words[1]]
    if op == "write":
        offset, length, byte = int(words[2], 0), int(words[3], 0), int(words[4], 0)
        h.pwrite(bytes([byte]) * length, offset)
        return "ok"
    if op == "flush":
        h.flush()
        return "ok"
    if op == "check":
        offset, length, byte = int(words[2], 0), int(words[3], 0), int(words[4], 0)
        data = h.pread(length, offset)
        want = bytes([byte]) * length
        return "ok" if data == want else f"bad {describe(data, want)}"
    if op == "race":
        return race(h, handles[words[2]], int(words[3], 0), int(words[4]), int(words[5]))
    if op == "chase":
        return chase(h, handles[words[2]], int(words[3], 0), float(words[4]), *words[5:6])
    if op == "verify":
        return verify(h, int(words[2], 0), int(words[3]))
    return f"error unknown command {op}"


def main():
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            answer = command(words)
        except nbd.Error as e:
            answer = f"error {e}"
        print(answer, flush=True)


if __name__ == "__main__":
    main()
