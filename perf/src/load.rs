//! The load runs (`produce`, `consume`, `e2e`): set-up, the harness threads, the control
//! loop, and the measurements handed to the report.
//!
//! Set-up runs on the calling thread: the topic is created if needed and the start and end
//! offsets are read. Then `--threads` executors start through `rt::shards` (pinned to
//! `--cpus` when given), producers and consumers spread over them round-robin. Every thread
//! connects its clients, then all meet at a barrier; the run clock starts when the last one
//! is ready, so connection set-up is never measured.
//!
//! Producers follow an open-loop schedule with `--rate` (record `i` of a producer is due at
//! `start + (i + phase) / rate_per_producer`, its latency measured from that instant) and
//! send as fast as backpressure allows without it. The calling thread samples the live
//! counters for the progress line and the throughput timeline, ends the measurement window
//! after `--warmup` + `--duration`, stops the producers, and (end to end) lets the consumers
//! drain what was acknowledged.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::Serialize;
use sluice_engine::TimestampMs;
use sluice_engine::batch::Compression;
use sluice_engine::rt::{self, clock, shards};
use sluice_net::client::Acks;
use sluice_net::native::messages::OffsetQuery;

use crate::kafka::{self, TopicLayout};
use crate::native;
use crate::progress::Progress;
use crate::stamp::{RunClock, put_stamp};
use crate::stats::{self, Counters, Probe, Recorder, Totals};
use crate::workload::{KeyDist, PartitionChooser, Rng, SizeDist, value_pool};

/// Bytes of the value pool each thread cuts record values from.
const VALUE_POOL_BYTES: usize = 1 << 20;

/// How long consumers of an end-to-end run may take to catch up once producers stopped.
const E2E_DRAIN_WAIT: Duration = Duration::from_secs(10);

/// How often the control loop wakes.
const CONTROL_TICK: Duration = Duration::from_millis(50);

/// Without `--rate`, the native target measures the latency of every this many records (a
/// task per measured record would cost the client more than the records themselves).
const CLOSED_LOOP_PROBE_EVERY: u64 = 16;

/// Registered IO memory per harness executor (it does no direct file IO).
const HARNESS_IO_MEMORY_BYTES: usize = 1 << 20;

/// Which run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Producers only; latency is the produce acknowledgement.
    Produce,
    /// Consumers only, catching up from the start offsets to the end offsets read at start.
    Consume,
    /// Producers and consumers together; latency is consume time − send time.
    E2e,
}

/// Which wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Sluice's native protocol over QUIC, through the client library.
    Quic,
    /// The Kafka wire protocol over TCP, through the harness's lean Kafka client.
    Kafka,
}

/// Flags of the load runs; serialised whole into the report as its configuration.
#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct LoadArgs {
    /// Wire protocol: quic (Sluice native) or kafka (any Kafka-protocol broker).
    #[arg(long, value_enum, default_value_t = Protocol::Quic)]
    pub protocol: Protocol,
    /// Bootstrap addresses, comma separated [default: 127.0.0.1:9192 for quic,
    /// 127.0.0.1:9092 for kafka].
    #[arg(long, value_delimiter = ',')]
    pub brokers: Vec<String>,
    /// Topic (created with --partitions if missing).
    #[arg(long, default_value = "sluice-perf")]
    pub topic: String,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Producer clients (e2e and produce).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer clients (e2e and consume); partitions are split among them.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Harness threads (executors); producers and consumers are spread over them.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// CPUs to pin harness threads to, comma separated [default: unpinned].
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Microseconds an idle harness thread keeps polling before it sleeps (0: sleeps at once).
    /// An open-loop run paces records tens of microseconds apart; polling instead of arming a
    /// timer for every gap keeps the send schedule exact, at the cost of a busy CPU, so use
    /// it with `--cpus` on a CPU of its own.
    #[arg(long, default_value_t = 0)]
    pub idle_poll_us: u64,
    /// Value size in bytes: N, uniform:MIN-MAX or exp:MEAN (suffixes KiB, MiB allowed).
    #[arg(long, default_value = "1024")]
    pub record_size: String,
    /// Keys: none, seq, uniform:N or zipf:N:S.
    #[arg(long, default_value = "none")]
    pub keys: String,
    /// Batch size in bytes (Kafka's batch.size).
    #[arg(long, default_value = "16KiB")]
    pub batch_bytes: String,
    /// How long a batch waits for more records (Kafka's linger.ms).
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Acknowledgement: 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// Batch compression: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Records per second over all producers (open loop); without it, as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds before measuring.
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Seconds measured [default: 30, or until --records/--bytes are produced].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Produce this many records in all, then stop.
    #[arg(long)]
    pub records: Option<u64>,
    /// Produce this many value bytes in all (e.g. 4GiB), then stop.
    #[arg(long)]
    pub bytes: Option<String>,
    /// Produce requests outstanding per connection (kafka) or per partition (quic).
    #[arg(long, default_value_t = 5)]
    pub in_flight: usize,
    /// Record bytes a producer holds before it waits (Kafka's buffer.memory).
    #[arg(long, default_value = "32MiB")]
    pub buffer_bytes: String,
    /// Bytes per partition per fetch.
    #[arg(long, default_value = "1MiB")]
    pub fetch_bytes: String,
    /// How long a fetch may wait on the broker for new records, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub fetch_wait_ms: u64,
    /// Timeline and HDR log interval, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Seed of the record generators.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Pid of the broker: its resident memory is sampled into the report.
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

/// The flags, parsed and checked.
#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    pub args: LoadArgs,
    pub brokers: Vec<String>,
    pub sizes: SizeDist,
    pub keys: KeyDist,
    pub batch_bytes: usize,
    pub buffer_bytes: usize,
    pub fetch_bytes: usize,
    pub acks: Acks,
    pub compression: Compression,
    pub warmup: Duration,
    pub duration: Option<Duration>,
    pub records: Option<u64>,
    pub interval: Duration,
}

impl Plan {
    /// Checks the flags of a `mode` run.
    pub fn new(mode: Mode, args: LoadArgs) -> anyhow::Result<Plan> {
        let bytes = |text: &str, what: &str| -> anyhow::Result<usize> {
            let n = crate::workload::parse_bytes(text).map_err(anyhow::Error::msg)?;
            usize::try_from(n).with_context(|| format!("{what} too large"))
        };
        let sizes: SizeDist = args.record_size.parse().map_err(anyhow::Error::msg)?;
        let keys: KeyDist = args.keys.parse().map_err(anyhow::Error::msg)?;
        let acks = Acks::from_name(&args.acks)
            .with_context(|| format!("--acks {}: expected 0, 1 or all", args.acks))?;
        let compression = Compression::from_name(&args.compression).with_context(|| {
            format!(
                "--compression {}: expected none, gzip, snappy, lz4 or zstd",
                args.compression
            )
        })?;
        if args.partitions < 1 {
            bail!("--partitions must be at least 1");
        }
        if args.threads < 1 {
            bail!("--threads must be at least 1");
        }
        if args.in_flight < 1 {
            bail!("--in-flight must be at least 1");
        }
        let producers = if mode == Mode::Consume {
            0
        } else {
            args.producers
        };
        let consumers = if mode == Mode::Produce {
            0
        } else {
            args.consumers
        };
        if mode != Mode::Consume && producers < 1 {
            bail!("--producers must be at least 1");
        }
        if mode != Mode::Produce && consumers < 1 {
            bail!("--consumers must be at least 1");
        }
        if consumers > args.partitions as usize {
            bail!(
                "--consumers {consumers} exceeds --partitions {}",
                args.partitions
            );
        }
        if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
            bail!("--rate must be positive");
        }
        let bad_warmup = args.warmup.is_nan() || args.warmup < 0.0;
        if bad_warmup || args.duration.is_some_and(|d| d.is_nan() || d <= 0.0) {
            bail!("--warmup must not be negative and --duration must be positive");
        }
        let records = match (&args.records, &args.bytes) {
            (Some(_), Some(_)) => bail!("give --records or --bytes, not both"),
            (Some(n), None) => Some(*n),
            (None, Some(text)) => {
                let total = bytes(text, "--bytes")? as f64;
                Some((total / sizes.mean()).ceil() as u64)
            }
            (None, None) => None,
        };
        let duration = match (args.duration, records, mode) {
            (Some(seconds), _, _) => Some(Duration::from_secs_f64(seconds)),
            (None, Some(_), _) | (None, None, Mode::Consume) => None,
            (None, None, _) => Some(Duration::from_secs(30)),
        };
        let brokers = if args.brokers.is_empty() {
            vec![match args.protocol {
                Protocol::Quic => sluice_net::client::DEFAULT_BROKER.to_owned(),
                Protocol::Kafka => "127.0.0.1:9092".to_owned(),
            }]
        } else {
            args.brokers.clone()
        };
        if args.interval_ms == 0 {
            bail!("--interval-ms must be positive");
        }
        Ok(Plan {
            mode,
            brokers,
            sizes,
            keys,
            batch_bytes: bytes(&args.batch_bytes, "--batch-bytes")?.max(64),
            buffer_bytes: bytes(&args.buffer_bytes, "--buffer-bytes")?.max(1 << 16),
            fetch_bytes: bytes(&args.fetch_bytes, "--fetch-bytes")?.clamp(1 << 10, 256 << 20),
            acks,
            compression,
            warmup: Duration::from_secs_f64(args.warmup),
            duration,
            records,
            interval: Duration::from_millis(args.interval_ms),
            args,
        })
    }

    fn producers(&self) -> usize {
        if self.mode == Mode::Consume {
            0
        } else {
            self.args.producers
        }
    }

    fn consumers(&self) -> usize {
        if self.mode == Mode::Produce {
            0
        } else {
            self.args.consumers
        }
    }
}

/// What set-up learned, shared with every thread.
#[derive(Debug)]
struct Setup {
    /// Kafka only: where the partitions live.
    layout: Option<TopicLayout>,
    /// Where consumers start, by partition.
    starts: Vec<i64>,
    /// Where catch-up consumers stop, by partition.
    ends: Option<Vec<i64>>,
}

/// State shared by the control loop and the harness threads.
struct Shared {
    plan: Plan,
    setup: Setup,
    counters: Vec<Arc<Counters>>,
    clock: OnceLock<RunClock>,
    ready: Barrier,
    go: Barrier,
    stop_producing: AtomicBool,
    stop_consuming: AtomicBool,
    producers_done: AtomicUsize,
    consumers_done: AtomicUsize,
    /// Nanoseconds after the run start when the last producer / consumer finished.
    producers_finished_ns: AtomicU64,
    consumers_finished_ns: AtomicU64,
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, error: String) {
        self.failure
            .lock()
            .expect("failure lock not poisoned")
            .get_or_insert(error);
        self.stop_producing.store(true, Ordering::Relaxed);
        self.stop_consuming.store(true, Ordering::Relaxed);
    }

    fn failed(&self) -> bool {
        self.failure
            .lock()
            .expect("failure lock not poisoned")
            .is_some()
    }

    fn finish(&self, done: &AtomicUsize, at_ns: &AtomicU64, total: usize) {
        if done.fetch_add(1, Ordering::AcqRel) + 1 == total
            && let Some(run) = self.clock.get()
        {
            let since = clock::now().saturating_duration_since(run.start);
            at_ns.store(since.as_nanos() as u64, Ordering::Release);
        }
    }
}

/// A throughput sample of the timeline.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Seconds since the run started.
    pub at_sec: f64,
    /// Counters at that instant.
    pub totals: Totals,
    /// The broker's resident memory then, with `--broker-pid`.
    pub broker_rss_mib: Option<f64>,
    /// CPU seconds the harness had used by then.
    pub harness_cpu_sec: Option<f64>,
    /// CPU seconds the broker had used by then, with `--broker-pid`.
    pub broker_cpu_sec: Option<f64>,
}

/// What a run measured, for the report.
#[derive(Debug)]
pub struct Measured {
    pub plan: Plan,
    pub run: RunClock,
    /// Start and end of the measurement window, and the counters there.
    pub window: (Sample, Sample),
    /// Counters when everything finished.
    pub last: Totals,
    pub samples: Vec<Sample>,
    pub recorder: Recorder,
}

/// Runs one load run.
pub fn run(plan: Plan) -> anyhow::Result<Measured> {
    let setup = rt::block_on(set_up(&plan))?;
    let threads = plan.args.threads;
    let shared = Arc::new(Shared {
        counters: (0..threads)
            .map(|_| Arc::new(Counters::default()))
            .collect(),
        setup,
        clock: OnceLock::new(),
        ready: Barrier::new(threads + 1),
        go: Barrier::new(threads + 1),
        stop_producing: AtomicBool::new(false),
        stop_consuming: AtomicBool::new(false),
        producers_done: AtomicUsize::new(0),
        consumers_done: AtomicUsize::new(0),
        producers_finished_ns: AtomicU64::new(0),
        consumers_finished_ns: AtomicU64::new(0),
        failure: Mutex::new(None),
        plan: plan.clone(),
    });
    let (results, received) = mpsc::channel::<Recorder>();
    let config = shards::ShardsConfig {
        count: threads,
        cpus: if plan.args.cpus.is_empty() {
            Vec::new()
        } else {
            (0..threads)
                .map(|t| plan.args.cpus[t % plan.args.cpus.len()])
                .collect()
        },
        io_memory_bytes: HARNESS_IO_MEMORY_BYTES,
        inbox_capacity: 1,
        name: "sluice-perf".into(),
        idle_poll: Duration::from_micros(plan.args.idle_poll_us),
    };
    let body_shared = Arc::clone(&shared);
    let handle = shards::start::<(), _, _>(config, move |context| {
        let shared = Arc::clone(&body_shared);
        let results = results.clone();
        async move {
            let thread = usize::from(context.id.0);
            let _mesh = context.join_mesh(|()| {}).await;
            let recorder = thread_main(thread, &shared).await;
            let _ = results.send(recorder);
        }
    })
    .context("cannot start the harness threads")?;

    shared.ready.wait();
    let run = RunClock::new(plan.warmup);
    shared.clock.set(run).expect("the clock is set once, here");
    shared.go.wait();
    let measured = control(&shared, run);
    handle.join().context("a harness thread failed")?;
    let mut recorder = Recorder::new(run, plan.interval);
    for other in received.try_iter() {
        recorder.merge(&other);
    }
    if let Some(failure) = shared.failure.lock().expect("not poisoned").clone() {
        bail!("{failure}");
    }
    let (window, last, samples) = measured;
    Ok(Measured {
        plan,
        run,
        window,
        last,
        samples,
        recorder,
    })
}

/// Creates the topic and reads the offsets consumers need.
async fn set_up(plan: &Plan) -> anyhow::Result<Setup> {
    let args = &plan.args;
    let partitions = args.partitions;
    match args.protocol {
        Protocol::Kafka => {
            let connection = kafka::bootstrap(&plan.brokers).await?;
            let layout = kafka::ensure_topic(&connection, &args.topic, partitions).await?;
            let (starts, ends) = match plan.mode {
                Mode::Produce => (Vec::new(), None),
                Mode::E2e => (
                    kafka::offsets_at(&args.topic, &layout, kafka::LATEST).await?,
                    None,
                ),
                Mode::Consume => (
                    kafka::offsets_at(&args.topic, &layout, kafka::EARLIEST).await?,
                    Some(kafka::offsets_at(&args.topic, &layout, kafka::LATEST).await?),
                ),
            };
            Ok(Setup {
                layout: Some(layout),
                starts,
                ends,
            })
        }
        Protocol::Quic => {
            let client = native::connect(&plan.brokers).await?;
            native::ensure_topic(&client, &args.topic, partitions).await?;
            let at = |query| native::offsets_at(&client, &args.topic, partitions, query);
            let (starts, ends) = match plan.mode {
                Mode::Produce => (Vec::new(), None),
                Mode::E2e => (at(OffsetQuery::Latest).await?, None),
                Mode::Consume => (
                    at(OffsetQuery::Earliest).await?,
                    Some(at(OffsetQuery::Latest).await?),
                ),
            };
            client.close().await;
            Ok(Setup {
                layout: None,
                starts,
                ends,
            })
        }
    }
}

/// A producer's target.
enum Target {
    Kafka(kafka::producer::KafkaProducer),
    Native(native::NativeProducer),
}

/// A record's value as a producer loop hands it to its client.
pub enum Value<'a> {
    /// A slice of the shared value pool: a client that keeps values until it batches them
    /// (the native one) takes it without a copy.
    Pool(Bytes),
    /// A copy carrying the send stamp (e2e runs).
    Stamped(&'a [u8]),
}

impl Value<'_> {
    /// The value's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Value::Pool(bytes) => bytes,
            Value::Stamped(bytes) => bytes,
        }
    }
}

impl Target {
    async fn send(
        &self,
        partition: i32,
        key: Option<&[u8]>,
        value: Value<'_>,
        intended: Instant,
        timestamp: TimestampMs,
    ) -> anyhow::Result<()> {
        match self {
            Target::Kafka(p) => {
                p.send(partition, key, value.as_slice(), intended, timestamp)
                    .await
            }
            Target::Native(p) => p.send(partition, key, value, intended, timestamp).await,
        }
    }

    async fn flush(&self) -> anyhow::Result<()> {
        match self {
            Target::Kafka(p) => p.flush().await,
            Target::Native(p) => p.flush().await,
        }
    }
}

/// One harness thread: connect, meet the others, run, hand back the measurements.
async fn thread_main(thread: usize, shared: &Arc<Shared>) -> Recorder {
    let plan = &shared.plan;
    let threads = plan.args.threads;
    let placeholder = RunClock::new(plan.warmup);
    let probe = Probe {
        recorder: Rc::new(RefCell::new(Recorder::new(placeholder, plan.interval))),
        counters: Arc::clone(&shared.counters[thread]),
    };
    let producer_ids: Vec<usize> = (0..plan.producers())
        .filter(|p| p % threads == thread)
        .collect();
    // Consumers continue the round-robin after the producers, so with two threads one
    // producer and one consumer get a thread each.
    let consumer_ids: Vec<usize> = (0..plan.consumers())
        .filter(|c| (plan.producers() + c) % threads == thread)
        .collect();
    let mut targets = Vec::new();
    for &id in &producer_ids {
        match connect_producer(plan, &shared.setup, probe.clone()).await {
            Ok(target) => targets.push((id, target)),
            Err(error) => shared.fail(format!("producer {id}: {error:#}")),
        }
    }
    shared.ready.wait();
    shared.go.wait();
    let run = *shared.clock.get().expect("set before the go barrier");
    probe.recorder.borrow_mut().run = run;
    if shared.failed() {
        return take(&probe, run, plan);
    }
    let pool = Bytes::from(value_pool(
        VALUE_POOL_BYTES + plan.sizes.max(),
        plan.args.seed,
    ));
    let mut tasks = Vec::new();
    for (id, target) in targets {
        let shared = Arc::clone(shared);
        let probe = probe.clone();
        let pool = pool.clone();
        tasks.push(rt::spawn(async move {
            if let Err(error) = produce(id, &target, &shared, &probe, &pool, run).await {
                shared.fail(format!("producer {id}: {error:#}"));
            }
            drop(target);
            let total = shared.plan.producers();
            shared.finish(&shared.producers_done, &shared.producers_finished_ns, total);
        }));
    }
    for id in consumer_ids {
        let shared = Arc::clone(shared);
        let probe = probe.clone();
        tasks.push(rt::spawn(async move {
            if let Err(error) = consume(id, &shared, &probe).await {
                shared.fail(format!("consumer {id}: {error:#}"));
            }
            let total = shared.plan.consumers();
            shared.finish(&shared.consumers_done, &shared.consumers_finished_ns, total);
        }));
    }
    for task in tasks {
        task.await;
    }
    take(&probe, run, plan)
}

fn take(probe: &Probe, run: RunClock, plan: &Plan) -> Recorder {
    std::mem::replace(
        &mut *probe.recorder.borrow_mut(),
        Recorder::new(run, plan.interval),
    )
}

async fn connect_producer(plan: &Plan, setup: &Setup, probe: Probe) -> anyhow::Result<Target> {
    let args = &plan.args;
    let linger = Duration::from_millis(args.linger_ms);
    match args.protocol {
        Protocol::Kafka => {
            let settings = kafka::producer::Settings {
                acks: i16::from(plan.acks.wire()),
                compression: plan.compression,
                batch_bytes: plan.batch_bytes,
                linger,
                in_flight_max: args.in_flight,
                buffer_bytes: plan.buffer_bytes,
            };
            let layout = setup.layout.as_ref().expect("kafka set-up has a layout");
            let producer =
                kafka::producer::KafkaProducer::connect(&args.topic, layout, settings, probe)
                    .await?;
            Ok(Target::Kafka(producer))
        }
        Protocol::Quic => {
            let settings = native::Settings {
                acks: plan.acks,
                compression: plan.compression,
                batch_bytes: plan.batch_bytes,
                linger,
                in_flight_max: args.in_flight,
                buffer_bytes: plan.buffer_bytes,
            };
            let probe_every = if args.rate.is_some() {
                1
            } else {
                CLOSED_LOOP_PROBE_EVERY
            };
            let producer = native::NativeProducer::connect(
                &plan.brokers,
                &args.topic,
                &settings,
                probe,
                probe_every,
            )
            .await?;
            Ok(Target::Native(producer))
        }
    }
}

/// One producer's schedule: open loop with `--rate`, closed loop without.
async fn produce(
    id: usize,
    target: &Target,
    shared: &Shared,
    probe: &Probe,
    pool: &Bytes,
    run: RunClock,
) -> anyhow::Result<()> {
    let plan = &shared.plan;
    let producers = plan.producers() as u64;
    let limit = plan
        .records
        .map(|total| total / producers + u64::from((id as u64) < total % producers));
    // Nanoseconds between this producer's records, and its phase within one gap.
    let gap_ns = plan.args.rate.map(|rate| 1e9 * producers as f64 / rate);
    let phase = id as f64 / producers as f64;
    let mut rng = Rng::new(
        plan.args
            .seed
            .wrapping_mul(0x9e37_79b9)
            .wrapping_add(id as u64),
    );
    let mut chooser = PartitionChooser::new(plan.args.partitions, id as i32, plan.batch_bytes);
    let mut scratch = vec![0u8; plan.sizes.max()];
    let stamped = plan.mode == Mode::E2e;
    let mut sent = 0u64;
    // Runs until stopped or the limit is reached.
    while !shared.stop_producing.load(Ordering::Relaxed) && limit.is_none_or(|n| sent < n) {
        let intended = match gap_ns {
            Some(gap) => {
                let due = run.start + Duration::from_nanos(((sent as f64 + phase) * gap) as u64);
                let now = clock::now();
                if due > now {
                    rt::sleep(due - now).await;
                }
                due
            }
            None => clock::now(),
        };
        let size = plan.sizes.sample(&mut rng);
        let key = plan.keys.sample(&mut rng, sent);
        let partition = chooser.choose(key.as_ref().map(|k| &k[..]), size);
        let from = rng.below(VALUE_POOL_BYTES as u64) as usize;
        let stamp = run.stamp_of(intended);
        // Only an end-to-end run reads the send stamp back from the value; elsewhere the
        // value goes from the pool as it is (a copy per record would be a tenth of the
        // harness's CPU at full speed).
        let value = if stamped {
            let value = &mut scratch[..size];
            value.copy_from_slice(&pool[from..from + size]);
            put_stamp(value, stamp);
            Value::Stamped(value)
        } else {
            Value::Pool(pool.slice(from..from + size))
        };
        if gap_ns.is_some() {
            probe
                .recorder
                .borrow_mut()
                .record_lag(intended, clock::now());
        }
        let timestamp = TimestampMs((stamp / 1_000_000) as i64);
        target
            .send(
                partition,
                key.as_ref().map(|k| &k[..]),
                value,
                intended,
                timestamp,
            )
            .await?;
        Counters::add(&probe.counters.sent_records, 1);
        sent += 1;
        if sent.is_multiple_of(32) {
            rt::yield_if_needed().await;
        }
    }
    target.flush().await
}

/// One consumer: its share of the partitions, from the start offsets.
async fn consume(id: usize, shared: &Shared, probe: &Probe) -> anyhow::Result<()> {
    let plan = &shared.plan;
    let setup = &shared.setup;
    let consumers = plan.consumers();
    let stop = || shared.stop_consuming.load(Ordering::Relaxed);
    let mine: Vec<i32> = (0..plan.args.partitions)
        .filter(|p| *p as usize % consumers == id)
        .collect();
    let end_of = |p: i32| setup.ends.as_ref().map(|ends| ends[p as usize]);
    let e2e = plan.mode == Mode::E2e;
    let fetch_wait = Duration::from_millis(plan.args.fetch_wait_ms);
    match plan.args.protocol {
        Protocol::Kafka => {
            let layout = setup.layout.as_ref().expect("kafka set-up has a layout");
            let positions = mine
                .iter()
                .map(|&p| kafka::consumer::Position {
                    partition: p,
                    offset: setup.starts[p as usize],
                    end: end_of(p),
                })
                .collect();
            let partition_bytes = i32::try_from(plan.fetch_bytes).unwrap_or(i32::MAX);
            let settings = kafka::consumer::Settings {
                fetch_wait,
                partition_bytes,
                response_bytes: partition_bytes
                    .saturating_mul(mine.len() as i32)
                    .max(50 << 20),
                e2e,
            };
            kafka::consumer::consume(&plan.args.topic, layout, positions, &settings, probe, &stop)
                .await
        }
        Protocol::Quic => {
            let partitions: Vec<(i32, i64, Option<i64>)> = mine
                .iter()
                .map(|&p| (p, setup.starts[p as usize], end_of(p)))
                .collect();
            let settings = native::ConsumeSettings {
                fetch_wait,
                fetch_bytes: u32::try_from(plan.fetch_bytes).unwrap_or(u32::MAX),
                e2e,
            };
            native::consume(
                &plan.brokers,
                &plan.args.topic,
                &partitions,
                &settings,
                probe,
                &stop,
            )
            .await
        }
    }
}

/// The control loop on the calling thread: progress, timeline, the measurement window and
/// stopping. Returns the window, the final counters and the samples.
fn control(shared: &Shared, run: RunClock) -> ((Sample, Sample), Totals, Vec<Sample>) {
    let plan = &shared.plan;
    let producers = plan.producers();
    let consumers = plan.consumers();
    let sample = |at: Instant| Sample {
        at_sec: run.seconds_at(at),
        totals: stats::sum(&shared.counters),
        broker_rss_mib: plan.args.broker_pid.and_then(crate::machine::rss_mib),
        harness_cpu_sec: crate::machine::cpu_seconds(std::process::id()),
        broker_cpu_sec: plan.args.broker_pid.and_then(crate::machine::cpu_seconds),
    };
    let progress = Progress::new(plan.mode);
    let mut samples = vec![sample(run.start)];
    let mut next_sample = run.start + plan.interval;
    let mut window_start: Option<Sample> = None;
    let mut window_end: Option<Sample> = None;
    let measure_until = plan.duration.map(|d| run.measure_from + d);
    let mut drain_deadline: Option<Instant> = None;
    // Runs until every producer and consumer has finished.
    loop {
        let now = clock::now();
        let wake = [Some(next_sample), Some(now + CONTROL_TICK)]
            .into_iter()
            .chain([
                window_start.is_none().then_some(run.measure_from),
                measure_until.filter(|_| window_end.is_none()),
            ])
            .flatten()
            .min()
            .expect("at least one wake time");
        if wake > now {
            std::thread::sleep(wake - now);
        }
        let now = clock::now();
        let current = sample(now);
        if now >= next_sample {
            samples.push(current);
            next_sample += plan.interval;
        }
        progress.update(run.seconds_at(now), &current.totals);
        if window_start.is_none() && now >= run.measure_from {
            window_start = Some(current);
        }
        let producers_finished = shared.producers_done.load(Ordering::Acquire) == producers;
        let consumers_finished = shared.consumers_done.load(Ordering::Acquire) == consumers;
        if window_end.is_none() {
            let time_up = measure_until.is_some_and(|until| now >= until);
            let finished = match plan.mode {
                Mode::Produce | Mode::E2e => producers_finished,
                Mode::Consume => consumers_finished,
            };
            if time_up || finished || shared.failed() {
                let end = if finished && !time_up {
                    let ns = match plan.mode {
                        Mode::Consume => &shared.consumers_finished_ns,
                        _ => &shared.producers_finished_ns,
                    };
                    let at = run.start + Duration::from_nanos(ns.load(Ordering::Acquire));
                    Sample {
                        at_sec: run.seconds_at(at),
                        ..current
                    }
                } else {
                    current
                };
                window_end = Some(end);
                if window_start.is_none() {
                    window_start = Some(samples[0]);
                }
                shared.stop_producing.store(true, Ordering::Relaxed);
                if plan.mode == Mode::Consume {
                    shared.stop_consuming.store(true, Ordering::Relaxed);
                }
            }
        }
        if window_end.is_some() && plan.mode == Mode::E2e && producers_finished {
            let deadline = *drain_deadline.get_or_insert(now + E2E_DRAIN_WAIT);
            let caught_up = current.totals.consumed_records >= current.totals.acked_records;
            if caught_up || now >= deadline {
                shared.stop_consuming.store(true, Ordering::Relaxed);
            }
        }
        if producers_finished && consumers_finished {
            break;
        }
    }
    let last = stats::sum(&shared.counters);
    progress.finish(&last);
    let window = (
        window_start.expect("set when the window ended"),
        window_end.expect("set before the loop ends"),
    );
    (window, last, samples)
}
