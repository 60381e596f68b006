//! A minimal DNS stub client: one A query over UDP to a given server, the way a client's
//! resolver asks the coordinator's smart DNS. Hand-written (a query is 30 bytes) so the
//! harness needs no resolver crate and cannot be fooled by a system resolver's cache.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    // Standard query, recursion desired (as stub resolvers send it); one question.
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Skips a possibly compressed name at `at`; returns the offset after it.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)? as usize;
        if len == 0 {
            return Some(at + 1);
        }
        if len & 0xC0 == 0xC0 {
            return Some(at + 2);
        }
        at += 1 + len;
    }
}

fn parse(msg: &[u8], id: u16) -> Option<Vec<Ipv4Addr>> {
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
        return None;
    }
    let rcode = msg[3] & 0x0F;
    let qd = u16::from_be_bytes([msg[4], msg[5]]) as usize;
    let an = u16::from_be_bytes([msg[6], msg[7]]) as usize;
    if rcode != 0 {
        return Some(Vec::new());
    }
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(msg, at)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        at = skip_name(msg, at)?;
        let rr = msg.get(at..at + 10)?;
        let (ty, len) = (
            u16::from_be_bytes([rr[0], rr[1]]),
            u16::from_be_bytes([rr[8], rr[9]]) as usize,
        );
        at += 10;
        let data = msg.get(at..at + len)?;
        if ty == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += len;
    }
    Some(out)
}

/// Asks `server` for the A records of `name`. `None` when the server does not answer
/// within `timeout` (a dead coordinator); an empty list for an answer without records.
pub async fn resolve_a(server: SocketAddr, name: &str, timeout: Duration) -> Option<Vec<Ipv4Addr>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let id: u16 = rand::random();
    sock.send_to(&query(id, name), server).await.ok()?;
    let mut buf = [0u8; 1500];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        if from != server {
            continue;
        }
        if let Some(ips) = parse(&buf[..n], id) {
            return Some(ips);
        }
    }
}

/// Asks each server in turn (as a resolver with several nameservers does) and returns
/// the first answer.
pub async fn resolve_any(servers: &[SocketAddr], name: &str) -> Option<Vec<Ipv4Addr>> {
    for s in servers {
        if let Some(ips) = resolve_a(*s, name, Duration::from_millis(500)).await {
            return Some(ips);
        }
    }
    None
}
