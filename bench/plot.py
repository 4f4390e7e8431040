#!/usr/bin/env python3
"""Draws docs/benchmarks.png from the saved outputs of bench/nbd-vs-qemu-nbd.sh.

  bench/plot.py [bench/results/one-node.txt bench/results/three-copies.txt]

Left: throughput as a ratio to qemu-nbd on the same disk, for one node and for three copies.
Right: p50 latency of each workload. Needs matplotlib (`pip install matplotlib`).
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def parse(path):
    rows = {}
    for line in open(path):
        # name, sheep value, unit, qemu-nbd value, unit, ratio, sheep p50/p99, |, qemu p50/p99
        parts = line.split()
        if len(parts) != 9 or not parts[5].endswith("x"):
            continue
        ratio = float(parts[5].rstrip("x"))
        rows[parts[0]] = (ratio, float(parts[6].split("/")[0]), float(parts[8].split("/")[0]))
    return rows


def main():
    paths = sys.argv[1:] or ["bench/results/one-node.txt", "bench/results/three-copies.txt"]
    labels = ["1 node, 1 copy", "3 nodes, 3 copies"]
    data = [parse(p) for p in paths]
    workloads = list(data[0])
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    width = 0.38
    xs = range(len(workloads))
    for i, (rows, label) in enumerate(zip(data, labels)):
        left.bar([x + (i - 0.5) * width for x in xs], [rows[w][0] for w in workloads], width, label=label)
        right.bar([x + (i - 0.5) * width for x in xs], [rows[w][1] for w in workloads], width, label=f"sheep, {label}")
    right.plot(list(xs), [data[0][w][2] for w in workloads], "k_", markersize=22, mew=2, label="qemu-nbd")
    left.axhline(1.0, color="black", linewidth=1, linestyle="--")
    left.set_ylabel("throughput / qemu-nbd on the same disk")
    left.set_title("Throughput relative to qemu-nbd (higher is better)")
    right.set_ylabel("p50 latency, µs (log)")
    right.set_yscale("log")
    right.set_title("Median latency (lower is better)")
    for ax in (left, right):
        ax.set_xticks(list(xs))
        ax.set_xticklabels(workloads, rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=8)
    fig.suptitle("Sheepdog over NBD, fio nbd engine, host page cache, ext4 on one virtio disk, 2 cores", fontsize=10)
    fig.tight_layout()
    fig.savefig("docs/benchmarks.png", dpi=110)
    print("wrote docs/benchmarks.png")


if __name__ == "__main__":
    main()
