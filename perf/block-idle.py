#!/usr/bin/env python3
"""Device busy/idle time from a block-layer trace.

usage:
  perf record -a -e block:block_rq_issue -e block:block_rq_complete -o blk.data -- sleep 0.5
  perf script -i blk.data > blk.txt
  perf/block-idle.py blk.txt

Prints the bandwidth the completed requests add up to over the trace and the share of the
trace during which no request was in flight (after the first issue). Requests are matched by
start sector, so completions of requests issued before the trace began are ignored.
"""
import re
import sys

EVENT = re.compile(r"\s(\d+\.\d+):\s+block:block_rq_(issue|complete):.*?\(\) (\d+) \+ (\d+)")

events = []
with open(sys.argv[1]) as trace:
    for line in trace:
        match = EVENT.search(line)
        if match:
            events.append((float(match.group(1)), match.group(2), int(match.group(3)),
                           int(match.group(4)) * 512))
if not events:
    sys.exit("no block_rq_issue/block_rq_complete events in the trace")
events.sort()
in_flight = {}
start, end = events[0][0], events[-1][0]
last, idle, completed, started = start, 0.0, 0, False
for time, kind, sector, size in events:
    if started and not in_flight:
        idle += time - last
    last = time
    if kind == "issue":
        in_flight[sector] = size
        started = True
    elif sector in in_flight:
        del in_flight[sector]
        completed += size
span = end - start
print(f"{completed / 1e6 / span:.0f} MB/s over {span:.2f} s, device idle {100 * idle / span:.0f}%")
