//! A partition replica: the engine's log plus what the cluster layer adds on top (the high
//! watermark that bounds what consumers see, the "new data" signal long-polling fetches wait
//! on, and the topic config in force).
//!
//! Lives on its owning shard only (`!Send`, in an `Rc`). On a single broker the replica is the
//! leader and the only in-sync replica, so the high watermark follows the written end of the
//! log. In a cluster its [`Role`] comes from metadata: as leader, appends carry the leader
//! epoch, acks=all waits for the in-sync replicas through the shard's
//! [`ShardReplication`](crate::replication::ShardReplication), and the high watermark moves
//! by follower acknowledgements; as follower, the shard's fetcher writes the log and produce
//! and fetch are refused by the shard.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use sluice_engine::batch::{BatchError, BatchHeader, decode_batch};
use sluice_engine::log::{
    AppendError, AppendInfo, BatchCache, Durability, LogConfig, PartitionLog, ReadError,
};
use sluice_engine::util::Notify;
use sluice_engine::{LeaderEpoch, Offset, ShardId, TimestampMs, TopicPartition};

use crate::config::{TimestampType, TopicConfig};
use crate::metadata::{PartitionMeta, TopicId};
use crate::replication::{LeaderReplica, PartitionState, ReplicaError, ShardReplication};
use crate::shard::{
    Acks, FetchData, FetchError, FetchRequest, OffsetAnswer, OffsetSpec, PartitionStatus,
    ProduceError, ProduceOk,
};

/// What this replica is for its partition.
#[derive(Clone)]
pub enum Role {
    /// A single broker: leader and whole ISR.
    Single,
    /// The cluster leader in an epoch.
    Leader(Rc<LeaderReplica>),
    /// A cluster follower (the shard's fetcher writes the log).
    Follower,
    /// In a cluster, the partition has no usable leader here (offline, or not yet known).
    Offline,
}

/// An append issued to the log: resolves once it is acknowledged as the produce's acks ask.
pub type AppendFuture = Pin<Box<dyn Future<Output = Result<AppendInfo, ProduceError>>>>;

/// One partition's replica on its owning shard.
pub struct PartitionReplica {
    tp: TopicPartition,
    topic_id: TopicId,
    log: Rc<PartitionLog>,
    config: RefCell<TopicConfig>,
    /// Bumped whenever the high watermark moves (or the replica closes), waking long-polling
    /// fetches.
    data: Rc<Notify>,
    /// Set when the replica is closing: long polls return at once so the close is not held up.
    closing: Cell<bool>,
    /// The shard's replication driver (in a cluster).
    replication: Option<Rc<ShardReplication>>,
    role: RefCell<Role>,
}

impl PartitionReplica {
    /// Opens (recovering if needed) the partition's log in `dir`. In a cluster
    /// (`replication`), the replica starts [`Role::Offline`] until [`Self::update_role`].
    pub async fn open(
        data_dir: &Path,
        tp: TopicPartition,
        topic_id: TopicId,
        log_config: LogConfig,
        cache: Rc<BatchCache>,
        config: TopicConfig,
        replication: Option<Rc<ShardReplication>>,
    ) -> Result<PartitionReplica, String> {
        let dir = sluice_engine::log::partition_dir(data_dir, &tp);
        let claimed = claim_dir(&dir, &tp, topic_id).await?;
        let (log, report) = PartitionLog::open(dir.clone(), tp.clone(), log_config, cache)
            .await
            .map_err(|e| e.to_string())?;
        if !claimed {
            // In place and with the shard's shared sync: partitions created together (10,000
            // at once) share the syncs. A crash may leave the file torn; it is then adopted
            // again and rewritten.
            let content = topic_id_file(topic_id);
            sluice_engine::io::write_small_file_in_place(
                &dir.join(TOPIC_ID_FILE),
                content.as_bytes(),
                sluice_engine::io::SyncMode::Shared,
            )
            .await
            .map_err(|e| format!("{tp}: cannot write {TOPIC_ID_FILE}: {e}"))?;
        }
        if !report.truncations.is_empty() || !report.rebuilt_indexes.is_empty() {
            tracing::warn!(partition = %tp, ?report, "recovered partition");
        }
        let role = if replication.is_some() {
            // The checkpointed high watermark stands: the tail above it may be another
            // leader's divergent records, which only the leader's answer can settle.
            Role::Offline
        } else {
            // Everything that survived recovery was written; a single replica makes it visible.
            log.set_high_watermark(log.log_end_offset());
            Role::Single
        };
        Ok(PartitionReplica {
            tp,
            topic_id,
            log: Rc::new(log),
            config: RefCell::new(config),
            data: Rc::new(Notify::new()),
            closing: Cell::new(false),
            replication,
            role: RefCell::new(role),
        })
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Takes the role `meta` (the partition's current metadata) gives this broker: lead,
    /// follow, or neither. No-op on a single broker.
    pub fn update_role(&self, meta: &PartitionMeta, local: sluice_engine::BrokerId) {
        let Some(replication) = &self.replication else {
            return;
        };
        let state = PartitionState::from(meta);
        let role = if meta.leader == local {
            let min = self.config.borrow().min_insync_replicas as usize;
            match replication.lead(&self.tp, &self.log, &self.data, &state, min) {
                Some(leader) => Role::Leader(leader),
                None => Role::Offline,
            }
        } else if meta.leader.0 >= 0 {
            replication.follow(&self.tp, &self.log, &state);
            Role::Follower
        } else {
            replication.release(&self.tp);
            Role::Offline
        };
        let previous = self.role.replace(role.clone());
        let new_epoch = match (&previous, &role) {
            (Role::Leader(before), Role::Leader(now)) => !Rc::ptr_eq(before, now),
            (_, Role::Leader(_)) => true,
            _ => false,
        };
        if new_epoch {
            self.mark_epoch_start(local);
        }
        // Consumers waiting on a replica that stopped leading return (and are told to move).
        self.data.notify();
    }

    /// A new leader's first append: a control batch (Kafka's LEADER_CHANGE control record)
    /// in its epoch, when the log holds records above the high watermark. The high watermark
    /// only passes offsets of the leader's own epoch (Raft's commit rule), so without it the
    /// records the leader inherited would stay invisible until a producer wrote. Consumers
    /// skip control batches (Kafka clients and ours alike).
    fn mark_epoch_start(&self, local: sluice_engine::BrokerId) {
        if self.log.next_offset() <= self.log.high_watermark() {
            return;
        }
        let Role::Leader(leader) = self.role() else {
            return;
        };
        let epoch = leader.core.borrow().epoch();
        let batch = match leader_change_batch(local, epoch) {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(partition = %self.tp, %error, "cannot build the epoch marker");
                return;
            }
        };
        let pending = self.log.append(batch, epoch, Durability::Written);
        let Some(replication) = self.replication.clone() else {
            return;
        };
        let tp = self.tp.clone();
        sluice_engine::rt::spawn(async move {
            match pending.await {
                Ok(_) => replication.local_end_moved(&tp),
                Err(error) => tracing::warn!(%tp, %error, "epoch marker not appended"),
            }
        })
        .detach();
    }

    /// The id of the topic this replica belongs to.
    pub fn topic_id(&self) -> TopicId {
        self.topic_id
    }

    /// The engine log.
    pub fn log(&self) -> &PartitionLog {
        &self.log
    }

    /// Applies a changed topic config.
    pub fn update_config(&self, config: &TopicConfig) {
        if let Err(error) = self.log.update_config(crate::shard::log_config(config)) {
            tracing::warn!(partition = %self.tp, %error, "log config not applied");
        }
        *self.config.borrow_mut() = config.clone();
    }

    /// Validates and appends a producer's batches, waiting as `acks` asks.
    pub async fn produce(
        self: &Rc<Self>,
        batches: Bytes,
        acks: Acks,
    ) -> Result<ProduceOk, ProduceError> {
        self.produce_start(batches, acks)?.await
    }

    /// [`Self::produce`] in two steps: checks the batches and issues the append now (offsets
    /// are assigned before this returns, so call order is log order), and returns the wait
    /// for the durability `acks` asks for. Callers that order appends (the native server's
    /// produce sequencing) let the next append go as soon as this returns.
    pub fn produce_start(
        self: &Rc<Self>,
        batches: Bytes,
        acks: Acks,
    ) -> Result<impl Future<Output = Result<ProduceOk, ProduceError>> + use<>, ProduceError> {
        let (max_bytes, timestamp_type) = {
            let config = self.config.borrow();
            (config.max_message_bytes, config.timestamp_type)
        };
        check_batches(&batches, max_bytes)?;
        let append_time = sluice_engine::rt::clock::unix_now_ms();
        let pending = self.append_ordered(batches, acks)?;
        let replica = Rc::clone(self);
        Ok(async move {
            let info = pending.await?;
            Ok(ProduceOk {
                base_offset: info.base_offset,
                last_offset: info.last_offset,
                log_append_time: (timestamp_type == TimestampType::LogAppendTime)
                    .then_some(append_time),
                log_start_offset: replica.log.log_start_offset(),
            })
        })
    }

    /// Appends batches without the producer checks (the group coordinator's own records, or
    /// batches [`Self::produce_start`] checked). Offsets are assigned before this returns, so
    /// call order is log order; the future resolves once the append is acknowledged as `acks`
    /// asks (for acks=all in a cluster: by every in-sync replica) and visible. An append the
    /// log refuses (an invalid batch, a full queue) is an `Err` here, not from the future.
    pub fn append_ordered(
        self: &Rc<Self>,
        batches: Bytes,
        acks: Acks,
    ) -> Result<AppendFuture, ProduceError> {
        let durability = match acks {
            Acks::All => Durability::Synced,
            Acks::None | Acks::Leader => Durability::Written,
        };
        let storage = produce_error;
        let leader = match self.role() {
            Role::Single => {
                // A single broker's epochs mean nothing (epoch 0), but never go down in a log:
                // one whose epoch cache ends higher (data from a cluster broker, or a damaged epoch
                // field that recovery could not tell from a new epoch, as in the last batch)
                // appends at that epoch (the floor the log checks appends against, which stays
                // when no record is readable) rather than refusing every append as stale.
                let epoch = self.log.append_epoch_floor().unwrap_or(LeaderEpoch(0));
                let pending = self
                    .log
                    .append(batches, epoch.max(LeaderEpoch(0)), durability);
                // A refusal (an invalid batch, a full queue) is known now: report it before
                // the caller lets a later request go.
                pending.info().map_err(produce_error)?;
                let replica = Rc::clone(self);
                return Ok(Box::pin(async move {
                    let info = pending.await.map_err(storage)?;
                    replica.appended(info);
                    Ok(info)
                }));
            }
            Role::Leader(leader) => leader,
            Role::Follower | Role::Offline => {
                return Err(ProduceError::NotLeader(self.tp.to_string()));
            }
        };
        let replication = self
            .replication
            .clone()
            .expect("a cluster leader has a replication driver");
        let epoch = {
            let core = leader.core.borrow();
            let level = match acks {
                Acks::All => crate::replication::Acks::All,
                Acks::None | Acks::Leader => crate::replication::Acks::Leader,
            };
            if core.check_produce(level).is_err() {
                return Err(ProduceError::NotEnoughReplicas {
                    tp: self.tp.to_string(),
                    isr: core.isr().len(),
                    min: core.min_insync_replicas(),
                });
            }
            core.epoch()
        };
        let pending = self.log.append(batches, epoch, durability);
        pending.info().map_err(produce_error)?;
        let wait = match (acks, pending.info()) {
            (Acks::All, Ok(info)) => Some(replication.wait_for(&leader, info.last_offset)),
            _ => None,
        };
        // The leader's end counts toward the high watermark once written, whether or not the
        // producer still waits (acks=0 drops the future), so completion is its own task.
        let (written, done) = oneshot::channel();
        let tp = self.tp.clone();
        let driver = Rc::clone(&replication);
        sluice_engine::rt::spawn(async move {
            let result = pending.await;
            if result.is_ok() {
                driver.local_end_moved(&tp);
            }
            let _ = written.send(result);
        })
        .detach();
        let tp = self.tp.to_string();
        let timeout = replication.settings().produce_timeout;
        Ok(Box::pin(async move {
            let info = done
                .await
                .unwrap_or(Err(AppendError::Closed))
                .map_err(storage)?;
            let Some(wait) = wait else {
                return Ok(info);
            };
            let sleep = std::pin::pin!(sluice_engine::rt::sleep(timeout));
            match futures::future::select(wait, sleep).await {
                futures::future::Either::Left((Ok(Ok(())), _)) => Ok(info),
                futures::future::Either::Left((
                    Ok(Err(ReplicaError::NotEnoughReplicasAfterAppend)),
                    _,
                )) => Err(ProduceError::NotEnoughReplicasAfterAppend(tp)),
                // Leadership ended before the in-sync replicas had it.
                futures::future::Either::Left(_) => Err(ProduceError::NotLeader(tp)),
                futures::future::Either::Right(_) => Err(ProduceError::Timeout(tp)),
            }
        }))
    }

    /// Makes a single broker's append that has become durable visible: advances the high
    /// watermark (a single replica is the whole in-sync set) and wakes long-polling fetches.
    fn appended(&self, info: AppendInfo) {
        let end = info.last_offset.plus(1);
        if end > self.log.high_watermark() {
            self.log.set_high_watermark(end);
            self.data.notify();
        }
    }

    /// Reads whole batches from `request.from` below the high watermark, waiting up to
    /// `request.max_wait` when there is nothing yet. An offset past the log end is out of
    /// range at once, whatever the wait, as in Kafka: the consumer's reset policy decides.
    pub async fn fetch(&self, request: FetchRequest) -> Result<FetchData, FetchError> {
        let deadline = sluice_engine::rt::clock::now() + request.max_wait;
        loop {
            // Between the high watermark and the log end (records not yet replicated, or a new
            // leader's high watermark still catching up) the fetch waits; only past the log
            // end is it out of range.
            if request.from > self.log.log_end_offset() {
                return Err(self.out_of_range(request.from));
            }
            let seen = self.data.version();
            let high_watermark = self.log.high_watermark();
            if request.from < high_watermark
                || self.closing.get()
                || sluice_engine::rt::clock::now() >= deadline
            {
                return self.read(request, high_watermark).await;
            }
            let remaining = deadline.saturating_duration_since(sluice_engine::rt::clock::now());
            let wait = std::pin::pin!(self.data.changed(seen));
            let timeout = std::pin::pin!(sluice_engine::rt::sleep(remaining));
            futures::future::select(wait, timeout).await;
        }
    }

    async fn read(&self, request: FetchRequest, upper: Offset) -> Result<FetchData, FetchError> {
        let log_start_offset = self.log.log_start_offset();
        if request.from < log_start_offset {
            return Err(self.out_of_range(request.from));
        }
        if request.from >= upper || request.max_bytes == 0 {
            return Ok(FetchData {
                batches: Vec::new(),
                high_watermark: upper,
                log_start_offset,
            });
        }
        let slice = self
            .log
            .read(request.from, request.max_bytes, upper)
            .await
            .map_err(|e| self.read_error(e))?;
        Ok(FetchData {
            batches: slice.batches,
            high_watermark: upper,
            log_start_offset,
        })
    }

    fn out_of_range(&self, requested: Offset) -> FetchError {
        FetchError::OffsetOutOfRange {
            requested,
            log_start: self.log.log_start_offset(),
            log_end: self.log.log_end_offset(),
        }
    }

    fn read_error(&self, error: ReadError) -> FetchError {
        match error {
            ReadError::OffsetOutOfRange { requested, .. } => self.out_of_range(requested),
            other => FetchError::Storage(format!("{}: {other}", self.tp)),
        }
    }

    /// Looks up the earliest, latest, or first offset at or after a timestamp, as Kafka's
    /// `fetchOffsetForTimestamp` answers a consumer: while a cluster leader's high watermark
    /// is behind its epoch start ([`LeaderCore::consumer_high_watermark`] is `None`), the
    /// latest offset, and a lookup by time that finds no record below the high watermark, are
    /// [`FetchError::OffsetNotAvailable`] (retriable) rather than an offset below what the
    /// previous leader showed. Fetches are not held back: they read below the high watermark
    /// as always.
    ///
    /// [`LeaderCore::consumer_high_watermark`]: crate::replication::LeaderCore
    pub async fn list_offset(&self, spec: OffsetSpec) -> Result<OffsetAnswer, FetchError> {
        match spec {
            OffsetSpec::Earliest => Ok((Some(self.log.log_start_offset()), None)),
            OffsetSpec::Latest => Ok((Some(self.consumer_high_watermark()?), None)),
            OffsetSpec::Timestamp(ts) => {
                // Taken before the lookup, which reads below the high watermark of that time.
                let visible = self.consumer_high_watermark();
                let found = self.offset_for_timestamp(ts).await?;
                if found.0.is_none() {
                    visible?;
                }
                Ok(found)
            }
        }
    }

    /// The high watermark a consumer may be told: the log's, except that a cluster leader
    /// whose high watermark has not reached its epoch start has none to give yet (KIP-207).
    fn consumer_high_watermark(&self) -> Result<Offset, FetchError> {
        let Role::Leader(leader) = self.role() else {
            return Ok(self.log.high_watermark());
        };
        let visible = leader.core.borrow().consumer_high_watermark();
        visible.ok_or_else(|| FetchError::OffsetNotAvailable(self.tp.to_string()))
    }

    /// The first record (not batch) whose timestamp is at least `target`, below the high
    /// watermark: the log finds the first batch whose max timestamp qualifies, and the records
    /// of that batch (and, if none of them does, the next ones) are decoded to find the record.
    async fn offset_for_timestamp(&self, target: TimestampMs) -> Result<OffsetAnswer, FetchError> {
        let high_watermark = self.log.high_watermark();
        let found = self
            .log
            .offset_for_timestamp(target)
            .await
            .map_err(|e| self.read_error(e))?;
        let Some(found) = found else {
            return Ok((None, None));
        };
        let mut from = found.offset.max(self.log.log_start_offset());
        // Bounded: each round moves `from` past at least one batch, and stops at the high
        // watermark.
        while from < high_watermark {
            let slice = self
                .log
                .read(from, 1 << 20, high_watermark)
                .await
                .map_err(|e| self.read_error(e))?;
            if slice.is_empty() {
                break;
            }
            for chunk in &slice.batches {
                let mut rest = chunk.clone();
                while !rest.is_empty() {
                    let header = BatchHeader::parse(&rest, usize::MAX)
                        .map_err(|e| FetchError::Storage(e.to_string()))?;
                    let batch = rest.split_to(header.total_bytes().min(rest.len()));
                    if header.max_timestamp >= target {
                        let records = decode_batch(&batch, sluice_engine::limits::BATCH_BYTES_MAX)
                            .map_err(|e| FetchError::Storage(e.to_string()))?;
                        for record in records {
                            let record = record.map_err(|e| FetchError::Storage(e.to_string()))?;
                            if record.offset >= from && record.timestamp >= target {
                                return Ok((Some(record.offset), Some(record.timestamp)));
                            }
                        }
                    }
                }
            }
            if slice.next_offset <= from {
                break;
            }
            from = slice.next_offset;
        }
        Ok((None, None))
    }

    /// Advances the log start offset to `before` (`Offset(-1)`: the high watermark).
    pub async fn delete_records(&self, before: Offset) -> Result<Offset, FetchError> {
        let high_watermark = self.log.high_watermark();
        let before = if before.0 == -1 {
            high_watermark
        } else {
            before
        };
        if before < Offset(0) || before > high_watermark {
            return Err(self.out_of_range(before));
        }
        self.log
            .delete_records(before)
            .await
            .map_err(|e| FetchError::Storage(e.to_string()))?;
        Ok(self.log.log_start_offset())
    }

    /// Offsets and size for describe.
    pub fn status(&self, shard: ShardId) -> PartitionStatus {
        PartitionStatus {
            shard,
            log_start_offset: self.log.log_start_offset(),
            log_end_offset: self.log.log_end_offset(),
            high_watermark: self.log.high_watermark(),
            size_bytes: self.log.size_bytes(),
        }
    }

    /// Deletes segments past retention; called periodically by the shard's background task.
    pub async fn apply_retention(&self) {
        if let Err(error) = self
            .log
            .apply_retention(sluice_engine::rt::clock::unix_now_ms())
            .await
        {
            tracing::warn!(partition = %self.tp, %error, "retention failed");
        }
    }

    /// Waits for in-flight requests on `replica` to finish (long polls are woken), then
    /// flushes and closes the log (clean shutdown), or deletes its data when `remove`.
    pub async fn close(replica: Rc<PartitionReplica>, remove: bool) {
        if let Some(replication) = &replica.replication {
            replication.release(&replica.tp);
        }
        *replica.role.borrow_mut() = Role::Offline;
        replica.closing.set(true);
        replica.data.notify();
        let deadline = sluice_engine::rt::clock::now() + CLOSE_WAIT;
        // Bounded by the deadline: requests in flight hold clones of the Rc.
        while Rc::strong_count(&replica) > 1 && sluice_engine::rt::clock::now() < deadline {
            sluice_engine::rt::sleep(Duration::from_millis(1)).await;
        }
        let tp = replica.tp.clone();
        let Ok(replica) = Rc::try_unwrap(replica) else {
            tracing::error!(partition = %tp, "requests in flight at close; recovery will scan");
            return;
        };
        let result = if remove {
            replica.log.remove().await
        } else {
            replica.log.close().await
        };
        if let Err(error) = result {
            tracing::error!(partition = %tp, %error, remove, "closing partition failed");
        }
    }
}

/// The file in a partition's directory naming the topic id the directory belongs to (after
/// Kafka's `partition.metadata`). A directory is named after the topic, and a deleted topic's
/// directory can outlive it (a crash between the deletion and the removal, a close that timed
/// out, a failed removal); without the id, a new topic of the same name would open the old
/// records as its own.
const TOPIC_ID_FILE: &str = "partition.metadata";

/// The content of [`TOPIC_ID_FILE`] for `topic_id`.
fn topic_id_file(topic_id: TopicId) -> String {
    format!("version: 0\ntopic_id: {}\n", topic_id.0)
}

/// Makes `dir` the directory of `topic_id`'s partition `tp` before its log opens. Returns
/// whether the directory already names `topic_id`. A directory naming another id holds a
/// deleted topic's records and is removed (with a warning). One without the file is new, or
/// from before the file existed, and one whose file names no id was torn by a crash while the
/// file was written; both are adopted (the caller writes the file).
async fn claim_dir(dir: &Path, tp: &TopicPartition, topic_id: TopicId) -> Result<bool, String> {
    let path = dir.join(TOPIC_ID_FILE);
    let found = match read_topic_id(dir)
        .await
        .map_err(|e| format!("{tp}: cannot read {}: {e}", path.display()))?
    {
        TopicIdFile::Missing => return Ok(false),
        TopicIdFile::Unreadable => {
            tracing::warn!(partition = %tp, "{} names no topic id: adopted", path.display());
            return Ok(false);
        }
        TopicIdFile::Names(found) => found,
    };
    if found == topic_id.0 {
        return Ok(true);
    }
    tracing::warn!(
        partition = %tp,
        deleted_topic_id = %found,
        topic_id = %topic_id.0,
        "removing the records of a deleted topic of the same name"
    );
    sluice_engine::io::remove_dir_all(dir)
        .await
        .map_err(|e| format!("{tp}: cannot remove {}: {e}", dir.display()))?;
    Ok(false)
}

/// What a directory's [`TOPIC_ID_FILE`] says.
enum TopicIdFile {
    /// No file.
    Missing,
    /// A file that names no topic id (torn by a crash while it was written).
    Unreadable,
    /// The topic id the file names.
    Names(uuid::Uuid),
}

/// Reads the [`TOPIC_ID_FILE`] of the partition directory `dir`.
async fn read_topic_id(dir: &Path) -> std::io::Result<TopicIdFile> {
    let content = sluice_engine::io::read_small_file(&dir.join(TOPIC_ID_FILE), 256).await?;
    let Some(content) = content else {
        return Ok(TopicIdFile::Missing);
    };
    let found = std::str::from_utf8(&content).ok().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("topic_id: "))
            .and_then(|id| uuid::Uuid::parse_str(id.trim_end_matches('\0').trim()).ok())
    });
    Ok(found.map_or(TopicIdFile::Unreadable, TopicIdFile::Names))
}

/// The names of the partition directories under `data_dir`, sorted: named `TOPIC-PARTITION`
/// with a valid topic name, and holding a [`TOPIC_ID_FILE`] or a segment file. The metadata,
/// controller and TLS directories and anything else are not partition directories. A
/// directory that cannot be listed is skipped with a warning. Blocking (start-up only).
pub fn partition_dirs(data_dir: &Path) -> std::io::Result<Vec<String>> {
    let names = sluice_engine::io::list_dir(data_dir)?;
    let segment = |file: &String| {
        file.strip_suffix(".log")
            .is_some_and(|base| base.len() == 20 && base.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut found = Vec::new();
    // Bounded by the directory's entries.
    for name in names {
        if !is_partition_dir_name(&name) {
            continue;
        }
        let dir = data_dir.join(&name);
        if !dir.is_dir() {
            continue;
        }
        match sluice_engine::io::list_dir(&dir) {
            Ok(files) if files.iter().any(|f| f == TOPIC_ID_FILE || segment(f)) => {
                found.push(name);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot list a possible partition");
            }
        }
    }
    Ok(found)
}

/// Removes the partition directories under `data_dir` that belong to no partition `hosted`
/// names (Kafka's "stray" partitions, which a KRaft broker deletes at start-up): those a
/// deleted topic left behind (a crash after the deletion was durable, a close that timed out,
/// a failed removal) and those of partitions no longer placed on this broker. A directory is
/// judged by its name, as the log opens it: one named after a hosted partition is kept,
/// whatever its [`TOPIC_ID_FILE`] says or lacks (opening it settles the id, [`claim_dir`]).
/// Only recognisable partition directories ([`partition_dirs`]) are removed. Each removal is
/// logged with its size. Returns the names removed.
///
/// The caller must hold the broker's complete metadata, and no partition may be opened,
/// created or removed meanwhile: a partition created after `hosted` was taken would be
/// removed.
pub(crate) async fn remove_stray_dirs(
    data_dir: &Path,
    hosted: &std::collections::HashSet<String>,
) -> Vec<String> {
    let names = match partition_dirs(data_dir) {
        Ok(names) => names,
        Err(error) => {
            let data_dir = data_dir.display();
            tracing::warn!(%data_dir, %error, "cannot list the data directory for strays");
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    // Bounded by the directory's entries.
    for name in names {
        if hosted.contains(&name) {
            continue;
        }
        let dir = data_dir.join(&name);
        let size_bytes: u64 = sluice_engine::io::list_dir(&dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|file| sluice_engine::io::path_len(&dir.join(file)).ok())
            .sum();
        let topic_id = match read_topic_id(&dir).await {
            Ok(TopicIdFile::Names(id)) => id.to_string(),
            Ok(TopicIdFile::Missing | TopicIdFile::Unreadable) | Err(_) => "unknown".to_owned(),
        };
        assert!(!hosted.contains(&name), "{name}: hosted, never a stray");
        assert_eq!(
            dir.parent(),
            Some(data_dir),
            "{name}: outside the data directory"
        );
        tracing::warn!(
            dir = %dir.display(),
            size_bytes,
            %topic_id,
            "removing a stray partition directory: no partition this broker hosts"
        );
        match sluice_engine::io::remove_dir_all(&dir).await {
            Ok(()) => removed.push(name),
            Err(error) => {
                tracing::error!(dir = %dir.display(), %error, "cannot remove a stray directory");
            }
        }
    }
    removed
}

/// True when `name` has the form of a partition directory, `TOPIC-PARTITION` (as
/// `partition_dir` names them): a valid topic name and a partition number in canonical form.
fn is_partition_dir_name(name: &str) -> bool {
    let Some((topic, partition)) = name.rsplit_once('-') else {
        return false;
    };
    let canonical = partition
        .parse::<i32>()
        .is_ok_and(|number| number >= 0 && number.to_string() == partition);
    canonical && crate::metadata::validate_topic_name(topic).is_ok()
}

/// How long closing a partition waits for its in-flight requests.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Kafka's LEADER_CHANGE control record (key: version 0, type 2; value: `LeaderChangeMessage`
/// v0 with this leader and no voter lists) in a control batch of `epoch`.
fn leader_change_batch(
    leader: sluice_engine::BrokerId,
    epoch: LeaderEpoch,
) -> Result<Bytes, sluice_engine::batch::BuildError> {
    const LEADER_CHANGE: i16 = 2;
    let key = [0i16.to_be_bytes(), LEADER_CHANGE.to_be_bytes()].concat();
    let mut value = Vec::with_capacity(14);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&leader.0.to_be_bytes());
    value.extend_from_slice(&0i32.to_be_bytes());
    value.extend_from_slice(&0i32.to_be_bytes());
    let mut builder = sluice_engine::batch::BatchBuilder::new(1024);
    builder.mark_control().set_leader_epoch(epoch);
    builder.push(
        Some(&key),
        Some(&value),
        &[],
        sluice_engine::rt::clock::unix_now_ms(),
    )?;
    builder.build(sluice_engine::batch::Compression::None)
}

/// A refused or failed append as the producer sees it: a batch the log found invalid is the
/// producer's error, anything else is the broker's storage.
fn produce_error(error: AppendError) -> ProduceError {
    match error {
        AppendError::InvalidBatch { error, .. } => ProduceError::Corrupt(error),
        other => ProduceError::Storage(other.to_string()),
    }
}

/// Checks what the log cannot: every batch's size against the topic's `max.message.bytes`,
/// before anything is appended. The log itself checks the rest of every batch (framing, CRC,
/// record count) before it appends any of them, so a bad batch in the middle leaves the log
/// unchanged; its refusal becomes [`ProduceError::Corrupt`] ([`produce_error`]). One CRC pass
/// per produced byte.
fn check_batches(batches: &Bytes, max_message_bytes: u64) -> Result<(), ProduceError> {
    let mut rest: &[u8] = batches;
    if rest.is_empty() {
        return Err(ProduceError::Corrupt(BatchError::Truncated {
            needed: 61,
            have: 0,
        }));
    }
    while !rest.is_empty() {
        let header = BatchHeader::parse(rest, usize::MAX)?;
        let size = header.total_bytes();
        if size as u64 > max_message_bytes {
            return Err(ProduceError::MessageTooLarge {
                size,
                max: max_message_bytes,
            });
        }
        if rest.len() < size {
            return Err(ProduceError::Corrupt(BatchError::Truncated {
                needed: size,
                have: rest.len(),
            }));
        }
        rest = &rest[size..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::batch::{Compression, SimpleRecord, build_batch};

    async fn open(dir: &Path, topic_id: TopicId) -> Result<PartitionReplica, String> {
        let config = TopicConfig::default();
        PartitionReplica::open(
            dir,
            TopicPartition::new("orders", 0),
            topic_id,
            crate::shard::log_config(&config),
            Rc::new(BatchCache::new(1 << 20)),
            config,
            None,
        )
        .await
    }

    /// Appends one durable record to `replica`'s log.
    async fn append_one(replica: &PartitionReplica) {
        let batch = build_batch(&[SimpleRecord::value("a")], Compression::None).expect("batch");
        replica
            .log()
            .append(batch, LeaderEpoch(0), Durability::Synced)
            .await
            .expect("append");
    }

    // Goal: a single broker appends to a log whose latest epoch is above 0 (a cluster broker's
    // data, or a damaged epoch field in the last batch, which recovery learns) instead of
    // refusing every append as stale, also once every record is deleted. Method: append a
    // batch at epoch 7 directly to the log, reopen (recovery learns 7), produce through the
    // partition as a single broker; delete every record and produce again.
    #[test]
    fn a_single_broker_appends_above_the_logs_latest_epoch() {
        sluice_engine::rt::block_on(async {
            let data = tempfile::tempdir().expect("temp dir");
            let id = TopicId(uuid::Uuid::from_u128(1));
            let replica = open(data.path(), id).await.expect("open");
            let batch =
                build_batch(&[SimpleRecord::value("old")], Compression::None).expect("batch");
            replica
                .log()
                .append(batch, LeaderEpoch(7), Durability::Synced)
                .await
                .expect("append at epoch 7");
            PartitionReplica::close(Rc::new(replica), false).await;
            let replica = Rc::new(open(data.path(), id).await.expect("reopen"));
            assert_eq!(replica.log().latest_epoch(), Some(LeaderEpoch(7)));
            let batch =
                build_batch(&[SimpleRecord::value("new")], Compression::None).expect("batch");
            let info = replica
                .append_ordered(batch, Acks::All)
                .expect("a single broker's append is not refused")
                .await
                .expect("append acknowledged");
            assert_eq!(info.base_offset, Offset(1));
            assert_eq!(replica.log().latest_epoch(), Some(LeaderEpoch(7)));
            // With every record deleted no batch is readable, but the epoch cache keeps 7.
            replica
                .log()
                .delete_records(Offset(2))
                .await
                .expect("delete records");
            let batch =
                build_batch(&[SimpleRecord::value("later")], Compression::None).expect("batch");
            let info = replica
                .append_ordered(batch, Acks::All)
                .expect("an append to an emptied log is not refused")
                .await
                .expect("append acknowledged");
            assert_eq!(info.base_offset, Offset(2));
            PartitionReplica::close(replica, false).await;
        });
    }

    // Goal: the start-up sweep removes every directory of a partition the broker does not host
    // (a deleted topic's, whatever its id file says, and one of a partition number the live
    // topic does not have) and nothing else: the live partition keeps its records even without
    // its id file (a name match keeps it), and the metadata, controller and TLS directories, a
    // file, and directories that merely look like partitions stay. Method: open topic A's
    // partition `orders-0`, append, close and remove its id file; plant strays (`gone-0`
    // naming a deleted topic id with a segment, `orders-7` with only a segment) and
    // look-alikes; sweep with `orders-0` hosted; reopen A and read the record back.
    #[test]
    fn the_sweep_removes_only_stray_partition_directories() {
        sluice_engine::rt::block_on(async {
            let data = tempfile::tempdir().expect("temp dir");
            let live = TopicId(uuid::Uuid::from_u128(1));
            let replica = open(data.path(), live).await.expect("open");
            append_one(&replica).await;
            PartitionReplica::close(Rc::new(replica), false).await;
            let root = data.path();
            std::fs::remove_file(root.join("orders-0").join(TOPIC_ID_FILE)).expect("no id file");
            let plant = |dir: &str, files: &[(&str, &str)]| {
                std::fs::create_dir_all(root.join(dir)).expect("plant a directory");
                for (name, content) in files {
                    std::fs::write(root.join(dir).join(name), content).expect("plant a file");
                }
            };
            let segment = "00000000000000000000.log";
            let deleted = topic_id_file(TopicId(uuid::Uuid::from_u128(9)));
            plant("gone-0", &[(TOPIC_ID_FILE, &deleted), (segment, "records")]);
            plant("orders-7", &[(segment, "records")]);
            plant("__metadata", &[("metadata.json", "{}")]);
            plant("__controller", &[("raft.log", "entries")]);
            plant("tls", &[("cert.pem", "pem")]);
            plant("scratch-1", &[("notes.txt", "not a partition")]);
            plant(
                "orders-01",
                &[(segment, "not a canonical partition number")],
            );
            std::fs::write(root.join("orders-9"), "a file").expect("plant a file");

            let hosted = ["orders-0".to_owned()].into_iter().collect();
            let removed = remove_stray_dirs(root, &hosted).await;
            assert_eq!(removed, ["gone-0", "orders-7"]);
            let mut left = sluice_engine::io::list_dir(root).expect("list");
            left.sort();
            let expected = [
                "__controller",
                "__metadata",
                "orders-0",
                "orders-01",
                "orders-9",
                "scratch-1",
                "tls",
            ];
            assert_eq!(left, expected);

            let reopened = open(root, live).await.expect("reopen the live partition");
            assert_eq!(
                reopened.log().log_end_offset(),
                Offset(1),
                "live records kept"
            );
            let slice = reopened
                .log()
                .read(Offset(0), 1 << 20, Offset(1))
                .await
                .expect("read back");
            assert!(!slice.is_empty(), "the record reads back");
            PartitionReplica::close(Rc::new(reopened), false).await;
        });
    }

    /// Makes `replica` the cluster leader of `epoch` with a core built from `positions`, as
    /// `ShardReplication::lead` would (broker 1, with broker 2 in the ISR). The partition's
    /// metadata is read from JSON, as the metadata file holds it, so that fields added to it
    /// with a default leave this helper alone.
    fn lead(
        replica: &PartitionReplica,
        epoch: i32,
        positions: crate::replication::LeaderPositions,
    ) {
        let local = sluice_engine::BrokerId(1);
        let meta: PartitionMeta = serde_json::from_value(serde_json::json!({
            "id": 0, "shard": 0, "leader": 1, "leader_epoch": epoch,
            "replicas": [1, 2], "isr": [1, 2],
        }))
        .expect("partition metadata");
        let state = PartitionState::from(&meta);
        let core = crate::replication::LeaderCore::new(
            replica.tp.clone(),
            local,
            &state,
            positions,
            crate::replication::ReplicationConfig::default(),
            sluice_engine::rt::clock::now(),
        );
        let leader = LeaderReplica {
            core: RefCell::new(core),
            log: Rc::clone(&replica.log),
        };
        *replica.role.borrow_mut() = Role::Leader(Rc::new(leader));
    }

    // Goal: after a failover, a consumer's ListOffsets never goes backwards (KIP-207): while
    // the new leader's high watermark is below its epoch start, LATEST and a lookup by time
    // past the visible records are OffsetNotAvailable, while EARLIEST, a time that finds a
    // visible record, and fetches below the high watermark are served; once the high
    // watermark reaches the epoch start, LATEST is answered. Method: a log of three records
    // whose high watermark is 1 (the old leader had shown more), led by a core whose epoch
    // starts at 3; then a core whose high watermark reached it.
    #[test]
    fn a_lagging_new_leader_does_not_list_the_latest_offset() {
        sluice_engine::rt::block_on(async {
            let data = tempfile::tempdir().expect("temp dir");
            let replica = open(data.path(), TopicId(uuid::Uuid::from_u128(1)))
                .await
                .expect("open");
            for _ in 0..3 {
                append_one(&replica).await;
            }
            replica.log().set_high_watermark(Offset(1));
            let positions = |high_watermark| crate::replication::LeaderPositions {
                next_offset: Offset(3),
                durable_end: Offset(3),
                high_watermark,
            };
            lead(&replica, 2, positions(Offset(1)));

            let latest = replica.list_offset(OffsetSpec::Latest).await;
            assert_eq!(
                latest,
                Err(FetchError::OffsetNotAvailable("orders-0".into())),
                "a lagging leader must not list the latest offset"
            );
            let future = replica
                .list_offset(OffsetSpec::Timestamp(TimestampMs(i64::MAX)))
                .await;
            assert_eq!(
                future,
                Err(FetchError::OffsetNotAvailable("orders-0".into())),
                "nothing visible at that time: the answer could move backwards"
            );
            let first = replica
                .list_offset(OffsetSpec::Timestamp(TimestampMs(0)))
                .await
                .expect("a visible record is found");
            assert_eq!(first.0, Some(Offset(0)));
            let earliest = replica.list_offset(OffsetSpec::Earliest).await;
            assert_eq!(earliest, Ok((Some(Offset(0)), None)));
            let request = FetchRequest {
                from: Offset(0),
                max_bytes: 1 << 20,
                max_wait: Duration::ZERO,
            };
            let fetched = replica.fetch(request).await.expect("fetch is served");
            assert_eq!(fetched.high_watermark, Offset(1), "the leader's own");
            assert!(!fetched.batches.is_empty());

            replica.log().set_high_watermark(Offset(3));
            lead(&replica, 3, positions(Offset(3)));
            let latest = replica.list_offset(OffsetSpec::Latest).await;
            assert_eq!(latest, Ok((Some(Offset(3)), None)));
            let future = replica
                .list_offset(OffsetSpec::Timestamp(TimestampMs(i64::MAX)))
                .await;
            assert_eq!(future, Ok((None, None)));
            PartitionReplica::close(Rc::new(replica), false).await;
        });
    }

    // Goal: a directory left by a deleted topic is never opened as a new topic of the same
    // name; the topic's own directory keeps its records across reopens, and one written before
    // the topic id file existed, or whose file a crash tore, is adopted. Method: open a
    // partition as topic A and append a record; reopen as A; reopen as B (a new topic named
    // like A); remove B's id file and reopen as A; append, then tear the file and reopen.
    #[test]
    fn a_directory_belongs_to_one_topic_id() {
        sluice_engine::rt::block_on(async {
            let data = tempfile::tempdir().expect("temp dir");
            let (a, b) = (
                TopicId(uuid::Uuid::from_u128(1)),
                TopicId(uuid::Uuid::from_u128(2)),
            );
            let end = |replica: &PartitionReplica| replica.log().log_end_offset();

            let first = open(data.path(), a).await.expect("open as A");
            append_one(&first).await;
            PartitionReplica::close(Rc::new(first), false).await;
            let again = open(data.path(), a).await.expect("reopen as A");
            assert_eq!(end(&again), Offset(1), "A's record stays");
            PartitionReplica::close(Rc::new(again), false).await;

            let other = open(data.path(), b).await.expect("open as B");
            assert_eq!(end(&other), Offset(0), "B does not see A's record");
            PartitionReplica::close(Rc::new(other), false).await;
            let dir =
                sluice_engine::log::partition_dir(data.path(), &TopicPartition::new("orders", 0));
            let named = std::fs::read_to_string(dir.join(TOPIC_ID_FILE)).expect("id file");
            assert!(named.contains(&b.0.to_string()), "{named}");

            std::fs::remove_file(dir.join(TOPIC_ID_FILE)).expect("remove the id file");
            let adopted = open(data.path(), a).await.expect("adopt as A");
            assert_eq!(end(&adopted), Offset(0));
            PartitionReplica::close(Rc::new(adopted), false).await;
            let named = std::fs::read_to_string(dir.join(TOPIC_ID_FILE)).expect("id file");
            assert!(named.contains(&a.0.to_string()), "{named}");

            let appended = open(data.path(), a).await.expect("reopen as A");
            append_one(&appended).await;
            PartitionReplica::close(Rc::new(appended), false).await;
            // A file torn by a crash while it was written: adopted, not removed.
            std::fs::write(dir.join(TOPIC_ID_FILE), "version: 0\ntopic_id: 0000").expect("tear");
            let torn = open(data.path(), a).await.expect("adopt a torn file");
            assert_eq!(end(&torn), Offset(1), "nothing removed on a guess");
            PartitionReplica::close(Rc::new(torn), false).await;
            let named = std::fs::read_to_string(dir.join(TOPIC_ID_FILE)).expect("id file");
            assert!(named.contains(&a.0.to_string()), "rewritten: {named}");
        });
    }
}
