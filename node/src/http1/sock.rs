//! Writes to a TCP socket by direct system call, for the sockets every request crosses
//! (the client's and a plain upstream connection).
//!
//! Why not tokio's own `poll_write`: it sends through libc's `send`, a cancellation
//! point, and in a process with more than one thread (the node has its log writer,
//! jemalloc's purger and its extra event loops) glibc brackets each such call with
//! `__pthread_enable_asynccancel` and `__pthread_disable_asynccancel`. The node never
//! cancels a thread. With reads, which still go through tokio (they need its readiness
//! bookkeeping after a short read), the brackets were 0.7 % of the node's CPU time
//! under load (`perf record`, docs/benchmarks.md); rustix makes the call itself.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustix::net::SendFlags;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Sends `buf` on `tcp` when it can take bytes: how many it took.
pub fn poll_send(tcp: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        ready!(tcp.poll_write_ready(cx))?;
        // `try_io` clears the socket's readiness when the send would block, so the
        // next turn waits for the reactor; a send that took part of `buf` leaves it
        // set, and the next one finds out.
        match tcp.try_io(Interest::WRITABLE, || {
            rustix::net::send(tcp, buf, SendFlags::NOSIGNAL).map_err(io::Error::from)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            sent => return Poll::Ready(sent),
        }
    }
}

/// A client's TCP connection: reads as tokio reads, writes by [`poll_send`].
pub struct Tcp(pub TcpStream);

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_send(&self.0, cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Everything written arrives in order, also past what the socket buffers hold at
    /// once (the sends then wait for the reader), and the write half closes cleanly.
    #[tokio::test]
    async fn writes_arrive_whole_and_in_order_past_the_socket_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expect = data.clone();
        let writer = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut tcp = Tcp(s);
            tcp.write_all(&data).await.unwrap();
            tcp.shutdown().await.unwrap();
        });
        let mut reader = TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect, "bytes differ");
    }

    /// A send to a peer that has gone fails with an error, not a signal.
    #[tokio::test]
    async fn a_send_to_a_closed_peer_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (s, _) = listener.accept().await.unwrap();
        drop(client);
        let mut tcp = Tcp(s);
        let mut failed = false;
        for _ in 0..100 {
            if tcp.write_all(&[0u8; 64 << 10]).await.is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(failed, "writes to a closed peer kept succeeding");
    }
}
