//! The public listener's event loops, one per worker, as nginx's worker processes: each
//! loop is a thread running its own single-threaded runtime, accepting from its own
//! socket and serving every connection it accepts to the end. A connection, its
//! requests and its upstream connections (`http1::pool` keeps a share per loop) stay on
//! one thread, so a request makes no wake-ups across threads and no work-stealing
//! bookkeeping; docs/benchmarks.md "Access log and shared cores" has the figures.
//!
//! The loops' sockets share the port with `SO_REUSEPORT`: the kernel spreads new
//! connections over them by address hash, so a burst of connections is shared out
//! rather than taken by whichever loop wakes first. Loop 0 runs on the runtime that
//! calls [`serve_on_loops`], beside the node's control work (etcd, the limiter's Redis,
//! deferred delivery, the admin listener).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::thread;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{serve, Listening, ServedBody};
use crate::head::ClientRequest;
use crate::http1::{pool, HeadFields, Reply};

/// Pending connections per socket, as tokio's own `bind` and nginx's default.
const BACKLOG: i32 = 1024;

/// Binds `addr` for `count` loops (at least one): one socket each. A port another
/// process holds is refused as by a plain bind, even when that process listens with
/// `SO_REUSEPORT` too: the address is first bound without it, then let go and bound by
/// the group. (A process of the same user that sets `SO_REUSEPORT` later could still
/// join the group, as with nginx's `reuseport`.)
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let alone = listen(addr, false)?;
    if count <= 1 {
        return Ok(vec![alone]);
    }
    // The port the kernel chose for port 0, or the one asked for.
    let addr = alone.local_addr()?;
    drop(alone);
    (0..count).map(|_| listen(addr, true)).collect()
}

/// One non-blocking listening socket on `addr`.
fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Keeps the extra loops' runtimes alive: the tasks they started (pooled upstream
/// connections, a limiter's or a relay's connection dialled from a loop) outlive the
/// drain of the listener. Dropping it ends the loops and their threads, drained or not.
pub struct Loops {
    _release: watch::Sender<()>,
}

/// Serves one loop per socket from [`bind`]. Returns the loops' handle and a task that
/// ends when every loop has drained, with how many connections were still open across
/// them. Must run inside a Tokio runtime: loop 0 is spawned on it.
pub fn serve_on_loops<S, F, B, X>(
    sockets: Vec<std::net::TcpListener>,
    on: Listening,
    service: S,
) -> io::Result<(Loops, JoinHandle<usize>)>
where
    S: Fn(ClientRequest, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply<B, X>> + Send + 'static,
    B: ServedBody,
    X: HeadFields + Default + Send + 'static,
{
    let counted = |index: usize| {
        let mut on = on.clone();
        let label = index.to_string();
        on.accepted = Some(on.metrics.loop_connections.with_label_values(&[&label]));
        on
    };
    let mut sockets = sockets.into_iter();
    let first = TcpListener::from_std(
        sockets
            .next()
            .ok_or_else(|| io::Error::other("no socket to serve"))?,
    )?;
    // Everything that can fail before another loop starts serving.
    let mut ready = Vec::with_capacity(sockets.len());
    for socket in sockets {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        ready.push((rt, socket));
    }
    let (release, released) = watch::channel(());
    let mut others = Vec::with_capacity(ready.len());
    for (index, (rt, socket)) in (1..).zip(ready) {
        let (on, service) = (counted(index), service.clone());
        let mut released = released.clone();
        let (left_tx, left_rx) = oneshot::channel();
        thread::Builder::new()
            .name(format!("strait-loop-{index}"))
            .spawn(move || {
                pool::set_event_loop(index);
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(socket) {
                        Ok(listener) => listener,
                        Err(e) => {
                            tracing::error!(index, "event loop cannot take its socket: {e}");
                            let _ = left_tx.send(0);
                            return;
                        }
                    };
                    // `changed` returns once the `Loops` handle is dropped: a node
                    // dropped undrained stops this loop with it.
                    tokio::select! {
                        left = serve(listener, on, service) => {
                            let _ = left_tx.send(left);
                            let _ = released.changed().await;
                        }
                        _ = released.changed() => {}
                    }
                });
            })?;
        others.push(left_rx);
    }
    let on = counted(0);
    let all = tokio::spawn(async move {
        let mut left = serve(first, on, service).await;
        for other in others {
            left += other.await.unwrap_or(0);
        }
        left
    });
    Ok((Loops { _release: release }, all))
}
