//! Read-ahead for sequential catch-up readers: while a reader processes one chunk of a
//! segment, the next chunks are already being read, so the device always has several reads
//! in flight instead of one at a time.
//!
//! A partition keeps at most one read-ahead stream ([`ReadAhead`]): up to
//! `READ_AHEAD_CHUNKS` reads of `READ_AHEAD_CHUNK_BYTES` (plus the chunks a reader gave back
//! partly used), contiguous, of one segment, each a direct read running in its own task. The
//! streams of a shard share a budget of `READ_AHEAD_SHARD_CHUNKS_MAX` chunks: past it a stream
//! keeps only `READ_AHEAD_CHUNKS_MIN` in flight, so read-ahead memory is bounded per shard, not
//! per catch-up reader ([`held_bytes`] reports what the shard holds). A
//! read continuing where the previous one stopped is served from the stream; any other read
//! restarts the stream at its position. Chunks stay in the DMA buffers they were read into; a
//! read copies out whole batches only (framed by their length fields), so every byte served
//! is copied once, also a batch that straddles two chunks, and a batch cut at the end of what
//! has arrived is not copied until the reader comes back for it whole. Only data below
//! the segment's written size is ever read ahead, so the stream never holds bytes the log may
//! still change, except after a truncation, which discards the stream
//! ([`crate::log::State::read_ahead`]). A read that issued chunks and did not wait for one
//! yields to the shard's IO poll before it returns ([`crate::rt::yield_to_io`]), so they reach
//! the disk while the reader works through what it got.
//!
//! Shard-local (`!Send`): the chunks' tasks run on the partition's shard.
//!
//! Must not depend on: the write path.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::task::Poll;

use bytes::{Bytes, BytesMut};

use crate::batch::{HEADER_BYTES, LOG_OVERHEAD_BYTES, declared_total_bytes};
use crate::io::{self as dio, File, align_down};
use crate::limits::{
    BATCH_BYTES_MAX, READ_AHEAD_CHUNK_BYTES, READ_AHEAD_CHUNKS, READ_AHEAD_CHUNKS_MIN,
    READ_AHEAD_SHARD_CHUNKS_MAX,
};
use crate::log::Inner;
use crate::rt::Task;
use crate::rt::fs::ReadResult;
use crate::types::Offset;

thread_local! {
    /// Chunks held by the read-ahead streams of this thread's shard, and their bytes. A shard
    /// is one thread, so this is the shard's own count (tests running several logs on one
    /// thread share it, as the logs of a shard do).
    static SHARD_HELD: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Bytes the read-ahead streams of the calling shard hold: chunks in flight, or read and not
/// yet consumed.
pub fn held_bytes() -> usize {
    SHARD_HELD.with(|held| held.get().1)
}

/// A chunk's claim on the shard's read-ahead budget, released when the chunk is dropped.
struct Held {
    len: usize,
}

impl Held {
    fn new(len: usize) -> Held {
        SHARD_HELD.with(|held| {
            let (chunks, bytes) = held.get();
            held.set((chunks + 1, bytes + len));
        });
        Held { len }
    }

    /// Chunks held by the shard's streams.
    fn shard_chunks() -> usize {
        SHARD_HELD.with(|held| held.get().0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        SHARD_HELD.with(|held| {
            let (chunks, bytes) = held.get();
            assert!(
                chunks >= 1 && bytes >= self.len,
                "read-ahead budget released more than was held"
            );
            held.set((chunks - 1, bytes - self.len));
        });
    }
}

/// One chunk of a stream: `[position, position + len)` of the segment.
struct Chunk {
    position: u64,
    len: usize,
    data: ChunkData,
    /// Counts the chunk in the shard's budget for as long as the stream or a reader holds it.
    _held: Held,
}

impl Chunk {
    fn new(position: u64, len: usize, data: ChunkData) -> Chunk {
        Chunk {
            position,
            len,
            data,
            _held: Held::new(len),
        }
    }
}

enum ChunkData {
    InFlight(Task<io::Result<ReadResult>>),
    Ready(ReadResult),
}

/// A partition's read-ahead stream over one segment.
pub(crate) struct ReadAhead {
    /// Distinguishes streams, so a reader does not return a chunk to a stream restarted while
    /// it waited.
    id: u64,
    segment: Offset,
    file: File,
    /// Invariant: contiguous and in position order; at most `READ_AHEAD_CHUNKS` plus the chunks
    /// a reader gave back (`fill` issues none past `READ_AHEAD_CHUNKS`).
    chunks: VecDeque<Chunk>,
    /// Where the next chunk starts: the end of the last chunk.
    next: u64,
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead")
            .field("segment", &self.segment)
            .field("chunks", &self.chunks.len())
            .field("next", &self.next)
            .finish()
    }
}

impl ReadAhead {
    /// The base offset of the segment it reads.
    pub(crate) fn segment(&self) -> Offset {
        self.segment
    }

    fn covers(&self, segment: Offset, position: u64) -> bool {
        self.segment == segment
            && self
                .chunks
                .front()
                .is_some_and(|chunk| chunk.position <= position && position < self.next)
    }

    /// Issues chunk reads until the stream holds `READ_AHEAD_CHUNKS` (or only
    /// `READ_AHEAD_CHUNKS_MIN` while the shard's budget is spent) or reaches `size`; returns
    /// how many it issued.
    fn fill(&mut self, size: u64) -> u64 {
        let mut issued = 0;
        while self.next < size && self.wants_more() {
            let position = self.next;
            let len = usize::try_from((size - position).min(READ_AHEAD_CHUNK_BYTES as u64))
                .expect("chunk fits in usize");
            let file = self.file.clone();
            let task =
                crate::rt::spawn(async move { dio::read_at_dma(&file, position, len).await });
            self.chunks
                .push_back(Chunk::new(position, len, ChunkData::InFlight(task)));
            self.next = position + len as u64;
            issued += 1;
        }
        issued
    }

    fn wants_more(&self) -> bool {
        let held = self.chunks.len();
        held < READ_AHEAD_CHUNKS_MIN
            || (held < READ_AHEAD_CHUNKS && Held::shard_chunks() < READ_AHEAD_SHARD_CHUNKS_MAX)
    }
}

/// Reads `[position, position + len)` of segment `segment` (whose written size is `size`)
/// through the partition's read-ahead stream, returning at least `min_len` and at most
/// `max_len` bytes (fewer only at `size`).
pub(crate) async fn read(
    inner: &Inner,
    segment: Offset,
    file: &File,
    position: u64,
    min_len: usize,
    max_len: usize,
    size: u64,
) -> io::Result<Bytes> {
    assert!(
        min_len <= max_len,
        "read-ahead of {min_len} > {max_len} bytes"
    );
    assert!(
        position < size,
        "read-ahead at {position} past segment {segment} size {size}"
    );
    let min_end = size.min(position + min_len as u64);
    let (id, taken, issued) = {
        let mut state = inner.state.borrow_mut();
        let stream = match state.read_ahead.take() {
            Some(mut stream) if stream.covers(segment, position) => {
                while stream
                    .chunks
                    .front()
                    .is_some_and(|chunk| chunk.position + chunk.len as u64 <= position)
                {
                    stream.chunks.pop_front();
                }
                stream
            }
            _ => {
                state.read_ahead_next_id += 1;
                let start = align_down(position);
                ReadAhead {
                    id: state.read_ahead_next_id,
                    segment,
                    file: file.clone(),
                    chunks: VecDeque::new(),
                    next: start,
                }
            }
        };
        let mut stream = stream;
        let mut issued = stream.fill(size);
        // Take the chunk holding `position`, and the following ones while they are needed
        // for `min_len`; issue replacements at once so reads stay in flight while we wait.
        let mut taken = Vec::new();
        while let Some(chunk) = stream.chunks.front() {
            if !taken.is_empty() && chunk.position >= min_end {
                break;
            }
            taken.push(stream.chunks.pop_front().expect("front checked"));
            issued += stream.fill(size);
        }
        state.stats.read_ahead_chunks += issued;
        let id = stream.id;
        state.read_ahead = Some(stream);
        (id, taken, issued)
    };
    assert!(!taken.is_empty(), "read-ahead took no chunk at {position}");
    let mut ready = Vec::with_capacity(taken.len());
    // Whether the reader waited on a chunk: the shard then polled its IO, which handed the
    // chunks issued above to the kernel.
    let mut waited = false;
    for chunk in taken {
        let data = match chunk.data {
            ChunkData::Ready(data) => data,
            ChunkData::InFlight(mut task) => match futures::poll!(&mut task) {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    waited = true;
                    task.await?
                }
            },
        };
        // A chunk shorter than asked: the file is shorter than the segment's recorded size;
        // what follows it does not join, so the read ends there.
        let short = data.len() < chunk.len;
        ready.push((chunk.position, chunk.len, data));
        if short {
            break;
        }
    }
    let view = View {
        position,
        chunks: &ready,
    };
    let available = usize::try_from(
        view.end()
            .min(position + max_len as u64)
            .saturating_sub(position),
    )
    .expect("at most max_len");
    let wanted = usize::try_from(min_end - position).expect("at most min_len");
    let result = view.copy(view.serve_len(available, wanted));
    inner.state.borrow_mut().stats.read_ahead_copied_bytes += result.len() as u64;
    give_back(inner, segment, id, ready);
    if issued > 0 && !waited {
        // The chunks just issued reach the kernel at the shard's next IO poll; a reader whose
        // chunks were all ready has not waited, and would keep them queued while it works.
        crate::rt::yield_to_io().await;
    }
    Ok(result)
}

/// Gives a read's chunks back to the stream they came from, if it is still the partition's:
/// the reader comes back for the batch it found incomplete at the end of what it got, or for
/// the rest of a chunk. The next read past a chunk drops it.
fn give_back(inner: &Inner, segment: Offset, id: u64, ready: Vec<(u64, usize, ReadResult)>) {
    let mut state = inner.state.borrow_mut();
    let short = ready.iter().any(|(_, len, data)| data.len() < *len);
    if short
        && state
            .read_ahead
            .as_ref()
            .is_some_and(|stream| stream.id == id)
    {
        // The file is shorter than recorded: keep nothing, the next reader reads again.
        state.read_ahead = None;
    }
    if let Some(stream) = state.read_ahead.as_mut()
        && stream.id == id
    {
        for (chunk_position, len, data) in ready.into_iter().rev() {
            stream
                .chunks
                .push_front(Chunk::new(chunk_position, len, ChunkData::Ready(data)));
        }
        // Two readers of one partition at different positions (a leader serving two
        // followers, or two catch-up consumers) take and give back chunks of the one stream
        // in turn: what comes back may no longer join what is queued. The stream is only a
        // prefetch: drop it, and the next reader starts a fresh one where it reads.
        let contiguous = stream
            .chunks
            .iter()
            .zip(stream.chunks.iter().skip(1))
            .all(|(a, b)| a.position + a.len as u64 == b.position);
        if !contiguous {
            tracing::debug!(
                segment = segment.0,
                "concurrent readers: read-ahead restarted"
            );
            state.read_ahead = None;
        }
    }
}

/// The chunks a read took, seen from its position: contiguous, in position order, the first
/// holding `position`.
struct View<'a> {
    position: u64,
    chunks: &'a [(u64, usize, ReadResult)],
}

impl View<'_> {
    /// Where the chunks' bytes end.
    fn end(&self) -> u64 {
        let (position, _, data) = self.chunks.last().expect("a read takes a chunk");
        position + data.len() as u64
    }

    /// The slices of the chunks holding the `len` bytes `at` bytes past the position, in
    /// order; `None` if the chunks end first.
    fn pieces(&self, at: usize, len: usize) -> Option<impl Iterator<Item = &[u8]>> {
        let from = self.position + at as u64;
        let to = from + len as u64;
        (to <= self.end()).then(|| {
            self.chunks
                .iter()
                .filter_map(move |(chunk_position, _, data)| {
                    let a = from.max(*chunk_position);
                    let b = to.min(chunk_position + data.len() as u64);
                    (a < b).then(|| {
                        let start = usize::try_from(a - chunk_position).expect("in chunk");
                        let end = usize::try_from(b - chunk_position).expect("in chunk");
                        &data[start..end]
                    })
                })
        })
    }

    /// The bytes `at` past the position declare a batch of this many bytes (by a length field
    /// the batch parser accepts).
    fn batch_at(&self, at: usize) -> Option<usize> {
        let mut prefix = [0u8; LOG_OVERHEAD_BYTES];
        let mut filled = 0;
        for piece in self.pieces(at, LOG_OVERHEAD_BYTES)? {
            prefix[filled..filled + piece.len()].copy_from_slice(piece);
            filled += piece.len();
        }
        declared_total_bytes(&prefix, BATCH_BYTES_MAX)
    }

    /// How many of the `available` bytes to serve, at least `wanted`: the whole batches there
    /// (framed by their length fields); when the first batch is cut off, only its header, for
    /// the reader to learn its size and come back for it whole; when the first length is not
    /// one a batch can have, everything, for the reader to report.
    fn serve_len(&self, available: usize, wanted: usize) -> usize {
        let first = self.batch_at(0);
        let mut whole = 0usize;
        let mut next = first;
        // Bounded by `available`: each pass moves past a batch of at least a header.
        while let Some(total) = next {
            if whole + total > available {
                break;
            }
            whole += total;
            next = self.batch_at(whole);
        }
        let len = match (whole, first) {
            (0, Some(_)) => wanted.max(HEADER_BYTES),
            (0, None) => available,
            _ => whole.max(wanted),
        };
        len.min(available)
    }

    /// The `len` bytes from the position, copied out of the chunks.
    fn copy(&self, len: usize) -> Bytes {
        if len == 0 {
            // Also when the file ends before the position (it is shorter than recorded).
            return Bytes::new();
        }
        let pieces = self.pieces(0, len).unwrap_or_else(|| {
            panic!(
                "read-ahead copies {len} bytes at {} past its chunks",
                self.position
            )
        });
        let mut out = BytesMut::with_capacity(len);
        for piece in pieces {
            out.extend_from_slice(piece);
        }
        assert_eq!(out.len(), len, "the chunks are contiguous");
        out.freeze()
    }
}
