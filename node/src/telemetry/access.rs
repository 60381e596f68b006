//! The access log's writer: each thread formats its lines into its own buffer, and one
//! writer thread hands whole buffers to the file or stdout, as nginx's
//! `access_log ... buffer=` does. A request pays for formatting and one uncontended
//! lock, never for a system call, a channel send or a wake-up per line; when the
//! writer falls behind (a slow disk), lines are dropped and counted, never waited for.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// How often the writer collects the threads' buffers when none fills up first:
/// the most a line waits before it reaches the file.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A thread's buffer this full wakes the writer at once (about 150 lines).
const WAKE_AT: usize = 32 * 1024;

/// A thread's buffer this full takes no more lines until the writer has collected it:
/// the bound on memory while the destination is stuck, per thread.
const MAX_PENDING: usize = 4 * 1024 * 1024;

/// One thread's lines, waiting for the writer.
struct Pending {
    lines: Mutex<Vec<u8>>,
}

struct Shared {
    format: LogFormat,
    pending: Mutex<Vec<Arc<Pending>>>,
    writer: Thread,
    stop: AtomicBool,
}

static SINK: OnceLock<Arc<Shared>> = OnceLock::new();

thread_local! {
    static MINE: RefCell<Option<Arc<Pending>>> = const { RefCell::new(None) };
    /// The last timestamp this thread wrote and its second: the date and time of day
    /// are worked out once a second, not once a line.
    static STAMP: std::cell::Cell<(u64, [u8; 27])> = const { std::cell::Cell::new((u64::MAX, [0; 27])) };
}

/// Where access lines go.
pub enum Destination {
    Stdout,
    File(File),
}

/// Keeps the writer running; dropping it writes what is pending and stops the thread.
pub struct AccessGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for AccessGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.writer.unpark();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the writer. Only the first call in a process installs one (later calls, as
/// in tests that start several nodes in one process, get `None` and share it).
pub fn start(format: LogFormat, to: Destination) -> io::Result<Option<AccessGuard>> {
    let (tx, rx) = std::sync::mpsc::channel::<Arc<Shared>>();
    let thread = thread::Builder::new()
        .name("strait-access-log".into())
        .spawn(move || {
            if let Ok(shared) = rx.recv() {
                write_loop(&shared, to);
            }
        })?;
    let shared = Arc::new(Shared {
        format,
        pending: Mutex::new(Vec::new()),
        writer: thread.thread().clone(),
        stop: AtomicBool::new(false),
    });
    if SINK.set(shared.clone()).is_err() {
        // Dropping the sender ends the thread before it wrote anything.
        drop(tx);
        let _ = thread.join();
        return Ok(None);
    }
    let _ = tx.send(shared.clone());
    Ok(Some(AccessGuard {
        shared,
        thread: Some(thread),
    }))
}

/// Appends one line built by `fill` to this thread's buffer. `false` when the line
/// was dropped because the writer is behind (the caller counts it). Without a writer
/// (a library user that never called [`start`]) lines go nowhere and count as written.
pub fn write(fill: impl FnOnce(&mut Line<'_>)) -> bool {
    let Some(shared) = SINK.get() else {
        return true;
    };
    MINE.with(|mine| {
        let mut mine = mine.borrow_mut();
        let pending = mine.get_or_insert_with(|| {
            let p = Arc::new(Pending {
                lines: Mutex::new(Vec::with_capacity(WAKE_AT * 2)),
            });
            lock(&shared.pending).push(p.clone());
            p
        });
        let mut buf = lock(&pending.lines);
        if buf.len() >= MAX_PENDING {
            return false;
        }
        let mut line = Line::begin(&mut buf, shared.format);
        fill(&mut line);
        line.end();
        if buf.len() >= WAKE_AT {
            drop(buf);
            shared.writer.unpark();
        }
        true
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes whole lines in writes of at most `PIPE_BUF` bytes: stdout is often a pipe
/// (journald, a container runtime) that the other logs write to as well, and only
/// writes that small are kept whole there.
fn write_whole_lines(out: &mut impl Write, mut buf: &[u8]) -> io::Result<()> {
    const PIPE_BUF: usize = 4096;
    while !buf.is_empty() {
        let cut = if buf.len() <= PIPE_BUF {
            buf.len()
        } else {
            match memchr::memrchr(b'\n', &buf[..PIPE_BUF]) {
                Some(i) => i + 1,
                // One line longer than PIPE_BUF: written alone.
                None => memchr::memchr(b'\n', buf).map_or(buf.len(), |i| i + 1),
            }
        };
        out.write_all(&buf[..cut])?;
        buf = &buf[cut..];
    }
    Ok(())
}

fn write_loop(shared: &Shared, to: Destination) {
    let mut stdout = io::stdout();
    let mut file = match to {
        Destination::Stdout => None,
        Destination::File(f) => Some(f),
    };
    // Swapped with each thread's buffer, so neither side allocates in the steady state.
    let mut spare: Vec<u8> = Vec::with_capacity(WAKE_AT * 2);
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        let threads: Vec<Arc<Pending>> = {
            let mut all = lock(&shared.pending);
            // A thread that has ended left its buffer here; forget it once empty.
            all.retain(|p| Arc::strong_count(p) > 1 || !lock(&p.lines).is_empty());
            all.clone()
        };
        for p in threads {
            {
                let mut lines = lock(&p.lines);
                if lines.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *lines, &mut spare);
            }
            let written = match &mut file {
                Some(f) => f.write_all(&spare),
                None => write_whole_lines(&mut stdout, &spare),
            };
            if let Err(e) = written {
                // Nowhere better to say it; lines stay dropped rather than retried forever.
                eprintln!("access log: write failed: {e}");
            }
            spare.clear();
            if spare.capacity() > MAX_PENDING {
                spare = Vec::with_capacity(WAKE_AT * 2);
            }
        }
        if file.is_none() {
            let _ = stdout.flush();
        }
        if stopping {
            return;
        }
        thread::park_timeout(FLUSH_EVERY);
    }
}

/// A field name, rendered once for each format (` name=` and `,"name":`): a line has
/// about twenty, so each is one copy. Made by `key!`.
#[derive(Clone, Copy)]
pub struct Key {
    pub text: &'static [u8],
    pub json: &'static [u8],
}

/// `key!("status")`: the [`Key`] of a field name (a literal of plain ASCII).
macro_rules! key {
    ($name:literal) => {
        $crate::telemetry::access::Key {
            text: concat!(" ", $name, "=").as_bytes(),
            json: concat!(",\"", $name, "\":").as_bytes(),
        }
    };
}
pub(crate) use key;

/// Bytes a text value may hold bare; anything else (space, quote, `=`, backslash,
/// control, non-ASCII) makes it quoted. A table: one load per byte.
const BARE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_graphic()
            && b != b'"' as usize
            && b != b'=' as usize
            && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// Bytes a JSON string must escape: `"`, `\`, controls and DEL.
const JSON_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b < 0x20 || b == 0x7f || b == b'"' as usize || b == b'\\' as usize;
        b += 1;
    }
    t
};

/// One line being formatted: `key=value` pairs in text, members of one object in JSON.
pub struct Line<'a> {
    buf: &'a mut Vec<u8>,
    format: LogFormat,
}

impl<'a> Line<'a> {
    fn begin(buf: &'a mut Vec<u8>, format: LogFormat) -> Self {
        let ts = STAMP.with(|c| {
            let (secs, mut ts) = c.get();
            let now = SystemTime::now();
            let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            if d.as_secs() == secs {
                // Same second as this thread's last line: only the microseconds change.
                let mut us = d.subsec_micros();
                for i in (20..26).rev() {
                    ts[i] = b'0' + (us % 10) as u8;
                    us /= 10;
                }
            } else {
                timestamp(now, &mut ts);
            }
            c.set((d.as_secs(), ts));
            ts
        });
        match format {
            LogFormat::Text => {
                buf.extend_from_slice(&ts);
                buf.extend_from_slice(b"  INFO strait::access: request");
            }
            LogFormat::Json => {
                buf.extend_from_slice(b"{\"timestamp\":\"");
                buf.extend_from_slice(&ts);
                buf.extend_from_slice(
                    b"\",\"level\":\"INFO\",\"target\":\"strait::access\",\"message\":\"request\"",
                );
            }
        }
        Line { buf, format }
    }

    fn end(self) {
        if matches!(self.format, LogFormat::Json) {
            self.buf.push(b'}');
        }
        self.buf.push(b'\n');
    }

    fn key(&mut self, key: Key) {
        self.buf.extend_from_slice(match self.format {
            LogFormat::Text => key.text,
            LogFormat::Json => key.json,
        });
    }

    /// A string field, escaped so that any value stays on its one line.
    pub fn str(&mut self, key: Key, value: &str) {
        self.key(key);
        match self.format {
            LogFormat::Text => text_value(self.buf, value),
            LogFormat::Json => json_string(self.buf, value),
        }
    }

    pub fn uint(&mut self, key: Key, value: u64) {
        self.key(key);
        crate::head::put_decimal(self.buf, value);
    }

    pub fn bool(&mut self, key: Key, value: bool) {
        self.key(key);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    /// A duration in milliseconds with microsecond precision (`1.234`).
    pub fn millis(&mut self, key: Key, d: Duration) {
        self.key(key);
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        crate::head::put_decimal(self.buf, us / 1000);
        let frac = us % 1000;
        if frac != 0 {
            let digits = [
                b'.',
                b'0' + (frac / 100) as u8,
                b'0' + (frac / 10 % 10) as u8,
                b'0' + (frac % 10) as u8,
            ];
            let keep = if frac % 100 == 0 {
                2
            } else if frac % 10 == 0 {
                3
            } else {
                4
            };
            self.buf.extend_from_slice(&digits[..keep]);
        }
    }
}

/// Text values as `tracing`'s text format writes them: bare when plain, else quoted
/// with Rust's escapes (so a space, quote or newline cannot split or forge a field).
fn text_value(buf: &mut Vec<u8>, value: &str) {
    let plain = !value.is_empty() && value.bytes().all(|b| BARE[usize::from(b)]);
    if plain {
        buf.extend_from_slice(value.as_bytes());
    } else {
        let _ = write!(buf, "{value:?}");
    }
}

fn json_string(buf: &mut Vec<u8>, value: &str) {
    buf.push(b'"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !JSON_ESCAPE[usize::from(b)] {
            continue;
        }
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => b"",
        };
        buf.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            let _ = write!(buf, "\\u{b:04x}");
        } else {
            buf.extend_from_slice(esc);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// RFC 3339 UTC with microseconds (`2026-12-03T09:33:00.123456Z`), as `tracing` writes it.
fn timestamp(now: SystemTime, out: &mut [u8; 27]) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    let mut put = |at: usize, v: u64, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, y as u64, 4);
    put(5, m as u64, 2);
    put(8, day as u64, 2);
    put(11, rem / 3600, 2);
    put(14, rem / 60 % 60, 2);
    put(17, rem % 60, 2);
    put(20, u64::from(d.subsec_micros()), 6);
    out[4] = b'-';
    out[7] = b'-';
    out[10] = b'T';
    out[13] = b':';
    out[16] = b':';
    out[19] = b'.';
    out[26] = b'Z';
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(format: LogFormat, fill: impl FnOnce(&mut Line<'_>)) -> String {
        let mut buf = Vec::new();
        let mut l = Line::begin(&mut buf, format);
        fill(&mut l);
        l.end();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut ts = [0u8; 27];
        let t = UNIX_EPOCH + Duration::new(1_796_291_580, 123_456_789);
        timestamp(t, &mut ts);
        assert_eq!(
            std::str::from_utf8(&ts).unwrap(),
            "2026-12-03T09:53:00.123456Z"
        );
        timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400), &mut ts);
        assert_eq!(&ts[..10], b"2000-02-29", "a leap day");
    }

    #[test]
    fn json_lines_parse_and_escape_anything_a_client_sent() {
        let model = "evil\"model\n{\"status\":1}\u{1}";
        let s = line(LogFormat::Json, |l| {
            l.str(key!("model"), model);
            l.uint(key!("status"), 200);
            l.bool(key!("stream"), true);
            l.millis(key!("duration_ms"), Duration::from_micros(1_234_560));
        });
        assert_eq!(s.matches('\n').count(), 1, "{s}");
        let v: serde_json::Value = serde_json::from_str(s.trim_end()).expect("one JSON object");
        assert_eq!(v["target"], "strait::access");
        assert_eq!(v["message"], "request");
        assert_eq!(v["model"], model);
        assert_eq!(v["status"], 200);
        assert_eq!(v["stream"], true);
        assert_eq!(v["duration_ms"], 1234.56);
    }

    #[test]
    fn text_values_are_bare_when_plain_and_quoted_otherwise() {
        let s = line(LogFormat::Text, |l| {
            l.str(key!("path"), "/v1/messages");
            l.str(key!("model"), "a b\nstatus=500");
            l.str(key!("error"), "");
            l.millis(key!("ttfb_ms"), Duration::from_millis(7));
        });
        assert!(
            s.contains(" INFO strait::access: request path=/v1/messages "),
            "{s}"
        );
        assert!(s.contains(r#"model="a b\nstatus=500""#), "{s}");
        assert!(s.contains(r#"error="""#), "{s}");
        assert!(s.ends_with(" ttfb_ms=7\n"), "{s}");
        assert_eq!(s.matches('\n').count(), 1);
    }

    #[test]
    fn stdout_writes_are_whole_lines_of_at_most_pipe_buf() {
        struct Writes(Vec<Vec<u8>>);
        impl Write for Writes {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.push(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut buf = Vec::new();
        for i in 0..300 {
            buf.extend_from_slice(format!("line {i} {}\n", "x".repeat(i % 50)).as_bytes());
        }
        buf.extend_from_slice(format!("{}\n", "y".repeat(5000)).as_bytes());
        let mut w = Writes(Vec::new());
        write_whole_lines(&mut w, &buf).unwrap();
        assert_eq!(w.0.concat(), buf);
        for write in &w.0 {
            assert!(write.ends_with(b"\n"));
            assert!(write.len() <= 4096 || write.iter().filter(|b| **b == b'\n').count() == 1);
        }
        assert!(w.0.len() < 20, "batched: {} writes", w.0.len());
    }

    /// The only test in this binary that installs the process-wide writer.
    #[test]
    fn a_stuck_destination_drops_lines_instead_of_blocking_requests() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stuck");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
        // Read-write, so opening does not wait for a reader; nobody reads, so the
        // writer thread blocks once the pipe holds 64 KiB.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let guard = start(LogFormat::Json, Destination::File(f))
            .unwrap()
            .expect("the first writer of this process");
        let started = std::time::Instant::now();
        let (mut written, mut dropped) = (0u64, 0u64);
        while dropped < 100 {
            let ok = write(|l| {
                l.str(key!("path"), "/v1/messages");
                l.str(key!("padding"), &"x".repeat(200));
            });
            if ok {
                written += 1;
            } else {
                dropped += 1;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "never dropped: {written} lines written"
            );
        }
        // About 64 KiB reached the pipe, the rest waits in this thread's 4 MiB buffer.
        assert!(written > 10_000, "{written} written before dropping");
        // The writer thread is stuck in write(2) for good: do not join it.
        std::mem::forget(guard);
    }

    #[test]
    fn millis_keep_microseconds_without_trailing_zeros() {
        let s = line(LogFormat::Text, |l| {
            l.millis(key!("a"), Duration::from_micros(1_500));
            l.millis(key!("b"), Duration::from_micros(2_050));
            l.millis(key!("c"), Duration::from_micros(3_001));
        });
        assert!(s.contains(" a=1.5 b=2.05 c=3.001"), "{s}");
    }
}
