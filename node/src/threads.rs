//! The node's threads and their descriptor tables: the thread that serves gets a table of
//! its own, so the kernel can skip a reference count on every socket system call.
//!
//! Linux takes a reference to a socket's file on each `recv`, `send` and `epoll_wait`
//! unless the calling thread's descriptor table is used by no other thread
//! (`__fget_light`'s fast path); nginx's worker, one thread, always has it. The node's
//! table was shared with threads that never touch a socket: jemalloc's purger, started
//! before `main`, and the two log writers. Measured with `bench/profile.sh samples`,
//! that cost the node about 150 ns a request over nginx (`fdget` and `fput`,
//! docs/benchmarks.md). After [`start_apart`] those threads keep the old table and
//! everything the calling thread starts later (the runtime, its blocking threads, the
//! other event loops) shares the new one, so with one worker the serving thread's
//! table is its own whenever no blocking thread is alive ([`BLOCKING_KEEP_ALIVE`]).

use std::io;
use std::time::Duration;

/// How long an idle thread of the runtime's blocking pool waits for more work before it
/// ends (tokio's default: 10 s). The deferral spool is the pool's one user, and its
/// consumers look at the queue every second even when idle: with tokio's default a
/// blocking thread was always alive, sharing the serving thread's table. A burst of
/// spool work still reuses its threads; a thread started anew costs tens of
/// microseconds, against a spool write's fsync of milliseconds.
pub const BLOCKING_KEEP_ALIVE: Duration = Duration::from_millis(10);

/// Runs `start`, which starts the threads that must never see a descriptor opened
/// after it returns (the log writers), then gives the calling thread a descriptor table
/// of its own. Those threads start with every signal blocked: a signal handler run on
/// one of them would write its wake-up to a pipe their table does not hold, and the
/// node would miss its SIGTERM. Call it from `main`, before the runtime or any socket
/// exists: descriptors opened before the split stay open in both tables until both
/// close them.
///
/// Where the split cannot be made (a seccomp profile that refuses `unshare`, as
/// Docker's default does without `CAP_SYS_ADMIN`), the node serves on the shared
/// table, a little slower, and says so in a warning: a speed-up never stops a start.
pub fn start_apart<T>(start: impl FnOnce() -> T) -> T {
    let previous = match block_all_signals() {
        Ok(previous) => previous,
        Err(e) => {
            let started = start();
            tracing::warn!("serving on the shared descriptor table: cannot block signals: {e}");
            return started;
        }
    };
    let started = start();
    if let Err(e) = restore_signals(&previous) {
        tracing::error!("cannot unblock signals on the serving thread: {e}");
    }
    // SAFETY: rustix and libc mark `unshare(CLONE_FILES)` unsafe because a thread on
    // the other side of the split could be handed a descriptor number its table does
    // not hold. The threads left on the old table are jemalloc's (which open none) and
    // the ones `start` started, which use only what they were given before this line
    // (standard output, the access log's file); every thread started from here on is
    // started by this one and shares its new table.
    if unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
        let e = io::Error::last_os_error();
        tracing::warn!("serving on the shared descriptor table: unshare(CLONE_FILES): {e}");
    }
    started
}

/// Blocks every signal on the calling thread; the mask it had.
fn block_all_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: `sigset_t` is plain data that `sigfillset` and `pthread_sigmask`
    // initialise before it is read; both only touch the sets passed to them.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        match libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous) {
            0 => Ok(previous),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Puts back the mask [`block_all_signals`] returned.
fn restore_signals(previous: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: `previous` came from `pthread_sigmask`; nothing else is touched.
    match unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, previous, std::ptr::null_mut()) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::mpsc;

    /// Whether descriptor `fd` is open in the calling thread's table.
    fn is_open(fd: i32) -> bool {
        // SAFETY: `F_GETFD` reads a descriptor's flags and changes nothing.
        unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
    }

    /// Whether SIGTERM is blocked on the calling thread.
    fn sigterm_blocked() -> bool {
        // SAFETY: reads this thread's mask into a set `sigemptyset` initialised.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
            libc::sigismember(&set, libc::SIGTERM) == 1
        }
    }

    /// A thread started inside `start_apart` runs with every signal blocked and does
    /// not see what the caller opens afterwards; a thread the caller starts later does.
    /// The caller gets its own signal mask back.
    #[test]
    fn the_caller_leaves_the_started_threads_table() {
        // In a thread of its own, so the split leaves the test harness's threads alone.
        std::thread::spawn(|| {
            let (ask_tx, ask_rx) = mpsc::channel::<i32>();
            let (say_tx, say_rx) = mpsc::channel::<(bool, bool)>();
            let writer = start_apart(|| {
                std::thread::spawn(move || {
                    for fd in ask_rx {
                        say_tx.send((sigterm_blocked(), is_open(fd))).unwrap();
                    }
                })
            });
            assert!(
                !sigterm_blocked(),
                "the caller's signal mask was not restored"
            );
            let file = std::fs::File::open("/proc/self/status").unwrap();
            let fd = file.as_raw_fd();
            assert!(is_open(fd));
            ask_tx.send(fd).unwrap();
            let (writer_blocked, writer_sees) = say_rx.recv().unwrap();
            assert!(
                writer_blocked,
                "the started thread runs with SIGTERM unblocked"
            );
            assert!(
                !writer_sees,
                "the started thread sees a descriptor opened after the split"
            );
            let later = std::thread::spawn(move || is_open(fd)).join().unwrap();
            assert!(
                later,
                "a thread started after the split does not share the caller's table"
            );
            drop(ask_tx);
            writer.join().unwrap();
        })
        .join()
        .unwrap();
    }
}
