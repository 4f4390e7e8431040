#!/usr/bin/env python3
"""Aggregate throughput of several clients on a local cluster, and what it costs the nodes.

For 3 and 6 nodes (3 copies), 1, 2, 4 and 8 clients each write then read their own volume
through a different node's NBD server (fio's nbd engine, 1 MiB sequential, queue depth 8), all
at once. Prints the summed throughput, the CPU seconds all sheep processes spent per GiB moved,
and the largest sheep resident set size. Usage: bench/aggregate.py [seconds-per-run]
"""
import json
import os
import random
import subprocess
import sys
import tempfile

RUNTIME = int(sys.argv[1]) if len(sys.argv) > 1 else 10
DOG = "target/release/dog"
TICK = os.sysconf("SC_CLK_TCK")


def dog(*args):
    return subprocess.run([DOG, *args], check=True, capture_output=True, text=True).stdout


def sheep_pids(root):
    pids = []
    for entry in os.listdir(root):
        pid_file = os.path.join(root, entry, "sheep.pid")
        if entry.startswith("node") and os.path.exists(pid_file):
            pids.append(int(open(pid_file).read()))
    return pids


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def rss_mib(pids):
    best = 0
    for pid in pids:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                best = max(best, int(line.split()[1]) // 1024)
    return best


def run_clients(uris, rw, work):
    procs = []
    for i, uri in enumerate(uris):
        out = os.path.join(work, f"fio{i}.json")
        cmd = ["fio", "--name=c", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", "--bs=1M",
               "--iodepth=8", "--size=512M", f"--runtime={RUNTIME}", "--time_based=1",
               "--output-format=json", f"--output={out}"]
        procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out))
    total = 0
    for proc, out in procs:
        proc.wait()
        job = json.load(open(out))["jobs"][0]
        total += job["write" if rw == "write" else "read"]["bw_bytes"]
    return total / 2**20


def main():
    print(f"{'nodes':>5} {'clients':>7} {'write MiB/s':>12} {'read MiB/s':>11} {'CPU s/GiB':>10} {'max RSS MiB':>12}")
    for nodes in (3, 6):
        work = tempfile.mkdtemp(prefix="sheepdog-aggregate.", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
        root = os.path.join(work, "cluster")
        peer = random.randrange(20000, 40000)
        nbd = peer + 100
        dog("cluster", "up", "--nodes", str(nodes), "--dir", root, "--base-port", str(peer),
            "--nbd-base-port", str(nbd))
        try:
            for i in range(8):
                dog("vdi", "create", f"c{i}", "512M", "-p", str(peer))
            pids = sheep_pids(root)
            for clients in (1, 2, 4, 8):
                uris = [f"nbd://127.0.0.1:{nbd + i % nodes}/c{i}" for i in range(clients)]
                cpu0 = cpu_seconds(pids)
                write = run_clients(uris, "write", work)
                read = run_clients(uris, "read", work)
                cpu = cpu_seconds(pids) - cpu0
                moved_gib = (write + read) * RUNTIME / 1024
                print(f"{nodes:>5} {clients:>7} {write:>12.1f} {read:>11.1f} {cpu / moved_gib:>10.2f} {rss_mib(pids):>12}")
        finally:
            dog("cluster", "down", "--dir", root)
            subprocess.run(["rm", "-rf", work])
    print(f"3 copies, 1 MiB sequential at queue depth 8 per client, {RUNTIME}s per run; page cache; "
          "CPU is all sheep processes together per GiB read or written by the clients")


if __name__ == "__main__":
    main()
