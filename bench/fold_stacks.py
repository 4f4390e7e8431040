#!/usr/bin/env python3
"""Folds `perf script` output into one line per distinct stack, `root;...;leaf count`, the
input format of flamegraph tools (inferno-flamegraph, flamegraph.pl)."""
import collections
import re
import sys

counts = collections.Counter()
frames, comm = [], None
for line in sys.stdin:
    line = line.rstrip("\n")
    if not line.strip():
        if comm is not None and frames:
            counts[";".join([comm] + frames[::-1])] += 1
        frames, comm = [], None
    elif not line.startswith(("\t", " ")):
        comm = line.split()[0]
    else:
        parts = line.strip().split(None, 1)
        symbol = parts[1] if len(parts) > 1 else "[unknown]"
        symbol = re.sub(r"\s+\(\S*\)$", "", symbol)  # the dso
        symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol)
        frames.append(symbol.replace(";", ":"))
if comm is not None and frames:
    counts[";".join([comm] + frames[::-1])] += 1
for stack, n in counts.most_common():
    print(stack, n)
