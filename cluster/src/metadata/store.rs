//! Applying metadata commands, and persisting metadata.
//!
//! [`apply`] is the pure state transition (validate a command against a snapshot, return the
//! next snapshot); a [`MetadataStore`] makes a transition durable. The single-broker store,
//! [`FileMetadataStore`], writes the whole snapshot as JSON to `DATA/__metadata/metadata.json`
//! with write-to-temp, fsync, rename, fsync-directory, on the executor's blocking pool so the
//! shard keeps serving. The cluster issue backs the same trait with the controller's replicated
//! log.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_engine::{BrokerId, LeaderEpoch, PartitionId, Revision};

use super::{
    BrokerRegistration, MetadataCommand, MetadataError, MetadataSnapshot, PARTITION_EPOCH_VERSION,
    PartitionEpoch, PartitionMeta, TopicId, TopicMeta, validate_topic_name,
};
use crate::config::TopicConfig;
use crate::controller::election;
use crate::limits::TOPIC_PARTITIONS_MAX;
use crate::placement::shard_for;

/// Where a metadata change becomes durable.
pub trait MetadataStore {
    /// Makes `next` durable; the change is applied only if this succeeds.
    fn persist(&self, next: &MetadataSnapshot) -> impl Future<Output = Result<(), MetadataError>>;
}

/// Facts about this broker that placement needs.
#[derive(Clone, Copy, Debug)]
pub struct PlacementContext {
    /// This broker, the only replica on a single broker.
    pub node: BrokerId,
    /// Shards per broker.
    pub shard_count: usize,
}

/// What [`apply_with`] needs besides the command that a replicated log must fix in advance,
/// so that every broker applying the same entry computes the same snapshot.
#[derive(Clone, Copy, Debug)]
pub struct ApplyInputs {
    /// Id of a topic the command creates.
    pub topic_id: TopicId,
}

/// Validates `command` against `current` and returns the next snapshot (revision + 1).
/// Draws a fresh topic id; a replicated log uses [`apply_with`] with the id in the entry.
pub fn apply(
    current: &MetadataSnapshot,
    command: &MetadataCommand,
    context: PlacementContext,
) -> Result<MetadataSnapshot, MetadataError> {
    let inputs = ApplyInputs {
        topic_id: TopicId(uuid::Uuid::new_v4()),
    };
    apply_with(current, command, context, inputs)
}

/// The pure state transition: validates `command` against `current` and returns the next
/// snapshot (revision + 1). In a cluster (`current.cluster` has registrations) replicas are
/// placed on live registered brokers and `context.node` is not used.
pub fn apply_with(
    current: &MetadataSnapshot,
    command: &MetadataCommand,
    context: PlacementContext,
    inputs: ApplyInputs,
) -> Result<MetadataSnapshot, MetadataError> {
    let mut next = current.clone();
    next.revision = Revision(current.revision.0 + 1);
    // From committed registrations only: the same on every voter for this entry.
    let partition_epochs = current.cluster.metadata_version() >= PARTITION_EPOCH_VERSION;
    match command {
        MetadataCommand::CreateTopic {
            name,
            partitions,
            replication,
            overrides,
        } => {
            validate_topic_name(name)?;
            if current.topics.contains_key(name.as_str()) {
                return Err(MetadataError::TopicExists(name.clone()));
            }
            if *partitions < 1 || *partitions > TOPIC_PARTITIONS_MAX {
                return Err(MetadataError::InvalidPartitions(*partitions));
            }
            let live = live_brokers(current);
            let brokers = if live.is_empty() {
                current.brokers.len().max(1)
            } else {
                live.len()
            };
            if *replication < 1 || *replication as usize > brokers {
                return Err(MetadataError::InvalidReplicationFactor {
                    factor: *replication,
                    brokers,
                });
            }
            let config = TopicConfig::resolve(overrides)?;
            let id = inputs.topic_id;
            let name: Arc<str> = Arc::from(name.as_str());
            let partitions = (0..*partitions)
                .map(|p| new_partition(current, id, PartitionId(p), *replication, context))
                .collect();
            next.topics.insert(
                Arc::clone(&name),
                TopicMeta {
                    name,
                    id,
                    partitions,
                    overrides: overrides.clone(),
                    config,
                },
            );
        }
        MetadataCommand::DeleteTopic { name } => {
            next.topics
                .remove(name.as_str())
                .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
        }
        MetadataCommand::AlterConfig {
            name,
            changes,
            replace,
        } => {
            let topic = next
                .topics
                .get_mut(name.as_str())
                .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
            let mut overrides = if *replace {
                Default::default()
            } else {
                topic.overrides.clone()
            };
            for (key, value) in changes {
                match value {
                    Some(value) => overrides.insert(key.clone(), value.clone()),
                    None => overrides.remove(key),
                };
            }
            topic.config = TopicConfig::resolve(&overrides)?;
            topic.overrides = overrides;
        }
        MetadataCommand::CreatePartitions { name, total } => {
            let topic = current
                .topics
                .get(name.as_str())
                .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
            let have = topic.partitions.len() as i32;
            if *total <= have || *total > TOPIC_PARTITIONS_MAX {
                return Err(MetadataError::InvalidPartitions(*total));
            }
            let id = topic.id;
            let replication = topic
                .partitions
                .first()
                .map_or(1, |p| p.replicas.len() as i16);
            let live = live_brokers(current).len();
            if !current.cluster.registrations.is_empty() && replication as usize > live {
                return Err(MetadataError::InvalidReplicationFactor {
                    factor: replication,
                    brokers: live,
                });
            }
            let added: Vec<PartitionMeta> = (have..*total)
                .map(|p| new_partition(current, id, PartitionId(p), replication, context))
                .collect();
            next.topics
                .get_mut(name.as_str())
                .expect("looked up above")
                .partitions
                .extend(added);
        }
        MetadataCommand::RegisterBroker { registration } => {
            if registration.quic.is_empty() || registration.id.0 < 0 {
                return Err(MetadataError::InvalidReplicaAssignment(format!(
                    "broker {} registered without shards",
                    registration.id.0
                )));
            }
            let registration = BrokerRegistration {
                fenced: false,
                ..registration.clone()
            };
            let id = registration.id;
            let registrations = &mut next.cluster.registrations;
            registrations.retain(|r| r.id != id);
            registrations.push(registration);
            registrations.sort_by_key(|r| r.id);
            let mut elections = 0;
            for topic in next.topics.values_mut() {
                let unclean = topic.config.unclean_leader_election;
                for partition in &mut topic.partitions {
                    elections +=
                        u64::from(election::unfence(partition, id, unclean).leader_changed);
                }
            }
            next.cluster.leader_elections_total += elections;
        }
        MetadataCommand::FenceBroker { id } => {
            let Some(registration) = next.cluster.registrations.iter_mut().find(|r| r.id == *id)
            else {
                return Err(MetadataError::InvalidReplicaAssignment(format!(
                    "broker {} is not registered",
                    id.0
                )));
            };
            registration.fenced = true;
            let cluster = next.cluster.clone();
            let is_live = |b: BrokerId| cluster.is_live(b);
            let (mut elections, mut shrinks) = (0, 0);
            for topic in next.topics.values_mut() {
                let unclean = topic.config.unclean_leader_election;
                for partition in &mut topic.partitions {
                    let change = election::fence(partition, *id, is_live, unclean);
                    elections += u64::from(change.leader_changed);
                    shrinks += u64::from(change.isr_shrunk);
                }
            }
            next.cluster.leader_elections_total += elections;
            next.cluster.isr_shrinks_total += shrinks;
        }
        MetadataCommand::AlterPartition {
            topic,
            partition,
            leader,
            leader_epoch,
            partition_epoch,
            isr,
        } => {
            let meta = partition_mut(&mut next.topics, topic, *partition)?;
            if meta.leader != *leader || meta.leader_epoch != *leader_epoch {
                return Err(MetadataError::StaleLeaderEpoch {
                    topic: topic.clone(),
                    partition: partition.0,
                    leader: meta.leader.0,
                    epoch: meta.leader_epoch.0,
                });
            }
            // Kafka's INVALID_UPDATE_VERSION: a change made from an older state of the
            // partition (delayed, or a copy sent again after the first was applied) would undo
            // a later change of the same leader epoch, e.g. put back a member the leader has
            // since dropped for lagging, which need not hold the records below the high
            // watermark. A proposal without an epoch (older code) is refused alike.
            if partition_epochs && *partition_epoch != Some(meta.partition_epoch) {
                return Err(MetadataError::StalePartitionEpoch {
                    topic: topic.clone(),
                    partition: partition.0,
                    epoch: meta.partition_epoch.0,
                });
            }
            if !isr.contains(leader) || !isr.iter().all(|b| meta.replicas.contains(b)) {
                return Err(MetadataError::InvalidReplicaAssignment(format!(
                    "isr {isr:?} must contain the leader and only replicas"
                )));
            }
            let mut isr = isr.clone();
            isr.sort_by_key(|b| meta.replicas.iter().position(|r| r == b));
            isr.dedup();
            let shrunk = meta.isr.iter().any(|b| !isr.contains(b));
            let grown = isr.iter().any(|b| !meta.isr.contains(b));
            meta.isr = isr;
            next.cluster.isr_shrinks_total += u64::from(shrunk);
            next.cluster.isr_expands_total += u64::from(grown);
            next.cluster.leader_elections_total += u64::from(finish_reassignment(meta));
        }
        MetadataCommand::ReassignPartition {
            topic,
            partition,
            replicas,
        } => {
            let live = live_brokers(current);
            let invalid = |why: String| MetadataError::InvalidReplicaAssignment(why);
            if live.is_empty() {
                return Err(invalid("reassignment needs a cluster".into()));
            }
            let mut distinct = replicas.clone();
            distinct.sort_unstable();
            distinct.dedup();
            if replicas.is_empty() || distinct.len() != replicas.len() {
                return Err(invalid(format!("{replicas:?} must be distinct brokers")));
            }
            if let Some(b) = replicas.iter().find(|b| !live.contains(b)) {
                return Err(invalid(format!("broker {} is not a live broker", b.0)));
            }
            let meta = partition_mut(&mut next.topics, topic, *partition)?;
            // The partition keeps its shard: peer links join equal shards.
            for b in replicas {
                let shards = current
                    .cluster
                    .registration(*b)
                    .map_or(0, BrokerRegistration::shard_count);
                if usize::from(meta.shard.0) >= shards {
                    return Err(invalid(format!(
                        "broker {} has no shard {} for {topic}-{}",
                        b.0, meta.shard.0, partition.0
                    )));
                }
            }
            if meta
                .target_replicas
                .as_ref()
                .is_some_and(|target| target != replicas)
            {
                return Err(MetadataError::Refused(format!(
                    "a reassignment of {topic}-{} is in progress",
                    partition.0
                )));
            }
            for b in replicas {
                if !meta.replicas.contains(b) {
                    meta.replicas.push(*b);
                }
            }
            meta.target_replicas = Some(replicas.clone());
            next.cluster.leader_elections_total += u64::from(finish_reassignment(meta));
        }
        MetadataCommand::ElectPreferredLeaders => {
            let cluster = next.cluster.clone();
            let is_live = |b: BrokerId| cluster.is_live(b);
            let mut elections = 0;
            for topic in next.topics.values_mut() {
                for partition in &mut topic.partitions {
                    elections +=
                        u64::from(election::elect_preferred(partition, is_live).leader_changed);
                }
            }
            next.cluster.leader_elections_total += elections;
        }
    }
    if partition_epochs {
        bump_partition_epochs(current, &mut next);
    }
    if !next.cluster.registrations.is_empty() {
        next.brokers = next
            .cluster
            .registrations
            .iter()
            .filter(|r| !r.fenced)
            .map(BrokerRegistration::info)
            .collect();
    }
    assert!(
        next.revision > current.revision,
        "metadata revision must increase"
    );
    Ok(next)
}

/// Bumps the partition epoch of every partition whose leader, leader epoch, replicas, target
/// replicas or ISR differ between `current` and `next` (one rule for every command, so no
/// transition can forget it). O(partitions), as the snapshot clone each command makes.
fn bump_partition_epochs(current: &MetadataSnapshot, next: &mut MetadataSnapshot) {
    for (name, topic) in &mut next.topics {
        let Some(before) = current.topics.get(name).filter(|t| t.id == topic.id) else {
            continue;
        };
        for (after, before) in topic.partitions.iter_mut().zip(&before.partitions) {
            assert_eq!(after.id, before.id, "{name}: partitions keep their order");
            assert_eq!(
                after.partition_epoch, before.partition_epoch,
                "{name}-{}: the partition epoch changes only here",
                after.id.0
            );
            let changed = after.leader != before.leader
                || after.leader_epoch != before.leader_epoch
                || after.replicas != before.replicas
                || after.target_replicas != before.target_replicas
                || after.isr != before.isr;
            if changed {
                after.partition_epoch = PartitionEpoch(before.partition_epoch.0 + 1);
            }
        }
    }
}

/// Registered, unfenced brokers, sorted by id (empty on a single broker).
fn live_brokers(snapshot: &MetadataSnapshot) -> Vec<BrokerId> {
    snapshot
        .cluster
        .registrations
        .iter()
        .filter(|r| !r.fenced)
        .map(|r| r.id)
        .collect()
}

fn new_partition(
    current: &MetadataSnapshot,
    topic: TopicId,
    id: PartitionId,
    replication: i16,
    context: PlacementContext,
) -> PartitionMeta {
    let live = live_brokers(current);
    if live.is_empty() {
        return PartitionMeta {
            id,
            shard: shard_for(topic, id, context.shard_count),
            leader: context.node,
            leader_epoch: LeaderEpoch(0),
            partition_epoch: PartitionEpoch(0),
            replicas: vec![context.node],
            isr: vec![context.node],
            target_replicas: None,
        };
    }
    // Spread each topic from a different broker so small topics do not all lead on one.
    let start = usize::from(shard_for(topic, PartitionId(0), live.len()).0);
    let index = usize::try_from(id.0).expect("partition ids are not negative");
    let count = usize::try_from(replication).expect("replication checked positive");
    let replicas = election::assign_replicas(&live, start, index, count);
    // Peer links join shard i to shard i, so the partition sits on the same shard of every
    // replica: one that exists on the replica with the fewest shards.
    let shards = replicas
        .iter()
        .filter_map(|b| current.cluster.registration(*b))
        .map(BrokerRegistration::shard_count)
        .min()
        .expect("replicas are registered");
    PartitionMeta {
        id,
        shard: shard_for(topic, id, shards),
        leader: replicas[0],
        leader_epoch: LeaderEpoch(0),
        partition_epoch: PartitionEpoch(0),
        isr: replicas.clone(),
        replicas,
        target_replicas: None,
    }
}

/// The partition a cluster command names, or `UnknownTopic`.
fn partition_mut<'a>(
    topics: &'a mut std::collections::BTreeMap<std::sync::Arc<str>, TopicMeta>,
    topic: &str,
    partition: PartitionId,
) -> Result<&'a mut PartitionMeta, MetadataError> {
    topics
        .get_mut(topic)
        .and_then(|t| {
            usize::try_from(partition.0)
                .ok()
                .and_then(|i| t.partitions.get_mut(i))
        })
        .ok_or_else(|| MetadataError::UnknownTopic(format!("{topic}-{}", partition.0)))
}

/// Completes `meta`'s reassignment once every target replica is in the ISR: the replica set
/// becomes the target, leaving members leave the ISR, and a leaving leader hands over to the
/// first target replica (epoch bumped). Returns true if the leader changed.
fn finish_reassignment(meta: &mut PartitionMeta) -> bool {
    let Some(target) = meta.target_replicas.clone() else {
        return false;
    };
    if !target.iter().all(|b| meta.isr.contains(b)) {
        return false;
    }
    meta.replicas = target.clone();
    meta.isr.retain(|b| target.contains(b));
    meta.isr.sort_by_key(|b| target.iter().position(|t| t == b));
    meta.target_replicas = None;
    if target.contains(&meta.leader) {
        return false;
    }
    meta.leader = target[0];
    meta.leader_epoch = LeaderEpoch(meta.leader_epoch.0 + 1);
    true
}

/// Re-places partitions whose recorded shard does not exist on this broker (it restarted with
/// fewer shards). Returns true if anything moved.
pub fn replace_missing_shards(snapshot: &mut MetadataSnapshot, shard_count: usize) -> bool {
    let mut moved = false;
    for topic in snapshot.topics.values_mut() {
        for partition in &mut topic.partitions {
            if usize::from(partition.shard.0) >= shard_count {
                partition.shard = shard_for(topic.id, partition.id, shard_count);
                moved = true;
            }
        }
    }
    moved
}

/// Metadata persisted as one JSON file in the data directory (single-broker store).
#[derive(Clone, Debug)]
pub struct FileMetadataStore {
    path: PathBuf,
    /// The file did not exist and was created by [`FileMetadataStore::open`].
    created: bool,
}

/// The metadata file's name inside its directory.
const METADATA_FILE: &str = "metadata.json";

impl FileMetadataStore {
    /// The metadata file [`FileMetadataStore::open`] reads (or creates) in `dir`.
    pub fn file_in(dir: &Path) -> PathBuf {
        dir.join(METADATA_FILE)
    }

    /// Opens (or initialises) the store in `dir`, returning the persisted snapshot. Runs before
    /// the shards start, so blocking file I/O is fine here.
    pub fn open(dir: &Path) -> Result<(FileMetadataStore, MetadataSnapshot), MetadataError> {
        std::fs::create_dir_all(dir).map_err(|e| storage_error(dir, &e))?;
        let path = FileMetadataStore::file_in(dir);
        let mut store = FileMetadataStore {
            path,
            created: false,
        };
        match std::fs::read(&store.path) {
            Ok(bytes) => {
                let snapshot: MetadataSnapshot = serde_json::from_slice(&bytes).map_err(|e| {
                    MetadataError::Storage(format!("{} is corrupt: {e}", store.path.display()))
                })?;
                Ok((store, snapshot))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let snapshot = MetadataSnapshot {
                    cluster_id: uuid::Uuid::new_v4().simple().to_string(),
                    ..MetadataSnapshot::default()
                };
                write_atomically(&store.path, &snapshot)?;
                store.created = true;
                Ok((store, snapshot))
            }
            Err(error) => Err(storage_error(&store.path, &error)),
        }
    }
}

impl FileMetadataStore {
    /// Whether this start created the metadata file: nothing in the data directory was made
    /// under it.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Persists `next` on the calling thread; only before the shards start.
    pub fn persist_blocking(&self, next: &MetadataSnapshot) -> Result<(), MetadataError> {
        write_atomically(&self.path, next)
    }
}

impl MetadataStore for FileMetadataStore {
    async fn persist(&self, next: &MetadataSnapshot) -> Result<(), MetadataError> {
        let path = self.path.clone();
        let next = next.clone();
        sluice_engine::rt::spawn_blocking(move || write_atomically(&path, &next)).await
    }
}

fn storage_error(path: &Path, error: &std::io::Error) -> MetadataError {
    MetadataError::Storage(format!("{}: {error}", path.display()))
}

fn write_atomically(path: &Path, snapshot: &MetadataSnapshot) -> Result<(), MetadataError> {
    // Brokers are runtime facts, not persisted state.
    let persisted = MetadataSnapshot {
        brokers: Vec::new(),
        ..snapshot.clone()
    };
    let bytes = serde_json::to_vec_pretty(&persisted)
        .map_err(|e| MetadataError::Storage(format!("cannot encode metadata: {e}")))?;
    write_file_atomically(path, &bytes).map_err(|(at, e)| storage_error(&at, &e))
}

/// Replaces the file at `path` with `bytes` so that a crash leaves the old content or the new,
/// never a mix: write `PATH.tmp`, fsync it, rename it over `path`, fsync the directory.
/// Blocking; returns the path an error happened at with the error.
pub(crate) fn write_file_atomically(
    path: &Path,
    bytes: &[u8],
) -> Result<(), (PathBuf, std::io::Error)> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).map_err(|e| (tmp.clone(), e))?;
    file.write_all(bytes).map_err(|e| (tmp.clone(), e))?;
    file.sync_all().map_err(|e| (tmp.clone(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| (path.to_owned(), e))?;
    let dir = path
        .parent()
        .expect("an atomically written file has a parent directory");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| (dir.to_owned(), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const CONTEXT: PlacementContext = PlacementContext {
        node: BrokerId(1),
        shard_count: 2,
    };

    fn create(name: &str, partitions: i32) -> MetadataCommand {
        MetadataCommand::CreateTopic {
            name: name.into(),
            partitions,
            replication: 1,
            overrides: BTreeMap::new(),
        }
    }

    // Goal: each command moves the revision forward and changes exactly what it names; invalid
    // commands leave nothing changed.
    #[test]
    fn apply_commands() {
        let empty = MetadataSnapshot::default();
        let one = apply(&empty, &create("orders", 3), CONTEXT).expect("create");
        assert_eq!(one.revision, Revision(1));
        let topic = one.topic("orders").expect("created");
        assert_eq!(topic.partitions.len(), 3);
        assert!(topic.partitions.iter().all(|p| usize::from(p.shard.0) < 2));

        assert_eq!(
            apply(&one, &create("orders", 1), CONTEXT),
            Err(MetadataError::TopicExists("orders".into()))
        );
        assert_eq!(
            apply(&one, &create("bad/name", 1), CONTEXT),
            Err(MetadataError::InvalidTopicName("bad/name".into()))
        );
        assert_eq!(
            apply(&one, &create("zero", 0), CONTEXT),
            Err(MetadataError::InvalidPartitions(0))
        );

        let grown = apply(
            &one,
            &MetadataCommand::CreatePartitions {
                name: "orders".into(),
                total: 5,
            },
            CONTEXT,
        )
        .expect("grow");
        let topic = grown.topic("orders").expect("still there");
        assert_eq!(topic.partitions.len(), 5);
        assert_eq!(topic.partitions[4].id, PartitionId(4));
        assert_eq!(topic.id, one.topic("orders").expect("exists").id);

        let altered = apply(
            &grown,
            &MetadataCommand::AlterConfig {
                name: "orders".into(),
                changes: vec![("retention.ms".into(), Some("1000".into()))],
                replace: false,
            },
            CONTEXT,
        )
        .expect("alter");
        assert_eq!(
            altered.topic("orders").expect("exists").config.retention_ms,
            Some(1000)
        );
        let bad = apply(
            &grown,
            &MetadataCommand::AlterConfig {
                name: "orders".into(),
                changes: vec![("retention.ms".into(), Some("soon".into()))],
                replace: false,
            },
            CONTEXT,
        );
        assert!(matches!(bad, Err(MetadataError::Config(_))));

        let deleted = apply(
            &altered,
            &MetadataCommand::DeleteTopic {
                name: "orders".into(),
            },
            CONTEXT,
        )
        .expect("delete");
        assert!(deleted.topic("orders").is_none());
        assert_eq!(deleted.revision, Revision(4));
    }

    // Goal: persisted metadata survives a reopen byte for byte (minus runtime broker info).
    #[test]
    fn file_store_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, initial) = FileMetadataStore::open(dir.path()).expect("open");
        assert!(!initial.cluster_id.is_empty());
        let next = apply(&initial, &create("t", 2), CONTEXT).expect("create");
        sluice_engine::rt::block_on(store.persist(&next)).expect("persist");
        let (_, reopened) = FileMetadataStore::open(dir.path()).expect("reopen");
        assert_eq!(reopened, next);
    }

    fn registered(ids: &[i32]) -> MetadataSnapshot {
        let mut snapshot = MetadataSnapshot::default();
        for id in ids {
            let addr: std::net::SocketAddr = format!("127.0.0.{id}:1").parse().expect("addr");
            let registration = BrokerRegistration {
                id: BrokerId(*id),
                kafka: addr,
                quic: vec![addr, addr],
                cluster: addr,
                fenced: true,
                metadata_version: crate::metadata::METADATA_VERSION,
            };
            snapshot = apply(
                &snapshot,
                &MetadataCommand::RegisterBroker { registration },
                CONTEXT,
            )
            .expect("register");
        }
        snapshot
    }

    fn with_id(command: &MetadataCommand, current: &MetadataSnapshot) -> MetadataSnapshot {
        let inputs = ApplyInputs {
            topic_id: TopicId(uuid::Uuid::from_u128(7)),
        };
        apply_with(current, command, CONTEXT, inputs).expect("applies")
    }

    // Goal: in a cluster, CreateTopic places RF distinct live brokers per partition, the same
    // way for the same inputs, refuses RF above the live brokers, and lists only unfenced
    // brokers to clients. Method: register three brokers, create, fence, create again.
    #[test]
    fn cluster_placement_and_fencing() {
        let three = registered(&[1, 2, 3]);
        assert_eq!(three.brokers.len(), 3, "registration unfences");
        let mut command = create("t", 3);
        if let MetadataCommand::CreateTopic { replication, .. } = &mut command {
            *replication = 3;
        }
        let one = with_id(&command, &three);
        assert_eq!(
            one,
            with_id(&command, &three),
            "deterministic for the same inputs"
        );
        let topic = one.topic("t").expect("created");
        for p in &topic.partitions {
            let mut replicas = p.replicas.clone();
            replicas.sort();
            replicas.dedup();
            assert_eq!(replicas.len(), 3);
            assert_eq!(p.leader, p.replicas[0]);
            assert_eq!(p.isr, p.replicas);
        }
        let mut leaders: Vec<_> = topic.partitions.iter().map(|p| p.leader).collect();
        leaders.sort();
        leaders.dedup();
        assert_eq!(leaders.len(), 3, "leaders spread");

        let fenced = apply(
            &one,
            &MetadataCommand::FenceBroker { id: BrokerId(2) },
            CONTEXT,
        )
        .expect("fence");
        assert_eq!(fenced.brokers.len(), 2);
        assert_eq!(fenced.cluster.leader_elections_total, 1);
        assert_eq!(fenced.cluster.isr_shrinks_total, 3);
        for p in &fenced.topic("t").expect("exists").partitions {
            assert_ne!(p.leader, BrokerId(2));
            assert!(!p.isr.contains(&BrokerId(2)));
        }
        let moved = fenced
            .topic("t")
            .expect("exists")
            .partitions
            .iter()
            .zip(&topic.partitions)
            .find(|(_, before)| before.leader == BrokerId(2))
            .map(|(after, _)| after.leader_epoch)
            .expect("broker 2 led a partition");
        assert_eq!(moved, LeaderEpoch(1));
        let mut again = create("u", 1);
        if let MetadataCommand::CreateTopic { replication, .. } = &mut again {
            *replication = 3;
        }
        assert_eq!(
            apply(&fenced, &again, CONTEXT),
            Err(MetadataError::InvalidReplicationFactor {
                factor: 3,
                brokers: 2
            })
        );
    }

    // Goal: AlterPartition is accepted only from the current leader at its current epoch,
    // with an ISR of replicas containing the leader. Method: stale, foreign and valid cases.
    #[test]
    fn alter_partition_checks_leader_and_epoch() {
        let three = registered(&[1, 2, 3]);
        let mut command = create("t", 1);
        if let MetadataCommand::CreateTopic { replication, .. } = &mut command {
            *replication = 3;
        }
        let one = with_id(&command, &three);
        let p = one.topic("t").expect("created").partitions[0].clone();
        let alter =
            |leader: BrokerId, epoch: i32, isr: Vec<BrokerId>| MetadataCommand::AlterPartition {
                topic: "t".into(),
                partition: PartitionId(0),
                leader,
                leader_epoch: LeaderEpoch(epoch),
                partition_epoch: Some(PartitionEpoch(0)),
                isr,
            };
        let stale = apply(&one, &alter(p.leader, 5, vec![p.leader]), CONTEXT);
        assert!(
            matches!(stale, Err(MetadataError::StaleLeaderEpoch { .. })),
            "{stale:?}"
        );
        let other = *p
            .replicas
            .iter()
            .find(|b| **b != p.leader)
            .expect("a follower");
        let foreign = apply(&one, &alter(other, 0, vec![other]), CONTEXT);
        assert!(matches!(
            foreign,
            Err(MetadataError::StaleLeaderEpoch { .. })
        ));
        let without_leader = apply(&one, &alter(p.leader, 0, vec![other]), CONTEXT);
        assert!(matches!(
            without_leader,
            Err(MetadataError::InvalidReplicaAssignment(_))
        ));
        let shrunk = apply(&one, &alter(p.leader, 0, vec![p.leader]), CONTEXT).expect("shrink");
        assert_eq!(
            shrunk.topic("t").expect("t").partitions[0].isr,
            vec![p.leader]
        );
        assert_eq!(shrunk.cluster.isr_shrinks_total, 1);
        let mut grow = alter(p.leader, 0, p.replicas.clone());
        if let MetadataCommand::AlterPartition {
            partition_epoch, ..
        } = &mut grow
        {
            *partition_epoch = Some(PartitionEpoch(1));
        }
        let grown = apply(&shrunk, &grow, CONTEXT).expect("grow");
        assert_eq!(grown.topic("t").expect("t").partitions[0].isr, p.replicas);
        assert_eq!(grown.cluster.isr_expands_total, 1);
    }

    fn alter_from(
        p: &PartitionMeta,
        partition_epoch: Option<PartitionEpoch>,
        isr: Vec<BrokerId>,
    ) -> MetadataCommand {
        MetadataCommand::AlterPartition {
            topic: "t".into(),
            partition: PartitionId(0),
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch,
            isr,
        }
    }

    fn partition_of(snapshot: &MetadataSnapshot) -> PartitionMeta {
        snapshot.topic("t").expect("t").partitions[0].clone()
    }

    // Goal: an AlterPartition made from an older state of the partition (an older partition
    // epoch: delayed, or a copy the leader sent again) is refused (Kafka's
    // INVALID_UPDATE_VERSION) and changes nothing, in both orders: an expansion after a later
    // shrink (which would put back a member dropped for lagging), and a shrink after a later
    // expansion. Method: apply the leader's changes in one leader epoch, then stale copies.
    #[test]
    fn alter_partition_refuses_a_stale_partition_epoch() {
        let three = registered(&[1, 2, 3]);
        let mut command = create("t", 1);
        if let MetadataCommand::CreateTopic { replication, .. } = &mut command {
            *replication = 3;
        }
        let one = with_id(&command, &three);
        let p = partition_of(&one);
        assert_eq!(p.partition_epoch, PartitionEpoch(0));
        let (leader, f, g) = (p.replicas[0], p.replicas[1], p.replicas[2]);
        assert_eq!(p.leader, leader);

        let shrink = alter_from(&p, Some(PartitionEpoch(0)), vec![leader, f]);
        let shrunk = apply(&one, &shrink, CONTEXT).expect("shrink");
        assert_eq!(partition_of(&shrunk).partition_epoch, PartitionEpoch(1));
        let expand = alter_from(&p, Some(PartitionEpoch(1)), vec![leader, f, g]);
        let expanded = apply(&shrunk, &expand, CONTEXT).expect("expand");
        assert_eq!(partition_of(&expanded).isr, [leader, f, g]);
        assert_eq!(partition_of(&expanded).partition_epoch, PartitionEpoch(2));

        // The first shrink arrives again after the expansion.
        let stale = apply(&expanded, &shrink, CONTEXT);
        assert_eq!(
            stale,
            Err(MetadataError::StalePartitionEpoch {
                topic: "t".into(),
                partition: 0,
                epoch: 2
            })
        );
        // G lags again and is dropped; then the old expansion arrives again: G must stay out.
        let shrink_again = alter_from(&p, Some(PartitionEpoch(2)), vec![leader, f]);
        let dropped = apply(&expanded, &shrink_again, CONTEXT).expect("shrink again");
        let stale = apply(&dropped, &expand, CONTEXT);
        assert!(
            matches!(
                stale,
                Err(MetadataError::StalePartitionEpoch { epoch: 3, .. })
            ),
            "{stale:?}"
        );
        assert_eq!(partition_of(&dropped).isr, [leader, f], "G stays out");
        // A proposal without a partition epoch (older code) is refused as well.
        let unversioned = apply(&dropped, &alter_from(&p, None, vec![leader]), CONTEXT);
        assert!(
            matches!(unversioned, Err(MetadataError::StalePartitionEpoch { .. })),
            "{unversioned:?}"
        );

        // Every other change of the partition bumps the epoch too: a leader change by fencing.
        let fenced = apply(
            &dropped,
            &MetadataCommand::FenceBroker { id: leader },
            CONTEXT,
        )
        .expect("fence");
        let after = partition_of(&fenced);
        assert_ne!(after.leader, leader);
        assert_eq!(after.partition_epoch, PartitionEpoch(4));
        // A change elsewhere does not.
        let unrelated = apply(&fenced, &create("u", 1), CONTEXT).expect("create u");
        assert_eq!(partition_of(&unrelated).partition_epoch, PartitionEpoch(4));
    }

    /// Removes every `key` field from a JSON value: metadata as code before it wrote it.
    fn without_field(value: &mut serde_json::Value, key: &str) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove(key);
                map.values_mut().for_each(|v| without_field(v, key));
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| without_field(v, key)),
            _ => {}
        }
    }

    // Goal: metadata written before partition epochs (snapshots and raft entries without
    // `partition_epoch` and `metadata_version`) still loads, and applies exactly as before
    // (no epoch counted or checked, so every voter replays old entries alike) until every
    // registered broker runs version 1; from the entry that makes that so, epochs count and
    // are checked. Method: strip the new fields from JSON, reload, apply, re-register.
    #[test]
    fn metadata_before_partition_epochs_loads_and_upgrades() {
        let three = registered(&[1, 2, 3]);
        let mut command = create("t", 1);
        if let MetadataCommand::CreateTopic { replication, .. } = &mut command {
            *replication = 3;
        }
        let one = with_id(&command, &three);
        let mut json = serde_json::to_value(&one).expect("encode");
        without_field(&mut json, "partition_epoch");
        without_field(&mut json, "metadata_version");
        let old: MetadataSnapshot = serde_json::from_value(json).expect("old snapshot loads");
        assert_eq!(old.cluster.metadata_version(), 0);
        let p = partition_of(&old);
        assert_eq!(p.partition_epoch, PartitionEpoch(0));
        let old_entry = r#"{"AlterPartition":{"topic":"t","partition":0,"leader":LEADER,
            "leader_epoch":0,"isr":[LEADER]}}"#
            .replace("LEADER", &p.leader.0.to_string());
        let old_shrink: MetadataCommand = serde_json::from_str(&old_entry).expect("old entry");
        assert_eq!(old_shrink, alter_from(&p, None, vec![p.leader]));
        assert!(
            !serde_json::to_string(&old_shrink)
                .expect("encode")
                .contains("partition_epoch"),
            "an entry without an epoch encodes as before"
        );

        // Version 0: applied as before, the epoch neither checked nor counted.
        let shrunk = apply(&old, &old_shrink, CONTEXT).expect("old entry applies");
        assert_eq!(partition_of(&shrunk).isr, [p.leader]);
        assert_eq!(partition_of(&shrunk).partition_epoch, PartitionEpoch(0));
        let grown = apply(
            &shrunk,
            &alter_from(&p, Some(PartitionEpoch(7)), p.replicas.clone()),
            CONTEXT,
        )
        .expect("not checked at version 0");
        assert_eq!(partition_of(&grown).partition_epoch, PartitionEpoch(0));

        // Every broker re-registers with version 1 (as each upgraded broker's heartbeat does).
        let mut upgraded = grown;
        for registration in old.cluster.registrations.clone() {
            let registration = BrokerRegistration {
                metadata_version: crate::metadata::METADATA_VERSION,
                ..registration
            };
            assert_eq!(upgraded.cluster.metadata_version(), 0);
            upgraded = apply(
                &upgraded,
                &MetadataCommand::RegisterBroker { registration },
                CONTEXT,
            )
            .expect("register");
        }
        assert_eq!(upgraded.cluster.metadata_version(), 1);
        let stale = apply(&upgraded, &old_shrink, CONTEXT);
        assert!(
            matches!(
                stale,
                Err(MetadataError::StalePartitionEpoch { epoch: 0, .. })
            ),
            "{stale:?}"
        );
        let shrink = alter_from(&p, Some(PartitionEpoch(0)), vec![p.leader]);
        let counted = apply(&upgraded, &shrink, CONTEXT).expect("current epoch");
        assert_eq!(partition_of(&counted).partition_epoch, PartitionEpoch(1));
    }

    // Goal: a reassignment adds the new replicas first, completes only once they are in the
    // ISR (moving leadership off a leaving leader with a new epoch), and refuses brokers that
    // are not live, duplicates, and a different target while one is in progress.
    #[test]
    fn reassignment_adds_then_moves() {
        let four = registered(&[1, 2, 3, 4]);
        let mut command = create("t", 1);
        if let MetadataCommand::CreateTopic { replication, .. } = &mut command {
            *replication = 2;
        }
        let one = with_id(&command, &four);
        let p = one.topic("t").expect("created").partitions[0].clone();
        let leaving = p.leader;
        let kept = p.replicas[1];
        let newcomer = *[1, 2, 3, 4]
            .iter()
            .map(|b| BrokerId(*b))
            .collect::<Vec<_>>()
            .iter()
            .find(|b| !p.replicas.contains(b))
            .expect("a broker without a replica");
        let reassign = |replicas: Vec<BrokerId>| MetadataCommand::ReassignPartition {
            topic: "t".into(),
            partition: PartitionId(0),
            replicas,
        };
        for bad in [vec![], vec![kept, kept], vec![kept, BrokerId(9)]] {
            let refused = apply(&one, &reassign(bad.clone()), CONTEXT);
            assert!(
                matches!(refused, Err(MetadataError::InvalidReplicaAssignment(_))),
                "{bad:?}: {refused:?}"
            );
        }
        let target = vec![kept, newcomer];
        let started = apply(&one, &reassign(target.clone()), CONTEXT).expect("reassign");
        let during = &started.topic("t").expect("t").partitions[0];
        assert_eq!(
            during.replicas,
            vec![leaving, kept, newcomer],
            "added first"
        );
        assert_eq!(during.isr, p.isr, "the ISR grows only by catching up");
        assert_eq!(during.leader, leaving);
        assert_eq!(during.target_replicas.as_ref(), Some(&target));
        let other = apply(&started, &reassign(vec![kept]), CONTEXT);
        assert!(matches!(other, Err(MetadataError::Refused(_))), "{other:?}");

        // The leader takes the caught-up newcomer into the ISR: the move completes.
        let caught_up = MetadataCommand::AlterPartition {
            topic: "t".into(),
            partition: PartitionId(0),
            leader: leaving,
            leader_epoch: p.leader_epoch,
            partition_epoch: Some(during.partition_epoch),
            isr: vec![leaving, kept, newcomer],
        };
        let done = apply(&started, &caught_up, CONTEXT).expect("expand");
        let after = &done.topic("t").expect("t").partitions[0];
        assert_eq!(after.replicas, target);
        assert_eq!(after.isr, target);
        assert_eq!(after.leader, kept, "the leaving leader handed over");
        assert_eq!(after.leader_epoch, LeaderEpoch(p.leader_epoch.0 + 1));
        assert_eq!(after.target_replicas, None);
        assert_eq!(
            done.cluster.leader_elections_total,
            started.cluster.leader_elections_total + 1
        );
    }
}
