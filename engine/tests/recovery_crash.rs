//! Crash test: a child process appends with `Durability::Synced` and prints every acknowledged
//! offset with a checksum of its batch; the parent kills it with SIGKILL mid-stream, reopens
//! the log, and checks that every acknowledged batch is there, byte for byte.
//!
//! The child is this test binary re-executed (`std::env::current_exe()`) running an ignored
//! child test, selected by an environment variable that names the data directory.
//!
//! Two variants: small segments (the kill can land during a roll), and one large segment indexed
//! at every batch, so the active indexes hold whole blocks on disk and a partial block in
//! memory when the kill lands (the index files are not held open between block writes).

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{batch, cache, header, open, payload, tp};
use futures::future::join_all;
use sluice_engine::log::{Durability, LogConfig};
use sluice_engine::rt::block_on;
use sluice_engine::{LeaderEpoch, Offset};

const CHILD_DIR_ENV: &str = "SLUICE_CRASH_CHILD_DIR";
const ACKS_BEFORE_KILL: usize = 400;

fn config() -> LogConfig {
    // Small segments so the kill can land during a roll too.
    LogConfig {
        segment_bytes: 128 << 10,
        preallocate_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

fn indexed_config() -> LogConfig {
    // One segment for the whole run, an index entry for every batch: the active offset index
    // fills a block every 512 batches and the time index one every 341.
    LogConfig {
        segment_bytes: 256 << 20,
        index_interval_bytes: 0,
        preallocate_bytes: 1 << 20,
        ..LogConfig::default()
    }
}

// The child role: appends from four concurrent tasks until killed (or for at most a minute),
// printing `ACK <base offset> <record count> <crc32c of the unchanged bytes>` per acknowledged
// append.
fn run_child(config: LogConfig) {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    block_on(async move {
        let (log, _) = open(std::path::Path::new(&dir), &tp("crash"), config, &cache()).await;
        let log = std::rc::Rc::new(log);
        let deadline = sluice_engine::rt::clock::now() + Duration::from_secs(60);
        let tasks = (0..4u64).map(|task| {
            let log = log.clone();
            async move {
                let mut i = 0u64;
                while sluice_engine::rt::clock::now() < deadline {
                    let b = batch(
                        1 + (i % 3) as usize,
                        300 + (i % 700) as usize,
                        i as i64,
                        task << 32 | i,
                    );
                    let checksum = crc32c::crc32c(payload(&b));
                    let records = header(&b).record_count;
                    let info = log
                        .append(b, LeaderEpoch(3), Durability::Synced)
                        .await
                        .unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {} {records} {checksum}", info.base_offset.0).unwrap();
                    out.flush().unwrap();
                    i += 1;
                }
            }
        });
        join_all(tasks).await;
    });
}

#[test]
#[ignore = "child role of sigkill_mid_stream_keeps_every_acknowledged_append"]
fn crash_child() {
    run_child(config());
}

#[test]
#[ignore = "child role of sigkill_with_index_blocks_in_memory_recovers_lookups"]
fn crash_child_indexed() {
    run_child(indexed_config());
}

/// Runs the child test `name` on `dir`, SIGKILLs it once it acknowledged `acks_before_kill`
/// appends (while it is still appending) and returns every `(base, records, checksum)` it
/// acknowledged.
fn run_and_kill(
    name: &str,
    dir: &std::path::Path,
    acks_before_kill: usize,
) -> Vec<(i64, i32, u32)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("ACK ") && sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut acks = Vec::new();
    while acks.len() < acks_before_kill {
        match receiver.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => acks.push(line),
            Err(error) => panic!(
                "child stopped acknowledging after {} acks: {error}",
                acks.len()
            ),
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    reader.join().unwrap();
    // Lines printed before the kill are acknowledged appends too.
    acks.extend(receiver.try_iter());
    acks.iter()
        .map(|line| {
            let mut parts = line.split_whitespace().skip(1);
            let mut next = || parts.next().unwrap();
            (
                next().parse().unwrap(),
                next().parse().unwrap(),
                next().parse().unwrap(),
            )
        })
        .collect()
}

/// Checks that every acknowledged batch reads back unchanged at its offset (each read with a
/// cold cache goes through the offset index) and that the log is whole past them.
async fn check_acknowledged(log: &sluice_engine::log::PartitionLog, acked: &[(i64, i32, u32)]) {
    let end = log.log_end_offset();
    let last = acked
        .iter()
        .map(|(base, records, _)| base + i64::from(*records))
        .max()
        .unwrap();
    assert!(
        end.0 >= last,
        "log end {end} below the last acknowledged offset {last}"
    );
    for (base, records, checksum) in acked {
        let slice = log.read(Offset(*base), 1, end).await.unwrap();
        let got = &slice.batches[0];
        let h = header(got);
        assert_eq!(h.base_offset, Offset(*base));
        assert_eq!(h.record_count, *records);
        assert_eq!(h.leader_epoch, LeaderEpoch(3));
        assert_eq!(
            crc32c::crc32c(payload(got)),
            *checksum,
            "batch at {base} altered"
        );
    }
    // The log is consistent past the acknowledged part too: every batch reads back.
    assert_eq!(
        common::read_all(log, log.log_start_offset())
            .await
            .last()
            .map(|b| header(b).next_offset()),
        Some(end)
    );
}

// Goal: nothing acknowledged as Synced is lost or altered by kill -9.
// Method: run the child, SIGKILL it after it acknowledged ACKS_BEFORE_KILL appends (while it is
// still appending), collect every ACK it printed, reopen the log and check each one.
#[test]
fn sigkill_mid_stream_keeps_every_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let acked = run_and_kill("crash_child", dir.path(), ACKS_BEFORE_KILL);
    block_on(async {
        let (log, report) = open(dir.path(), &tp("crash"), config(), &cache()).await;
        assert!(!report.clean_shutdown);
        assert!(log.segment_count() > 1, "the stream rolled segments");
        check_acknowledged(&log, &acked).await;
        log.close().await.unwrap();
    });
}

// Goal: a kill -9 while the active indexes hold entries not yet written (a partial block in
// memory, whole blocks possibly in flight) loses no acknowledged record, and after recovery
// lookups by offset and by timestamp answer as a scan of the log does.
// Method: the indexed child (every batch indexed, one segment) is killed after enough appends
// to have flushed several index blocks; reopen with a cold cache, read every acknowledged
// batch at its offset (index lookups), compare `offset_for_timestamp` with the first batch of
// a full scan whose max timestamp reaches each target, then close and reopen cleanly and
// check the rebuilt index files survived as written.
#[test]
fn sigkill_with_index_blocks_in_memory_recovers_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let acked = run_and_kill("crash_child_indexed", dir.path(), 2_000);
    block_on(async {
        let (log, report) = open(dir.path(), &tp("crash"), indexed_config(), &cache()).await;
        assert!(!report.clean_shutdown);
        assert_eq!(log.segment_count(), 1, "one active segment: {report:?}");
        let index = sluice_engine::log::partition_dir(dir.path(), &tp("crash"))
            .join(format!("{:020}.index", 0));
        assert!(
            std::fs::metadata(&index).unwrap().len() >= 8192,
            "whole index blocks were written before the kill"
        );
        check_acknowledged(&log, &acked).await;
        let all = common::read_all(&log, Offset(0)).await;
        let headers: Vec<_> = all.iter().map(|b| header(b)).collect();
        let max_timestamp = headers.iter().map(|h| h.max_timestamp.0).max().unwrap();
        for target in (0..=max_timestamp).step_by(37).chain([max_timestamp]) {
            let expected = headers
                .iter()
                .find(|h| h.max_timestamp.0 >= target)
                .map(|h| h.base_offset);
            let found = log
                .offset_for_timestamp(sluice_engine::TimestampMs(target))
                .await
                .unwrap()
                .map(|found| found.offset);
            assert_eq!(found, expected, "timestamp {target}");
        }
        log.close().await.unwrap();
        drop(log);
        let (log, report) = open(dir.path(), &tp("crash"), indexed_config(), &cache()).await;
        assert!(
            report.clean_shutdown && report.scanned_segments.is_empty(),
            "{report:?}"
        );
        check_acknowledged(&log, &acked).await;
        log.close().await.unwrap();
    });
}
