//! Consumer groups with real clients: librdkafka (the `rdkafka` crate) and kafka-python (an
//! independent implementation, run as `python3 net/tests/python/group_member.py`).
//!
//! Group members run as child processes so that a crash is a real `kill -9`: the member stops
//! heartbeating without leaving, and the coordinator must notice by session timeout. A
//! librdkafka member is this test binary run again with `member_process` selected and its
//! settings in the environment; both kinds print `ASSIGNED p,...` when their assignment
//! changes and `RECORD p offset value` for each record, after processing it and before
//! committing it (so a record is consumed at least once, and duplicates are allowed).
//!
//! Every wait polls a condition with a deadline; none measures time. Set `SLUICE_MEMBER_DEBUG`
//! to see librdkafka's group protocol log of each member on stderr.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Raw, RunningBroker, free_port, test_group_config, wait_for};
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsRequest, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{GroupId, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::util::Timeout;

const DEADLINE: Duration = Duration::from_secs(90);

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

fn create_topic(addr: SocketAddr, topic: &str, partitions: i32) {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(s(topic)))
                .with_num_partitions(partitions)
                .with_replication_factor(1),
        ]);
    let ResponseKind::CreateTopics(r) = Raw::connect_to(addr).call(7, request) else {
        panic!("kind")
    };
    assert_eq!(r.topics[0].error_code, 0, "create {topic}");
}

/// Produces `values` to the partitions given, with acks=all, and waits until all are acked.
fn produce(bootstrap: &str, topic: &str, records: &[(i32, String)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for (partition, value) in records {
        let mut record = BaseRecord::<(), _>::to(topic)
            .partition(*partition)
            .payload(value.as_str());
        let deadline = Instant::now() + DEADLINE;
        // Bounded by the deadline: a full queue drains as the broker acknowledges.
        while let Err((error, returned)) = producer.send(record) {
            assert!(Instant::now() < deadline, "produce to {topic}: {error}");
            producer.poll(Duration::from_millis(10));
            record = returned;
        }
    }
    producer
        .flush(Timeout::After(DEADLINE))
        .expect("every record acknowledged");
}

/// `count` records spread round-robin over `partitions`, values `{prefix}-{i}`.
fn records(prefix: &str, partitions: i32, count: usize) -> Vec<(i32, String)> {
    (0..count)
        .map(|i| ((i as i32) % partitions, format!("{prefix}-{i}")))
        .collect()
}

/// What one member process reported.
#[derive(Default)]
struct Report {
    assigned: Option<BTreeSet<i32>>,
    /// Every assignment reported, in order.
    history: Vec<BTreeSet<i32>>,
    /// (partition, offset, value) in the order consumed.
    records: Vec<(i32, i64, String)>,
}

/// A group member running as a child process. Killed (and reaped) on drop.
struct Member {
    child: Child,
    report: Arc<Mutex<Report>>,
}

#[derive(Clone, Copy, Debug)]
enum Client {
    Librdkafka,
    KafkaPython,
}

impl Member {
    fn spawn(client: Client, bootstrap: &str, group: &str, topic: &str, strategy: &str) -> Member {
        Member::spawn_static(client, bootstrap, group, topic, strategy, None)
    }

    /// A member with `group.instance.id` = `instance` when given (static membership).
    fn spawn_static(
        client: Client,
        bootstrap: &str,
        group: &str,
        topic: &str,
        strategy: &str,
        instance: Option<&str>,
    ) -> Member {
        let mut command = match client {
            Client::Librdkafka => {
                let mut c = Command::new(std::env::current_exe().expect("test binary path"));
                c.args([
                    "member_process",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ]);
                c
            }
            Client::KafkaPython => {
                let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/group_member.py");
                let mut c = Command::new("python3");
                c.arg(script);
                c
            }
        };
        command
            .env("SLUICE_MEMBER_BOOTSTRAP", bootstrap)
            .env("SLUICE_MEMBER_GROUP", group)
            .env("SLUICE_MEMBER_TOPIC", topic)
            .env("SLUICE_MEMBER_STRATEGY", strategy)
            .env("SLUICE_MEMBER_INSTANCE", instance.unwrap_or(""))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start a {client:?} member: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let report = Arc::new(Mutex::new(Report::default()));
        let sink = Arc::clone(&report);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let mut report = sink.lock().expect("report lock");
                // The test harness of a librdkafka member writes "test member_process ... "
                // without a line end before the member's first line.
                let line = match (line.find("ASSIGNED "), line.find("RECORD ")) {
                    (Some(at), _) | (None, Some(at)) => &line[at..],
                    (None, None) => continue,
                };
                if let Some(rest) = line.strip_prefix("ASSIGNED ") {
                    let partitions: BTreeSet<i32> = rest
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| p.trim().parse().expect("partition number"))
                        .collect();
                    report.history.push(partitions.clone());
                    report.assigned = Some(partitions);
                } else if let Some(rest) = line.strip_prefix("RECORD ") {
                    let mut parts = rest.splitn(3, ' ');
                    let partition = parts.next().and_then(|p| p.parse().ok()).expect("p");
                    let offset = parts.next().and_then(|p| p.parse().ok()).expect("offset");
                    let value = parts.next().unwrap_or_default().to_owned();
                    report.records.push((partition, offset, value));
                }
            }
        });
        Member { child, report }
    }

    fn assigned(&self) -> BTreeSet<i32> {
        let report = self.report.lock().expect("report lock");
        report.assigned.clone().unwrap_or_default()
    }

    fn history(&self) -> Vec<BTreeSet<i32>> {
        self.report.lock().expect("report lock").history.clone()
    }

    fn values(&self) -> Vec<String> {
        let report = self.report.lock().expect("report lock");
        report.records.iter().map(|(_, _, v)| v.clone()).collect()
    }

    /// `kill -9`: no LeaveGroup, no final commit.
    fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("kill member");
        let _ = self.child.wait();
        self.values()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the members' assignments are disjoint, cover `0..partitions`, and (when
/// `balanced`) hold equal shares.
fn wait_split(members: &[&Member], partitions: i32, balanced: bool) -> Vec<BTreeSet<i32>> {
    let everything: BTreeSet<i32> = (0..partitions).collect();
    let split = wait_for(DEADLINE, || {
        let assigned: Vec<BTreeSet<i32>> = members.iter().map(|m| m.assigned()).collect();
        let total: usize = assigned.iter().map(BTreeSet::len).sum();
        let union: BTreeSet<i32> = assigned.iter().flatten().copied().collect();
        let share = partitions as usize / members.len();
        let even = !balanced || assigned.iter().all(|a| a.len() == share);
        (union == everything && total == partitions as usize && even).then_some(assigned)
    });
    split.unwrap_or_else(|| {
        let now: Vec<BTreeSet<i32>> = members.iter().map(|m| m.assigned()).collect();
        panic!("members never split {partitions} partitions: {now:?}")
    })
}

/// Waits until every value in `expected` was consumed by some member (or is in `dead`).
fn wait_consumed(members: &[&Member], dead: &[String], expected: &[(i32, String)]) {
    let missing = || -> Vec<String> {
        let mut seen: BTreeSet<String> = dead.iter().cloned().collect();
        for member in members {
            seen.extend(member.values());
        }
        expected
            .iter()
            .filter(|(_, v)| !seen.contains(v))
            .map(|(_, v)| v.clone())
            .collect()
    };
    let done = wait_for(DEADLINE, || missing().is_empty().then_some(()));
    if done.is_none() {
        let left = missing();
        panic!(
            "{} records never consumed, e.g. {:?}",
            left.len(),
            &left[..left.len().min(5)]
        );
    }
}

/// Sends librdkafka's logs to stderr (the member's stderr is the test's).
struct StderrLog;

impl rdkafka::client::ClientContext for StderrLog {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        eprintln!("rdkafka {facility}: {message}");
    }
}

impl rdkafka::consumer::ConsumerContext for StderrLog {}

/// The librdkafka group member, run as a child process by [`Member::spawn`]. Does nothing
/// when run as an ordinary test.
#[test]
fn member_process() {
    let Ok(bootstrap) = std::env::var("SLUICE_MEMBER_BOOTSTRAP") else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} set"));
    let mut config = ClientConfig::new();
    let instance = var("SLUICE_MEMBER_INSTANCE");
    if !instance.is_empty() {
        config.set("group.instance.id", instance);
    }
    if std::env::var("SLUICE_MEMBER_DEBUG").is_ok() {
        config.set("debug", "cgrp,protocol");
    }
    let consumer: BaseConsumer<StderrLog> = config
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", var("SLUICE_MEMBER_GROUP"))
        .set("client.id", "sluice-rdkafka-member")
        .set(
            "partition.assignment.strategy",
            var("SLUICE_MEMBER_STRATEGY"),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "3000")
        .set("heartbeat.interval.ms", "300")
        .set("max.poll.interval.ms", "10000")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("fetch.wait.max.ms", "100")
        .create_with_context(StderrLog)
        .expect("consumer");
    consumer
        .subscribe(&[&var("SLUICE_MEMBER_TOPIC")])
        .expect("subscribe");
    let mut out = std::io::stdout();
    let mut last: Option<Vec<i32>> = None;
    // Bounded: the member exits on its own after two minutes if nobody kills it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let value = message
                    .payload_view::<str>()
                    .and_then(Result::ok)
                    .unwrap_or_default()
                    .to_owned();
                writeln!(
                    out,
                    "RECORD {} {} {value}",
                    message.partition(),
                    message.offset()
                )
                .expect("stdout");
                out.flush().expect("stdout");
                if let Err(error) = consumer.commit_message(&message, CommitMode::Sync) {
                    // A rebalance can fail a commit; the record is then consumed again.
                    eprintln!("commit failed: {error}");
                }
            }
            Some(Err(error)) => eprintln!("consumer error: {error}"),
            None => {}
        }
        let mut assigned: Vec<i32> = consumer
            .assignment()
            .map(|a| a.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        assigned.sort_unstable();
        if last.as_ref() != Some(&assigned) {
            let list: Vec<String> = assigned.iter().map(i32::to_string).collect();
            writeln!(out, "ASSIGNED {}", list.join(",")).expect("stdout");
            out.flush().expect("stdout");
            last = Some(assigned);
        }
    }
}

/// Three members of one group over a six-partition topic split it evenly; one is killed
/// without leaving and its partitions move to the other two; every record produced before
/// and after the crash is consumed.
fn split_crash_and_recover(client: Client, strategy: &str) {
    let broker = common::broker();
    let bootstrap = broker.bootstrap();
    let name = format!("groups-{client:?}-{strategy}").to_lowercase();
    let (topic, group) = (name.clone(), format!("{name}-g"));
    create_topic(broker.addr, &topic, 6);
    let members: Vec<Member> = (0..3)
        .map(|_| Member::spawn(client, &bootstrap, &group, &topic, strategy))
        .collect();
    let all: Vec<&Member> = members.iter().collect();
    wait_split(&all, 6, true);
    let first = records("before", 6, 300);
    produce(&bootstrap, &topic, &first);
    wait_consumed(&all, &[], &first);

    let mut members = members;
    let victim = members.remove(0);
    let dead = victim.kill();
    let survivors: Vec<&Member> = members.iter().collect();
    // The victim's partitions move to the survivors once its session times out.
    wait_split(&survivors, 6, true);
    let second = records("after", 6, 300);
    produce(&bootstrap, &topic, &second);
    wait_consumed(&survivors, &dead, &first);
    wait_consumed(&survivors, &dead, &second);
}

// Goal: librdkafka with the range assignor: even split, crash recovery, nothing unconsumed.
#[test]
fn rdkafka_range_split_and_crash() {
    split_crash_and_recover(Client::Librdkafka, "range");
}

// Goal: as above with the roundrobin assignor.
#[test]
fn rdkafka_roundrobin_split_and_crash() {
    split_crash_and_recover(Client::Librdkafka, "roundrobin");
}

// Goal: as above with cooperative (incremental) rebalancing.
#[test]
fn rdkafka_cooperative_sticky_split_and_crash() {
    split_crash_and_recover(Client::Librdkafka, "cooperative-sticky");
}

// Goal: the same with kafka-python, an independent client implementation.
#[test]
fn python_range_split_and_crash() {
    split_crash_and_recover(Client::KafkaPython, "range");
}

// Goal: kafka-python with cooperative rebalancing.
#[test]
fn python_cooperative_sticky_split_and_crash() {
    split_crash_and_recover(Client::KafkaPython, "cooperative-sticky");
}

// Goal: librdkafka and kafka-python members share one group (both speak the classic
// protocol with the range assignor) and split its partitions.
#[test]
fn mixed_clients_share_a_group() {
    let broker = common::broker();
    let bootstrap = broker.bootstrap();
    let (topic, group) = ("groups-mixed", "groups-mixed-g");
    create_topic(broker.addr, topic, 4);
    let a = Member::spawn(Client::Librdkafka, &bootstrap, group, topic, "range");
    let b = Member::spawn(Client::KafkaPython, &bootstrap, group, topic, "range");
    wait_split(&[&a, &b], 4, true);
    let values = records("mixed", 4, 100);
    produce(&bootstrap, topic, &values);
    wait_consumed(&[&a, &b], &[], &values);
}

// Goal: two groups on one topic each consume every record.
#[test]
fn two_groups_each_see_every_record() {
    let broker = common::broker();
    let bootstrap = broker.bootstrap();
    let topic = "groups-two";
    create_topic(broker.addr, topic, 3);
    let values = records("two", 3, 150);
    produce(&bootstrap, topic, &values);
    let a = Member::spawn(
        Client::Librdkafka,
        &bootstrap,
        "groups-two-a",
        topic,
        "range",
    );
    let b = Member::spawn(
        Client::KafkaPython,
        &bootstrap,
        "groups-two-b",
        topic,
        "range",
    );
    wait_consumed(&[&a], &[], &values);
    wait_consumed(&[&b], &[], &values);
}

// Goal: adding partitions to a subscribed topic rebalances the group onto them.
#[test]
fn partition_count_change_rebalances() {
    let broker = common::broker();
    let bootstrap = broker.bootstrap();
    let (topic, group) = ("groups-grow", "groups-grow-g");
    create_topic(broker.addr, topic, 2);
    let a = Member::spawn(Client::Librdkafka, &bootstrap, group, topic, "range");
    let b = Member::spawn(Client::Librdkafka, &bootstrap, group, topic, "range");
    wait_split(&[&a, &b], 2, true);
    let request = CreatePartitionsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            CreatePartitionsTopic::default()
                .with_name(TopicName(s(topic)))
                .with_count(4),
        ]);
    let ResponseKind::CreatePartitions(r) = Raw::connect_to(broker.addr).call(3, request) else {
        panic!("kind")
    };
    assert_eq!(r.results[0].error_code, 0);
    wait_split(&[&a, &b], 4, true);
    let values = records("grow", 4, 40);
    produce(&bootstrap, topic, &values);
    wait_consumed(&[&a, &b], &[], &values);
}

// Goal: static membership: a static member that crashes and comes back with the same
// group.instance.id within its session timeout gets its partitions back without a rebalance,
// so the member that kept heartbeating is not disturbed. Method: librdkafka members; the
// dynamic member joins first (it leads; a static leader's return would rebalance), the static
// one is killed with -9 and restarted; the dynamic member's assignment history must not
// change after the first split.
fn static_member_returns_without_rebalance(client: Client) {
    let broker = common::broker();
    let bootstrap = broker.bootstrap();
    let topic = format!("groups-static-{client:?}").to_lowercase();
    let group = format!("{topic}-g");
    let (topic, group) = (topic.as_str(), group.as_str());
    create_topic(broker.addr, topic, 4);
    let steady = Member::spawn(client, &bootstrap, group, topic, "range");
    wait_split(&[&steady], 4, true);
    let spawn_static =
        || Member::spawn_static(client, &bootstrap, group, topic, "range", Some("s-1"));
    let first = spawn_static();
    let split = wait_split(&[&steady, &first], 4, true);
    let settled = steady.history().len();
    let _ = first.kill();
    let second = spawn_static();
    let back = wait_for(DEADLINE, || (second.assigned() == split[1]).then_some(()));
    assert!(
        back.is_some(),
        "the static member did not get {:?} back: {:?}",
        split[1],
        second.history()
    );
    let values = records("static", 4, 40);
    produce(&bootstrap, topic, &values);
    wait_consumed(&[&steady, &second], &[], &values);
    assert_eq!(
        steady.history().len(),
        settled,
        "the steady member was rebalanced: {:?}",
        steady.history()
    );
}

#[test]
fn rdkafka_static_member_returns_without_rebalance() {
    static_member_returns_without_rebalance(Client::Librdkafka);
}

#[test]
fn python_static_member_returns_without_rebalance() {
    static_member_returns_without_rebalance(Client::KafkaPython);
}

fn consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "3000")
        .set("heartbeat.interval.ms", "300")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer")
}

/// Consumes until `count` records arrived, committing each after it is processed.
fn consume_committing(consumer: &BaseConsumer, count: usize) -> Vec<(i32, i64, String)> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    while got.len() < count {
        assert!(
            Instant::now() < deadline,
            "consumed {} of {count}",
            got.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let value = m.payload_view::<str>().and_then(Result::ok).unwrap_or("");
                got.push((m.partition(), m.offset(), value.to_owned()));
                consumer
                    .commit_message(&m, CommitMode::Sync)
                    .expect("commit after processing");
            }
            Some(Err(error)) => panic!("consume: {error}"),
            None => {}
        }
    }
    got
}

// Goal: a broker restart resumes the group from its committed offsets: a new member of the
// group continues exactly where the last one committed. Method: a broker on its own data
// directory, stopped and started again on the same directory and ports.
#[test]
fn restart_resumes_from_committed_offsets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let (topic, group) = ("groups-restart", "groups-restart-g");
    let broker = RunningBroker::start(dir.path(), addr, admin, 2, test_group_config());
    create_topic(addr, topic, 2);
    let values = records("restart", 2, 100);
    produce(&broker.bootstrap(), topic, &values);
    let member = consumer(&broker.bootstrap(), group);
    member.subscribe(&[topic]).expect("subscribe");
    let first = consume_committing(&member, 40);
    drop(member);
    broker.stop();

    let broker = RunningBroker::start(dir.path(), addr, admin, 2, test_group_config());
    let member = consumer(&broker.bootstrap(), group);
    member.subscribe(&[topic]).expect("subscribe");
    let rest = consume_committing(&member, 60);
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o, _) in &first {
        next.insert(*p, o + 1);
    }
    for (p, o, v) in &rest {
        let expected = next.get(p).copied().unwrap_or(0);
        assert_eq!(
            *o, expected,
            "partition {p} resumed at {o} ({v}), not at {expected}"
        );
        next.insert(*p, o + 1);
    }
    let seen: BTreeSet<&str> = first
        .iter()
        .chain(&rest)
        .map(|(_, _, v)| v.as_str())
        .collect();
    assert_eq!(seen.len(), values.len(), "every record exactly once");
    drop(member);
    broker.stop();
}

// Goal: /metrics reports each group's lag per partition (high watermark - committed offset).
#[test]
fn lag_metric() {
    let broker = common::broker();
    let (topic, group) = ("groups-lag", "groups-lag-g");
    create_topic(broker.addr, topic, 1);
    produce(&broker.bootstrap(), topic, &records("lag", 1, 10));
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(3),
                ]),
        ]);
    let ResponseKind::OffsetCommit(r) = Raw::connect_to(broker.addr).call(8, request) else {
        panic!("kind")
    };
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let mut stream = TcpStream::connect(broker.admin).expect("admin endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("response");
    let line = format!(
        "sluice_consumer_group_lag{{group=\"{group}\",topic=\"{topic}\",partition=\"0\"}} 7"
    );
    assert!(body.contains(&line), "no `{line}` in:\n{body}");
}
