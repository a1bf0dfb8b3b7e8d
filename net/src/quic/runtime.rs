//! quinn on a glommio shard: a [`quinn::Runtime`] whose tasks, timers and UDP socket all live on
//! the shard thread that created it.
//!
//! Main types: [`ShardRuntime`] (handed to `quinn::Endpoint::new`), [`bind_udp_socket`] (the
//! shard's UDP socket with deliberately sized kernel buffers). The socket, timer and poller
//! types quinn receives are private and reached through quinn's trait objects.
//!
//! Must not depend on: glommio by name (everything goes through `sluice_engine::rt`), the
//! native protocol, or anything above the transport.
//!
//! # Threading
//!
//! quinn requires its runtime, timers and socket to be `Send + Sync`, because on tokio its
//! driver tasks may run on any worker thread. glommio's timers and sockets are `!Send` (they
//! hold `Rc`s into the shard's reactor). Every `!Send` value is wrapped in a private
//! `ShardBound<T>`, which records the thread that created it and asserts on every access, and
//! on drop, that it is touched on that thread only. This is sound because on a shard nothing
//! ever moves across threads: quinn spawns its endpoint driver and every connection driver
//! through [`ShardRuntime::spawn`], which puts them on the calling shard's executor, and those
//! drivers are the only code that touches the socket and the timers. A `quinn::Endpoint` and
//! its connections are therefore shard-local in practice even though their types are `Send`:
//! use them only on the shard that created them (a violation panics with a clear message
//! instead of corrupting an `Rc`).
//!
//! # UDP strategy: quinn-udp on a non-blocking socket, readiness from the ring
//!
//! Two designs were possible. Using glommio's own `UdpSocket` for I/O would cost, per
//! datagram, one `sendmsg`/`recvmsg` system call (glommio has no batching), a copy from
//! glommio's DMA buffer whenever the ring path is taken, and a copy between an owned buffer
//! and quinn's (glommio's futures borrow the buffer, so an in-flight receive cannot target
//! the slice quinn passes to one `poll_recv` call); and it would lose GSO, GRO, ECN and
//! `IP_PKTINFO` (the local address a server bound to `0.0.0.0` must answer from).
//!
//! Instead the socket is a non-blocking std socket driven by `quinn-udp` (re-exported by
//! quinn as `quinn::udp`, the same code quinn uses on tokio): sends go out as one `sendmsg`
//! per GSO batch of up to 64 datagrams, receives come in as one `recvmmsg` of up to 32 GRO
//! buffers of up to 64 datagrams each, with ECN and packet info. On loopback and at 1200-1452
//! byte datagrams that is one system call per ~90 KiB instead of one per datagram.
//!
//! glommio exposes no readiness wait for a foreign file descriptor, so read readiness comes
//! from a second handle on the same socket (a `dup`, wrapped in the facade's
//! `rt::net::UdpSocket`): a one-byte `MSG_PEEK` receive through the shard's io_uring ring
//! completes when a datagram is queued and consumes nothing. `poll_recv` first tries
//! `recvmmsg` directly (during a burst the socket is almost always readable) and arms the
//! peek only when the socket is empty, so the ring is involved once per burst, not per
//! datagram. Write readiness has no such trick (a zero-byte send is a real datagram), so a
//! send that returns `EAGAIN` is retried after [`UDP_SEND_RETRY_WAIT_US`]; with a multi-MiB
//! send buffer that only happens when the NIC queue is saturated.
//!
//! Measured with `net/examples/quic_bandwidth.rs` (release, 1 GiB on one stream over
//! loopback, 2-vCPU VM) at quinn's default 1452-byte datagrams: 0.6-0.9 GB/s, 1.2-1.7 s of
//! CPU per GiB on each side; 10 datagrams per `sendmsg` (quinn's own per-transmit cap), about
//! 12 per `recvmmsg`, and one ring readiness wait per ~13 receive calls (`strace -c`). In a
//! `perf` profile glommio and this module are under 1% of samples: the cost is quinn-proto's
//! per-packet work, AES-GCM and kernel copies. Per-packet work shrinks with bigger packets, so
//! endpoints allow datagrams up to
//! [`QUIC_MAX_UDP_PAYLOAD_BYTES`](crate::limits::QUIC_MAX_UDP_PAYLOAD_BYTES) (path MTU
//! discovery finds what a path carries): on loopback 2.1-2.2 GB/s at 0.44-0.48 s of CPU per GiB.
//!
//! # GSO batches larger than the kernel takes
//!
//! quinn hands over up to 10 datagrams of the path's size in one transmit and assumes the
//! kernel takes them in one GSO `sendmsg`; with datagrams over 6.5 KB that is more than the
//! [`UDP_SEND_BYTES_MAX`] a UDP send may carry, the kernel says `EMSGSIZE`, and quinn-udp
//! (rightly, for MTU probes) counts the whole batch as lost: ten 8000-byte segments took a
//! stream from 1 GB/s to 3 MB/s. `try_send` therefore splits a transmit into GSO sends of as
//! many whole datagrams as fit. Only the first send may report `EAGAIN` to quinn (which then
//! retries the whole transmit); if a later one finds the buffer full, the rest is dropped and
//! QUIC's loss recovery resends it, as for any datagram the network drops, because reporting
//! `EAGAIN` then would make quinn send the datagrams already sent a second time.
//!
//! # Buffers and ports
//!
//! [`bind_udp_socket`] asks for [`UDP_RECV_BUFFER_BYTES`] and [`UDP_SEND_BUFFER_BYTES`],
//! with `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` when the process may (root or `CAP_NET_ADMIN`) and
//! the plain options (capped by `net.core.rmem_max`/`wmem_max`) otherwise, and logs a warning
//! naming the sysctl when it got less. Unlike glommio's own `UdpSocket::bind`, it does not set
//! `SO_REUSEPORT`: each shard's endpoint owns its port (connection state cannot move between
//! shards), and a second bind of the same port must fail rather than silently share datagrams
//! with another shard or another broker.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncTimer, AsyncUdpSocket, UdpPoller};
use sluice_engine::rt;

use crate::limits::{
    QUIC_MAX_UDP_PAYLOAD_BYTES, UDP_GRO_BYTES_MAX, UDP_RECV_BUFFER_BYTES, UDP_SEND_BUFFER_BYTES,
    UDP_SEND_BYTES_MAX, UDP_SEND_RETRY_WAIT_US,
};

/// How many times one `poll_recv` call may find the socket empty right after a readiness wait
/// completed before it yields. Bounds the loop against a readiness signal that keeps firing
/// without a datagram to read (a queued socket error, for example).
const RECV_READINESS_ROUNDS_MAX: usize = 4;

/// A quinn runtime that runs quinn on the shard (glommio executor) that created it.
///
/// Create one per endpoint, on the shard that will own the endpoint, and pass it to
/// `quinn::Endpoint::new`. Every method asserts that it is called on that shard's thread.
/// `Send + Sync` only because quinn's trait requires it; see the module docs for why that is
/// sound.
pub struct ShardRuntime {
    /// The shard thread this runtime spawns onto.
    owner: ThreadToken,
}

impl ShardRuntime {
    /// Creates a runtime bound to the calling thread, which must be running a shard executor
    /// (inside `sluice_engine::rt::block_on` or a shard body).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            owner: ThreadToken::current(),
        })
    }
}

impl fmt::Debug for ShardRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardRuntime")
            .field("owner", &self.owner)
            .finish()
    }
}

impl quinn::Runtime for ShardRuntime {
    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        self.owner.assert_current("quinn timer creation");
        let timer = rt::timer::Timer::new(duration_until(deadline));
        Box::pin(ShardTimer {
            timer: ShardBound::new(timer),
        })
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.owner.assert_current("quinn task spawn");
        rt::spawn(future).detach();
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        self.owner.assert_current("quinn socket creation");
        Ok(Arc::new(ShardUdpSocket::new(socket)?))
    }

    fn now(&self) -> Instant {
        rt::clock::now()
    }
}

/// Kernel buffer sizes a socket ended up with, as `getsockopt` reports them (Linux reports
/// twice the requested value: the doubling covers its bookkeeping overhead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpBufferSizes {
    /// `SO_RCVBUF` after sizing.
    pub recv_bytes: usize,
    /// `SO_SNDBUF` after sizing.
    pub send_bytes: usize,
}

/// Binds a UDP socket for a shard's quinn endpoint and sizes its kernel buffers.
///
/// Does not set `SO_REUSEPORT` (see the module docs). A buffer smaller than requested is not
/// an error: it is logged with the sysctl to raise, and reported in the returned sizes.
pub fn bind_udp_socket(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, UdpBufferSizes)> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let recv_bytes = size_socket_buffer(&socket, BufferKind::Recv, UDP_RECV_BUFFER_BYTES)?;
    let send_bytes = size_socket_buffer(&socket, BufferKind::Send, UDP_SEND_BUFFER_BYTES)?;
    Ok((
        socket,
        UdpBufferSizes {
            recv_bytes,
            send_bytes,
        },
    ))
}

#[derive(Clone, Copy, Debug)]
enum BufferKind {
    Recv,
    Send,
}

/// Asks for `wanted_bytes` of kernel buffer, forcing past the sysctl cap when permitted, and
/// returns what the kernel reports afterwards.
fn size_socket_buffer(
    socket: &std::net::UdpSocket,
    kind: BufferKind,
    wanted_bytes: usize,
) -> io::Result<usize> {
    let (force, plain, sysctl) = match kind {
        BufferKind::Recv => (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "net.core.rmem_max"),
        BufferKind::Send => (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "net.core.wmem_max"),
    };
    let wanted = libc::c_int::try_from(wanted_bytes).expect("buffer limits fit in c_int");
    // The FORCE variants need CAP_NET_ADMIN; without it they fail with EPERM and the plain
    // option, silently capped by the sysctl, is the best we can do.
    if set_socket_int(socket, force, wanted).is_err() {
        set_socket_int(socket, plain, wanted)?;
    }
    let got = usize::try_from(get_socket_int(socket, plain)?).unwrap_or(0);
    if got < wanted_bytes {
        tracing::warn!(
            "UDP {kind:?} buffer is {got} bytes, wanted {wanted_bytes}: QUIC will drop packets \
             under load; raise {sysctl} or give the broker CAP_NET_ADMIN"
        );
    }
    Ok(got)
}

fn set_socket_int(
    socket: &std::net::UdpSocket,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the fd is a live socket borrowed for the call; the option value points at a
    // c_int that outlives the call, and its size is passed alongside.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_socket_int(socket: &std::net::UdpSocket, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is a live socket borrowed for the call; value and len are live locals
    // and len holds value's size, which the kernel will not exceed.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if result == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Time left until `deadline` on the runtime clock, zero if it has passed.
fn duration_until(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(rt::clock::now())
}

/// quinn's connection timer: a glommio timer on the owning shard.
struct ShardTimer {
    timer: ShardBound<rt::timer::Timer>,
}

impl fmt::Debug for ShardTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardTimer")
            .field("owner", &self.timer.owner)
            .finish()
    }
}

impl AsyncTimer for ShardTimer {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.timer
            .get_mut("quinn timer reset")
            .reset(duration_until(deadline));
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let timer = self.timer.get_mut("quinn timer poll");
        Pin::new(timer).poll(cx).map(drop)
    }
}

/// A receive-readiness wait in flight on the shard's ring.
type ReadinessWait = Pin<Box<dyn Future<Output = io::Result<()>>>>;

/// The shard's UDP socket as quinn sees it.
struct ShardUdpSocket {
    inner: ShardBound<UdpInner>,
}

struct UdpInner {
    /// The socket quinn-udp sends and receives on (non-blocking).
    io: std::net::UdpSocket,
    /// quinn-udp's per-socket state: GSO/GRO capabilities, cmsg handling.
    state: UdpSocketState,
    /// A `dup` of `io`, used only to wait for readability through the ring (MSG_PEEK).
    readiness: Rc<rt::net::UdpSocket>,
    /// The readiness wait armed by the last `poll_recv` that found the socket empty.
    /// Invariant: `Some` only between a `WouldBlock` and the next completed wait.
    read_wait: RefCell<Option<ReadinessWait>>,
    /// Set when a send returned `EAGAIN`; pollers then wait before letting quinn retry.
    send_blocked: Cell<bool>,
}

impl ShardUdpSocket {
    fn new(io: std::net::UdpSocket) -> io::Result<Self> {
        // Sets O_NONBLOCK and the GRO, ECN and packet-info options.
        let state = UdpSocketState::new((&io).into())?;
        let duplicate = io.as_fd().try_clone_to_owned()?;
        // SAFETY: `duplicate` is a freshly dup'ed descriptor of a UDP socket that nothing
        // else owns; ownership passes to the glommio socket, which closes it on drop.
        let readiness = unsafe { rt::net::UdpSocket::from_raw_fd(duplicate.into_raw_fd()) };
        let inner = UdpInner {
            io,
            state,
            readiness: Rc::new(readiness),
            read_wait: RefCell::new(None),
            send_blocked: Cell::new(false),
        };
        Ok(Self {
            inner: ShardBound::new(inner),
        })
    }
}

impl UdpInner {
    /// Starts a wait that completes once a datagram is queued, without consuming it.
    fn readiness_wait(&self) -> ReadinessWait {
        let socket = Rc::clone(&self.readiness);
        // One allocation per wait, i.e. per burst of datagrams, not per datagram.
        Box::pin(async move {
            let mut byte = [0u8; 1];
            socket
                .peek_from(&mut byte)
                .await
                .map(drop)
                .map_err(io::Error::from)
        })
    }
}

impl fmt::Debug for ShardUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardUdpSocket")
            .field("owner", &self.inner.owner)
            .finish()
    }
}

impl AsyncUdpSocket for ShardUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        let _ = self.inner.get("quinn poller creation");
        let retry = ShardBound::new(None);
        Box::pin(ShardUdpPoller {
            socket: self,
            retry,
        })
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let inner = self.inner.get("quinn udp send");
        // `send` logs and swallows errors other than WouldBlock: UDP is lossy and QUIC
        // retransmits, exactly as quinn's tokio runtime does.
        let send = |transmit: &Transmit<'_>| {
            let result = inner.state.send((&inner.io).into(), transmit);
            if matches!(&result, Err(error) if error.kind() == io::ErrorKind::WouldBlock) {
                inner.send_blocked.set(true);
            }
            result
        };
        let mut sends = gso_sends(transmit);
        let first = sends
            .next()
            .expect("a transmit holds at least one datagram");
        send(&first)?;
        for rest in sends {
            if send(&rest).is_err() {
                // Already sent datagrams must not be reported unsent (see the module docs).
                break;
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let inner = self.inner.get("quinn udp receive");
        for _ in 0..RECV_READINESS_ROUNDS_MAX {
            match inner.state.recv((&inner.io).into(), bufs, meta) {
                Ok(count) => return Poll::Ready(Ok(count)),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
            let mut read_wait = inner.read_wait.borrow_mut();
            let wait = read_wait.get_or_insert_with(|| inner.readiness_wait());
            match wait.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => {
                    *read_wait = None;
                    match result {
                        Ok(()) => {}
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) => return Poll::Ready(Err(error)),
                    }
                }
            }
        }
        // The socket kept signalling readable without yielding a datagram: let other tasks
        // run and come back rather than spin.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get("quinn udp local_addr").io.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner
            .get("quinn udp gso query")
            .state
            .max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        // quinn sizes its receive buffers by this times our largest datagram (see
        // `UDP_GRO_BYTES_MAX`): enough segments for the largest GRO list, no more.
        let needed = UDP_GRO_BYTES_MAX.div_ceil(usize::from(QUIC_MAX_UDP_PAYLOAD_BYTES));
        let gro = self.inner.get("quinn udp gro query").state.gro_segments();
        gro.min(needed)
    }

    fn may_fragment(&self) -> bool {
        self.inner
            .get("quinn udp fragmentation query")
            .state
            .may_fragment()
    }
}

/// Splits `transmit` into sends of whole datagrams that each fit in [`UDP_SEND_BYTES_MAX`].
///
/// Invariant: the sends together carry exactly `transmit.contents`, in order, each datagram
/// whole, so the receiver sees the same datagrams as if the kernel had taken one batch.
fn gso_sends<'a>(transmit: &'a Transmit<'a>) -> impl Iterator<Item = Transmit<'a>> + 'a {
    let len = transmit.contents.len();
    let segment = transmit
        .segment_size
        .filter(|&size| size < len)
        .unwrap_or(len);
    assert!(segment > 0, "quinn never sends an empty datagram");
    assert!(
        segment <= UDP_SEND_BYTES_MAX,
        "a {segment}-byte datagram exceeds the {UDP_SEND_BYTES_MAX}-byte UDP limit"
    );
    let per_send = UDP_SEND_BYTES_MAX / segment * segment;
    transmit
        .contents
        .chunks(per_send)
        .map(move |contents| Transmit {
            contents,
            segment_size: (contents.len() > segment).then_some(segment),
            ..*transmit
        })
}

/// Tells one quinn connection driver when to retry a send that hit a full socket buffer.
struct ShardUdpPoller {
    socket: Arc<ShardUdpSocket>,
    /// Invariant: `Some` only while this poller waits out an `EAGAIN`.
    retry: ShardBound<Option<rt::timer::Timer>>,
}

impl fmt::Debug for ShardUdpPoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardUdpPoller")
            .field("socket", &self.socket)
            .finish()
    }
}

impl UdpPoller for ShardUdpPoller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let inner = this.socket.inner.get("quinn udp writability");
        let retry = this.retry.get_mut("quinn udp writability");
        if !inner.send_blocked.get() {
            *retry = None;
            return Poll::Ready(Ok(()));
        }
        let timer = retry.get_or_insert_with(|| {
            rt::timer::Timer::new(Duration::from_micros(UDP_SEND_RETRY_WAIT_US))
        });
        if Pin::new(timer).poll(cx).is_pending() {
            return Poll::Pending;
        }
        *retry = None;
        // Let quinn try again; a new EAGAIN sets the flag and brings us back here.
        inner.send_blocked.set(false);
        Poll::Ready(Ok(()))
    }
}

/// Identifies a thread for the lifetime of the process (never reused, unlike addresses of
/// thread-locals or OS thread ids).
#[derive(Clone, Copy, PartialEq, Eq)]
struct ThreadToken(u64);

impl ThreadToken {
    fn current() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        thread_local! {
            static TOKEN: Cell<u64> = const { Cell::new(0) };
        }
        TOKEN.with(|token| {
            if token.get() == 0 {
                token.set(NEXT.fetch_add(1, Ordering::Relaxed));
            }
            ThreadToken(token.get())
        })
    }

    fn assert_current(self, what: &str) {
        let current = ThreadToken::current();
        assert!(
            current == self,
            "{what} on thread {current:?} ({}), but this quinn endpoint belongs to the shard on \
             thread {self:?}: quinn endpoints and connections are shard-local",
            std::thread::current().name().unwrap_or("unnamed"),
        );
    }
}

impl fmt::Debug for ThreadToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A `!Send` value made `Send + Sync` by checking, on every access and on drop, that the
/// current thread is the one that created it.
struct ShardBound<T> {
    /// Invariant: `value` is only accessed, and only dropped, on the thread `owner`.
    owner: ThreadToken,
    value: ManuallyDrop<T>,
}

impl<T> ShardBound<T> {
    fn new(value: T) -> Self {
        Self {
            owner: ThreadToken::current(),
            value: ManuallyDrop::new(value),
        }
    }

    fn get(&self, what: &str) -> &T {
        self.owner.assert_current(what);
        &self.value
    }

    fn get_mut(&mut self, what: &str) -> &mut T {
        self.owner.assert_current(what);
        &mut self.value
    }
}

impl<T> Drop for ShardBound<T> {
    fn drop(&mut self) {
        if ThreadToken::current() == self.owner {
            // SAFETY: `value` is never used again: this is the drop of its only owner.
            unsafe { ManuallyDrop::drop(&mut self.value) };
        } else {
            // Dropping here would touch `Rc` counts owned by another thread. Leaking is safe;
            // the panic reports the programming error (moving quinn state off its shard).
            self.owner.assert_current("drop of shard-local quinn state");
        }
    }
}

// SAFETY: every access to `value` (`get`, `get_mut`) and its drop first checks that the
// current thread is `owner`, so the `!Send` value is only ever used on the thread that created
// it, which is all `!Send` requires. Moving the wrapper itself to another thread only moves
// bytes; a wrapper dropped on the wrong thread leaks its value instead of dropping it.
unsafe impl<T> Send for ShardBound<T> {}
// SAFETY: a shared reference only reaches `value` through `get`, which checks the thread as
// above, so no two threads ever use `value` concurrently. The `&T` it returns is `!Send` when
// `T` is `!Sync`, so it cannot escape to another thread either.
unsafe impl<T> Sync for ShardBound<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a shard-bound value is usable on its own thread and refuses access elsewhere.
    // Method: create one, use it, then touch it from a second thread and expect a panic that
    // names the violation; the value leaks there instead of being dropped.
    #[test]
    fn shard_bound_rejects_other_threads() {
        let bound = Arc::new(ShardBound::new(Rc::new(5)));
        assert_eq!(**bound.get("test"), 5);
        let remote = Arc::clone(&bound);
        let result = std::thread::spawn(move || {
            let _ = remote.get("remote access");
        })
        .join();
        let panic = result.expect_err("access from another thread panics");
        let message = panic
            .downcast_ref::<String>()
            .expect("formatted panic message");
        assert!(message.contains("remote access on thread"), "{message}");
        assert!(message.contains("shard-local"), "{message}");
    }

    // Goal: a transmit too large for one UDP send is split into sends of whole datagrams that
    // each fit, in order, and a transmit that fits goes out as it came. Pass: exact contents,
    // segment sizes and send sizes for a single datagram, a fitting batch, a batch of large
    // datagrams, and one with a short last datagram.
    #[test]
    fn gso_sends_split_at_whole_datagrams() {
        let destination = "127.0.0.1:9".parse().expect("literal address");
        let sends_of = |contents: &[u8], segment_size: Option<usize>| {
            let transmit = Transmit {
                destination,
                ecn: None,
                contents,
                segment_size,
                src_ip: None,
            };
            gso_sends(&transmit)
                .map(|send| {
                    assert!(send.contents.len() <= UDP_SEND_BYTES_MAX);
                    (send.contents.to_vec(), send.segment_size)
                })
                .collect::<Vec<_>>()
        };
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

        assert_eq!(
            sends_of(&bytes[..1200], None),
            [(bytes[..1200].to_vec(), None)]
        );
        let fits = &bytes[..10 * 1452];
        assert_eq!(sends_of(fits, Some(1452)), [(fits.to_vec(), Some(1452))]);

        // Ten 8000-byte datagrams: eight fit in one send, two in the next.
        let large = &bytes[..80_000];
        assert_eq!(
            sends_of(large, Some(8000)),
            [
                (large[..64_000].to_vec(), Some(8000)),
                (large[64_000..].to_vec(), Some(8000)),
            ]
        );

        // Three 40,000-byte datagrams and a short last one: one datagram per send.
        let ragged = &bytes[..3 * 40_000 + 7];
        let sends = sends_of(ragged, Some(40_000));
        assert_eq!(sends.len(), 4);
        assert!(sends.iter().all(|(_, segment)| segment.is_none()));
        let rejoined: Vec<u8> = sends
            .iter()
            .flat_map(|(contents, _)| contents.clone())
            .collect();
        assert_eq!(rejoined, ragged);
        assert_eq!(sends[3].0.len(), 7);
    }

    // Goal: the runtime refuses to spawn quinn tasks from a thread other than its shard's.
    // Method: create the runtime inside an executor, move it to a plain thread and spawn.
    #[test]
    fn runtime_rejects_spawn_from_another_thread() {
        let runtime = rt::block_on(async { ShardRuntime::new() });
        let result = std::thread::spawn(move || {
            quinn::Runtime::spawn(&*runtime, Box::pin(async {}));
        })
        .join();
        let panic = result.expect_err("spawn from another thread panics");
        let message = panic
            .downcast_ref::<String>()
            .expect("formatted panic message");
        assert!(message.contains("quinn task spawn on thread"), "{message}");
    }

    // Goal: the UDP socket gets the kernel buffers asked for when the process may force them.
    // Method: bind on loopback and compare getsockopt's answer with the limits; as non-root
    // the kernel caps at the sysctl, so only check that a size was reported.
    #[test]
    fn udp_socket_buffers_are_sized() {
        let (socket, sizes) =
            bind_udp_socket("127.0.0.1:0".parse().expect("literal address")).expect("bind");
        assert_eq!(
            sizes.recv_bytes,
            get_socket_int(&socket, libc::SO_RCVBUF).expect("get") as usize
        );
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(sizes.recv_bytes >= UDP_RECV_BUFFER_BYTES, "{sizes:?}");
            assert!(sizes.send_bytes >= UDP_SEND_BUFFER_BYTES, "{sizes:?}");
        } else {
            assert!(sizes.recv_bytes > 0 && sizes.send_bytes > 0, "{sizes:?}");
        }
    }

    // Goal: a quinn timer fires at its deadline and can be moved later by reset.
    // Method: create a timer for "now", poll it to completion; reset it into the future and
    // check it is pending right after the reset, then completes.
    #[test]
    fn timer_fires_and_resets() {
        rt::block_on(async {
            let runtime = ShardRuntime::new();
            let mut timer = quinn::Runtime::new_timer(&*runtime, rt::clock::now());
            std::future::poll_fn(|cx| timer.as_mut().poll(cx)).await;
            timer
                .as_mut()
                .reset(rt::clock::now() + Duration::from_secs(3600));
            let pending = std::future::poll_fn(|cx| Poll::Ready(timer.as_mut().poll(cx))).await;
            assert!(pending.is_pending());
            timer
                .as_mut()
                .reset(rt::clock::now() + Duration::from_millis(1));
            std::future::poll_fn(|cx| timer.as_mut().poll(cx)).await;
        });
    }

    // Goal: a receive on an empty socket is woken by the ring readiness wait once a datagram
    // arrives. Method: poll once (socket empty: the wait is armed), send one datagram from a
    // plain std socket without waking the task, and check that the task is woken and receives
    // the bytes and the source address. A generous deadline turns a lost wake-up into a
    // failure instead of a hang.
    #[test]
    fn udp_socket_receive_is_woken_by_readiness() {
        rt::block_on(async {
            let runtime = ShardRuntime::new();
            let (socket, _) =
                bind_udp_socket("127.0.0.1:0".parse().expect("literal")).expect("bind");
            let wrapped = quinn::Runtime::wrap_udp_socket(&*runtime, socket).expect("wrap");
            let addr = wrapped.local_addr().expect("addr");
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind sender");
            let mut storage = vec![0u8; 64 * 1024];
            let mut meta = [RecvMeta::default()];
            let mut polls = 0;
            let receive = std::future::poll_fn(|cx| {
                polls += 1;
                let mut bufs = [IoSliceMut::new(&mut storage)];
                let result = wrapped.poll_recv(cx, &mut bufs, &mut meta);
                if polls == 1 {
                    assert!(result.is_pending(), "nothing was sent yet");
                    sender.send_to(b"hello shard", addr).expect("send");
                }
                result
            });
            let deadline = rt::sleep(Duration::from_secs(30));
            futures::pin_mut!(receive, deadline);
            let count = match futures::future::select(receive, deadline).await {
                futures::future::Either::Left((result, _)) => result.expect("receive"),
                futures::future::Either::Right(_) => panic!("readiness wait never woke the task"),
            };
            assert_eq!(count, 1);
            assert_eq!(&storage[..meta[0].len], b"hello shard");
            assert_eq!(meta[0].addr, sender.local_addr().expect("sender addr"));
            assert!(
                polls >= 2,
                "one empty poll, then at least one after the wake-up"
            );
        });
    }
}
