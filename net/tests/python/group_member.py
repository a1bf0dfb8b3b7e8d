"""One consumer group member for Sluice's compatibility tests, on kafka-python (an
independent implementation of the Kafka client protocol).

Configuration comes from the environment (SLUICE_MEMBER_BOOTSTRAP, _GROUP, _TOPIC,
_STRATEGY, and _INSTANCE for a static member). The member reports on stdout, one line each, flushed:
  ASSIGNED p,p,...        whenever its assignment changes
  RECORD p offset value   for each record, after processing it and before committing it
It commits after processing every poll batch, and exits after SLUICE_MEMBER_LIFETIME_S
seconds (default 120) so that a test that fails never leaves it running.
"""

import os
import sys
import time

from kafka import KafkaConsumer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

STRATEGIES = {
    "range": RangePartitionAssignor,
    "roundrobin": RoundRobinPartitionAssignor,
    "cooperative-sticky": CooperativeStickyAssignor,
}


def main():
    env = os.environ
    consumer = KafkaConsumer(
        env["SLUICE_MEMBER_TOPIC"],
        bootstrap_servers=env["SLUICE_MEMBER_BOOTSTRAP"],
        group_id=env["SLUICE_MEMBER_GROUP"],
        client_id="sluice-python-member",
        partition_assignment_strategy=[STRATEGIES[env["SLUICE_MEMBER_STRATEGY"]]],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=3000,
        heartbeat_interval_ms=300,
        max_poll_interval_ms=10000,
        metadata_max_age_ms=1000,
        fetch_max_wait_ms=100,
        group_instance_id=env.get("SLUICE_MEMBER_INSTANCE") or None,
    )
    deadline = time.monotonic() + float(env.get("SLUICE_MEMBER_LIFETIME_S", "120"))
    last = None
    while time.monotonic() < deadline:
        batches = consumer.poll(timeout_ms=100)
        processed = False
        for tp, records in batches.items():
            for record in records:
                value = record.value.decode()
                print(f"RECORD {tp.partition} {record.offset} {value}", flush=True)
                processed = True
        if processed:
            try:
                consumer.commit()
            except Exception as error:  # a rebalance can fail a commit; the records come again
                print(f"COMMITFAIL {error}", file=sys.stderr, flush=True)
        assigned = sorted(tp.partition for tp in consumer.assignment())
        if assigned != last:
            print("ASSIGNED " + ",".join(str(p) for p in assigned), flush=True)
            last = assigned


if __name__ == "__main__":
    main()
