//! `sluice-perf reference`: this machine's limits, measured in the same run as the benchmark
//! they judge.
//!
//! - Direct-IO sequential write bandwidth into a preallocated file (overwriting written
//!   blocks), into a growing file, and into a freshly `fallocate`d file (never-written blocks,
//!   as a log segment's), and read bandwidth: 1 MiB blocks, `QUEUE_DEPTH` in flight (like the
//!   broker's pipelined appends), through the same glommio DMA path the broker uses.
//! - fdatasync latency percentiles for 4 KiB and 64 KiB appends (each write followed by
//!   fdatasync, the acks=all cost floor).
//! - Loopback TCP bandwidth between two threads (the Kafka protocol's transport limit).
//! - Loopback QUIC bandwidth over one quinn stream between two executors, through the net
//!   crate's endpoints and TLS (the native protocol's transport limit; the same method as
//!   `net/examples/quic_bandwidth.rs`).
//! - Loopback TCP round-trip latency: a 1 KiB request and its 1 KiB answer between two threads
//!   on different CPUs (the first two the process may use), each blocked in `read` until the
//!   other's bytes arrive. Every round trip wakes both sides, so it is the floor of one
//!   produce-and-acknowledge hop between a client and a broker on this machine; an end-to-end
//!   record makes at least two (produce, then the waiting fetch's answer) plus the disk write.
//! - CPU stalls: one thread per CPU spins reading the clock and records the gaps. On a VM the
//!   host can take CPUs away (a CPU quota, other guests) for tens of milliseconds; a run's
//!   latency tails mean nothing without knowing that.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sluice_engine::rt::{self, clock, fs::DmaFile};

/// Requests in flight for the bandwidth measurements.
pub const QUEUE_DEPTH: usize = 4;
const BLOCK_BYTES: usize = 1 << 20;

/// Results of a reference run; keys are part of the perf JSON contract.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Reference {
    pub direct_write_mb_per_sec: f64,
    pub direct_write_new_file_mb_per_sec: f64,
    /// Writes into a file just `fallocate`d to its full size: the blocks a log segment writes
    /// (allocated, never written). Slower than overwriting where the file system or the
    /// virtual disk pays for first writes (unwritten extents, thin provisioning).
    pub direct_write_fresh_mb_per_sec: f64,
    pub direct_read_mb_per_sec: f64,
    pub fdatasync_4k_us: Percentiles,
    pub fdatasync_64k_us: Percentiles,
    pub tcp_loopback_mb_per_sec: f64,
    pub quic_loopback_mb_per_sec: f64,
    /// Round trips of 1 KiB each way over loopback TCP between two threads on different CPUs
    /// (see the module documentation).
    pub tcp_round_trip_us: Percentiles,
    pub cpu_stalls: CpuStalls,
    pub bytes_per_measurement: u64,
}

/// What spinning threads, one per CPU, saw of the host taking their CPUs away.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CpuStalls {
    /// Spinning threads (the machine's CPUs).
    pub threads: usize,
    /// How long each thread spun.
    pub probe_ms: u64,
    /// The longest gap any thread saw between two consecutive clock reads.
    pub max_gap_ms: f64,
    /// Time lost in gaps over 1 ms, as a share of the probe, averaged over the threads.
    pub lost_share: f64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    /// Summarises a histogram.
    pub fn of(histogram: &hdrhistogram::Histogram<u64>) -> Percentiles {
        Percentiles {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

fn mb_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// Measures every figure: the disk under `dir`, then TCP and QUIC over loopback.
pub fn measure(dir: &Path, bytes: u64) -> anyhow::Result<Reference> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("sluice-perf-reference.tmp");
    let disk = rt::block_on(measure_disk(path.clone(), bytes));
    let _ = std::fs::remove_file(&path);
    let mut reference = disk?;
    reference.tcp_loopback_mb_per_sec = measure_tcp(bytes)?;
    reference.quic_loopback_mb_per_sec = measure_quic(dir, bytes)?;
    reference.tcp_round_trip_us = Percentiles::of(&measure_round_trips(ROUND_TRIPS)?);
    reference.cpu_stalls = measure_cpu_stalls(CPU_STALL_PROBE);
    reference.bytes_per_measurement = bytes;
    Ok(reference)
}

async fn measure_disk(path: PathBuf, bytes: u64) -> anyhow::Result<Reference> {
    let blocks = (bytes / BLOCK_BYTES as u64).max(QUEUE_DEPTH as u64);
    let _ = std::fs::remove_file(&path);
    // Growing file first: every write extends it.
    let file = Rc::new(open(&path).await?);
    let new_file = write_pass(&file, blocks).await?;
    rt::into_io(file.fdatasync().await).context("fdatasync")?;
    // Overwrite the now allocated and written file.
    let preallocated = write_pass(&file, blocks).await?;
    rt::into_io(file.fdatasync().await).context("fdatasync")?;
    let read = read_pass(&file, blocks).await?;
    let total = blocks * BLOCK_BYTES as u64;
    let fresh = fresh_write_pass(&path.with_extension("fresh"), blocks, total).await?;
    // Each append extends the file past everything written before, like a log tail, so
    // every fdatasync has the new size to make durable.
    let fdatasync_4k_us = Percentiles::of(&sync_latency(&file, total, 4096, 2000).await?);
    let after_4k = total + 4096 * 2000;
    let fdatasync_64k_us = Percentiles::of(&sync_latency(&file, after_4k, 65536, 1000).await?);
    Rc::try_unwrap(file)
        .map_err(|_| anyhow::anyhow!("file still shared"))?
        .close()
        .await
        .map_err(std::io::Error::from)?;
    Ok(Reference {
        direct_write_mb_per_sec: mb_per_sec(total, preallocated),
        direct_write_new_file_mb_per_sec: mb_per_sec(total, new_file),
        direct_write_fresh_mb_per_sec: mb_per_sec(total, fresh),
        direct_read_mb_per_sec: mb_per_sec(total, read),
        fdatasync_4k_us,
        fdatasync_64k_us,
        ..Reference::default()
    })
}

async fn open(path: &Path) -> anyhow::Result<DmaFile> {
    let mut options = sluice_engine::rt::fs::OpenOptions::new();
    options.create(true).read(true).write(true);
    sluice_engine::rt::fs::open_dma(path, &options)
        .await
        .with_context(|| format!("cannot open {} with O_DIRECT", path.display()))
}

async fn write_pass(file: &Rc<DmaFile>, blocks: u64) -> anyhow::Result<Duration> {
    let start = clock::now();
    let mut next = 0u64;
    let mut inflight = Vec::with_capacity(QUEUE_DEPTH);
    while next < blocks || !inflight.is_empty() {
        while inflight.len() < QUEUE_DEPTH && next < blocks {
            let file = Rc::clone(file);
            let pos = next * BLOCK_BYTES as u64;
            inflight.push(rt::spawn(async move {
                let mut buffer = file.alloc_dma_buffer(BLOCK_BYTES);
                buffer.as_bytes_mut().fill(0x5a);
                file.write_at(buffer, pos).await
            }));
            next += 1;
        }
        let task = inflight.remove(0);
        rt::into_io(task.await).context("direct write")?;
    }
    Ok(start.elapsed())
}

/// Writes `blocks` into a new file preallocated (not written) to `total` bytes, then removes it.
async fn fresh_write_pass(path: &Path, blocks: u64, total: u64) -> anyhow::Result<Duration> {
    let _ = std::fs::remove_file(path);
    let file = Rc::new(open(path).await?);
    rt::into_io(file.pre_allocate(total, false).await).context("fallocate")?;
    let elapsed = write_pass(&file, blocks).await;
    let _ = std::fs::remove_file(path);
    let file = Rc::try_unwrap(file).map_err(|_| anyhow::anyhow!("file still shared"))?;
    file.close().await.map_err(std::io::Error::from)?;
    elapsed
}

async fn read_pass(file: &Rc<DmaFile>, blocks: u64) -> anyhow::Result<Duration> {
    let start = clock::now();
    let mut next = 0u64;
    let mut inflight = Vec::with_capacity(QUEUE_DEPTH);
    while next < blocks || !inflight.is_empty() {
        while inflight.len() < QUEUE_DEPTH && next < blocks {
            let file = Rc::clone(file);
            let pos = next * BLOCK_BYTES as u64;
            inflight.push(rt::spawn(async move {
                file.read_at_aligned(pos, BLOCK_BYTES)
                    .await
                    .map(|r| r.len())
            }));
            next += 1;
        }
        let task = inflight.remove(0);
        let read = rt::into_io(task.await).context("direct read")?;
        anyhow::ensure!(read == BLOCK_BYTES, "short direct read of {read} bytes");
    }
    Ok(start.elapsed())
}

async fn sync_latency(
    file: &DmaFile,
    base: u64,
    size: usize,
    count: u64,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).expect("valid sigfig");
    let size_before = rt::into_io(file.file_size().await).context("stat")?;
    anyhow::ensure!(
        size_before <= base,
        "fdatasync appends at {base} would not extend a file of {size_before} bytes"
    );
    for i in 0..count {
        let mut buffer = file.alloc_dma_buffer(size);
        buffer.as_bytes_mut().fill(0xa5);
        let start = clock::now();
        rt::into_io(file.write_at(buffer, base + i * size as u64).await).context("append")?;
        rt::into_io(file.fdatasync().await).context("fdatasync")?;
        histogram.saturating_record(start.elapsed().as_micros() as u64);
    }
    Ok(histogram)
}

fn measure_tcp(bytes: u64) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind loopback")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; BLOCK_BYTES];
        let mut total = 0u64;
        loop {
            let n = stream.read(&mut buffer)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let mut stream = std::net::TcpStream::connect(addr).context("connect loopback")?;
    let buffer = vec![0x42u8; BLOCK_BYTES];
    let start = clock::now();
    let mut sent = 0u64;
    while sent < bytes {
        stream.write_all(&buffer)?;
        sent += BLOCK_BYTES as u64;
    }
    drop(stream);
    let received = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    let elapsed = start.elapsed();
    anyhow::ensure!(
        received == sent,
        "tcp reference lost bytes: sent {sent}, received {received}"
    );
    Ok(mb_per_sec(sent, elapsed))
}

/// Round trips the latency reference makes.
const ROUND_TRIPS: usize = 20_000;
/// Bytes each way per round trip: one record of the scenarios' size.
const ROUND_TRIP_BYTES: usize = 1024;

/// Times `count` round trips of [`ROUND_TRIP_BYTES`] each way over loopback TCP
/// (`TCP_NODELAY`, blocking reads) between this thread and an echo thread, pinned to the
/// first two CPUs this thread may use when there are two. Records microseconds.
fn measure_round_trips(count: usize) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    use std::io::{Read, Write};
    let allowed = affinity()?;
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads within the set for CPUs below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &allowed) })
        .take(2)
        .collect();
    let pins = (cpus.len() == 2).then(|| (cpus[0], cpus[1]));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind loopback")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<usize> {
        if let Some((_, echo_cpu)) = pins {
            pin_to_cpu(echo_cpu)?;
        }
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut buffer = [0u8; ROUND_TRIP_BYTES];
        let mut echoed = 0;
        // Until the other side closes.
        loop {
            match stream.read_exact(&mut buffer) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(echoed);
                }
                Err(error) => return Err(error),
            }
            stream.write_all(&buffer)?;
            echoed += 1;
        }
    });
    let measured = (|| -> anyhow::Result<hdrhistogram::Histogram<u64>> {
        if let Some((own_cpu, _)) = pins {
            pin_to_cpu(own_cpu)?;
        }
        let mut stream = std::net::TcpStream::connect(addr).context("connect loopback")?;
        stream.set_nodelay(true)?;
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3).expect("valid sigfig");
        let request = [0x5au8; ROUND_TRIP_BYTES];
        let mut answer = [0u8; ROUND_TRIP_BYTES];
        for _ in 0..count {
            let start = clock::now();
            stream.write_all(&request)?;
            stream.read_exact(&mut answer)?;
            histogram.saturating_record(start.elapsed().as_micros() as u64);
            anyhow::ensure!(answer == request, "the echo changed the bytes");
        }
        Ok(histogram)
    })();
    set_affinity(&allowed)?;
    let echoed = echo
        .join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    let histogram = measured?;
    anyhow::ensure!(echoed == count, "echoed {echoed} of {count} round trips");
    Ok(histogram)
}

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes within the set (it ignores CPUs past its size).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set_affinity(&set)
}

/// The CPUs the calling thread may run on.
fn affinity() -> std::io::Result<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel fills the set, within the size passed.
    let result =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(set)
}

fn set_affinity(set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 is the calling thread.
    let result = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How long each CPU-stall probe thread spins.
const CPU_STALL_PROBE: Duration = Duration::from_secs(2);
/// Gaps longer than this count as time the thread lost its CPU.
const CPU_STALL_GAP: Duration = Duration::from_millis(1);

/// Spins one thread per CPU for `probe`, each reading the clock in a loop: a gap between two
/// reads is time the thread did not run. With every CPU busy, the guest's own scheduler has
/// nothing else to run, so long gaps are the host's.
fn measure_cpu_stalls(probe: Duration) -> CpuStalls {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let spinners: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let start = clock::now();
                let (mut last, mut max_gap, mut lost) = (start, Duration::ZERO, Duration::ZERO);
                while last - start < probe {
                    let now = clock::now();
                    let gap = now - last;
                    max_gap = max_gap.max(gap);
                    if gap > CPU_STALL_GAP {
                        lost += gap;
                    }
                    last = now;
                }
                (max_gap, lost.as_secs_f64() / (last - start).as_secs_f64())
            })
        })
        .collect();
    let results: Vec<(Duration, f64)> = spinners
        .into_iter()
        .map(|spinner| spinner.join().expect("stall probe thread panicked"))
        .collect();
    CpuStalls {
        threads,
        probe_ms: probe.as_millis() as u64,
        max_gap_ms: results
            .iter()
            .map(|(gap, _)| gap.as_secs_f64() * 1e3)
            .fold(0.0, f64::max),
        lost_share: results.iter().map(|(_, lost)| lost).sum::<f64>() / threads as f64,
    }
}

/// Bytes per QUIC write (shared, never copied by the sender).
const QUIC_CHUNK_BYTES: usize = 1 << 20;

/// One quinn stream over loopback: a server executor on its own thread receives, the client
/// on the calling thread sends `bytes` in 1 MiB chunks; the clock stops when the server
/// acknowledges the last byte.
fn measure_quic(dir: &Path, bytes: u64) -> anyhow::Result<f64> {
    use sluice_net::quic::{self, tls};
    let tls_dir = dir.join("sluice-perf-reference-tls");
    std::fs::create_dir_all(&tls_dir)
        .with_context(|| format!("cannot create {}", tls_dir.display()))?;
    let identity = tls::self_signed_identity(&tls_dir, &tls::default_self_signed_names())
        .context("self-signed identity")?;
    let (addr_sender, addr_receiver) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || -> anyhow::Result<u64> {
        rt::block_on(async move {
            let options = tls::ServerTlsOptions {
                identity: tls::ServerIdentity::Files(identity),
                client_ca: None,
            };
            let config = tls::server_config(&options).context("server TLS")?;
            let loopback = "127.0.0.1:0".parse().expect("literal address");
            let endpoint = quic::server_endpoint(loopback, config)?;
            addr_sender
                .send(endpoint.local_addr()?)
                .map_err(|_| anyhow::anyhow!("client gone"))?;
            let incoming = endpoint.accept().await.context("no client came")?;
            let connection = incoming.await.context("handshake")?;
            let (mut send, mut recv) = connection.accept_bi().await.context("stream")?;
            let mut received = 0u64;
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                received += chunk.bytes.len() as u64;
            }
            send.write_all(b"k").await?;
            send.finish()?;
            connection.closed().await;
            endpoint.wait_idle().await;
            Ok(received)
        })
    });
    let addr = addr_receiver
        .recv()
        .map_err(|_| anyhow::anyhow!("the QUIC server thread failed to start"))?;
    let elapsed = rt::block_on(async move {
        let loopback = "127.0.0.1:0".parse().expect("literal address");
        let endpoint = quic::client_endpoint(loopback)?;
        let config = tls::client_config(&tls::ClientTlsOptions::default(), addr)?;
        let connection = quic::connect(&endpoint, addr, "localhost", config).await?;
        let chunk = bytes::Bytes::from(vec![0x5a; QUIC_CHUNK_BYTES]);
        let start = clock::now();
        let (mut send, mut recv) = connection.open_bi().await?;
        let mut sent = 0u64;
        while sent < bytes {
            let len = (bytes - sent).min(QUIC_CHUNK_BYTES as u64) as usize;
            send.write_chunk(chunk.slice(..len)).await?;
            sent += len as u64;
        }
        send.finish()?;
        let ack = recv.read_to_end(1).await?;
        anyhow::ensure!(ack == b"k", "the QUIC server did not acknowledge");
        let elapsed = start.elapsed();
        connection.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        anyhow::Ok(elapsed)
    })?;
    let received = server
        .join()
        .map_err(|_| anyhow::anyhow!("QUIC server thread panicked"))??;
    let _ = std::fs::remove_dir_all(&tls_dir);
    anyhow::ensure!(
        received == bytes,
        "quic reference lost bytes: sent {bytes}, received {received}"
    );
    Ok(mb_per_sec(bytes, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the round-trip probe makes every round trip it reports, through an echo that
    // returns the same bytes, and its percentiles are ordered and not zero.
    // Method: 200 round trips; the histogram holds 200 values (the probe itself fails if the
    // echo thread answered a different number or changed the bytes); p50 <= p99 <= max, p50
    // at least 1 us (a loopback round trip through the kernel is never faster); the calling
    // thread may run on the same CPUs afterwards as before (it was pinned meanwhile).
    #[test]
    fn round_trip_probe_counts_every_round_trip() {
        let before = std::thread::available_parallelism().map(|n| n.get()).ok();
        let histogram = measure_round_trips(200).expect("round trips");
        let after = std::thread::available_parallelism().map(|n| n.get()).ok();
        assert_eq!(before, after, "CPUs the thread may use after the probe");
        assert_eq!(histogram.len(), 200);
        let latency = Percentiles::of(&histogram);
        assert!(latency.p50 >= 1, "{latency:?}");
        assert!(
            latency.p50 <= latency.p99 && latency.p99 <= latency.max,
            "{latency:?}"
        );
    }

    // Goal: the stall probe spins one thread per CPU and reports figures consistent with each
    // other, whatever the machine does meanwhile. Pass: a thread per CPU; some gap seen (a
    // thread that never looped would see none); a gap over the 1 ms threshold shows up as lost
    // time; the lost share is a fraction.
    #[test]
    fn cpu_stall_probe_reports_consistent_figures() {
        let stalls = measure_cpu_stalls(Duration::from_millis(50));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(stalls.threads, cpus);
        assert_eq!(stalls.probe_ms, 50);
        assert!(stalls.max_gap_ms > 0.0, "{stalls:?}");
        let threshold_ms = CPU_STALL_GAP.as_secs_f64() * 1e3;
        assert!(
            stalls.max_gap_ms <= threshold_ms || stalls.lost_share > 0.0,
            "{stalls:?}"
        );
        assert!((0.0..=1.0).contains(&stalls.lost_share), "{stalls:?}");
    }
}
