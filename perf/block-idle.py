#!/usr/bin/env python3
"""Device busy/idle time from a block-layer trace.

usage:
  perf record -a -e block:block_rq_issue -e block:block_rq_complete -o blk.data -- COMMAND
  perf script -i blk.data > blk.txt
  perf/block-idle.py blk.txt
  perf/block-idle.py --window 0.5 --writes 500 blk.txt    # or --reads 300

Prints the bandwidth the completed requests add up to over the trace and the share of the
trace during which no request was in flight (after the first issue). Requests are matched by
start sector, so completions of requests issued before the trace began are ignored.

With --window SECONDS, prints the same per window instead, for the windows in which the device
wrote (--writes MB_PER_SEC) or read (--reads MB_PER_SEC) at least that rate and did less than a
tenth as much of the other, then the medians over those windows: the phase of a run under study
(an append pass, a read pass) without the phases around it.
"""
import argparse
import re
import statistics

EVENT = re.compile(
    r"\s(\d+\.\d+):\s+block:block_rq_(issue|complete):\s+\S+\s+(\S+)\s.*?\(\) (\d+) \+ (\d+)")

parser = argparse.ArgumentParser(description="device idle time from a block-layer trace")
parser.add_argument("trace")
parser.add_argument("--window", type=float, help="window length in seconds")
direction = parser.add_mutually_exclusive_group()
direction.add_argument("--writes", type=float, default=500.0, help="least write MB/s to keep")
direction.add_argument("--reads", type=float, help="least read MB/s to keep (instead)")
args = parser.parse_args()

events = []
with open(args.trace) as trace:
    for line in trace:
        match = EVENT.search(line)
        if match:
            events.append((float(match.group(1)), match.group(2), match.group(3),
                           int(match.group(4)), int(match.group(5)) * 512))
if not events:
    raise SystemExit("no block_rq_issue/block_rq_complete events in the trace")
events.sort()

start, end = events[0][0], events[-1][0]
window = args.window
# Per window: idle seconds, bytes written, bytes read.
windows = {}
in_flight = {}
last, started = start, False
for time, kind, rwbs, sector, size in events:
    index = int((time - start) / window) if window else 0
    counts = windows.setdefault(index, [0.0, 0, 0])
    if started and not in_flight:
        counts[0] += time - last
    last = time
    if kind == "issue":
        in_flight[sector] = (size, rwbs)
        started = True
    elif sector in in_flight:
        size, rwbs = in_flight.pop(sector)
        counts[1 if "W" in rwbs else 2] += size

if not window:
    idle, written, read = windows[0]
    span = end - start
    print(f"{(written + read) / 1e6 / span:.0f} MB/s over {span:.2f} s, "
          f"device idle {100 * idle / span:.0f}%")
    raise SystemExit(0)

kept = []
for index in sorted(windows):
    idle, written, read = windows[index]
    main, other = (read, written) if args.reads else (written, read)
    least = args.reads if args.reads else args.writes
    if main / window / 1e6 >= least and other < main / 10:
        kept.append((main / window / 1e6, 100 * idle / window))
        print(f"  window {index}: {kept[-1][0]:.0f} MB/s, device idle {kept[-1][1]:.0f}%")
if not kept:
    raise SystemExit("no window reaches that rate")
print(f"{len(kept)} windows: median {statistics.median(k[0] for k in kept):.0f} MB/s, "
      f"median device idle {statistics.median(k[1] for k in kept):.0f}%")
