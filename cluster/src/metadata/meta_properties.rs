//! `DATA/meta.properties`: which cluster and node a data directory belongs to (Kafka's file
//! of the same name and format: `version=1`, `cluster.id=...`, `node.id=...`).
//!
//! The metadata names the cluster (`MetadataSnapshot::cluster_id`); the data directory's
//! partitions were made under it. Losing the metadata file (or starting with another
//! directory's) must not make the broker create topics afresh over that data: a new topic id
//! makes the partition directory of the same name look like a deleted topic's, and opening
//! the partition removes it (`crate::partition`'s `claim_dir`). So at start the broker reads
//! this file ([`DataDirIdentity::read`]) and refuses to start when it names another cluster
//! or node than the one the broker starts as, or when the metadata is missing while the
//! directory holds data ([`DataDirIdentity::check_new_metadata`]); otherwise
//! [`DataDirIdentity::settle`] writes the file when it is absent (a new directory, or one
//! from before the file existed). A refusal touches nothing in the data directory.
//!
//! Main types: [`MetaProperties`], [`DataDirIdentity`], [`MetaPropertiesError`].
//! Blocking file I/O: start-up only, before the shards run.
//! Must not depend on: the network layer.

use std::path::{Path, PathBuf};

use sluice_engine::BrokerId;

use super::store::write_file_atomically;

/// The file's name in the data directory.
pub const META_PROPERTIES_FILE: &str = "meta.properties";

/// The format version this code reads and writes (Kafka's `version=1`, the KRaft layout).
const VERSION: u32 = 1;

/// Files larger than this are not a meta.properties (the real one is about 100 bytes).
const FILE_BYTES_MAX: u64 = 64 * 1024;

/// The identity a data directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaProperties {
    /// Invariant: non-empty, without whitespace or line breaks (one `key=value` line).
    cluster_id: String,
    node: BrokerId,
}

/// Why the broker must not start on this data directory, or the file could not be handled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaPropertiesError {
    /// Reading or writing the file (or listing the data directory) failed.
    #[error("{}: {source}", path.display())]
    Storage {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file exists but is not a meta.properties this code understands.
    #[error(
        "{} is not a valid meta.properties ({reason}); restore it, or move the data \
         directory away",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file names another cluster than the metadata the broker started with.
    #[error(
        "invalid cluster.id in {}: the data directory belongs to cluster {found}, but this \
         broker starts as cluster {expected} ({origin}); restore the metadata of cluster \
         {found}, or move the data directory away (deleting {} hands the directory to \
         cluster {expected}, which removes the partitions it does not know)",
        path.display(),
        path.display()
    )]
    ClusterMismatch {
        /// The file.
        path: PathBuf,
        /// The cluster id in the file.
        found: String,
        /// The cluster id the broker starts with.
        expected: String,
        /// Where the expected id comes from (the metadata file, or the seeds).
        origin: String,
    },
    /// The file names another node than `--node-id`.
    #[error(
        "invalid node.id in {}: the data directory belongs to node {}, but this broker is \
         --node-id {}; start it with --node-id {}, or move the data directory away",
        path.display(),
        found.0,
        expected.0,
        found.0
    )]
    NodeMismatch {
        /// The file.
        path: PathBuf,
        /// The node id in the file.
        found: BrokerId,
        /// `--node-id`.
        expected: BrokerId,
    },
    /// The metadata file is missing but the data directory belongs to a cluster: starting
    /// would create a new cluster over its data.
    #[error(
        "{} is missing, but {} says the data directory belongs to cluster {cluster_id}: a \
         start would create a new cluster and remove the existing partitions; restore {}, or \
         move the data directory away to start a new cluster in an empty one",
        metadata.display(),
        path.display(),
        metadata.display()
    )]
    MetadataMissing {
        /// meta.properties.
        path: PathBuf,
        /// The cluster id it names.
        cluster_id: String,
        /// The missing metadata file.
        metadata: PathBuf,
    },
    /// The data directory holds partition directories but neither the metadata file nor
    /// meta.properties: whose data it is cannot be told.
    #[error(
        "{} holds {count} partition directories ({first}, ...) but neither {} nor {}: a \
         start would create a new cluster and remove them; restore {}, or move the data \
         directory away to start a new cluster in an empty one",
        data_dir.display(),
        metadata.display(),
        META_PROPERTIES_FILE,
        metadata.display()
    )]
    Unidentified {
        /// The data directory.
        data_dir: PathBuf,
        /// How many partition directories it holds.
        count: usize,
        /// The first of them.
        first: String,
        /// The missing metadata file.
        metadata: PathBuf,
    },
}

/// What [`DataDirIdentity::settle`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The file names this cluster and node.
    Matched,
    /// There was no file; it now names this cluster and node.
    Written,
}

impl MetaProperties {
    /// The identity of `node` in cluster `cluster_id`.
    pub fn new(cluster_id: &str, node: BrokerId) -> MetaProperties {
        assert!(!cluster_id.is_empty(), "an empty cluster id");
        assert!(
            !cluster_id.chars().any(char::is_whitespace),
            "cluster id {cluster_id:?} has whitespace"
        );
        MetaProperties {
            cluster_id: cluster_id.to_owned(),
            node,
        }
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The node id.
    pub fn node(&self) -> BrokerId {
        self.node
    }

    /// Parses the file's text: `key=value` lines (spaces around either trimmed), blank lines
    /// and `#`/`!` comments skipped, unknown keys ignored (Kafka adds `directory.id`).
    /// `version` must be 1 and `cluster.id` and `node.id` present.
    pub fn parse(text: &str) -> Result<MetaProperties, String> {
        let mut version = None;
        let mut cluster_id = None;
        let mut node = None;
        // Bounded by the file size (FILE_BYTES_MAX).
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {line:?} is not key=value"));
            };
            let value = value.trim();
            match key.trim() {
                "version" => version = Some(value),
                "cluster.id" => cluster_id = Some(value),
                "node.id" => node = Some(value),
                _ => {}
            }
        }
        let version = version.ok_or("no version")?;
        if version.parse::<u32>() != Ok(VERSION) {
            return Err(format!("version {version}, this broker reads {VERSION}"));
        }
        let cluster_id = cluster_id.ok_or("no cluster.id")?;
        if cluster_id.is_empty() || cluster_id.chars().any(char::is_whitespace) {
            return Err(format!("cluster.id {cluster_id:?} is not an id"));
        }
        let node = node.ok_or("no node.id")?;
        let node = node
            .parse::<i32>()
            .map_err(|_| format!("node.id {node:?} is not a number"))?;
        Ok(MetaProperties::new(cluster_id, BrokerId(node)))
    }

    /// The file's text, in Kafka's layout (a comment, then the keys sorted).
    pub fn render(&self) -> String {
        format!(
            "#\n#Written by sluice\ncluster.id={}\nnode.id={}\nversion={VERSION}\n",
            self.cluster_id, self.node.0
        )
    }
}

/// A data directory's meta.properties as found at start, before anything was written.
#[derive(Debug)]
pub struct DataDirIdentity {
    /// `DATA/meta.properties`.
    path: PathBuf,
    /// Its content; `None` when there is no file.
    found: Option<MetaProperties>,
}

impl DataDirIdentity {
    /// Reads `data_dir`'s meta.properties, if any.
    pub fn read(data_dir: &Path) -> Result<DataDirIdentity, MetaPropertiesError> {
        let path = data_dir.join(META_PROPERTIES_FILE);
        let storage = |source| MetaPropertiesError::Storage {
            path: path.clone(),
            source,
        };
        let len = match std::fs::metadata(&path) {
            Ok(metadata) => metadata.len(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DataDirIdentity { path, found: None });
            }
            Err(error) => return Err(storage(error)),
        };
        let corrupt = |reason: String| MetaPropertiesError::Corrupt {
            path: path.clone(),
            reason,
        };
        if len > FILE_BYTES_MAX {
            return Err(corrupt(format!("{len} bytes")));
        }
        let bytes = std::fs::read(&path).map_err(storage)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| corrupt("not UTF-8".into()))?;
        let found = MetaProperties::parse(text).map_err(corrupt)?;
        Ok(DataDirIdentity {
            path,
            found: Some(found),
        })
    }

    /// What the file names; `None` when there is none.
    pub fn found(&self) -> Option<&MetaProperties> {
        self.found.as_ref()
    }

    /// Called when the metadata file `metadata` is missing, before it is created: refuses
    /// when the data directory belongs to a cluster (this file exists) or holds partition
    /// directories (`partition_dirs`, from `crate::partition::partition_dirs`). A data
    /// directory without either is new, and the broker may start a new cluster in it.
    pub fn check_new_metadata(
        &self,
        metadata: &Path,
        partition_dirs: &[String],
    ) -> Result<(), MetaPropertiesError> {
        if let Some(found) = &self.found {
            return Err(MetaPropertiesError::MetadataMissing {
                path: self.path.clone(),
                cluster_id: found.cluster_id.clone(),
                metadata: metadata.to_owned(),
            });
        }
        if let Some(first) = partition_dirs.first() {
            let data_dir = self.path.parent().expect("meta.properties has a parent");
            return Err(MetaPropertiesError::Unidentified {
                data_dir: data_dir.to_owned(),
                count: partition_dirs.len(),
                first: first.clone(),
                metadata: metadata.to_owned(),
            });
        }
        Ok(())
    }

    /// Checks the file against `expected`, the cluster (whose id comes from `origin`, for
    /// the error) and node the broker starts as; writes it (atomically) when there is none.
    /// A mismatch writes nothing.
    pub fn settle(
        &self,
        expected: &MetaProperties,
        origin: &str,
    ) -> Result<Settled, MetaPropertiesError> {
        let Some(found) = &self.found else {
            write_file_atomically(&self.path, expected.render().as_bytes())
                .map_err(|(path, source)| MetaPropertiesError::Storage { path, source })?;
            return Ok(Settled::Written);
        };
        if found.cluster_id != expected.cluster_id {
            return Err(MetaPropertiesError::ClusterMismatch {
                path: self.path.clone(),
                found: found.cluster_id.clone(),
                expected: expected.cluster_id.clone(),
                origin: origin.to_owned(),
            });
        }
        if found.node != expected.node {
            return Err(MetaPropertiesError::NodeMismatch {
                path: self.path.clone(),
                found: found.node,
                expected: expected.node,
            });
        }
        Ok(Settled::Matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(cluster_id: &str, node: i32) -> MetaProperties {
        MetaProperties::new(cluster_id, BrokerId(node))
    }

    #[test]
    fn parse_reads_kafkas_file_and_rejects_broken_ones() {
        // A file as Kafka 3.x writes it (comment, directory.id, sorted keys).
        let kafka = "#\n#Tue Dec 08 03:49:58 UTC 2026\ncluster.id=MkU3OEVBNTcwNTJENDM2Qk\n\
                     directory.id=J8aAPcfLQt2bqs1JT_rMgQ\nnode.id=3\nversion=1\n";
        assert_eq!(
            MetaProperties::parse(kafka),
            Ok(props("MkU3OEVBNTcwNTJENDM2Qk", 3))
        );
        let spaced = "! comment\n\n version = 1 \ncluster.id = abc\r\nnode.id=-1\n";
        assert_eq!(MetaProperties::parse(spaced), Ok(props("abc", -1)));
        let written = props("0f1e2d3c4b5a69788796a5b4c3d2e1f0", 7);
        assert_eq!(MetaProperties::parse(&written.render()), Ok(written));

        for (text, reason) in [
            ("cluster.id=a\nnode.id=1\n", "no version"),
            ("version=0\ncluster.id=a\nnode.id=1\n", "version 0"),
            ("version=1\nnode.id=1\n", "no cluster.id"),
            ("version=1\ncluster.id=\nnode.id=1\n", "is not an id"),
            ("version=1\ncluster.id=a\n", "no node.id"),
            ("version=1\ncluster.id=a\nnode.id=one\n", "not a number"),
            ("version=1\ncluster.id a\nnode.id=1\n", "not key=value"),
        ] {
            let error = MetaProperties::parse(text).expect_err(text);
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_missing_file_is_written_and_then_matches() {
        let dir = tempfile::tempdir().expect("temp dir");
        let identity = DataDirIdentity::read(dir.path()).expect("read");
        assert_eq!(identity.found(), None);
        let me = props("c1", 1);
        assert_eq!(
            identity.settle(&me, "test").expect("write"),
            Settled::Written
        );
        let text = std::fs::read_to_string(dir.path().join(META_PROPERTIES_FILE)).expect("file");
        assert!(
            text.contains("cluster.id=c1\nnode.id=1\nversion=1\n"),
            "{text}"
        );
        assert!(!dir.path().join("meta.properties.tmp").exists());

        let again = DataDirIdentity::read(dir.path()).expect("read again");
        assert_eq!(again.found(), Some(&me));
        assert_eq!(again.settle(&me, "test").expect("match"), Settled::Matched);
        again
            .check_new_metadata(Path::new("/m"), &[])
            .expect_err("metadata missing under a named cluster");
    }

    #[test]
    fn a_mismatch_is_refused_and_names_both_ids() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(META_PROPERTIES_FILE);
        std::fs::write(&path, props("old", 1).render()).expect("write");
        let before = std::fs::read(&path).expect("read");
        let identity = DataDirIdentity::read(dir.path()).expect("read");

        let error = identity
            .settle(&props("new", 1), "DATA/__metadata/metadata.json")
            .expect_err("another cluster");
        assert!(
            matches!(error, MetaPropertiesError::ClusterMismatch { .. }),
            "{error}"
        );
        let message = error.to_string();
        for needle in [
            "cluster old",
            "cluster new",
            "metadata.json",
            "meta.properties",
        ] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
        let error = identity
            .settle(&props("old", 2), "x")
            .expect_err("another node");
        let message = error.to_string();
        assert!(
            message.contains("node 1") && message.contains("--node-id 2"),
            "{message}"
        );
        assert_eq!(
            std::fs::read(&path).expect("read"),
            before,
            "a refusal writes nothing"
        );

        let error = identity
            .check_new_metadata(Path::new("/d/__metadata/metadata.json"), &[])
            .expect_err("metadata lost");
        let message = error.to_string();
        assert!(
            message.contains("metadata.json is missing") && message.contains("cluster old"),
            "{message}"
        );
    }

    #[test]
    fn new_metadata_over_partitions_without_the_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let identity = DataDirIdentity::read(dir.path()).expect("read");
        let metadata = dir.path().join("__metadata/metadata.json");
        identity
            .check_new_metadata(&metadata, &[])
            .expect("an empty directory starts a new cluster");
        let partitions = ["__consumer_offsets-0".to_owned(), "t-0".to_owned()];
        let message = identity
            .check_new_metadata(&metadata, &partitions)
            .expect_err("data of an unknown cluster")
            .to_string();
        assert!(
            message.contains("2 partition directories (__consumer_offsets-0, ...)"),
            "{message}"
        );
        assert!(!dir.path().join(META_PROPERTIES_FILE).exists());
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(META_PROPERTIES_FILE), b"version=1\n").expect("write");
        let error = DataDirIdentity::read(dir.path()).expect_err("no ids");
        assert!(
            matches!(error, MetaPropertiesError::Corrupt { .. }),
            "{error}"
        );
    }
}
