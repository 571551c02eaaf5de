#!/usr/bin/env python3
"""Attributes the CPU samples of a `perf record --call-graph dwarf` profile to the agent's
pipeline stages (PERFORMANCE.md, "Where the time goes").

    perf script -i perf.data | scripts/perf_stages.py [--exclude-comm otlp-receiver]

Each sample goes to the first stage (in the order below) whose marker appears anywhere in
its call stack, so a stage includes what it calls (allocation, page faults, memcpy).
Samples of the threads named with --exclude-comm (the benchmark's receiver) are left out.
"""

import argparse
import collections
import sys

# (stage, substrings of frames that mark it), checked in this order.
STAGES = [
    ("decode (ring-buffer record -> SessionRecord)", ["SessionRecord::decode"]),
    ("session (record -> Session)", ["Session::from_record"]),
    ("span text (name, addresses)", ["otel_agent::export::span::SpanText"]),
    ("OTLP encoding (sessions -> request bytes)", ["otel_agent::export::encode", "otel_agent::export::protobuf"]),
    ("pipeline stage, other (channel, queue push)", ["otel_agent::pipeline::"]),
    ("export queue (batching, locking, request tasks)", ["otel_agent::export::queue"]),
    ("transport (tonic, hyper, h2, socket writes)", ["otel_agent::export::transport", "h2::", "hyper::", "tonic::", "tower::", "tcp_sendmsg", "tcp_recvmsg"]),
    ("async runtime (scheduling, parking)", ["tokio::runtime", "epoll_wait", "futex"]),
    ("producer (benchmark driver)", ["pipeline_run", "pipeline::main"]),
]


def samples(stream):
    """Yields (comm, frames) for each sample of `perf script` output."""
    comm, frames = None, []
    for line in stream:
        line = line.rstrip("\n")
        if not line:
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
        elif not line.startswith((" ", "\t")):
            # Header: "comm pid/tid time: period event:" (comm may contain spaces).
            head = line.split()
            idx = next((i for i, t in enumerate(head) if t[0].isdigit()), 1)
            comm = " ".join(head[:idx])
        else:
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                frames.append(parts[1])
    if comm is not None:
        yield comm, frames


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exclude-comm", action="append", default=[])
    args = parser.parse_args()
    counts = collections.Counter()
    total = 0
    for comm, frames in samples(sys.stdin):
        if any(comm.startswith(c) for c in args.exclude_comm):
            continue
        total += 1
        stack = "\n".join(frames)
        for stage, markers in STAGES:
            if any(m in stack for m in markers):
                counts[stage] += 1
                break
        else:
            counts["other"] += 1
    if not total:
        sys.exit("no samples")
    for stage, n in counts.most_common():
        print(f"{100 * n / total:6.1f}%  {stage}")
    print(f"{total} samples")


if __name__ == "__main__":
    main()
