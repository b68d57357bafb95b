#!/usr/bin/env python3
"""Sorts the samples of `perf script` (a recording with call graphs) into the components of a
Xene server and prints each one's share: BENCHMARKS.md's table of where W1's CPU goes.

    perf script -i perf.data | python3 scripts/perf-components.py

A sample goes to its thread's component when the thread has one of its own (the log writer,
RocksDB's background threads), else to the first of COMPONENTS that one of its frames names,
looked for from the outermost frame in.
"""

import collections
import re
import sys

# Looked for in the whole stack, in this order, before the frame-by-frame search below.
WHOLE_STACK = [
    ("RocksDB MultiGet (each put's read of its key's previous version)", r"MultiGet"),
    ("RocksDB: the state machine's write batches", r"rocksdb_write\b|write_opt"),
    ("RocksDB: other calls", r"rocksdb"),
    ("apply's own code", r"apply_batch|xene_raft_store::(state_machine|overlay|dedup)"),
]
# Looked for frame by frame from the outermost one in; the first frame that matches decides.
COMPONENTS = [
    ("openraft: core, replication, state machine worker", r"openraft::(core|replication|.*sm::)"),
    ("Xene: forwarding, proposals, batches", r"xene_server::(forwarding|proposals|batch)"),
    ("hyper and h2", r"^h2::|hyper::|hyper_util"),
    ("tonic", r"tonic::"),
    ("Xene: services", r"xene_server::services|xene_proto"),
    ("Xene: Raft network", r"xene_server::(network|peers)"),
]
THREADS = [
    ("the log writer thread", r"^xene-log-sync"),
    ("RocksDB: flushes and compactions", r"^rocksdb:"),
]


def samples(lines):
    """(thread name, frames innermost first) of each sample."""
    thread, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                yield thread, frames
            thread, frames = None, []
        elif not line[0].isspace():
            thread = line.split()[0]
        else:
            parts = line.split(None, 1)
            frames.append(re.sub(r"\+0x[0-9a-f]+.*$", "", parts[1] if len(parts) > 1 else "?"))
    if frames:
        yield thread, frames


def component(thread, frames):
    for name, pattern in THREADS:
        if re.search(pattern, thread or ""):
            return name
    stack = " | ".join(frames)
    for name, pattern in WHOLE_STACK:
        if re.search(pattern, stack):
            return name
    for frame in reversed(frames):
        for name, pattern in COMPONENTS:
            if re.search(pattern, frame):
                return name
    return "tokio's scheduler, task switches and the rest"


def main():
    counts = collections.Counter(component(t, f) for t, f in samples(sys.stdin))
    total = sum(counts.values())
    if total == 0:
        sys.exit("no samples with call graphs on stdin: record with perf record --call-graph dwarf")
    print("| Component | Share of the servers' CPU |")
    print("|---|---|")
    for name, n in counts.most_common():
        print(f"| {name} | {100 * n / total:.1f} % |")
    print(f"\n{total} samples")


if __name__ == "__main__":
    main()
