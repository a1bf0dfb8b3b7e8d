//! [`GroupConsumer`]: a member of a native consumer group. The broker assigns the partitions
//! of the subscribed topics among the group's members (net/PROTOCOL.md, "Consumer groups");
//! this type follows the assignment, reads its partitions with a [`Consumer`], and commits
//! what the application has processed.
//!
//! Everything happens inside [`GroupConsumer::poll`], as in Kafka's consumer, so the
//! application is between two batches whenever the assignment changes:
//!
//! - Heartbeats go out at the interval the broker asks for. The answer lists the partitions
//!   the member may own. A partition that is missing is revoked at once: what was processed
//!   of it is committed, its fetcher and buffered records are dropped, and the next
//!   heartbeat (sent right away) no longer reports it, which lets the broker give it to
//!   another member. A new partition starts at the group's committed offset, or at
//!   `ConsumerConfig::start` when there is none.
//! - "Processed" means returned by an earlier `poll`: the records a `poll` returns are
//!   committed by a later `poll` (every `auto_commit_interval`), by [`GroupConsumer::commit`],
//!   on revocation, and by [`GroupConsumer::close`]. A crash therefore re-delivers at most
//!   what was processed since the last commit, never skips a record (at-least-once).
//! - A member the broker no longer knows (its session expired, or it was fenced) drops every
//!   partition without committing (another member may own them already) and joins again.
//!   So does a member whose heartbeats have failed for a whole session timeout: the broker
//!   has expired it by then, so it must not keep reading.
//!
//! Shard-local (`!Send`); call `poll`, `commit` and `close` from one task. Must not depend on
//! storage internals.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_engine::rt::clock;

use super::consumer::{Consumer, ConsumerConfig, ConsumerRecord, Seek};
use super::error::{ClientError, GroupConsumerError};
use super::handle::{Client, unexpected};
use crate::limits::{GROUP_AUTO_COMMIT_INTERVAL_MS_DEFAULT, GROUP_SESSION_TIMEOUT_MS_DEFAULT};
use crate::native::messages::{ErrorCode, OffsetCommit, Request, Response, TopicPartitions};

/// Settings of a [`GroupConsumer`].
#[derive(Clone, Debug)]
pub struct GroupConsumerConfig {
    /// The group to join.
    pub group_id: String,
    /// Topics to consume; the broker assigns their partitions among the group's members.
    pub topics: Vec<String>,
    /// Client id, shown by `sluice group describe`.
    pub client_id: String,
    /// Without a heartbeat for this long the broker gives the member's partitions to others.
    /// Must lie within the broker's `--group-min/max-session-timeout-ms`.
    pub session_timeout: Duration,
    /// Commit processed offsets this often from `poll`; `None` commits only on `commit`,
    /// revocation and `close`.
    pub auto_commit_interval: Option<Duration>,
    /// How partitions are read. Its `start` applies to partitions the group has no committed
    /// offset for.
    pub consumer: ConsumerConfig,
}

impl GroupConsumerConfig {
    /// Defaults for `group_id` consuming `topics`.
    pub fn new<S: Into<String>>(
        group_id: impl Into<String>,
        topics: impl IntoIterator<Item = S>,
    ) -> GroupConsumerConfig {
        GroupConsumerConfig {
            group_id: group_id.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            client_id: "sluice".to_owned(),
            session_timeout: Duration::from_millis(GROUP_SESSION_TIMEOUT_MS_DEFAULT),
            auto_commit_interval: Some(Duration::from_millis(
                GROUP_AUTO_COMMIT_INTERVAL_MS_DEFAULT,
            )),
            consumer: ConsumerConfig::default(),
        }
    }

    fn validate(&self) -> Result<(), GroupConsumerError> {
        let invalid = |reason: &str| {
            Err(GroupConsumerError::InvalidConfig {
                reason: reason.to_owned(),
            })
        };
        if self.group_id.is_empty() {
            return invalid("the group id is empty");
        }
        if self.topics.is_empty() {
            return invalid("no topic to subscribe to");
        }
        if self.session_timeout.is_zero()
            || u32::try_from(self.session_timeout.as_millis()).is_err()
        {
            return invalid("the session timeout must be positive and below 2^32 ms");
        }
        if self.auto_commit_interval.is_some_and(|i| i.is_zero()) {
            return invalid("the auto-commit interval must be positive");
        }
        Ok(())
    }
}

type Key = (Arc<str>, i32);

struct Membership {
    /// Empty until the first answer; kept across rejoins.
    member_id: String,
    /// 0 while not a member (joining).
    epoch: i32,
    /// Partitions being read. Invariant: the consumer's assignment.
    owned: BTreeSet<Key>,
    /// Per owned partition, the offset after the last record `poll` returned.
    processed: BTreeMap<Key, i64>,
    /// Per owned partition, the last offset committed (or found committed).
    committed: BTreeMap<Key, i64>,
    next_heartbeat: Instant,
    /// When the last heartbeat that got an answer was sent.
    last_heartbeat_ok: Option<Instant>,
    next_commit: Instant,
    closed: bool,
}

/// A native consumer group member; see the [module docs](self).
pub struct GroupConsumer {
    client: Client,
    consumer: Consumer,
    config: GroupConsumerConfig,
    /// Never borrowed across an `.await`.
    state: RefCell<Membership>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("GroupConsumer")
            .field("group_id", &self.config.group_id)
            .field("member_id", &state.member_id)
            .field("epoch", &state.epoch)
            .field("owned", &state.owned)
            .finish_non_exhaustive()
    }
}

impl GroupConsumer {
    /// A member of `config.group_id`; it joins on the first `poll`. Must be called on the
    /// client's executor.
    pub fn new(
        client: &Client,
        config: GroupConsumerConfig,
    ) -> Result<GroupConsumer, GroupConsumerError> {
        config.validate()?;
        let now = clock::now();
        Ok(GroupConsumer {
            client: client.clone(),
            consumer: Consumer::new(client, config.consumer.clone()),
            state: RefCell::new(Membership {
                member_id: String::new(),
                epoch: 0,
                owned: BTreeSet::new(),
                processed: BTreeMap::new(),
                committed: BTreeMap::new(),
                next_heartbeat: now,
                last_heartbeat_ok: None,
                next_commit: now + config.auto_commit_interval.unwrap_or_default(),
                closed: false,
            }),
            config,
        })
    }

    /// The member id (empty before the first answer) and member epoch (0 while joining).
    pub fn member(&self) -> (String, i32) {
        let state = self.state.borrow();
        (state.member_id.clone(), state.epoch)
    }

    /// The partitions this member reads now, sorted.
    pub fn assignment(&self) -> Vec<(Arc<str>, i32)> {
        self.state.borrow().owned.iter().cloned().collect()
    }

    /// Returns records of the owned partitions, waiting up to `timeout` for some; keeps the
    /// membership alive and follows the assignment meanwhile. Records returned by earlier
    /// calls count as processed. Transient failures (a broker restarting) are retried
    /// within; what remains is returned.
    pub async fn poll(&self, timeout: Duration) -> Result<Vec<ConsumerRecord>, GroupConsumerError> {
        let deadline = clock::now() + timeout;
        loop {
            if self.state.borrow().closed {
                return Err(GroupConsumerError::Closed);
            }
            self.maintain().await?;
            let wake = {
                let state = self.state.borrow();
                let mut wake = deadline.min(state.next_heartbeat);
                if self.config.auto_commit_interval.is_some() {
                    wake = wake.min(state.next_commit);
                }
                wake
            };
            let wait = wake.saturating_duration_since(clock::now());
            match self.consumer.poll(wait).await {
                Ok(records) if !records.is_empty() => {
                    let mut state = self.state.borrow_mut();
                    for record in &records {
                        let key = (Arc::clone(&record.topic), record.partition);
                        state.processed.insert(key, record.offset + 1);
                    }
                    return Ok(records);
                }
                Ok(_) => {}
                Err(error) if error.client_error().is_some_and(ClientError::is_retriable) => {
                    tracing::debug!(%error, "fetch failed; the consumer retries");
                }
                Err(error) => return Err(error.into()),
            }
            if clock::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    /// Marks `topic`/`partition` processed up to `next_offset` (exclusive) instead of up to
    /// the last record `poll` returned, for an application that stops inside a batch: the
    /// next commit (`close` included) commits `next_offset`, and nothing after it is lost.
    pub fn processed_up_to(&self, topic: &str, partition: i32, next_offset: i64) {
        let mut state = self.state.borrow_mut();
        let key = (Arc::<str>::from(topic), partition);
        if state.owned.contains(&key) {
            state.processed.insert(key, next_offset);
        }
    }

    /// Commits the offsets after every record returned so far.
    pub async fn commit(&self) -> Result<(), GroupConsumerError> {
        if self.state.borrow().closed {
            return Err(GroupConsumerError::Closed);
        }
        self.commit_processed(None).await
    }

    /// Commits what was processed, leaves the group (its partitions go to the other members
    /// at once) and stops reading. Returns the commit's failure, if any; the member leaves
    /// either way.
    pub async fn close(&self) -> Result<(), GroupConsumerError> {
        if self.state.borrow().closed {
            return Ok(());
        }
        let committed = self.commit_processed(None).await;
        let leave = {
            let state = self.state.borrow();
            (state.epoch > 0).then(|| Request::GroupHeartbeat {
                group_id: self.config.group_id.clone(),
                member_id: state.member_id.clone(),
                member_epoch: -1,
                client_id: self.config.client_id.clone(),
                session_timeout_ms: self.session_timeout_ms(),
                topics: self.config.topics.clone(),
                owned: Vec::new(),
            })
        };
        if let Some(leave) = leave
            && let Err(error) = self.client.control_request(&leave).await
        {
            tracing::warn!(group = %self.config.group_id, %error, "cannot leave the group");
        }
        self.consumer.assign(&[]);
        let mut state = self.state.borrow_mut();
        state.closed = true;
        state.owned.clear();
        state.epoch = 0;
        committed
    }

    fn session_timeout_ms(&self) -> u32 {
        u32::try_from(self.config.session_timeout.as_millis()).expect("validated in new")
    }

    /// Heartbeats and commits when due.
    async fn maintain(&self) -> Result<(), GroupConsumerError> {
        let now = clock::now();
        let (heartbeat_due, commit_due, session_lost) = {
            let state = self.state.borrow();
            let lost = state.epoch > 0
                && state.last_heartbeat_ok.is_some_and(|ok| {
                    now.saturating_duration_since(ok) >= self.config.session_timeout
                });
            let commit_due = self.config.auto_commit_interval.is_some() && now >= state.next_commit;
            (now >= state.next_heartbeat, commit_due, lost)
        };
        if session_lost {
            tracing::warn!(
                group = %self.config.group_id,
                "no heartbeat answered for a session timeout; giving up the partitions"
            );
            self.lose_all();
        }
        if heartbeat_due {
            self.heartbeat().await?;
        }
        if commit_due {
            let interval = self.config.auto_commit_interval.unwrap_or_default();
            self.state.borrow_mut().next_commit = clock::now() + interval;
            if let Err(error) = self.commit_processed(None).await {
                tracing::warn!(%error, "auto-commit failed; retrying at the next interval");
            }
        }
        Ok(())
    }

    /// Drops every partition without committing (the member is no longer in the group, so
    /// others may own them) and rejoins on the next heartbeat, keeping its member id.
    fn lose_all(&self) {
        self.consumer.assign(&[]);
        let mut state = self.state.borrow_mut();
        state.owned.clear();
        state.processed.clear();
        state.committed.clear();
        state.epoch = 0;
        state.last_heartbeat_ok = None;
        state.next_heartbeat = clock::now();
    }

    async fn heartbeat(&self) -> Result<(), GroupConsumerError> {
        let request = {
            let state = self.state.borrow();
            Request::GroupHeartbeat {
                group_id: self.config.group_id.clone(),
                member_id: state.member_id.clone(),
                member_epoch: state.epoch,
                client_id: self.config.client_id.clone(),
                session_timeout_ms: self.session_timeout_ms(),
                topics: self.config.topics.clone(),
                owned: TopicPartitions::group(state.owned.iter().map(|(t, p)| (&**t, *p))),
            }
        };
        let sent = clock::now();
        let failed = |source: ClientError| GroupConsumerError::Group {
            group: self.config.group_id.clone(),
            source,
        };
        match self.client.control_request(&request).await {
            Ok(frame) => match frame.header {
                Response::GroupHeartbeat {
                    member_id,
                    member_epoch,
                    heartbeat_interval_ms,
                    assignment,
                } => {
                    {
                        let mut state = self.state.borrow_mut();
                        state.member_id = member_id;
                        state.epoch = member_epoch;
                        state.last_heartbeat_ok = Some(sent);
                        let interval = Duration::from_millis(u64::from(heartbeat_interval_ms));
                        state.next_heartbeat = sent + interval.max(Duration::from_millis(10));
                    }
                    self.reconcile(&assignment).await
                }
                other => Err(failed(unexpected("group heartbeat", &other))),
            },
            Err(error) => match error.code() {
                Some(ErrorCode::UnknownMemberId | ErrorCode::FencedMemberEpoch) => {
                    tracing::info!(
                        group = %self.config.group_id, %error,
                        "no longer a member; giving up the partitions and rejoining"
                    );
                    self.lose_all();
                    Ok(())
                }
                _ if error.is_retriable() || error.is_connection_failure() => {
                    tracing::debug!(group = %self.config.group_id, %error, "heartbeat failed");
                    let backoff = self.client.config().retry_backoff_max;
                    self.state.borrow_mut().next_heartbeat = clock::now() + backoff;
                    Ok(())
                }
                _ => Err(failed(error)),
            },
        }
    }

    /// Follows an assignment: revokes what is missing from it (commit first), then starts
    /// reading what is new, from the committed offsets.
    async fn reconcile(&self, assignment: &[TopicPartitions]) -> Result<(), GroupConsumerError> {
        let target: BTreeSet<Key> = TopicPartitions::pairs(assignment)
            .map(|(t, p)| (Arc::<str>::from(t), p))
            .collect();
        let (revoked, added): (BTreeSet<Key>, Vec<Key>) = {
            let state = self.state.borrow();
            (
                state.owned.difference(&target).cloned().collect(),
                target.difference(&state.owned).cloned().collect(),
            )
        };
        if !revoked.is_empty() {
            if let Err(error) = self.commit_processed(Some(&revoked)).await {
                // The next owner re-reads from the last commit: duplicates, not loss.
                tracing::warn!(%error, "cannot commit revoked partitions");
            }
            let owned: Vec<Key> = {
                let mut state = self.state.borrow_mut();
                for key in &revoked {
                    state.owned.remove(key);
                    state.processed.remove(key);
                    state.committed.remove(key);
                }
                // Report the revocation at once, so the new owner need not wait.
                state.next_heartbeat = clock::now();
                state.owned.iter().cloned().collect()
            };
            let owned: Vec<(&str, i32)> = owned.iter().map(|(t, p)| (&**t, *p)).collect();
            self.consumer.assign(&owned);
            tracing::debug!(group = %self.config.group_id, ?revoked, "partitions revoked");
        }
        if added.is_empty() {
            return Ok(());
        }
        let wanted: Vec<(&str, i32)> = added.iter().map(|(t, p)| (&**t, *p)).collect();
        let committed = match self
            .client
            .fetch_offsets(&self.config.group_id, Some(&wanted))
            .await
        {
            Ok(committed) => committed,
            Err(error) if error.is_retriable() || error.is_connection_failure() => {
                // Not taken yet: the next heartbeat answer lists them again.
                tracing::debug!(%error, "cannot fetch committed offsets; retrying");
                return Ok(());
            }
            Err(source) => {
                return Err(GroupConsumerError::Group {
                    group: self.config.group_id.clone(),
                    source,
                });
            }
        };
        let starts: Vec<(Key, Seek)> = added
            .iter()
            .map(|key| {
                let offset = committed
                    .iter()
                    .find(|c| *c.topic == *key.0 && c.partition == key.1)
                    .map_or(-1, |c| c.offset);
                let seek = if offset >= 0 {
                    Seek::Offset(offset)
                } else {
                    self.config.consumer.start
                };
                (key.clone(), seek)
            })
            .collect();
        let all: Vec<(Key, Seek)> = {
            let mut state = self.state.borrow_mut();
            for (key, seek) in &starts {
                state.owned.insert(key.clone());
                if let Seek::Offset(offset) = seek {
                    state.committed.insert(key.clone(), *offset);
                }
            }
            // Partitions kept keep their position whatever seek is given for them.
            state
                .owned
                .iter()
                .map(|key| {
                    let seek = starts
                        .iter()
                        .find(|(k, _)| k == key)
                        .map_or(self.config.consumer.start, |(_, s)| *s);
                    (key.clone(), seek)
                })
                .collect()
        };
        let all: Vec<(&str, i32, Seek)> = all.iter().map(|((t, p), s)| (&**t, *p, *s)).collect();
        self.consumer.assign_from(&all);
        tracing::debug!(group = %self.config.group_id, ?added, "partitions assigned");
        Ok(())
    }

    /// Commits the processed offsets of `only` (every owned partition when `None`) that moved
    /// since their last commit.
    async fn commit_processed(
        &self,
        only: Option<&BTreeSet<Key>>,
    ) -> Result<(), GroupConsumerError> {
        let (request, offsets) = {
            let state = self.state.borrow();
            if state.epoch <= 0 {
                return Ok(());
            }
            let offsets: Vec<(Key, i64)> = state
                .processed
                .iter()
                .filter(|(key, _)| only.is_none_or(|only| only.contains(*key)))
                .filter(|(key, next)| state.committed.get(*key) != Some(*next))
                .map(|(key, next)| (key.clone(), *next))
                .collect();
            if offsets.is_empty() {
                return Ok(());
            }
            let request = Request::CommitOffsets {
                group_id: self.config.group_id.clone(),
                member_id: state.member_id.clone(),
                member_epoch: state.epoch,
                offsets: offsets
                    .iter()
                    .map(|((topic, partition), offset)| OffsetCommit {
                        topic: topic.to_string(),
                        partition: *partition,
                        offset: *offset,
                        metadata: String::new(),
                    })
                    .collect(),
            };
            (request, offsets)
        };
        let frame = self
            .client
            .control_request(&request)
            .await
            .map_err(|source| GroupConsumerError::Group {
                group: self.config.group_id.clone(),
                source,
            })?;
        let Response::Committed { partitions } = frame.header else {
            return Err(GroupConsumerError::Group {
                group: self.config.group_id.clone(),
                source: unexpected("commit offsets", &frame.header),
            });
        };
        let mut first_error = None;
        let mut state = self.state.borrow_mut();
        for result in partitions {
            let Some((key, offset)) = offsets
                .iter()
                .find(|((t, p), _)| **t == *result.topic && *p == result.partition)
            else {
                continue;
            };
            match result.error {
                None => {
                    state.committed.insert(key.clone(), *offset);
                }
                Some(code) => {
                    first_error.get_or_insert(GroupConsumerError::Commit {
                        group: self.config.group_id.clone(),
                        topic: Arc::clone(&key.0),
                        partition: key.1,
                        code,
                    });
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}
