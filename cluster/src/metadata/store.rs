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
    MetadataCommand, MetadataError, MetadataSnapshot, PartitionMeta, TopicId, TopicMeta,
    validate_topic_name,
};
use crate::config::TopicConfig;
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

/// Validates `command` against `current` and returns the next snapshot (revision + 1).
pub fn apply(
    current: &MetadataSnapshot,
    command: &MetadataCommand,
    context: PlacementContext,
) -> Result<MetadataSnapshot, MetadataError> {
    let mut next = current.clone();
    next.revision = Revision(current.revision.0 + 1);
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
            let brokers = current.brokers.len().max(1);
            if *replication < 1 || *replication as usize > brokers {
                return Err(MetadataError::InvalidReplicationFactor {
                    factor: *replication,
                    brokers,
                });
            }
            let config = TopicConfig::resolve(overrides)?;
            let id = TopicId(uuid::Uuid::new_v4());
            let name: Arc<str> = Arc::from(name.as_str());
            let partitions = (0..*partitions)
                .map(|p| new_partition(id, PartitionId(p), context))
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
            let topic = next
                .topics
                .get_mut(name.as_str())
                .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
            let have = topic.partitions.len() as i32;
            if *total <= have || *total > TOPIC_PARTITIONS_MAX {
                return Err(MetadataError::InvalidPartitions(*total));
            }
            let id = topic.id;
            topic
                .partitions
                .extend((have..*total).map(|p| new_partition(id, PartitionId(p), context)));
        }
    }
    assert!(
        next.revision > current.revision,
        "metadata revision must increase"
    );
    Ok(next)
}

fn new_partition(topic: TopicId, id: PartitionId, context: PlacementContext) -> PartitionMeta {
    PartitionMeta {
        id,
        shard: shard_for(topic, id, context.shard_count),
        leader: context.node,
        leader_epoch: LeaderEpoch(0),
        replicas: vec![context.node],
        isr: vec![context.node],
    }
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
}

/// The metadata file's name inside its directory.
const METADATA_FILE: &str = "metadata.json";

impl FileMetadataStore {
    /// Opens (or initialises) the store in `dir`, returning the persisted snapshot. Runs before
    /// the shards start, so blocking file I/O is fine here.
    pub fn open(dir: &Path) -> Result<(FileMetadataStore, MetadataSnapshot), MetadataError> {
        std::fs::create_dir_all(dir).map_err(|e| storage_error(dir, &e))?;
        let path = dir.join(METADATA_FILE);
        let store = FileMetadataStore { path };
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
                Ok((store, snapshot))
            }
            Err(error) => Err(storage_error(&store.path, &error)),
        }
    }
}

impl FileMetadataStore {
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
    use std::io::Write;
    // Brokers are runtime facts, not persisted state.
    let persisted = MetadataSnapshot {
        brokers: Vec::new(),
        ..snapshot.clone()
    };
    let bytes = serde_json::to_vec_pretty(&persisted)
        .map_err(|e| MetadataError::Storage(format!("cannot encode metadata: {e}")))?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| storage_error(&tmp, &e))?;
    file.write_all(&bytes)
        .map_err(|e| storage_error(&tmp, &e))?;
    file.sync_all().map_err(|e| storage_error(&tmp, &e))?;
    std::fs::rename(&tmp, path).map_err(|e| storage_error(path, &e))?;
    let dir = path.parent().expect("metadata file has a parent directory");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| storage_error(dir, &e))?;
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
}
