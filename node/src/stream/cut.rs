//! The drain deadline's word to every response still being relayed: fired once by the
//! server, seen by each relay on its next poll, so a stream ends with an SSE `error`
//! event (and a plain body with an abort) instead of a bare close when the process exits.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// One per node, shared by its relays. Firing it is rare (once, at the drain deadline or
/// on a forced stop); looking at it is one atomic load per poll.
#[derive(Default)]
pub struct DrainCut {
    fired: AtomicBool,
    /// Wakes the relays parked on their upstream; each registers once per response.
    notify: Arc<Notify>,
    /// Responses ended by the cut (counted as they end, so only after it fired).
    ended: AtomicUsize,
}

impl DrainCut {
    /// Tells every relay to end now. Idempotent.
    pub fn fire(&self) {
        // The flag before the wake-up: a relay that registers after `notify_waiters`
        // reads the flag (see `CutWatch::park`).
        self.fired.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// How many responses the cut has ended so far.
    pub fn ended(&self) -> usize {
        self.ended.load(Ordering::Relaxed)
    }

    pub(super) fn count_ended(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }
}

/// A relay's view of the cut: the shared flag, and (from the first time the relay has
/// to wait on its upstream) a registration that wakes its task when the cut fires.
pub(super) struct CutWatch {
    pub(super) cut: Arc<DrainCut>,
    /// The registration and the waker it was made with. Made once per response, not per
    /// wait: polling a registered `Notified` takes the `Notify`'s lock, so it is polled
    /// again only if the relay moved to another task (its waker changed).
    wait: Option<(Pin<Box<OwnedNotified>>, Waker)>,
}

impl CutWatch {
    pub(super) fn new(cut: Arc<DrainCut>) -> Self {
        CutWatch { cut, wait: None }
    }

    /// Called before the relay returns `Pending` on its upstream: makes sure the task is
    /// woken when the cut fires. `true` if it has fired already.
    pub(super) fn park(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some((_, waker)) = &self.wait {
            if waker.will_wake(cx.waker()) {
                return false;
            }
        }
        let mut wait = match self.wait.take() {
            Some((wait, _)) => wait,
            None => Box::pin(self.cut.notify.clone().notified_owned()),
        };
        let ready = wait.as_mut().poll(cx).is_ready();
        self.wait = Some((wait, cx.waker().clone()));
        // A `notify_waiters` between the caller's check of the flag and this
        // registration is seen here: the registration was made after the flag was set.
        ready || self.cut.fired.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_parked_relay_is_woken_once_when_the_cut_fires() {
        let cut = Arc::new(DrainCut::default());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut watch = CutWatch::new(cut.clone());
        assert!(!watch.park(&mut cx));
        // Parking again with the same waker registers nothing new.
        assert!(!watch.park(&mut cx));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        cut.fire();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken by the cut");
        assert!(cut.is_fired());
        // A relay that parks after the cut hears of it at once.
        let mut late = CutWatch::new(cut.clone());
        assert!(late.park(&mut cx));
    }

    #[test]
    fn a_relay_moved_to_another_task_is_woken_there() {
        let cut = Arc::new(DrainCut::default());
        let (a, b) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let mut watch = CutWatch::new(cut.clone());
        assert!(!watch.park(&mut Context::from_waker(&Waker::from(a.clone()))));
        assert!(!watch.park(&mut Context::from_waker(&Waker::from(b.clone()))));
        cut.fire();
        assert_eq!(a.0.load(Ordering::SeqCst), 0);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
    }
}
