//! Reads and writes a TCP socket by direct system call, for the sockets every request
//! crosses (the client's and a plain upstream connection).
//!
//! Why not tokio's own `poll_read` and `poll_write`: they go through libc's `recv` and
//! `send`, cancellation points, and in a process with more than one thread (the node
//! has its log writer, jemalloc's purger and its extra event loops) glibc brackets each
//! such call with `__pthread_enable_asynccancel` and `__pthread_disable_asynccancel`.
//! The node never cancels a thread. The brackets were 0.7 % of the node's CPU time
//! under load with sends alone moved (`perf record`, docs/benchmarks.md); rustix makes
//! the calls itself.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustix::net::{RecvFlags, SendFlags};
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

/// Receives into `buf`'s unfilled part when `tcp` has bytes, as tokio's own `poll_read`
/// does: an empty read is the end of the stream.
pub fn poll_recv(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    loop {
        ready!(tcp.poll_read_ready(cx))?;
        // SAFETY: `unfilled_mut` is unsafe because writing uninitialised bytes through it
        // would undo `ReadBuf`'s record; only the kernel writes here, real bytes.
        let unfilled = unsafe { buf.unfilled_mut() };
        let room = unfilled.len();
        let mut got = 0;
        // A read that filled less than the buffer drained the socket (epoll is
        // edge-triggered), so its readiness is cleared as tokio's `poll_read` clears it:
        // `try_io` clears it when the closure says "would block", and the bytes read
        // are returned all the same. Without that, the next read would be a wasted
        // system call that finds the socket empty.
        let read = tcp.try_io(Interest::READABLE, || {
            match rustix::net::recv(tcp, &mut *unfilled, RecvFlags::empty()) {
                Ok((_, n)) if n > 0 && n < room => {
                    got = n;
                    Err(io::ErrorKind::WouldBlock.into())
                }
                Ok((_, n)) => {
                    got = n;
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        });
        // Bytes read (`got`), or the end of the stream (`Ok` with none), or an error.
        if got == 0 {
            match read {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // SAFETY: the kernel wrote `got` bytes at the start of the unfilled part (rustix
        // returned them as initialized); `assume_init` is the one way to tell `ReadBuf`
        // so without zeroing the buffer first on every read.
        unsafe { buf.assume_init(got) };
        buf.advance(got);
        return Poll::Ready(Ok(()));
    }
}

/// A client's TCP connection: reads by [`poll_recv`], writes by [`poll_send`].
pub struct Tcp(pub TcpStream);

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_recv(&self.0, cx, buf)
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

    /// Reads by `poll_recv` get every byte in order, whether they come in pieces with
    /// pauses between (each short read clears the socket's readiness, and the next
    /// piece must still wake the reader) or faster than the reader takes them, and end
    /// with the stream's end.
    #[tokio::test]
    async fn reads_arrive_whole_after_short_reads_and_pauses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut data: Vec<u8> = Vec::new();
        let mut pieces = Vec::new();
        for (i, len) in [1usize, 7, 100, 5000, 3, 1 << 20, 42]
            .into_iter()
            .enumerate()
        {
            let piece: Vec<u8> = (0..len).map(|j| ((i * 31 + j) % 251) as u8).collect();
            data.extend_from_slice(&piece);
            pieces.push(piece);
        }
        let writer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for piece in pieces {
                s.write_all(&piece).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        });
        let (s, _) = listener.accept().await.unwrap();
        let mut tcp = Tcp(s);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut reads = 0;
        loop {
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
                .await
                .expect("a read waited past a piece that had arrived")
                .unwrap();
            if n == 0 {
                break;
            }
            reads += 1;
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ");
        assert!(
            reads >= 7,
            "{reads} reads for seven pieces with pauses between"
        );
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
