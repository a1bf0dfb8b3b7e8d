//! The leader half of replica fetching: [`serve_replica_fetch`] answers one
//! [`ReplicaFetchRequest`] from the shard's [`LeaderReplica`]s, asking each partition's
//! [`LeaderCore`] what to serve and reading the stored batches from its log.
//!
//! It does not long-poll (`max_wait_ms` is for the wiring: park the request until the log end
//! moves), and returns the leader actions the fetch caused for the caller to apply (high
//! watermark, acks=all completions, ISR proposals).
//!
//! Must not depend on: the network layer.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sluice_engine::TopicPartition;
use sluice_engine::log::{PartitionLog, ReadError};

use super::leader::{LeaderAction, LeaderCore};
use super::messages::{
    ReplicaError, ReplicaFetchPartitionResponse, ReplicaFetchRequest, ReplicaFetchResponse,
};

/// A partition this shard leads: its core and its log. Shard-local (`!Send`).
#[derive(Debug)]
pub struct LeaderReplica {
    /// The leader state machine. Never borrowed across an `.await`.
    pub core: RefCell<LeaderCore>,
    /// The partition's log.
    pub log: Rc<PartitionLog>,
}

/// Answers `request` from `leaders` (looks up the partitions this shard leads). Partitions it
/// does not lead get `NotLeader`. The response holds at most `request.max_bytes` of batches,
/// but always the first batch a partition has to send when nothing was sent before it (so one
/// oversized batch still replicates). Returns the response and the leader actions, per partition.
pub async fn serve_replica_fetch(
    leaders: &dyn Fn(&TopicPartition) -> Option<Rc<LeaderReplica>>,
    request: &ReplicaFetchRequest,
    now: Instant,
) -> (ReplicaFetchResponse, Vec<(TopicPartition, LeaderAction)>) {
    let mut partitions = Vec::with_capacity(request.partitions.len());
    let mut actions = Vec::new();
    let mut budget = usize::try_from(request.max_bytes).expect("u32 fits in usize");
    let mut sent_any = false;
    for partition in &request.partitions {
        let Some(leader) = leaders(&partition.tp) else {
            partitions.push(ReplicaFetchPartitionResponse {
                tp: partition.tp.clone(),
                error: Some(ReplicaError::NotLeader),
                high_watermark: sluice_engine::Offset(-1),
                log_start_offset: sluice_engine::Offset(-1),
                log_end_offset: sluice_engine::Offset(-1),
                diverging_epoch: None,
                batches: Bytes::new(),
            });
            continue;
        };
        let log = &leader.log;
        let answer = leader
            .core
            .borrow_mut()
            .on_fetch(request.replica, partition, &**log, now);
        actions.extend(
            answer
                .actions
                .into_iter()
                .map(|action| (partition.tp.clone(), action)),
        );
        let mut response = ReplicaFetchPartitionResponse {
            tp: partition.tp.clone(),
            error: answer.error,
            high_watermark: answer.high_watermark,
            log_start_offset: log.log_start_offset(),
            log_end_offset: log.log_end_offset(),
            diverging_epoch: answer.diverging_epoch,
            batches: Bytes::new(),
        };
        if let Some(from) = answer.read_from
            && from < log.log_end_offset()
            && (budget > 0 || !sent_any)
        {
            match log.read(from, budget.max(1), log.log_end_offset()).await {
                Ok(slice) => {
                    budget = budget.saturating_sub(slice.bytes());
                    sent_any |= !slice.is_empty();
                    response.batches = concat(slice.batches);
                }
                Err(ReadError::OffsetOutOfRange { .. }) => {
                    response.error = Some(ReplicaError::OffsetOutOfRange);
                }
                Err(error) => {
                    tracing::warn!(tp = %partition.tp, %from, %error, "replica fetch read failed");
                    response.error = Some(ReplicaError::StorageError);
                }
            }
        }
        partitions.push(response);
    }
    (ReplicaFetchResponse { partitions }, actions)
}

/// One buffer of the batches: free when there is one (the common tailing case), one copy of
/// the stored bytes otherwise (never a re-encode).
fn concat(batches: Vec<Bytes>) -> Bytes {
    if batches.len() == 1 {
        return batches.into_iter().next().expect("one batch");
    }
    let total = batches.iter().map(Bytes::len).sum();
    let mut out = BytesMut::with_capacity(total);
    for batch in &batches {
        out.extend_from_slice(batch);
    }
    out.freeze()
}
