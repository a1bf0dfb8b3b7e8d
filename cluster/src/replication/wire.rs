//! The replica fetch messages on a peer link (`PeerKind::ReplicaFetch`): a compact
//! big-endian header per message, and for the response the partitions' record batches as the
//! payload, concatenated in partition order and never re-encoded (each partition's header
//! entry carries its byte count).
//!
//! Decoding checks every length against the bytes present and returns a [`WireError`]
//! instead of panicking: a peer is not trusted to send well-formed frames. A message naming
//! a partition twice is refused too: the fetcher and the leader core expect one fetch and one
//! answer per partition.
//!
//! Layout (integers big-endian; a string is a u16 length and UTF-8 bytes):
//!
//! ```text
//! request header  = replica i32, max_bytes u32, max_wait_ms u32, count u32, partition*count
//! partition       = topic string, partition i32, current_leader_epoch i32, fetch_offset i64,
//!                   last_fetched_epoch i32 (-1: none), log_start_offset i64
//! response header = count u32, answer*count
//! answer          = topic string, partition i32, error u8 (0: none), high_watermark i64,
//!                   log_start_offset i64, log_end_offset i64,
//!                   diverging epoch i32 (-1: none), diverging end i64, batch bytes u32
//! response payload = the answers' batches, back to back
//! ```
//!
//! Must not depend on: sockets or the network layer.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_engine::{BrokerId, LeaderEpoch, Offset, TopicPartition};

use super::messages::{
    ReplicaError, ReplicaFetchPartition, ReplicaFetchPartitionResponse, ReplicaFetchRequest,
    ReplicaFetchResponse,
};

/// Why a replica fetch message could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed replica fetch message: {0}")]
pub struct WireError(&'static str);

/// Most partitions one message may name; a larger count is refused before anything is
/// allocated for it.
const PARTITIONS_MAX: usize = 1 << 20;

/// Encodes a request as a peer header (requests carry no payload).
pub fn encode_request(request: &ReplicaFetchRequest) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + request.partitions.len() * 48);
    out.put_i32(request.replica.0);
    out.put_u32(request.max_bytes);
    out.put_u32(request.max_wait_ms);
    out.put_u32(u32::try_from(request.partitions.len()).expect("partition count fits u32"));
    for partition in &request.partitions {
        put_tp(&mut out, &partition.tp);
        out.put_i32(partition.current_leader_epoch.0);
        out.put_i64(partition.fetch_offset.0);
        out.put_i32(partition.last_fetched_epoch.map_or(-1, |e| e.0));
        out.put_i64(partition.log_start_offset.0);
    }
    out.freeze()
}

/// Decodes a request header.
pub fn decode_request(mut header: Bytes) -> Result<ReplicaFetchRequest, WireError> {
    need(&header, 16)?;
    let replica = BrokerId(header.get_i32());
    let max_bytes = header.get_u32();
    let max_wait_ms = header.get_u32();
    let count = count(&mut header)?;
    let mut partitions = Vec::with_capacity(count.min(header.len() / 30 + 1));
    let mut seen = HashSet::with_capacity(partitions.capacity());
    for _ in 0..count {
        let tp = get_tp(&mut header)?;
        if !seen.insert(tp.clone()) {
            return Err(WireError("a partition named twice in the request"));
        }
        need(&header, 24)?;
        let current_leader_epoch = LeaderEpoch(header.get_i32());
        let fetch_offset = Offset(header.get_i64());
        let last = header.get_i32();
        let log_start_offset = Offset(header.get_i64());
        partitions.push(ReplicaFetchPartition {
            tp,
            current_leader_epoch,
            fetch_offset,
            last_fetched_epoch: (last >= 0).then_some(LeaderEpoch(last)),
            log_start_offset,
        });
    }
    if header.has_remaining() {
        return Err(WireError("trailing bytes after the request"));
    }
    Ok(ReplicaFetchRequest {
        replica,
        max_bytes,
        max_wait_ms,
        partitions,
    })
}

/// Encodes a response as a peer header and payload.
pub fn encode_response(response: &ReplicaFetchResponse) -> (Bytes, Bytes) {
    let mut header = BytesMut::with_capacity(4 + response.partitions.len() * 64);
    header.put_u32(u32::try_from(response.partitions.len()).expect("partition count fits u32"));
    let mut payload_len = 0;
    for answer in &response.partitions {
        put_tp(&mut header, &answer.tp);
        header.put_u8(answer.error.map_or(0, error_to_wire));
        header.put_i64(answer.high_watermark.0);
        header.put_i64(answer.log_start_offset.0);
        header.put_i64(answer.log_end_offset.0);
        let (epoch, end) = answer
            .diverging_epoch
            .map_or((-1, -1), |(epoch, end)| (epoch.0, end.0));
        header.put_i32(epoch);
        header.put_i64(end);
        header.put_u32(u32::try_from(answer.batches.len()).expect("batch bytes fit u32"));
        payload_len += answer.batches.len();
    }
    // One partition with data (the common tailing case) passes its bytes through uncopied.
    let with_data: Vec<&Bytes> = response
        .partitions
        .iter()
        .map(|a| &a.batches)
        .filter(|b| !b.is_empty())
        .collect();
    let payload = match with_data.as_slice() {
        [] => Bytes::new(),
        [only] => (*only).clone(),
        _ => {
            let mut payload = BytesMut::with_capacity(payload_len);
            for batches in with_data {
                payload.extend_from_slice(batches);
            }
            payload.freeze()
        }
    };
    (header.freeze(), payload)
}

/// Decodes a response; each answer's batches are slices of `payload` (no copy).
pub fn decode_response(
    mut header: Bytes,
    mut payload: Bytes,
) -> Result<ReplicaFetchResponse, WireError> {
    let count = count(&mut header)?;
    let mut partitions = Vec::with_capacity(count.min(header.len() / 40 + 1));
    let mut seen = HashSet::with_capacity(partitions.capacity());
    for _ in 0..count {
        let tp = get_tp(&mut header)?;
        if !seen.insert(tp.clone()) {
            return Err(WireError("a partition named twice in the response"));
        }
        need(&header, 41)?;
        let error = error_from_wire(header.get_u8())?;
        let high_watermark = Offset(header.get_i64());
        let log_start_offset = Offset(header.get_i64());
        let log_end_offset = Offset(header.get_i64());
        let epoch = header.get_i32();
        let end = Offset(header.get_i64());
        let len = header.get_u32() as usize;
        if len > payload.len() {
            return Err(WireError("batch bytes past the payload"));
        }
        partitions.push(ReplicaFetchPartitionResponse {
            tp,
            error,
            high_watermark,
            log_start_offset,
            log_end_offset,
            diverging_epoch: (epoch >= 0).then_some((LeaderEpoch(epoch), end)),
            batches: payload.split_to(len),
        });
    }
    if header.has_remaining() || payload.has_remaining() {
        return Err(WireError("trailing bytes after the response"));
    }
    Ok(ReplicaFetchResponse { partitions })
}

fn need(buf: &Bytes, bytes: usize) -> Result<(), WireError> {
    if buf.len() < bytes {
        return Err(WireError("truncated"));
    }
    Ok(())
}

fn count(buf: &mut Bytes) -> Result<usize, WireError> {
    need(buf, 4)?;
    let count = buf.get_u32() as usize;
    if count > PARTITIONS_MAX {
        return Err(WireError("too many partitions"));
    }
    Ok(count)
}

fn put_tp(out: &mut BytesMut, tp: &TopicPartition) {
    let topic = tp.topic.as_bytes();
    out.put_u16(u16::try_from(topic.len()).expect("topic names are at most 249 bytes"));
    out.put_slice(topic);
    out.put_i32(tp.partition.0);
}

fn get_tp(buf: &mut Bytes) -> Result<TopicPartition, WireError> {
    need(buf, 2)?;
    let len = usize::from(buf.get_u16());
    need(buf, len + 4)?;
    let topic = buf.split_to(len);
    let topic = std::str::from_utf8(&topic).map_err(|_| WireError("topic is not UTF-8"))?;
    let partition = buf.get_i32();
    Ok(TopicPartition::new(Arc::from(topic), partition))
}

fn error_to_wire(error: ReplicaError) -> u8 {
    match error {
        ReplicaError::NotLeader => 1,
        ReplicaError::FencedLeaderEpoch => 2,
        ReplicaError::UnknownLeaderEpoch => 3,
        ReplicaError::UnknownReplica => 4,
        ReplicaError::OffsetOutOfRange => 5,
        ReplicaError::NotEnoughReplicas => 6,
        ReplicaError::NotEnoughReplicasAfterAppend => 7,
        ReplicaError::StorageError => 8,
    }
}

fn error_from_wire(value: u8) -> Result<Option<ReplicaError>, WireError> {
    Ok(Some(match value {
        0 => return Ok(None),
        1 => ReplicaError::NotLeader,
        2 => ReplicaError::FencedLeaderEpoch,
        3 => ReplicaError::UnknownLeaderEpoch,
        4 => ReplicaError::UnknownReplica,
        5 => ReplicaError::OffsetOutOfRange,
        6 => ReplicaError::NotEnoughReplicas,
        7 => ReplicaError::NotEnoughReplicasAfterAppend,
        8 => ReplicaError::StorageError,
        _ => return Err(WireError("unknown error code")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition::new(Arc::from(topic), partition)
    }

    fn request() -> ReplicaFetchRequest {
        ReplicaFetchRequest {
            replica: BrokerId(2),
            max_bytes: 1 << 20,
            max_wait_ms: 500,
            partitions: vec![
                ReplicaFetchPartition {
                    tp: tp("orders", 0),
                    current_leader_epoch: LeaderEpoch(3),
                    fetch_offset: Offset(42),
                    last_fetched_epoch: Some(LeaderEpoch(2)),
                    log_start_offset: Offset(0),
                },
                ReplicaFetchPartition {
                    tp: tp("é", 7),
                    current_leader_epoch: LeaderEpoch(0),
                    fetch_offset: Offset(0),
                    last_fetched_epoch: None,
                    log_start_offset: Offset(0),
                },
            ],
        }
    }

    fn response() -> ReplicaFetchResponse {
        let answer =
            |t: &str, error, diverging, batches: &'static [u8]| ReplicaFetchPartitionResponse {
                tp: tp(t, 1),
                error,
                high_watermark: Offset(10),
                log_start_offset: Offset(1),
                log_end_offset: Offset(12),
                diverging_epoch: diverging,
                batches: Bytes::from_static(batches),
            };
        ReplicaFetchResponse {
            partitions: vec![
                answer("a", None, None, b"first batches"),
                answer("b", Some(ReplicaError::FencedLeaderEpoch), None, b""),
                answer("c", None, Some((LeaderEpoch(4), Offset(9))), b""),
                answer("d", None, None, b"more"),
            ],
        }
    }

    // Goal: every field survives a round trip, batches byte for byte.
    #[test]
    fn round_trips() {
        let request = request();
        assert_eq!(decode_request(encode_request(&request)), Ok(request));
        let response = response();
        let (header, payload) = encode_response(&response);
        assert_eq!(payload.as_ref(), b"first batchesmore");
        assert_eq!(decode_response(header, payload), Ok(response));
    }

    // Goal: a truncated or corrupted message is an error, never a panic or a wrong answer.
    // Method: every prefix of valid messages, and a huge partition count.
    #[test]
    fn malformed_messages_are_errors() {
        let request = encode_request(&request());
        for len in 0..request.len() {
            assert!(
                decode_request(request.slice(..len)).is_err(),
                "prefix {len}"
            );
        }
        let (header, payload) = encode_response(&response());
        for len in 0..header.len() {
            assert!(
                decode_response(header.slice(..len), payload.clone()).is_err(),
                "header prefix {len}"
            );
        }
        for len in 0..payload.len() {
            assert!(
                decode_response(header.clone(), payload.slice(..len)).is_err(),
                "payload prefix {len}"
            );
        }
        let mut huge = BytesMut::new();
        huge.put_u32(u32::MAX);
        assert!(decode_response(huge.freeze(), Bytes::new()).is_err());
    }

    // Goal: a message naming one partition twice is refused (the follower would otherwise
    // apply two answers to one fetch, and the leader count two fetches of one replica).
    // Method: valid messages whose second partition repeats the first.
    #[test]
    fn repeated_partitions_are_errors() {
        let mut response = response();
        response.partitions[1].tp = response.partitions[0].tp.clone();
        let (header, payload) = encode_response(&response);
        assert_eq!(
            decode_response(header, payload),
            Err(WireError("a partition named twice in the response"))
        );
        let mut request = request();
        request.partitions[1].tp = request.partitions[0].tp.clone();
        assert_eq!(
            decode_request(encode_request(&request)),
            Err(WireError("a partition named twice in the request"))
        );
    }
}
