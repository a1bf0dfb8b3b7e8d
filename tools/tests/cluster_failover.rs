//! Multi-process tests of the controller quorum: three real `sluice broker` processes on
//! 127.0.0.1, 127.0.0.2 and 127.0.0.3 with the same `--seeds`, killed with SIGKILL and
//! restarted on their data directories.
//!
//! They check metadata (placement, leaders, epochs, ISR, fencing), that clients follow
//! leadership, and that an acks=all record survives its leader's death; the chaos tests
//! (`cluster_chaos.rs`) check replication under load.

#[path = "../../net/tests/common/kafka_raw.rs"]
mod kafka_raw;
mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::cluster::{Cluster, DEADLINE, Node, http_get, loopback_spec};
use support::{assert_success, run_with_input, sluice_bin};

/// Session timeout the brokers run with, so fencing happens within the test's patience.
const SESSION_TIMEOUT_MS: &str = "2000";

/// Topic metadata (leader, epoch-free replicas and ISR per partition) as `node` answers it,
/// through `sluice topic describe`.
fn describe(node: &Node, topic: &str) -> Option<String> {
    let output = node.sluice(&["topic", "describe", topic], &node.quic.to_string());
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Partition → (leader, replicas, isr) from `sluice topic describe` output
/// (`Partition: P  Shard: S  Leader: L  Replicas: a,b  Isr: a,b ...`).
fn placement(describe: &str) -> BTreeMap<i64, (i64, String, String)> {
    let mut out = BTreeMap::new();
    for line in describe.lines() {
        let fields: BTreeMap<&str, &str> = line
            .split('\t')
            .filter_map(|f| f.split_once(": "))
            .collect();
        if let (Some(p), Some(leader), Some(replicas), Some(isr)) = (
            fields.get("Partition"),
            fields.get("Leader"),
            fields.get("Replicas"),
            fields.get("Isr"),
        ) {
            let p = p.parse().expect("partition number");
            let leader = leader.parse().expect("leader id");
            out.insert(p, (leader, (*replicas).to_owned(), (*isr).to_owned()));
        }
    }
    out
}

// Goal: three brokers with the same seeds form one cluster; a topic with RF=3 created
// through a broker that is not the controller (forwarded) is described identically by all
// three; RF above the live brokers is refused; kill -9 of the active controller elects a new
// one that accepts changes; the killed broker is fenced and its partitions move to in-sync
// replicas with a higher epoch; librdkafka and the native client produce to and consume
// from the new leader; the broker restarts and is unfenced; a full restart keeps all
// metadata. Method: real processes, SIGKILL, polling /cluster and `sluice topic describe`
// with deadlines.
#[test]
fn cluster_forms_fails_over_and_restarts() {
    let mut cluster = Cluster::start(&[
        "--offsets-topic-partitions",
        "2",
        "--broker-session-timeout-ms",
        SESSION_TIMEOUT_MS,
    ]);
    let controller = cluster.wait_converged(3);

    // Forwarded: create through a broker that is not the controller.
    let follower = cluster
        .running()
        .find(|n| i64::from(n.id) != controller)
        .expect("a follower");
    let brokers = follower.quic.to_string();
    let created = follower.sluice(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--replicas",
            "3",
        ],
        &brokers,
    );
    assert_success(&created);
    let too_many = follower.sluice(
        &[
            "topic",
            "create",
            "wide",
            "--partitions",
            "1",
            "--replicas",
            "4",
        ],
        &brokers,
    );
    assert!(
        !too_many.status.success(),
        "RF 4 on 3 brokers must be refused"
    );
    assert!(
        String::from_utf8_lossy(&too_many.stderr).contains("replication factor"),
        "{}",
        String::from_utf8_lossy(&too_many.stderr)
    );

    // Every broker describes the same placement: leader, replicas, ISR.
    let described = cluster.wait_for("identical descriptions", |cluster| {
        let all: Vec<_> = cluster
            .running()
            .map(|n| describe(n, "orders").map(|d| placement(&d)))
            .collect::<Option<Vec<_>>>()?;
        (all.len() == 3 && all[0].len() == 3 && all.iter().all(|p| *p == all[0]))
            .then(|| all[0].clone())
    });
    let leaders: Vec<i64> = described.values().map(|(l, _, _)| *l).collect();
    let mut distinct = leaders.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "RF=3 over 3 brokers spreads leaders: {described:?}"
    );
    for (leader, replicas, isr) in described.values() {
        assert_eq!(replicas.split(',').count(), 3, "{replicas}");
        assert_eq!(isr.split(',').count(), 3, "{isr}");
        assert!(
            replicas.starts_with(&leader.to_string()),
            "preferred leader first"
        );
    }

    // An acks=all record to the partition the controller leads: acknowledged only once every
    // in-sync replica has it, so it must survive the leader's death.
    let moved_partition = *described
        .iter()
        .find(|(_, (leader, _, _))| *leader == controller)
        .expect("the controller leads a partition")
        .0;
    let mut produce = Command::new(sluice_bin());
    produce
        .args(["produce", "orders", "--partition"])
        .arg(moved_partition.to_string())
        .args(["--acks", "all", "--brokers", &cluster.quic_brokers(None)]);
    assert_success(&run_with_input(produce, b"before-failover\n"));

    // Kill the active controller: a new one is elected and takes changes.
    let old = controller;
    let index = cluster
        .nodes
        .iter()
        .position(|n| i64::from(n.id) == old)
        .expect("node");
    let dead_quic = cluster.nodes[index].quic;
    cluster.nodes[index].kill();
    let new_controller = cluster.wait_for("a new controller", |cluster| {
        let views: Vec<i64> = cluster
            .running()
            .map(|n| n.view().and_then(|v| v["controller"].as_i64()))
            .collect::<Option<Vec<_>>>()?;
        (views.iter().all(|c| *c >= 0 && *c != old) && views.windows(2).all(|w| w[0] == w[1]))
            .then(|| views[0])
    });
    assert_ne!(new_controller, old);
    let survivor = cluster.node(new_controller);
    cluster.wait_for("a change accepted by the new controller", |cluster| {
        let output = survivor.sluice(
            &[
                "topic",
                "create",
                "after-failover",
                "--partitions",
                "2",
                "--replicas",
                "2",
            ],
            &cluster.quic_brokers(None),
        );
        output.status.success().then_some(())
    });

    // The dead broker is fenced: the partition it led has a new in-sync leader.
    let after = cluster.wait_for("fencing of the dead broker", |cluster| {
        let all: Vec<_> = cluster
            .running()
            .map(|n| describe(n, "orders").map(|d| placement(&d)))
            .collect::<Option<Vec<_>>>()?;
        let (leader, _, isr) = all[0].get(&moved_partition)?.clone();
        let fenced = leader != old && !isr.split(',').any(|b| b == old.to_string());
        (fenced && all.iter().all(|p| *p == all[0])).then(|| all[0].clone())
    });
    let (new_leader, _, isr) = &after[&moved_partition];
    assert!(
        isr.split(',').any(|b| b == new_leader.to_string()),
        "leader from the ISR"
    );
    let epochs = kafka_epochs(cluster.node(*new_leader), "orders");
    assert!(
        epochs[&moved_partition] > 0,
        "the leader epoch was bumped: {epochs:?}"
    );

    // The CLI and metrics tell the operator.
    let admin = cluster.node(new_controller).admin.to_string();
    let status = run_with_input(
        {
            let mut c = Command::new(sluice_bin());
            c.args(["cluster", "status", "--admin", &admin]);
            c
        },
        b"",
    );
    let status = assert_success(&status);
    assert!(
        status.contains(&format!("controller {new_controller}\n")),
        "{status}"
    );
    assert!(status.contains("raft term "), "{status}");
    let listing = run_with_input(
        {
            let mut c = Command::new(sluice_bin());
            c.args(["cluster", "brokers", "--admin", &admin]);
            c
        },
        b"",
    );
    let listing = assert_success(&listing);
    let dead_row = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&old.to_string()))
        .expect("the dead broker is listed");
    assert!(dead_row.contains("fenced"), "{listing}");
    let metrics = http_get(cluster.node(new_controller).admin, "/metrics").expect("metrics");
    let elections: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_leader_elections_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("elections counter");
    assert!(elections >= 1, "{metrics}");

    // Clients follow the new leader: native (bootstrap list starts with the dead broker).
    let native = cluster.quic_brokers(Some(dead_quic));
    let partition = moved_partition.to_string();
    // Before anyone writes to it, the new leader serves the record it inherited: its epoch
    // marker committed everything below it.
    let mut consume = Command::new(sluice_bin());
    consume
        .args(["consume", "orders", "--partition", &partition])
        .args([
            "--from",
            "beginning",
            "--count",
            "1",
            "--timeout-ms",
            "10000",
        ])
        .args(["--brokers", &native]);
    let out = assert_success(&run_with_input(consume, b""));
    assert_eq!(out.trim(), "before-failover");
    let mut produce = Command::new(sluice_bin());
    produce
        .args([
            "produce",
            "orders",
            "--partition",
            &partition,
            "--acks",
            "all",
        ])
        .args(["--brokers", &native]);
    assert_success(&run_with_input(produce, b"native-after-failover\n"));
    let mut consume = Command::new(sluice_bin());
    consume
        .args([
            "consume",
            "orders",
            "--partition",
            &partition,
            "--from",
            "beginning",
        ])
        .args([
            "--count",
            "2",
            "--timeout-ms",
            "10000",
            "--brokers",
            &native,
        ]);
    let out = assert_success(&run_with_input(consume, b""));
    // The record acknowledged by the old leader was replicated: the new leader has it first.
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["before-failover", "native-after-failover"]
    );
    // OffsetForLeaderEpoch (KIP-320) answers from the new leader's log: the epoch before the
    // failover ends after its one record, the current one at the log end.
    let new_epoch = epochs[&moved_partition];
    let ending = |epoch: i64| {
        epoch_end(
            cluster.node(*new_leader).kafka,
            "orders",
            moved_partition as i32,
            epoch as i32,
        )
    };
    assert_eq!(
        ending(new_epoch - 1).1,
        1,
        "the old epoch ends after offset 0"
    );
    let (epoch, end) = ending(new_epoch);
    assert_eq!(epoch, new_epoch as i32);
    assert!(end >= 2, "the current epoch ends at the log end: {end}");
    // Only the leader deletes records: another broker answers NOT_LEADER_OR_FOLLOWER and
    // keeps its copy.
    let other = cluster
        .running()
        .find(|n| i64::from(n.id) != *new_leader)
        .expect("a second live broker");
    assert_eq!(
        delete_records(other.kafka, "orders", moved_partition as i32, 1),
        6
    );
    // librdkafka.
    let bootstrap: Vec<String> = cluster.running().map(|n| n.kafka.to_string()).collect();
    let got = rdkafka_round_trip(&bootstrap.join(","), "orders", moved_partition as i32);
    assert!(
        got.contains(&"rdkafka-after-failover".to_owned()),
        "{got:?}"
    );

    // The dead broker restarts: it is unfenced and catches up on the metadata.
    cluster.start_node(index);
    cluster.wait_converged(3);
    let restarted = &cluster.nodes[index];
    cluster.wait_for("the restarted broker to see the new topic", |_| {
        describe(restarted, "after-failover").map(|_| ())
    });
    // It catches up as a follower and the leader takes it back into the ISR (AlterPartition);
    // the leader's metrics show it caught up.
    cluster.wait_for("the restarted broker back in the ISR", |cluster| {
        let all = placement(&describe(cluster.node(*new_leader), "orders")?);
        let (_, _, isr) = all.get(&moved_partition)?;
        isr.split(',').any(|b| b == old.to_string()).then_some(())
    });
    let lag_line = format!(
        "sluice_replica_lag{{topic=\"orders\",partition=\"{moved_partition}\",replica=\"{old}\"}}"
    );
    let metrics = cluster.wait_for(
        "the leader's lag gauge for the restarted broker",
        |cluster| {
            let metrics = http_get(cluster.node(*new_leader).admin, "/metrics")?;
            metrics
                .contains(&format!("{lag_line} 0"))
                .then_some(metrics)
        },
    );
    let expands: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_isr_expands_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("expansions counter");
    assert!(expands >= 1, "{metrics}");

    // A full cluster restart keeps all metadata.
    let before: Vec<_> = ["orders", "after-failover"]
        .iter()
        .map(|t| placement(&describe(&cluster.nodes[0], t).expect("described")))
        .collect();
    for i in 0..3 {
        cluster.nodes[i].kill();
    }
    for i in 0..3 {
        cluster.start_node(i);
    }
    cluster.wait_converged(3);
    for (topic, before) in ["orders", "after-failover"].iter().zip(&before) {
        let now = cluster.wait_for("metadata after a full restart", |cluster| {
            describe(&cluster.nodes[0], topic).map(|d| placement(&d))
        });
        let replicas = |p: &BTreeMap<i64, (i64, String, String)>| {
            p.values().map(|(_, r, _)| r.clone()).collect::<Vec<_>>()
        };
        assert_eq!(
            replicas(&now),
            replicas(before),
            "{topic} keeps its replicas"
        );
    }
}

/// Leader epoch per partition of `topic`, from a broker's `/cluster` view.
fn kafka_epochs(node: &Node, topic: &str) -> BTreeMap<i64, i64> {
    let view = node.view().expect("the broker answers /cluster");
    view["partitions"]
        .as_array()
        .expect("partitions listed")
        .iter()
        .filter(|p| p["topic"] == topic)
        .map(|p| {
            (
                p["partition"].as_i64().expect("partition"),
                p["leader_epoch"].as_i64().expect("epoch"),
            )
        })
        .collect()
}

/// Kafka OffsetForLeaderEpoch (v4) of `topic`-`partition` at `broker`: the largest epoch at or
/// below `epoch` and its end offset.
fn epoch_end(broker: std::net::SocketAddr, topic: &str, partition: i32, epoch: i32) -> (i32, i64) {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderEpochRequest, OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::{ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let request = OffsetForLeaderEpochRequest::default().with_topics(vec![
        OffsetForLeaderTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![
                OffsetForLeaderPartition::default()
                    .with_partition(partition)
                    .with_current_leader_epoch(-1)
                    .with_leader_epoch(epoch),
            ]),
    ]);
    let ResponseKind::OffsetForLeaderEpoch(response) =
        kafka_raw::Raw::connect_to(broker).call(4, request)
    else {
        panic!("an OffsetForLeaderEpoch answer")
    };
    let answer = &response.topics[0].partitions[0];
    assert_eq!(answer.error_code, 0, "OffsetForLeaderEpoch error");
    (answer.leader_epoch, answer.end_offset)
}

/// Kafka DeleteRecords (v2) of `topic`-`partition` below `offset` at `broker`: the error code.
fn delete_records(broker: std::net::SocketAddr, topic: &str, partition: i32, offset: i64) -> i16 {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsRequest, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::{ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let request = DeleteRecordsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            DeleteRecordsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![
                    DeleteRecordsPartition::default()
                        .with_partition_index(partition)
                        .with_offset(offset),
                ]),
        ]);
    let ResponseKind::DeleteRecords(response) = kafka_raw::Raw::connect_to(broker).call(2, request)
    else {
        panic!("a DeleteRecords answer")
    };
    response.topics[0].partitions[0].error_code
}

/// Produces one record with librdkafka to `partition` (retrying through leader changes as
/// librdkafka does), then reads the partition from the beginning; returns the values read.
fn rdkafka_round_trip(bootstrap: &str, topic: &str, partition: i32) -> Vec<String> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::{Message, Offset, TopicPartitionList};

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("librdkafka producer");
    producer
        .send(
            BaseRecord::<(), str>::to(topic)
                .partition(partition)
                .payload("rdkafka-after-failover"),
        )
        .map_err(|(e, _)| e)
        .expect("queued");
    producer.flush(Duration::from_secs(30)).expect("delivered");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "cluster-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("librdkafka consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let mut values = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while values.len() < 3 && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            let value = message
                .payload()
                .map(|v| String::from_utf8_lossy(v).into_owned());
            values.push(value.unwrap_or_default());
        }
    }
    values
}

// Goal: `sluice cluster reassign` moves a partition to another replica set with no downtime:
// the newcomer catches up and joins the ISR, leadership moves off the leaving leader, the
// leaving broker deletes its copy, and every record a producer wrote with acks=all during
// the move is readable afterwards, in order. Method: RF=2 on 3 brokers, a producer fed
// through a pipe during the move, `--wait` for completion, read everything back.
#[test]
fn reassignment_moves_a_partition_under_load() {
    use std::io::Write as _;

    let cluster = Cluster::start(&[
        "--offsets-topic-partitions",
        "1",
        "--broker-session-timeout-ms",
        SESSION_TIMEOUT_MS,
    ]);
    cluster.wait_converged(3);
    let brokers = cluster.quic_brokers(None);
    let node = &cluster.nodes[0];
    let created = node.sluice(
        &[
            "topic",
            "create",
            "moving",
            "--partitions",
            "1",
            "--replicas",
            "2",
        ],
        &brokers,
    );
    assert_success(&created);
    let before = cluster.wait_for("the topic described", |cluster| {
        let all = placement(&describe(&cluster.nodes[0], "moving")?);
        let (leader, replicas, isr) = all.get(&0)?.clone();
        (isr.split(',').count() == 2).then_some((leader, replicas))
    });
    let (leader, replicas) = before;
    let kept: i64 = replicas
        .split(',')
        .map(|b| b.parse().expect("id"))
        .find(|b| *b != leader)
        .expect("a follower");
    let newcomer = (1..=3)
        .find(|b| !replicas.split(',').any(|r| r == b.to_string()))
        .expect("a broker without a replica");
    let target = format!("{kept},{newcomer}");

    // A producer writing during the whole move.
    let mut producer = Command::new(sluice_bin())
        .args(["produce", "moving", "--partition", "0", "--acks", "all"])
        .args(["--brokers", &brokers])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the producer");
    let mut input = producer.stdin.take().expect("stdin");
    const RECORDS: usize = 1500;
    let feeder = std::thread::spawn(move || {
        for i in 0..RECORDS {
            writeln!(input, "r-{i:05}").expect("write to the producer");
            if i % 50 == 0 {
                // Spreads the records over the move (about 3 s in all).
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut reassign = Command::new(sluice_bin());
    reassign
        .args(["cluster", "reassign", "moving", "0", "--replicas", &target])
        .args(["--wait", "60", "--admin", &node.admin.to_string()]);
    let moved = assert_success(&run_with_input(reassign, b""));
    assert!(moved.contains(&format!("replicas {target} ")), "{moved}");
    feeder.join().expect("feeder");
    let produced = producer.wait_with_output().expect("producer exits");
    assert_success(&produced);

    // The metadata names exactly the target; the leader moved off the leaving broker.
    let after = cluster.wait_for("the target placement on every broker", |cluster| {
        let all: Vec<_> = cluster
            .running()
            .map(|n| describe(n, "moving").map(|d| placement(&d)))
            .collect::<Option<Vec<_>>>()?;
        let (leader, replicas, isr) = all[0].get(&0)?.clone();
        (replicas == target && isr.split(',').count() == 2 && all.iter().all(|p| *p == all[0]))
            .then_some(leader)
    });
    assert_ne!(after, leader, "the leaving leader handed over");
    assert!(target.split(',').any(|b| b == after.to_string()));
    let leaving_copy = cluster.node(leader).data.join("moving-0");
    cluster.wait_for("the leaving broker to delete its copy", |_| {
        (!leaving_copy.exists()).then_some(())
    });

    // Every acknowledged record is there, first occurrences in order (a retry through the
    // leader change may write one twice, as Kafka without idempotence).
    let mut consume = Command::new(sluice_bin());
    consume
        .args([
            "consume",
            "moving",
            "--partition",
            "0",
            "--from",
            "beginning",
        ])
        .args(["--timeout-ms", "5000", "--brokers", &brokers]);
    let out = assert_success(&run_with_input(consume, b""));
    let mut seen = std::collections::BTreeSet::new();
    let mut first: Vec<&str> = Vec::new();
    for line in out.lines() {
        if seen.insert(line) {
            first.push(line);
        }
    }
    let want: Vec<String> = (0..RECORDS).map(|i| format!("r-{i:05}")).collect();
    assert_eq!(first, want, "every record once, in order");
}

// Goal: the cluster grows: a broker started with a new id and the same seeds (outside the
// quorum) registers, gets the metadata, forwards commands, and a partition moved onto it
// (preferred leader first) is led by it with every earlier record; clients follow.
// Method: three seeds plus broker 4 on 127.0.0.4, `sluice cluster reassign --wait`, produce
// and read back through the cluster.
#[test]
fn a_new_broker_joins_and_takes_a_partition() {
    let flags = [
        "--offsets-topic-partitions",
        "1",
        "--broker-session-timeout-ms",
        SESSION_TIMEOUT_MS,
    ];
    let mut cluster = Cluster::start(&flags);
    cluster.wait_converged(3);
    let brokers = cluster.quic_brokers(None);
    let created = cluster.nodes[0].sluice(
        &[
            "topic",
            "create",
            "growing",
            "--partitions",
            "1",
            "--replicas",
            "3",
        ],
        &brokers,
    );
    assert_success(&created);
    let produce = |brokers: &str, prefix: &str| {
        let lines: String = (0..100).map(|i| format!("{prefix}-{i:03}\n")).collect();
        let mut command = Command::new(sluice_bin());
        command
            .args(["produce", "growing", "--partition", "0", "--acks", "all"])
            .args(["--brokers", brokers]);
        assert_success(&run_with_input(command, lines.as_bytes()));
    };
    produce(&brokers, "old");

    let index = cluster.add_observer(loopback_spec(4, &flags));
    cluster.wait_converged(4);
    let newcomer = &cluster.nodes[index];
    // A command through the newcomer is forwarded to the controller.
    let forwarded = newcomer.sluice(
        &[
            "topic",
            "create",
            "via-newcomer",
            "--partitions",
            "1",
            "--replicas",
            "2",
        ],
        &newcomer.quic.to_string(),
    );
    assert_success(&forwarded);

    let (leader, _, _) = cluster.wait_for("the topic described", |cluster| {
        placement(&describe(&cluster.nodes[0], "growing")?)
            .get(&0)
            .cloned()
    });
    let mut target = vec!["4".to_owned()];
    target.extend(
        (1..=3)
            .filter(|b| i64::from(*b) != leader)
            .map(|b| b.to_string()),
    );
    let target = target.join(",");
    let mut reassign = Command::new(sluice_bin());
    reassign
        .args(["cluster", "reassign", "growing", "0", "--replicas", &target])
        .args([
            "--wait",
            "60",
            "--admin",
            &cluster.nodes[0].admin.to_string(),
        ]);
    assert_success(&run_with_input(reassign, b""));
    let (leader, _, isr) = cluster.wait_for("broker 4 leading", |cluster| {
        let all = placement(&describe(&cluster.nodes[index], "growing")?);
        let entry = all.get(&0)?.clone();
        (entry.0 == 4).then_some(entry)
    });
    assert_eq!(leader, 4);
    assert_eq!(isr, target, "every target replica in sync");

    let brokers = cluster.quic_brokers(None);
    produce(&brokers, "new");
    let mut consume = Command::new(sluice_bin());
    consume
        .args([
            "consume",
            "growing",
            "--partition",
            "0",
            "--from",
            "beginning",
        ])
        .args([
            "--count",
            "200",
            "--timeout-ms",
            "10000",
            "--brokers",
            &brokers,
        ]);
    let out = assert_success(&run_with_input(consume, b""));
    let want: Vec<String> = ["old", "new"]
        .iter()
        .flat_map(|p| (0..100).map(move |i| format!("{p}-{i:03}")))
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
}
