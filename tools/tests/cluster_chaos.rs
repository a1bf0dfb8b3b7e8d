//! Chaos tests of partition replication: three real `sluice broker` processes, an RF=3 topic
//! with `min.insync.replicas=2`, acks=all producers and a consumer running throughout, and
//! one fault per test: (a) SIGKILL of a partition leader, later restarted; (b) the leader cut
//! off from the other two brokers (each broker in its own network namespace, the cut a bridge
//! port brought down), later healed; (c) a follower's data directory on a small ext4 file
//! system that fills up, later freed; (d) a rolling restart, each broker in turn stopped with
//! SIGTERM (or killed with SIGKILL) and started again, the next only once it is back in
//! every ISR.
//!
//! After the fault heals and the load stops, the checker asserts (`check`):
//! 1. every acknowledged record is in the current leader's log at its acknowledged offset with
//!    the same key and value;
//! 2. every record the consumer saw is in that log at the offset it was seen at (nothing a
//!    consumer saw was lost later);
//! 3. once every replica is back in the ISR, the three replicas' segment files hold the same
//!    batches (base offset, length, CRC, leader epoch) below the high watermark, read with
//!    `BatchHeader::parse` after the brokers stopped.
//!
//! Each test ends with one line of figures (`chaos figures NAME: ...`, see `print_figures`):
//! acknowledgements before, during and after the fault, failed acks=all records, records
//! lost, and the failover time, measured with the test's clock and printed, never asserted.
//!
//! Nothing here asserts timing: every wait has a deadline only so a hang fails. The netns and
//! disk-full tests need root (`ip netns`, `mount`); without it they fail, they do not skip.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::{Either, select};
use futures::stream::FuturesUnordered;
use sluice_engine::batch::{BatchHeader, HEADER_BYTES};
use sluice_engine::limits::BATCH_BYTES_MAX;
use sluice_engine::rt;
use sluice_net::client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, ProduceError, Producer, ProducerConfig,
    ProducerRecord, RecordMetadata, Seek,
};
use sluice_net::native::messages::OffsetQuery;
use sluice_net::quic::tls::{self, ClientTlsOptions};
use support::cluster::{Cluster, NodeSpec, loopback_specs};
use support::run;
use support::small_fs::SmallFs;

const TOPIC: &str = "chaos";
/// Two partitions on three brokers: leaders differ, and one broker leads neither.
const PARTITIONS: i32 = 2;
/// Small segments, so the load rolls segments (each roll allocates a file: a full disk
/// bites) and the replicas' logs span several files.
const SEGMENT_BYTES: &str = "1048576";

/// Broker flags: fencing within 2 s of silence; a follower that stopped catching up leaves
/// the ISR after 3 s; one offsets partition (no groups here).
const BROKER_FLAGS: &[&str] = &[
    "--broker-session-timeout-ms",
    "2000",
    "--replica-lag-time-max-ms",
    "3000",
    "--offsets-topic-partitions",
    "1",
];

/// Concurrent producers, each with its own client.
const PRODUCERS: usize = 2;
/// Acknowledgements to wait for in each phase (before the fault, during it, after it heals).
const ACKS_PER_PHASE: usize = 2_000;
/// Records one producer sends per second at most: enough for several batches per request,
/// few enough that a 2-core machine keeps up and the count bound is never reached.
const RECORDS_PER_SECOND_MAX: u128 = 3_000;
/// Bound on the records one producer sends.
const RECORDS_PER_PRODUCER_MAX: usize = 500_000;
/// Records a producer has sent and not yet seen answered.
const OUTSTANDING_MAX: usize = 200;
/// How long one phase may take to bring its acknowledgements (an election, a fencing and
/// client retries take a few seconds).
const PHASE_DEADLINE: Duration = Duration::from_secs(40);
/// How long a phase whose progress is not asserted may take.
const SOAK: Duration = Duration::from_secs(10);
/// Longest the load runs if the test never stops it.
const LOAD_DEADLINE: Duration = Duration::from_secs(150);

/// One acknowledged or consumed record.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    partition: i32,
    offset: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
}

/// Record `i` of producer `producer`: unique key and value, ~100 bytes.
fn record(producer: usize, i: usize) -> ProducerRecord {
    let partition = (i % PARTITIONS as usize) as i32;
    ProducerRecord::new(
        TOPIC,
        format!("p{producer}-v{i:08}-{}", "x".repeat(40 + i % 61)),
    )
    .with_key(format!("p{producer}-k{i}"))
    .with_partition(partition)
}

/// What the load threads and the test thread share.
#[derive(Default)]
struct LoadControl {
    stop: AtomicBool,
    acked: AtomicUsize,
    /// The latest few distinct errors of any load thread, shown when progress stalls.
    recent_errors: Mutex<Vec<String>>,
}

impl LoadControl {
    fn note(&self, error: String) {
        let mut recent = self.recent_errors.lock().expect("not poisoned");
        if !recent.contains(&error) {
            if recent.len() == 5 {
                recent.remove(0);
            }
            recent.push(error);
        }
    }
}

/// One acknowledged record and when the test saw its acknowledgement (the test's clock).
struct Acked {
    record: Record,
    at: Instant,
}

/// What one producer saw.
struct ProducerReport {
    acked: Vec<Acked>,
    sent: usize,
    /// Records whose send failed after the producer's retries, by error message.
    failed: BTreeMap<String, usize>,
}

/// What the load saw, once it stopped.
struct LoadReport {
    acked: Vec<Acked>,
    /// Records whose acks=all send failed, by error message.
    failed: BTreeMap<String, usize>,
    consumed: ConsumerReport,
}

/// What the consumer saw.
struct ConsumerReport {
    seen: Vec<Record>,
    errors: Vec<String>,
}

/// Producers and a consumer on their own threads (each with its own executor and client),
/// until [`Load::finish`].
struct Load {
    control: Arc<LoadControl>,
    producers: Vec<JoinHandle<ProducerReport>>,
    consumer: JoinHandle<ConsumerReport>,
}

/// How clients reach the cluster: every broker's QUIC endpoint, and the certificates to
/// verify them with (brokers off loopback must be verified).
#[derive(Clone, Debug)]
struct Endpoints {
    brokers: Vec<String>,
    ca: Option<PathBuf>,
}

impl Endpoints {
    fn of(cluster: &Cluster, ca: Option<&Path>) -> Endpoints {
        Endpoints {
            brokers: cluster.nodes.iter().map(|n| n.quic.to_string()).collect(),
            ca: ca.map(Path::to_path_buf),
        }
    }
}

/// A client that gives up on a dead or cut-off broker within seconds and retries elsewhere.
async fn connect(endpoints: &Endpoints) -> Client {
    let brokers = &endpoints.brokers;
    let config = ClientConfig {
        tls: ClientTlsOptions {
            ca: endpoints.ca.clone(),
            identity: None,
        },
        request_timeout: Duration::from_secs(2),
        retries: 10,
        retry_backoff: Duration::from_millis(100),
        retry_backoff_max: Duration::from_secs(1),
        auto_create_topics: false,
        ..ClientConfig::new(brokers.iter().cloned())
    };
    Client::connect(config)
        .await
        .unwrap_or_else(|error| panic!("connect to {brokers:?}: {error}"))
}

/// Keeps the first few distinct error messages.
fn note_error(errors: &mut Vec<String>, error: String) {
    if errors.len() < 5 && !errors.contains(&error) {
        errors.push(error);
    }
}

/// How one send ended.
type Answer = Result<RecordMetadata, ProduceError>;

async fn produce(index: usize, endpoints: Endpoints, control: Arc<LoadControl>) -> ProducerReport {
    let client = connect(&endpoints).await;
    let config = ProducerConfig {
        acks: Acks::All,
        batch_size: 16 << 10,
        linger: Duration::from_millis(2),
        retries: 8,
        retry_backoff: Duration::from_millis(100),
        retry_backoff_max: Duration::from_secs(1),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, config).expect("producer");
    let mut report = ProducerReport {
        acked: Vec::new(),
        sent: 0,
        failed: BTreeMap::new(),
    };
    let mut pending = FuturesUnordered::new();
    let deadline = Instant::now() + LOAD_DEADLINE;
    let book = |report: &mut ProducerReport, (i, result): (usize, Answer)| match result {
        Ok(metadata) => {
            let sent = record(index, i);
            let record = Record {
                partition: metadata.partition,
                offset: metadata.offset,
                key: sent.key,
                value: sent.value,
            };
            report.acked.push(Acked {
                record,
                at: Instant::now(),
            });
            control.acked.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => {
            control.note(format!("producer {index}: {error}"));
            *report.failed.entry(error.to_string()).or_default() += 1;
        }
    };
    // Bounded by the record count and the deadline; each pass sends one record or takes one
    // answer, and every answer comes (acknowledged, or failed after the retries).
    let started = Instant::now();
    while !control.stop.load(Ordering::Relaxed)
        && report.sent < RECORDS_PER_PRODUCER_MAX
        && Instant::now() < deadline
    {
        let allowed = started.elapsed().as_millis() * RECORDS_PER_SECOND_MAX / 1000;
        if (report.sent as u128) >= allowed {
            // Ahead of the rate: take an answer meanwhile, if one comes.
            let pause = rt::sleep(Duration::from_millis(5));
            if pending.is_empty() {
                pause.await;
                continue;
            }
            futures::pin_mut!(pause);
            if let Either::Left((Some(answer), _)) = select(pending.next(), pause).await {
                book(&mut report, answer);
            }
            continue;
        }
        if pending.len() < OUTSTANDING_MAX {
            let i = report.sent;
            let ack = producer.send(record(index, i));
            pending.push(async move { (i, ack.await) });
            report.sent += 1;
            rt::yield_if_needed().await;
            continue;
        }
        let answer = pending.next().await.expect("answers pending");
        book(&mut report, answer);
    }
    // Every record sent gets its answer before the report: an acknowledgement the test did
    // not wait for would escape the check.
    while let Some(answer) = pending.next().await {
        book(&mut report, answer);
    }
    client.close().await;
    report
}

async fn consume(endpoints: Endpoints, control: Arc<LoadControl>) -> ConsumerReport {
    let client = connect(&endpoints).await;
    let config = ConsumerConfig {
        fetch_wait_max: Duration::from_millis(200),
        // A correct cluster never answers out of range here (positions stay below the high
        // watermark, which survives failover); if it does, read on from the start so that
        // what is seen afterwards is checked too.
        reset_on_out_of_range: Some(Seek::Beginning),
        retry_backoff_max: Duration::from_millis(200),
        ..ConsumerConfig::default()
    };
    let consumer = Consumer::new(&client, config);
    let partitions: Vec<(&str, i32)> = (0..PARTITIONS).map(|p| (TOPIC, p)).collect();
    consumer.assign(&partitions);
    let mut report = ConsumerReport {
        seen: Vec::new(),
        errors: Vec::new(),
    };
    let deadline = Instant::now() + LOAD_DEADLINE;
    // Bounded by the deadline; each poll returns within its timeout.
    while !control.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)).await {
            Ok(records) => report.seen.extend(records.into_iter().map(|r| Record {
                partition: r.partition,
                offset: r.offset,
                key: r.key,
                value: r.value,
            })),
            Err(error) => {
                control.note(format!("consumer: {error}"));
                note_error(&mut report.errors, error.to_string());
            }
        }
    }
    client.close().await;
    report
}

impl Load {
    fn start(endpoints: &Endpoints) -> Load {
        let control = Arc::new(LoadControl::default());
        let producers = (0..PRODUCERS)
            .map(|index| {
                let (endpoints, control) = (endpoints.clone(), Arc::clone(&control));
                std::thread::spawn(move || run(produce(index, endpoints, control)))
            })
            .collect();
        let consumer = {
            let (endpoints, control) = (endpoints.clone(), Arc::clone(&control));
            std::thread::spawn(move || run(consume(endpoints, control)))
        };
        Load {
            control,
            producers,
            consumer,
        }
    }

    fn acked(&self) -> usize {
        self.control.acked.load(Ordering::Relaxed)
    }

    /// Waits up to `patience` for `ACKS_PER_PHASE` more acknowledgements without failing
    /// (for phases whose progress depends on where clients look up metadata, such as a
    /// leader cut off from the brokers but not from the clients); says whether they came.
    fn soak(&self, patience: Duration, phase: &str) -> bool {
        let target = self.acked() + ACKS_PER_PHASE;
        let deadline = Instant::now() + patience;
        // Bounded by the deadline.
        while self.acked() < target && Instant::now() < deadline {
            // Polling a counter the load threads bump.
            std::thread::sleep(Duration::from_millis(50));
        }
        let progressed = self.acked() >= target;
        eprintln!(
            "{phase}: {} acknowledged so far ({}); recent load errors {:?}",
            self.acked(),
            if progressed {
                "progressing"
            } else {
                "no progress within the soak"
            },
            self.control.recent_errors.lock().expect("not poisoned")
        );
        progressed
    }

    /// Waits until `ACKS_PER_PHASE` more records are acknowledged; fails with the brokers'
    /// logs if the cluster stops taking acks=all writes for `PHASE_DEADLINE` (two of three
    /// replicas are enough for `min.insync.replicas=2` in every phase), or if a broker not in
    /// `may_exit` crashes.
    fn wait_progress(&self, cluster: &Cluster, phase: &str, may_exit: &[i64]) {
        let target = self.acked() + ACKS_PER_PHASE;
        let deadline = Instant::now() + PHASE_DEADLINE;
        // Bounded by the deadline.
        while self.acked() < target {
            assert_no_crash(cluster, may_exit);
            if Instant::now() >= deadline {
                let views: Vec<String> = cluster
                    .nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "broker {}: {:?}",
                            n.id,
                            n.view().as_ref().and_then(placements)
                        )
                    })
                    .collect();
                panic!(
                    "{ACKS_PER_PHASE} more acknowledgements {phase} did not come within \
                     {PHASE_DEADLINE:?} ({} of {target}); recent load errors: {:?}\n{}\n{}",
                    self.acked(),
                    self.control.recent_errors.lock().expect("not poisoned"),
                    views.join("\n"),
                    cluster.logs()
                );
            }
            // Polling a counter the load threads bump.
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{phase}: {} acknowledged so far", self.acked());
    }

    /// Stops sending, waits for every answer and the consumer; returns what was acknowledged,
    /// what failed and what was seen.
    fn finish(self) -> LoadReport {
        self.control.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        let mut failed = BTreeMap::new();
        for (index, producer) in self.producers.into_iter().enumerate() {
            let report = producer.join().expect("producer thread");
            eprintln!(
                "producer {index}: sent {}, acknowledged {}, failed {:?}",
                report.sent,
                report.acked.len(),
                report.failed
            );
            acked.extend(report.acked);
            for (error, count) in report.failed {
                *failed.entry(error).or_default() += count;
            }
        }
        let consumed = self.consumer.join().expect("consumer thread");
        eprintln!(
            "consumer: saw {} records {:?}",
            consumed.seen.len(),
            consumed.errors
        );
        LoadReport {
            acked,
            failed,
            consumed,
        }
    }
}

/// One partition of `TOPIC` as a broker's `/cluster` view describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Placement {
    leader: i64,
    epoch: i64,
    replicas: Vec<i64>,
    isr: Vec<i64>,
}

fn placements(view: &serde_json::Value) -> Option<BTreeMap<i32, Placement>> {
    let ids = |v: &serde_json::Value| -> Option<Vec<i64>> {
        v.as_array()?
            .iter()
            .map(serde_json::Value::as_i64)
            .collect()
    };
    let mut out = BTreeMap::new();
    for p in view["partitions"].as_array()? {
        if p["topic"] != TOPIC {
            continue;
        }
        let partition = i32::try_from(p["partition"].as_i64()?).ok()?;
        let placement = Placement {
            leader: p["leader"].as_i64()?,
            epoch: p["leader_epoch"].as_i64()?,
            replicas: ids(&p["replicas"])?,
            isr: ids(&p["isr"])?,
        };
        out.insert(partition, placement);
    }
    (out.len() == PARTITIONS as usize).then_some(out)
}

/// Fails at once, with the end of its log, if a broker the test did not stop has exited
/// (a panic or a fatal error), unless its id is in `may_exit`.
fn assert_no_crash(cluster: &Cluster, may_exit: &[i64]) {
    for node in &cluster.nodes {
        if node.exited_by_itself() && !may_exit.contains(&i64::from(node.id)) {
            panic!(
                "broker {} exited by itself; its log ends:\n{}",
                node.id,
                tail(&node.log())
            );
        }
    }
}

/// The placement every broker in `ids` agrees on, if they all answer and agree, with every
/// partition led. Fails if a broker crashed.
fn agreed(cluster: &Cluster, ids: &[i64]) -> Option<BTreeMap<i32, Placement>> {
    assert_no_crash(cluster, &[]);
    let mut views = Vec::new();
    for id in ids {
        views.push(placements(&cluster.node(*id).view()?)?);
    }
    let first = views.first()?.clone();
    let led = first.values().all(|p| p.leader >= 0);
    (led && views.iter().all(|v| *v == first)).then_some(first)
}

fn all_ids(cluster: &Cluster) -> Vec<i64> {
    cluster.nodes.iter().map(|n| i64::from(n.id)).collect()
}

/// Creates the topic once a controller and all three registrations are there; returns the
/// placement once every broker agrees on it with a full ISR.
fn create_topic(cluster: &Cluster, endpoints: &Endpoints) -> BTreeMap<i32, Placement> {
    cluster.wait_converged(3);
    let brokers = endpoints.brokers.join(",");
    let ca = endpoints.ca.as_ref().map(|p| p.display().to_string());
    let partitions = PARTITIONS.to_string();
    let segment_bytes = format!("segment.bytes={SEGMENT_BYTES}");
    cluster.wait_for("the topic created", |cluster| {
        let mut args = vec![
            "topic",
            "create",
            TOPIC,
            "--partitions",
            &partitions,
            "--replicas",
            "3",
            "--config",
            "min.insync.replicas=2",
            "--config",
            &segment_bytes,
        ];
        if let Some(ca) = &ca {
            args.extend(["--ca", ca]);
        }
        let created = cluster.nodes[0].sluice(&args, &brokers);
        if !created.status.success() {
            let error = String::from_utf8_lossy(&created.stderr);
            eprintln!("topic create (retried): {}", error.trim());
        }
        // Retried: the controller may still be settling (NOT_CONTROLLER is retriable).
        created.status.success().then_some(())
    });
    let ids = all_ids(cluster);
    cluster.wait_for("every broker to agree on the placement", |cluster| {
        let placement = agreed(cluster, &ids)?;
        placement
            .values()
            .all(|p| p.isr.len() == 3)
            .then_some(placement)
    })
}

/// What the replicas' logs are compared by: one batch's header fields that identify it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StoredBatch {
    base_offset: i64,
    last_offset_delta: i32,
    length: i32,
    crc: u32,
    leader_epoch: i32,
}

/// The batches of one replica's log that start below `high_watermark`, read from
/// `DATA/TOPIC-P/*.log`.
fn replica_batches(data: &Path, partition: i32, high_watermark: i64) -> Vec<StoredBatch> {
    let dir = data.join(format!("{TOPIC}-{partition}"));
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    // Names are zero-padded base offsets: name order is offset order.
    segments.sort();
    let mut batches = Vec::new();
    for segment in segments {
        let bytes = std::fs::read(&segment).expect("segment readable");
        let mut at = 0usize;
        // Bounded by the file: each step moves past one batch or ends the scan at the data's
        // end (preallocated zeros, or a torn tail past what was synced).
        while at + HEADER_BYTES <= bytes.len() {
            let Ok(header) = BatchHeader::parse(&bytes[at..], BATCH_BYTES_MAX) else {
                break;
            };
            let total = 12 + header.batch_length as usize;
            if at + total > bytes.len() || header.base_offset.0 >= high_watermark {
                break;
            }
            batches.push(StoredBatch {
                base_offset: header.base_offset.0,
                last_offset_delta: header.last_offset_delta,
                length: header.batch_length,
                crc: header.crc,
                leader_epoch: header.leader_epoch.0,
            });
            at += total;
        }
    }
    batches
}

/// Every record of every partition from offset 0 to its high watermark, read from the
/// current leaders; also returns the high watermarks.
async fn read_logs(endpoints: &Endpoints) -> (BTreeMap<(i32, i64), Record>, BTreeMap<i32, i64>) {
    let client = connect(endpoints).await;
    let mut high_watermarks = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let end = client
            .list_offset(TOPIC, partition, OffsetQuery::Latest)
            .await
            .unwrap_or_else(|e| panic!("high watermark of {TOPIC}-{partition}: {e}"))
            .offset;
        high_watermarks.insert(partition, end);
    }
    let consumer = Consumer::new(&client, ConsumerConfig::default());
    let assignment: Vec<(&str, i32, Seek)> = (0..PARTITIONS)
        .map(|p| (TOPIC, p, Seek::Offset(0)))
        .collect();
    consumer.assign_from(&assignment);
    let mut log = BTreeMap::new();
    let deadline = Instant::now() + PHASE_DEADLINE;
    // Bounded by the deadline; positions only grow.
    loop {
        let mut behind = Vec::new();
        for (partition, end) in &high_watermarks {
            let position = consumer
                .position(TOPIC, *partition)
                .await
                .unwrap_or_else(|e| panic!("position of {TOPIC}-{partition}: {e}"));
            if position < *end {
                behind.push((*partition, position, *end));
            }
        }
        if behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reading the final log: still behind (partition, position, high watermark) \
             {behind:?}"
        );
        let records = consumer
            .poll(Duration::from_millis(500))
            .await
            .unwrap_or_else(|e| panic!("reading the final log: {e}"));
        for r in records {
            if r.offset < high_watermarks[&r.partition] {
                let record = Record {
                    partition: r.partition,
                    offset: r.offset,
                    key: r.key,
                    value: r.value,
                };
                log.insert((record.partition, record.offset), record);
            }
        }
    }
    client.close().await;
    (log, high_watermarks)
}

fn show(bytes: &Option<Bytes>) -> String {
    match bytes {
        Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
        None => "null".to_owned(),
    }
}

/// The records of `records` that are not in `log` at their offset with the same key and
/// value, each with what `log` has there.
fn not_in_log<'a>(
    records: &'a [Record],
    log: &'a BTreeMap<(i32, i64), Record>,
) -> Vec<(&'a Record, Option<&'a Record>)> {
    records
        .iter()
        .filter_map(|r| {
            let stored = log.get(&(r.partition, r.offset));
            (stored != Some(r)).then_some((r, stored))
        })
        .collect()
}

/// Asserts that each of `records` is in `log` at its offset with the same key and value.
fn assert_in_log(what: &str, records: &[Record], log: &BTreeMap<(i32, i64), Record>) {
    let mut wrong = not_in_log(records, log);
    wrong.sort_by_key(|(r, _)| (r.partition, r.offset));
    let Some((first, stored)) = wrong.first() else {
        return;
    };
    let found = match stored {
        Some(s) => format!("key {} value {}", show(&s.key), show(&s.value)),
        None => "no record there".to_owned(),
    };
    let mut per_partition = BTreeMap::<i32, usize>::new();
    for (r, _) in &wrong {
        *per_partition.entry(r.partition).or_default() += 1;
    }
    panic!(
        "{} of {} {what} are missing or different in the current leaders' logs \
         (per partition: {per_partition:?}); first: partition {} offset {} was key {} \
         value {}, the log has {found}",
        wrong.len(),
        records.len(),
        first.partition,
        first.offset,
        show(&first.key),
        show(&first.value)
    );
}

/// What [`check`] measured on the way.
struct Checked {
    /// Acknowledged records missing from the final log (0, or the check failed).
    lost: usize,
    /// Records the final log holds more than once (a producer's retry of a request whose
    /// answer it did not get: acks=all without idempotence, as in Kafka).
    duplicates: usize,
    /// Per partition, each leader epoch in the final leader's log below the high watermark and
    /// the offset its first batch starts at, in log order.
    epoch_starts: BTreeMap<i32, Vec<(i32, i64)>>,
}

/// The checks after a scenario healed (see the module docs); stops the brokers.
fn check(cluster: &mut Cluster, endpoints: &Endpoints, load: &LoadReport) -> Checked {
    let acked: Vec<Record> = load.acked.iter().map(|a| a.record.clone()).collect();
    let consumed = &load.consumed;
    let ids = all_ids(cluster);
    let placement = cluster.wait_for("every broker to agree on the leaders", |cluster| {
        agreed(cluster, &ids)
    });
    eprintln!("placement at the check: {placement:?}");
    let (log, high_watermarks) = run(read_logs(endpoints));
    eprintln!(
        "high watermarks {high_watermarks:?}; {} records in the log, {} acknowledged",
        log.len(),
        acked.len()
    );
    assert!(!acked.is_empty(), "the load acknowledged nothing");
    let lost = not_in_log(&acked, &log).len();
    let distinct: std::collections::BTreeSet<(i32, &Option<Bytes>, &Option<Bytes>)> = log
        .values()
        .map(|r| (r.partition, &r.key, &r.value))
        .collect();
    let duplicates = log.len() - distinct.len();
    assert_in_log("acknowledged records", &acked, &log);
    assert_in_log("records the consumer saw", &consumed.seen, &log);

    // The replicas: all back in the ISR, then their logs compared below the high watermark.
    let placement = cluster.wait_for("every replica back in the ISR", |cluster| {
        let placement = agreed(cluster, &ids)?;
        placement
            .values()
            .all(|p| p.isr.len() == p.replicas.len())
            .then_some(placement)
    });
    let (_, high_watermarks) = run(read_logs(endpoints));
    let mut epoch_starts = BTreeMap::new();
    for node in &mut cluster.nodes {
        if node.is_running() {
            let clean = node.stop();
            eprintln!("broker {} stopped (clean: {clean})", node.id);
        }
    }
    for (partition, high_watermark) in &high_watermarks {
        let leader = placement[partition].leader;
        let logs: Vec<(i32, Vec<_>)> = cluster
            .nodes
            .iter()
            .map(|n| (n.id, replica_batches(&n.data, *partition, *high_watermark)))
            .collect();
        let (_, leader_batches) = logs
            .iter()
            .find(|(id, _)| i64::from(*id) == leader)
            .expect("the leader is a node");
        // The leader's batches are dense from offset 0 and reach the high watermark.
        let mut next = 0i64;
        for batch in leader_batches {
            assert_eq!(
                batch.base_offset, next,
                "partition {partition}: leader {leader}'s batches are dense"
            );
            next = batch.base_offset + i64::from(batch.last_offset_delta) + 1;
        }
        assert!(
            next >= *high_watermark,
            "partition {partition}: leader {leader}'s log ends at {next}, below the high \
             watermark {high_watermark}"
        );
        for (id, batches) in &logs {
            let longer = batches.len().max(leader_batches.len());
            let first_difference = (0..longer).find(|i| batches.get(*i) != leader_batches.get(*i));
            if let Some(i) = first_difference {
                panic!(
                    "partition {partition} below high watermark {high_watermark}: broker {id}'s \
                     log ({} batches) differs from leader {leader}'s ({} batches) first at batch \
                     {i}: {:?} versus {:?}",
                    batches.len(),
                    leader_batches.len(),
                    batches.get(i),
                    leader_batches.get(i),
                );
            }
        }
        eprintln!(
            "partition {partition}: {} identical batches on every replica below {high_watermark}",
            leader_batches.len()
        );
        let mut starts: Vec<(i32, i64)> = Vec::new();
        for batch in leader_batches {
            if starts
                .last()
                .is_none_or(|(epoch, _)| *epoch != batch.leader_epoch)
            {
                starts.push((batch.leader_epoch, batch.base_offset));
            }
        }
        epoch_starts.insert(*partition, starts);
    }
    Checked {
        lost,
        duplicates,
        epoch_starts,
    }
}

/// A partition leader a fault took away: the partition, the broker (and whether it was the
/// active controller too) and its epoch, when, and when the test first saw another leader
/// agreed on ([`wait_new_leaders`]).
struct LostLeader {
    partition: i32,
    broker: i64,
    controller: bool,
    epoch: i64,
    at: Instant,
    elected: Option<Instant>,
}

/// When a scenario's fault began and when it healed (the test's clock), and the leaders it
/// took away.
struct Fault {
    started: Instant,
    healed: Instant,
    lost_leaders: Vec<LostLeader>,
}

/// The partitions `broker` leads in `placement`, as lost now (the caller's fault follows at
/// once); every broker must be up.
fn led_by(cluster: &Cluster, placement: &BTreeMap<i32, Placement>, broker: i64) -> Vec<LostLeader> {
    let controller = cluster.wait_converged(cluster.nodes.len()) == broker;
    let at = Instant::now();
    placement
        .iter()
        .filter(|(_, p)| p.leader == broker)
        .map(|(partition, p)| LostLeader {
            partition: *partition,
            broker,
            controller,
            epoch: p.epoch,
            at,
            elected: None,
        })
        .collect()
}

/// Waits until the brokers in `ids` agree on another leader for each partition of `lost`,
/// and notes when the test first saw it (polled: up to a poll interval late).
fn wait_new_leaders(cluster: &Cluster, ids: &[i64], lost: &mut [LostLeader]) {
    cluster.wait_for("new leaders of the partitions lost", |cluster| {
        let now = agreed(cluster, ids)?;
        let seen = Instant::now();
        for leader in lost.iter_mut() {
            if leader.elected.is_none() && now[&leader.partition].leader != leader.broker {
                leader.elected = Some(seen);
            }
        }
        lost.iter().all(|l| l.elected.is_some()).then_some(())
    });
}

/// The placement every broker agrees on now (waits until they do).
fn placement_now(cluster: &Cluster) -> BTreeMap<i32, Placement> {
    let ids = all_ids(cluster);
    cluster.wait_for("every broker to agree on the placement", |cluster| {
        agreed(cluster, &ids)
    })
}

/// Time from losing `lost`'s leader to the first acknowledgement of a record a later leader
/// appended: one at or past the first offset of a later epoch in the final log (nothing the
/// lost leader appended is there, and a retried record is appended again at a new offset).
fn failover_time(load: &LoadReport, checked: &Checked, lost: &LostLeader) -> Option<Duration> {
    let starts = checked.epoch_starts.get(&lost.partition)?;
    let (_, start) = starts
        .iter()
        .find(|(epoch, _)| i64::from(*epoch) > lost.epoch)?;
    load.acked
        .iter()
        .filter(|a| a.record.partition == lost.partition && a.record.offset >= *start)
        .map(|a| a.at)
        .min()
        .map(|at| at.saturating_duration_since(lost.at))
}

/// The end of every scenario: stops the load, runs [`check`] and prints the figures.
fn finish_and_check(
    scenario: &str,
    cluster: &mut Cluster,
    endpoints: &Endpoints,
    load: Load,
    fault: &Fault,
) {
    let load = load.finish();
    let checked = check(cluster, endpoints, &load);
    print_figures(scenario, &load, &checked, fault);
}

/// Prints a scenario's measured facts as one line, `chaos figures NAME: ...` (collected into
/// perf/RESULTS.md): records acknowledged before the fault, during it (until it healed) and
/// after, acks=all records that failed by error, acknowledged records lost, the failover time
/// of each leader lost ([`failover_time`]) with when its successor was seen in the metadata,
/// and the longest time without any acknowledgement.
/// Printed only, never asserted: the times depend on the machine.
fn print_figures(scenario: &str, load: &LoadReport, checked: &Checked, fault: &Fault) {
    let before = load.acked.iter().filter(|a| a.at < fault.started).count();
    let after = load.acked.iter().filter(|a| a.at >= fault.healed).count();
    let during = load.acked.len() - before - after;
    let failed: usize = load.failed.values().sum();
    let failovers: Vec<String> = fault
        .lost_leaders
        .iter()
        .map(|lost| {
            let time = match failover_time(load, checked, lost) {
                Some(time) => format!("{:.2} s", time.as_secs_f64()),
                None => "no acknowledgement by a new leader".to_owned(),
            };
            let elected = match lost.elected {
                Some(at) => format!("{:.2} s", (at - lost.at).as_secs_f64()),
                None => "not waited for".to_owned(),
            };
            let controller = if lost.controller {
                ", the controller"
            } else {
                ""
            };
            format!(
                "{time} (partition {} from broker {}{controller}, new leader seen after \
                 {elected})",
                lost.partition, lost.broker
            )
        })
        .collect();
    let failover = if failovers.is_empty() {
        "n/a (no leader lost)".to_owned()
    } else {
        failovers.join(", ")
    };
    let mut times: Vec<Instant> = load.acked.iter().map(|a| a.at).collect();
    times.sort();
    let gap = times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "chaos figures {scenario}: acknowledged before {before}, during {during}, after \
         {after}; acks=all failed {failed} {:?}; lost {}; duplicates {}; failover {failover}; \
         longest gap between acknowledgements {:.2} s",
        load.failed,
        checked.lost,
        checked.duplicates,
        gap.as_secs_f64()
    );
}

// Goal: killing a partition leader with SIGKILL under acks=all load loses no acknowledged
// record, and no record a consumer saw; after it restarts, the three replicas' logs agree
// below the high watermark. Method: three brokers on loopback, two producers and a consumer
// on their own threads; kill the leader of partition 0 once records are acknowledged, wait
// for a new leader and more acknowledgements, restart it, wait for more, stop, check.
#[test]
fn leader_killed_and_restarted() {
    let mut cluster = Cluster::start(BROKER_FLAGS);
    let endpoints = Endpoints::of(&cluster, None);
    let before = create_topic(&cluster, &endpoints);
    let load = Load::start(&endpoints);
    load.wait_progress(&cluster, "before the kill", &[]);

    let old = before[&0].leader;
    let index = cluster.index_of(old);
    let mut lost_leaders = led_by(&cluster, &placement_now(&cluster), old);
    let started = Instant::now();
    cluster.nodes[index].kill();
    eprintln!("killed broker {old}, the leader of partition 0");
    let survivors: Vec<i64> = all_ids(&cluster)
        .into_iter()
        .filter(|id| *id != old)
        .collect();
    wait_new_leaders(&cluster, &survivors, &mut lost_leaders);
    load.wait_progress(&cluster, "with the leader dead", &[]);

    cluster.start_node(index);
    let healed = Instant::now();
    cluster.wait_for("the restarted broker to answer", |cluster| {
        cluster.nodes[index].view().map(|_| ())
    });
    load.wait_progress(&cluster, "after the restart", &[]);
    let fault = Fault {
        started,
        healed,
        lost_leaders,
    };
    finish_and_check(
        "leader_killed_and_restarted",
        &mut cluster,
        &endpoints,
        load,
        &fault,
    );
}

/// How a rolling restart takes each broker down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restart {
    /// SIGTERM: the broker flushes and closes its logs and exits (it must, within
    /// `Node::stop`'s deadline).
    Clean,
    /// SIGKILL: the broker recovers its logs on the restart.
    Kill,
}

/// The placement of `TOPIC` when every broker in `ids` agrees on it and every partition of
/// every topic, the offsets topic included, has its whole replica set in the ISR on every
/// broker's view.
fn all_in_sync(cluster: &Cluster, ids: &[i64]) -> Option<BTreeMap<i32, Placement>> {
    let placement = agreed(cluster, ids)?;
    let sorted = |v: &serde_json::Value| -> Option<Vec<i64>> {
        let mut ids: Vec<i64> = v
            .as_array()?
            .iter()
            .map(serde_json::Value::as_i64)
            .collect::<Option<_>>()?;
        ids.sort_unstable();
        Some(ids)
    };
    for id in ids {
        let view = cluster.node(*id).view()?;
        for p in view["partitions"].as_array()? {
            if p["leader"].as_i64()? < 0 || sorted(&p["isr"])? != sorted(&p["replicas"])? {
                return None;
            }
        }
    }
    Some(placement)
}

/// A rolling restart under acks=all load: each broker in turn is taken down (`restart`) and
/// started again, and the next one only once the restarted broker is back in every ISR, so at
/// most one replica of any partition is ever out; then the usual check.
fn rolling_restart(scenario: &str, restart: Restart) {
    let mut cluster = Cluster::start(BROKER_FLAGS);
    let endpoints = Endpoints::of(&cluster, None);
    create_topic(&cluster, &endpoints);
    let load = Load::start(&endpoints);
    load.wait_progress(&cluster, "before the restarts", &[]);

    let ids = all_ids(&cluster);
    let mut started = None;
    let mut lost_leaders = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        let placement = cluster.wait_for("every replica in every ISR", |cluster| {
            all_in_sync(cluster, &ids)
        });
        let mut lost = led_by(&cluster, &placement, *id);
        let at = Instant::now();
        started.get_or_insert(at);
        match restart {
            Restart::Clean => {
                let clean = cluster.nodes[index].stop();
                assert!(
                    clean,
                    "broker {id} did not exit after SIGTERM; its log ends:\n{}",
                    tail(&cluster.nodes[index].log())
                );
            }
            Restart::Kill => cluster.nodes[index].kill(),
        }
        eprintln!(
            "broker {id} down ({restart:?}; exited {:?} after the signal)",
            at.elapsed()
        );
        let survivors: Vec<i64> = ids.iter().copied().filter(|other| other != id).collect();
        wait_new_leaders(&cluster, &survivors, &mut lost);
        lost_leaders.extend(lost);
        load.wait_progress(&cluster, &format!("with broker {id} down"), &[]);
        cluster.start_node(index);
        cluster.wait_for(&format!("broker {id} back in every ISR"), |cluster| {
            all_in_sync(cluster, &ids)
        });
        eprintln!(
            "broker {id} back in every ISR, {:?} after it went down",
            at.elapsed()
        );
    }
    let healed = Instant::now();
    load.wait_progress(&cluster, "after the restarts", &[]);
    let fault = Fault {
        started: started.expect("three brokers restarted"),
        healed,
        lost_leaders,
    };
    finish_and_check(scenario, &mut cluster, &endpoints, load, &fault);
}

// Goal: a rolling restart with clean stops under acks=all load loses no acknowledged record
// and no record a consumer saw, and leaves the replicas' logs identical below the high
// watermark. Method: three brokers on loopback, the load of the other tests; each broker in
// turn gets SIGTERM, is started again and rejoins every ISR before the next (see
// `rolling_restart`); stop, check.
#[test]
fn rolling_restart_clean() {
    rolling_restart("rolling_restart_clean", Restart::Clean);
}

// Goal: as `rolling_restart_clean`, with each broker killed by SIGKILL instead, so each
// restart recovers its logs (and a stopped controller loses its quorum role uncleanly).
#[test]
fn rolling_restart_killed() {
    rolling_restart("rolling_restart_killed", Restart::Kill);
}

/// Each broker in its own network namespace: a veth to a bridge in the root namespace
/// carries the brokers' cluster traffic (10.A.0.ID), and a second veth to the root namespace
/// carries the clients' (the broker at 10.A.ID.2, the root side 10.A.ID.1). Bringing a
/// broker's bridge port down cuts it off from the other brokers but not from the clients.
/// Everything is removed when dropped, also after a panic.
struct Netns {
    tag: String,
    /// Each broker's certificate (its client address as the name) and `ca.pem`, all three.
    tls: tempfile::TempDir,
    /// Second octet of every address, free in the root namespace's routes.
    octet: u32,
    ids: Vec<i64>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}: {} (the netns test needs root and `ip netns`)",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Netns {
    fn create(ids: &[i64]) -> Netns {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the netns chaos test must run as root (ip netns, veth, bridge); CI runs as root"
        );
        remove_stale_netns();
        let pid = std::process::id();
        let routes = Command::new("ip")
            .args(["-4", "route", "show"])
            .output()
            .expect("ip route (is iproute2 installed?)");
        let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
        let octet = (0..200)
            .map(|i| 16 + (pid + i) % 200)
            .find(|o| !routes.contains(&format!("10.{o}.")))
            .expect("a free 10.x.0.0/16 in the root namespace");
        let netns = Netns {
            tag: format!("{LINK_PREFIX}{pid}"),
            tls: tempfile::tempdir().expect("temp dir"),
            octet,
            ids: ids.to_vec(),
        };
        let bridge = netns.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["link", "set", &bridge, "up"]);
        for id in ids {
            let ns = netns.name(*id);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let (port, inner) = (netns.port(*id), format!("{}d{id}", netns.tag));
            ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ]);
            ip(&["link", "set", &port, "master", &bridge]);
            ip(&["link", "set", &port, "up"]);
            let cluster_ip = format!("{}/24", netns.cluster_ip(*id));
            ip(&["-n", &ns, "addr", "add", &cluster_ip, "dev", &inner]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            let (outer, inner) = (format!("{}x{id}", netns.tag), format!("{}y{id}", netns.tag));
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ]);
            let root_ip = format!("10.{octet}.{id}.1/24");
            ip(&["addr", "add", &root_ip, "dev", &outer]);
            ip(&["link", "set", &outer, "up"]);
            let client_ip = format!("{}/24", netns.client_ip(*id));
            ip(&["-n", &ns, "addr", "add", &client_ip, "dev", &inner]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
        }
        netns
    }

    fn name(&self, id: i64) -> String {
        format!("{NETNS_PREFIX}{}-{id}", std::process::id())
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    /// The root side of broker `id`'s cluster veth, a port of the bridge.
    fn port(&self, id: i64) -> String {
        format!("{}c{id}", self.tag)
    }

    fn cluster_ip(&self, id: i64) -> String {
        format!("10.{}.0.{id}", self.octet)
    }

    fn client_ip(&self, id: i64) -> String {
        format!("10.{}.{id}.2", self.octet)
    }

    /// One broker per namespace, listening on fixed ports of its own addresses, with a
    /// certificate for its client address (clients verify brokers off loopback against
    /// [`Netns::ca`]).
    fn specs(&self, flags: &[&str]) -> Vec<NodeSpec> {
        let addr = |ip: String, port: u16| -> SocketAddr {
            format!("{ip}:{port}").parse().expect("an address")
        };
        let mut ca = String::new();
        let specs = self
            .ids
            .iter()
            .map(|id| {
                let identity = tls::self_signed_identity(
                    &self.tls.path().join(format!("broker-{id}")),
                    &[self.client_ip(*id)],
                )
                .expect("a self-signed certificate");
                ca.push_str(&std::fs::read_to_string(&identity.cert).expect("certificate"));
                let mut flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
                flags.extend([
                    "--tls-cert".to_owned(),
                    identity.cert.display().to_string(),
                    "--tls-key".to_owned(),
                    identity.key.display().to_string(),
                ]);
                NodeSpec {
                    id: i32::try_from(*id).expect("small id"),
                    kafka: addr(self.client_ip(*id), 9092),
                    quic: addr(self.client_ip(*id), 9192),
                    admin: addr(self.client_ip(*id), 9644),
                    cluster: addr(self.cluster_ip(*id), 33145),
                    netns: Some(self.name(*id)),
                    data_dir: None,
                    flags,
                }
            })
            .collect();
        std::fs::write(self.ca(), ca).expect("write ca.pem");
        specs
    }

    /// The brokers' certificates, for clients' `--ca`.
    fn ca(&self) -> PathBuf {
        self.tls.path().join("ca.pem")
    }

    /// Cuts broker `id` off from the other brokers (its bridge port goes down).
    fn cut(&self, id: i64) {
        ip(&["link", "set", &self.port(id), "down"]);
    }

    fn heal(&self, id: i64) {
        ip(&["link", "set", &self.port(id), "up"]);
    }
}

/// Root-namespace links of a run start with this and the test process's pid (at most 7
/// digits), then `br`, `cID` or `xID`: at most 11 of the 15 characters a name may have.
const LINK_PREFIX: &str = "sc";
/// Namespaces of a run are `NETNS_PREFIX` PID-ID.
const NETNS_PREFIX: &str = "sluice-chaos-";

/// Removes the namespaces and root links that runs killed before their `Drop` left behind
/// (named after a process that no longer runs).
fn remove_stale_netns() {
    let dead = |pid: &str| pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists();
    let listed = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("ip runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for line in listed(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let pid = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .map(|(pid, _)| pid);
        if pid.is_some_and(dead) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
    for line in listed(&["-o", "link", "show"]).lines() {
        // "16: sc18542c1@if2: <...": the name is the second field, up to '@' or ':'.
        let name = line.split_whitespace().nth(1).unwrap_or("");
        let name = name.split(['@', ':']).next().unwrap_or("");
        let Some(rest) = name.strip_prefix(LINK_PREFIX) else {
            continue;
        };
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (pid, suffix) = rest.split_at(digits);
        let ours = suffix == "br"
            || (suffix.len() == 2
                && suffix.starts_with(['c', 'x'])
                && suffix[1..].chars().all(|c| c.is_ascii_digit()));
        if ours && dead(pid) {
            let _ = Command::new("ip").args(["link", "del", name]).status();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth deletes both; the namespaces' own cleanup is
        // asynchronous, so the root ends are deleted explicitly. A broker still running
        // keeps its namespace alive until it exits.
        for id in &self.ids {
            for link in [self.port(*id), format!("{}x{id}", self.tag)] {
                let _ = Command::new("ip").args(["link", "del", &link]).status();
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name(*id)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}

// Goal: a leader cut off from the other brokers (but not from clients) under acks=all load
// loses no acknowledged record, and no record a consumer saw; after the network heals the
// replicas' logs agree below the high watermark. Method: each broker in its own network
// namespace (see `Netns`), clients in the root namespace; once records are acknowledged, the
// leader of partition 0 loses its link to the others; wait until the other two elect a new
// leader and more records are acknowledged and the old leader refuses metadata requests (it
// isolated itself), heal, wait until all three agree and more are acknowledged, stop, check.
// Needs root; fails otherwise.
#[test]
fn leader_cut_off_and_healed() {
    let netns = Netns::create(&[1, 2, 3]);
    let mut cluster = Cluster::start_specs(netns.specs(BROKER_FLAGS));
    let endpoints = Endpoints::of(&cluster, Some(&netns.ca()));
    let before = create_topic(&cluster, &endpoints);
    let load = Load::start(&endpoints);
    load.wait_progress(&cluster, "before the cut", &[]);

    let old = before[&0].leader;
    let mut lost_leaders = led_by(&cluster, &placement_now(&cluster), old);
    let started = Instant::now();
    netns.cut(old);
    eprintln!("cut broker {old}, the leader of partition 0, off from the other brokers");
    let others: Vec<i64> = all_ids(&cluster)
        .into_iter()
        .filter(|id| *id != old)
        .collect();
    wait_new_leaders(&cluster, &others, &mut lost_leaders);
    // Cut off from the controller for a session, the old leader stops claiming leadership:
    // it refuses metadata requests, so clients asking it go to the others.
    let cut_off = cluster.node(old);
    let ca = endpoints.ca.as_ref().map(|p| p.display().to_string());
    cluster.wait_for("the cut-off broker to refuse metadata", |_| {
        let mut args = vec!["topic", "describe", TOPIC];
        if let Some(ca) = &ca {
            args.extend(["--ca", ca]);
        }
        let described = cut_off.sluice(&args, &cut_off.quic.to_string());
        let error = String::from_utf8_lossy(&described.stderr);
        (!described.status.success() && error.contains("cut off from the controller")).then_some(())
    });
    load.soak(SOAK, "with the old leader cut off");

    netns.heal(old);
    let healed = Instant::now();
    eprintln!("healed broker {old}'s link");
    let ids = all_ids(&cluster);
    cluster.wait_for("all brokers to agree again", |cluster| {
        agreed(cluster, &ids).map(|_| ())
    });
    load.wait_progress(&cluster, "after healing", &[]);
    let fault = Fault {
        started,
        healed,
        lost_leaders,
    };
    finish_and_check(
        "leader_cut_off_and_healed",
        &mut cluster,
        &endpoints,
        load,
        &fault,
    );
    drop(cluster);
    drop(netns);
}

// Goal: a follower whose disk fills under acks=all load costs no acknowledged record and no
// record a consumer saw; once space is freed it catches up and the replicas' logs agree
// below the high watermark. Method: every broker's data directory on its own 128 MiB ext4
// loop image; once records are acknowledged, a filler file takes every free block of the
// broker that leads no partition of the topic; wait for more acknowledgements (two replicas
// suffice), remove the filler, restart the broker if it exited while full (a failed write of
// its controller log is fatal by design), wait for more, stop, check. Needs root.
#[test]
fn follower_disk_fills_and_frees() {
    let disks: Vec<SmallFs> = (0..3)
        .map(|_| {
            SmallFs::new(128).unwrap_or_else(|why| {
                panic!("the disk-full chaos test needs a loop-mounted ext4 (root): {why}")
            })
        })
        .collect();
    let mut specs = loopback_specs(BROKER_FLAGS);
    for (spec, disk) in specs.iter_mut().zip(&disks) {
        spec.data_dir = Some(disk.mount.join("data"));
    }
    let mut cluster = Cluster::start_specs(specs);
    let endpoints = Endpoints::of(&cluster, None);
    let before = create_topic(&cluster, &endpoints);
    let follower = all_ids(&cluster)
        .into_iter()
        .find(|id| before.values().all(|p| p.leader != *id))
        .expect("with two partitions on three brokers, one leads neither");
    let index = cluster.index_of(follower);
    let load = Load::start(&endpoints);
    load.wait_progress(&cluster, "before the disk fills", &[]);

    let filler = disks[index].mount.join("filler");
    let lost_leaders = led_by(&cluster, &placement_now(&cluster), follower);
    let started = Instant::now();
    let filled = disks[index].fill(&filler);
    eprintln!(
        "filled broker {follower}'s disk: {filled} bytes, {} left",
        disks[index].free_bytes()
    );
    // Held full until the follower left an ISR or exited (or the soak ends: not asserted,
    // the check below is what counts), then the cluster must still take acks=all writes.
    let deadline = Instant::now() + SOAK;
    // Bounded by the deadline.
    while Instant::now() < deadline {
        if !cluster.nodes[index].is_running() {
            eprintln!("broker {follower} exited with its disk full");
            break;
        }
        let view = cluster.nodes[(index + 1) % cluster.nodes.len()].view();
        let out_of_isr = view
            .as_ref()
            .and_then(placements)
            .is_some_and(|p| p.values().any(|p| !p.isr.contains(&follower)));
        if out_of_isr {
            eprintln!("broker {follower} left an ISR with its disk full");
            break;
        }
        // Polling a condition across processes; no event to wait on.
        std::thread::sleep(Duration::from_millis(100));
    }
    load.wait_progress(&cluster, "with a follower's disk full", &[follower]);

    std::fs::remove_file(&filler).expect("remove the filler");
    let healed = Instant::now();
    if !cluster.nodes[index].is_running() {
        eprintln!(
            "broker {follower} exited while its disk was full; restarting it:\n{}",
            tail(&cluster.nodes[index].log())
        );
        cluster.start_node(index);
    }
    load.wait_progress(&cluster, "after freeing the disk", &[]);
    let fault = Fault {
        started,
        healed,
        lost_leaders,
    };
    finish_and_check(
        "follower_disk_fills_and_frees",
        &mut cluster,
        &endpoints,
        load,
        &fault,
    );
    drop(cluster);
    drop(disks);
}

/// The last lines of a log, without backtrace frames (brokers inherit `RUST_BACKTRACE`), so
/// a panic's message and location show.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| {
            let trimmed = line.trim_start();
            let frame = trimmed
                .split_once(": ")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok());
            !frame && !trimmed.starts_with("at ")
        })
        .collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
