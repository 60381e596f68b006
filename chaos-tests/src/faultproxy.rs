//! Userspace TCP proxy that injects network faults (latency with jitter and spikes,
//! blackhole, refusal, resets, bandwidth caps, slicing into small writes, a half-open
//! stall of one direction), standing in for netem, which this kernel lacks. The
//! [`FaultProxyHandle`] is the control API: every knob applies to open connections too.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;

const READ_CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction; bounds memory while latency holds data back.
const IN_FLIGHT: usize = 64;

struct Shared {
    // Switchable, as a load balancer in front of a cluster moves to a healthy member.
    upstream: Mutex<SocketAddr>,
    latency_us: AtomicU64,
    jitter_us: AtomicU64,
    // Extra one-way delay while a spike episode lasts; 0 between episodes.
    spike_us: AtomicU64,
    blackhole: watch::Sender<bool>,
    refuse: watch::Sender<bool>,
    // The listening socket while it listens, shared with the accept loop so that
    // `set_refuse(true)` closes it before returning (its lock orders the two).
    listening: Mutex<Option<Arc<TcpListener>>>,
    // Bumped by reset_all; every connection watches it.
    generation: watch::Sender<u64>,
    active: AtomicUsize,
    // Bytes per second per connection and direction; 0 = uncapped.
    bandwidth: AtomicU64,
    // Largest single write; 0 = whatever was read.
    slice: AtomicUsize,
    // Half-open stall: while set, that direction forwards nothing (the other flows).
    stall_up: watch::Sender<bool>,
    stall_down: watch::Sender<bool>,
}

impl Shared {
    fn new(upstream: SocketAddr) -> Shared {
        Shared {
            upstream: Mutex::new(upstream),
            latency_us: AtomicU64::new(0),
            jitter_us: AtomicU64::new(0),
            spike_us: AtomicU64::new(0),
            blackhole: watch::Sender::new(false),
            refuse: watch::Sender::new(false),
            listening: Mutex::new(None),
            generation: watch::Sender::new(0),
            active: AtomicUsize::new(0),
            bandwidth: AtomicU64::new(0),
            slice: AtomicUsize::new(0),
            stall_up: watch::Sender::new(false),
            stall_down: watch::Sender::new(false),
        }
    }

    /// Turns refusal on or off. On: the listening socket is shut down now, so a
    /// connection attempted after this returns is refused.
    fn set_refuse(&self, on: bool) {
        let closing = {
            let mut listening = self
                .listening
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.refuse.send_replace(on);
            if on {
                listening.take()
            } else {
                None
            }
        };
        if let Some(l) = closing {
            // Shutting a listening socket down stops it listening (new connections are
            // refused, queued ones reset) although the accept loop still holds it.
            let _ = socket2::SockRef::from(&*l).shutdown(std::net::Shutdown::Both);
        }
    }

    /// Publishes a new listening socket unless refusal was turned on meanwhile; `None`
    /// then, and the socket is dropped.
    fn listen(&self, l: TcpListener) -> Option<Arc<TcpListener>> {
        let mut listening = self
            .listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *self.refuse.borrow() {
            return None;
        }
        let l = Arc::new(l);
        *listening = Some(l.clone());
        Some(l)
    }

    /// Whether a listening socket is published (not shut down by `set_refuse`).
    fn listening(&self) -> bool {
        self.listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Forgets the listening socket so that it closes with the accept loop.
    fn unlisten(&self) {
        self.listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Aborts every connection accepted so far (see [`FaultProxyHandle::reset_all`]).
    fn reset_all(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// The delay for the chunk read now: base, plus uniform jitter, plus any spike.
    fn latency(&self) -> Duration {
        let jitter = self.jitter_us.load(Relaxed);
        let jitter = if jitter == 0 {
            0
        } else {
            rand::rng().random_range(0..=jitter)
        };
        Duration::from_micros(
            self.latency_us
                .load(Relaxed)
                .saturating_add(jitter)
                .saturating_add(self.spike_us.load(Relaxed)),
        )
    }
}

/// Latency spike episodes, as on a congested long-haul link: at random moments (on average
/// every `every`) the one-way delay rises by a random amount in `extra_min..=extra_max`
/// for `length`. Chunks stay in order, so data read during a spike holds back what follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spikes {
    pub every: Duration,
    pub length: Duration,
    pub extra_min: Duration,
    pub extra_max: Duration,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Drives spike episodes until aborted.
async fn spike_loop(shared: Arc<Shared>, spikes: Spikes) {
    let every = micros(spikes.every).max(1);
    let (lo, hi) = (micros(spikes.extra_min), micros(spikes.extra_max));
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    loop {
        // Exponential gaps: episodes arrive as a Poisson process, not on a beat a test
        // could fall between.
        let gap = {
            let u: f64 = rand::rng().random_range(f64::EPSILON..1.0);
            (-(u.ln()) * every as f64) as u64
        };
        tokio::time::sleep(Duration::from_micros(gap)).await;
        let extra = rand::rng().random_range(lo..=hi);
        shared.spike_us.store(extra, Relaxed);
        tokio::time::sleep(spikes.length).await;
        shared.spike_us.store(0, Relaxed);
    }
}

/// One direction through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream (requests).
    Upstream,
    /// Upstream to client (responses).
    Downstream,
}

/// Starts fault proxies.
pub struct FaultProxy;

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxyHandle> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(upstream));
        // Published before the accept loop first runs, so `set_refuse` can close it.
        let listener = shared.listen(listener);
        let task = tokio::spawn(accept_loop(listener, addr, shared.clone()));
        Ok(FaultProxyHandle {
            addr,
            shared,
            abort: task.abort_handle(),
            task: Mutex::new(Some(task)),
            spikes: Mutex::new(None),
        })
    }
}

/// A running proxy. Dropping it closes the listener and every proxied connection.
pub struct FaultProxyHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    abort: AbortHandle,
    task: Mutex<Option<JoinHandle<()>>>,
    spikes: Mutex<Option<AbortHandle>>,
}

impl FaultProxyHandle {
    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Delay added to every chunk in each direction (a round trip gains twice this).
    /// Applies to data read from now on; connection setup is not delayed.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.latency_us.store(micros(latency), Relaxed);
    }

    /// Adds a uniform random delay in `0..=jitter` to each chunk, on top of the base latency.
    pub fn set_jitter(&self, jitter: Duration) {
        self.shared.jitter_us.store(micros(jitter), Relaxed);
    }

    /// Starts spike episodes (replacing any running), or stops them with `None`.
    pub fn set_spikes(&self, spikes: Option<Spikes>) {
        let mut slot = self.spikes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = slot.take() {
            old.abort();
        }
        self.shared.spike_us.store(0, Relaxed);
        if let Some(spikes) = spikes {
            *slot = Some(tokio::spawn(spike_loop(self.shared.clone(), spikes)).abort_handle());
        }
    }

    /// The one-way delay a chunk read now would get (base, a jitter draw, any spike).
    pub fn latency(&self) -> Duration {
        self.shared.latency()
    }

    /// While on, nothing is forwarded in either direction and new connections are accepted
    /// but not connected upstream. Data is held, not dropped: like TCP retransmission after
    /// a real blackhole, it flows again once this is turned off.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.send_replace(on);
    }

    /// While on, the listening socket is closed, so new connections get ECONNREFUSED:
    /// every one attempted after this returns (one accepted but not yet proxied is
    /// reset). Turning it off listens on the same address again.
    pub fn set_refuse(&self, on: bool) {
        self.shared.set_refuse(on);
    }

    /// Caps each connection's throughput, per direction, at `bytes_per_sec` (0 or `None`
    /// lifts the cap). Paced per write, so a burst larger than a second's worth is spread.
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.shared
            .bandwidth
            .store(bytes_per_sec.unwrap_or(0), Relaxed);
    }

    /// Forwards data in writes of at most `bytes` (0 or `None`: as read), each flushed on
    /// its own, so the peer sees many small segments (split SSE events, split HTTP heads).
    pub fn set_slicing(&self, bytes: Option<usize>) {
        self.shared.slice.store(bytes.unwrap_or(0), Relaxed);
    }

    /// A half-open stall: while on, data in `direction` is held (not dropped) while the
    /// other direction keeps flowing, as when one way of a path dies silently.
    pub fn set_stall(&self, direction: Direction, on: bool) {
        match direction {
            Direction::Upstream => self.shared.stall_up.send_replace(on),
            Direction::Downstream => self.shared.stall_down.send_replace(on),
        };
    }

    /// Lifts every fault: latency, jitter, spikes, blackhole, refusal, bandwidth, slicing,
    /// stalls.
    pub fn heal(&self) {
        self.set_latency(Duration::ZERO);
        self.set_jitter(Duration::ZERO);
        self.set_spikes(None);
        self.set_blackhole(false);
        self.set_refuse(false);
        self.set_bandwidth(None);
        self.set_slicing(None);
        self.set_stall(Direction::Upstream, false);
        self.set_stall(Direction::Downstream, false);
    }

    /// Where new connections go from now on (open ones stay where they are; follow with
    /// [`FaultProxyHandle::reset_all`] to move them too).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self
            .shared
            .upstream
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = upstream;
    }

    /// Aborts every current connection with an RST to both the client and the upstream.
    pub fn reset_all(&self) {
        self.shared.reset_all();
    }

    /// Connections currently open through the proxy.
    pub fn connections(&self) -> usize {
        self.shared.active.load(Relaxed)
    }

    /// Closes the listener and all connections, and waits until they are gone.
    pub async fn shutdown(&self) {
        self.set_spikes(None);
        self.abort.abort();
        self.shared.unlisten();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for FaultProxyHandle {
    fn drop(&mut self) {
        self.set_spikes(None);
        self.abort.abort();
        self.shared.unlisten();
    }
}

async fn wait_for(rx: &mut watch::Receiver<bool>, wanted: bool) {
    // Err means the handle is gone; the accept task is being aborted then anyway.
    let _ = rx.wait_for(|v| *v == wanted).await;
}

async fn accept_loop(
    mut listener: Option<Arc<TcpListener>>,
    addr: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut refuse = shared.refuse.subscribe();
    let mut conns = JoinSet::new();
    loop {
        // A socket `set_refuse` shut down is done, even if refusal is already off again.
        if *refuse.borrow_and_update() || !shared.listening() {
            listener = None;
        }
        let Some(l) = listener.clone() else {
            tokio::select! {
                () = wait_for(&mut refuse, false) => {}
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            }
            match TcpListener::bind(addr).await {
                Ok(l) => listener = shared.listen(l),
                Err(e) => {
                    tracing::warn!(error = %e, %addr, "fault proxy could not listen again; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => match accepted {
                Ok((client, _)) => {
                    if *shared.refuse.borrow() {
                        let _ = client.set_zero_linger();
                        continue;
                    }
                    let _ = client.set_nodelay(true);
                    // Watched from the accept, not from when the task first runs: a
                    // reset between the two must reach this connection too.
                    let generation = shared.generation.subscribe();
                    conns.spawn(proxy(client, shared.clone(), generation));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "fault proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = refuse.changed() => {}
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

struct Active(Arc<Shared>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// Forwards one accepted connection until either side ends it or `generation` (taken
/// when it was accepted) moves.
async fn proxy(mut client: TcpStream, shared: Arc<Shared>, mut generation: watch::Receiver<u64>) {
    shared.active.fetch_add(1, Relaxed);
    let _active = Active(shared.clone());
    if generation.has_changed().unwrap_or(true) {
        let _ = client.set_zero_linger();
        return;
    }
    let mut blackhole = shared.blackhole.subscribe();

    let upstream = tokio::select! {
        up = async {
            wait_for(&mut blackhole, false).await;
            let to = *shared.upstream.lock().unwrap_or_else(PoisonError::into_inner);
            TcpStream::connect(to).await
        } => up,
        _ = generation.changed() => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    let mut upstream = match upstream {
        Ok(u) => u,
        Err(e) => {
            // The upstream refused: the client sees its connection die, as it would through
            // a real middlebox.
            tracing::debug!(error = %e, "fault proxy could not reach upstream");
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = upstream.set_nodelay(true);

    let clean = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        tokio::select! {
            done = async {
                tokio::try_join!(
                    pump(cr, uw, &shared, shared.blackhole.subscribe(), shared.stall_up.subscribe()),
                    pump(ur, cw, &shared, shared.blackhole.subscribe(), shared.stall_down.subscribe()),
                )
            } => done.is_ok(),
            _ = generation.changed() => false,
        }
    };
    if !clean {
        // Propagate an abort as an abort, so neither side mistakes it for a clean close.
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

/// Copies one direction. Reading and writing are separate loops joined by a queue of
/// timestamped chunks, so latency delays each chunk without limiting throughput.
async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    shared: &Shared,
    mut blackhole: watch::Receiver<bool>,
    mut stall: watch::Receiver<bool>,
) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(IN_FLIGHT);
    let read = async move {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.reserve(READ_CHUNK);
            if reader.read_buf(&mut buf).await? == 0 {
                return Ok::<_, io::Error>(());
            }
            let now = Instant::now();
            // A silly latency (Duration::MAX) must not overflow the clock.
            let due = now
                .checked_add(shared.latency())
                .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400));
            if tx.send((due, buf.split().freeze())).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            let mut rest = chunk;
            while !rest.is_empty() {
                wait_for(&mut blackhole, false).await;
                wait_for(&mut stall, false).await;
                let slice = shared.slice.load(Relaxed);
                let n = if slice == 0 {
                    rest.len()
                } else {
                    slice.min(rest.len())
                };
                let piece = rest.split_to(n);
                writer.write_all(&piece).await?;
                if slice != 0 {
                    writer.flush().await?;
                }
                let rate = shared.bandwidth.load(Relaxed);
                if rate != 0 {
                    let nanos =
                        (n as u128 * 1_000_000_000 / u128::from(rate)).min(u128::from(u64::MAX));
                    tokio::time::sleep(Duration::from_nanos(nanos as u64)).await;
                }
            }
        }
        // The reader saw EOF: pass the half-close on.
        writer.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race a node test once lost: the accept loop had taken a connection and
    /// spawned its task, and `reset_all` ran before the task did. The connection must
    /// still be reset, not forwarded (it would have stayed in the node's pool).
    #[tokio::test]
    async fn a_reset_reaches_a_connection_whose_task_has_not_run() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shared = Arc::new(Shared::new(upstream.local_addr().unwrap()));
        let mut client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        // What the accept loop does, then the reset, then the task's first poll.
        let generation = shared.generation.subscribe();
        shared.reset_all();
        tokio::time::timeout(
            Duration::from_secs(2),
            proxy(accepted, shared.clone(), generation),
        )
        .await
        .expect("a reset connection is not forwarded");
        let mut byte = [0u8; 1];
        let read = client.read(&mut byte).await;
        assert!(
            matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "the client should see a reset, got {read:?}"
        );
        assert_eq!(shared.active.load(Relaxed), 0);
        let upstream_dialled =
            tokio::time::timeout(Duration::from_millis(100), upstream.accept()).await;
        assert!(upstream_dialled.is_err(), "the upstream was dialled");
    }

    /// `set_refuse(true)` takes effect before it returns: the accept loop has not run
    /// since (a current-thread runtime, no await between), and a connection attempted
    /// right after is refused, not accepted and reset. Turned off, and on and off again
    /// before the loop looks, the proxy listens again.
    #[tokio::test]
    async fn refusal_is_in_force_when_set_refuse_returns() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = FaultProxy::start(upstream.local_addr().unwrap())
            .await
            .unwrap();
        let connect = || std::net::TcpStream::connect(proxy.addr());
        connect().expect("the proxy listens");
        proxy.set_refuse(true);
        let refused = connect();
        assert!(
            matches!(&refused, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused),
            "a connection after set_refuse(true) must be refused, got {refused:?}"
        );
        proxy.set_refuse(false);
        proxy.set_refuse(true);
        proxy.set_refuse(false);
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(proxy.addr()).await.is_err() {
            assert!(Instant::now() < deadline, "the proxy did not listen again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
