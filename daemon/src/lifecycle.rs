//! Admission of work during the daemon's life and the drain at shutdown: every request holds a
//! [`WorkGuard`]; once draining starts new work is refused (UNAVAILABLE / 503), work in flight may
//! finish until the drain timeout, then it is told to cancel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// Shared state of the daemon's life.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    in_flight: AtomicU32,
    idle: Notify,
    cancel: CancellationToken,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every request finished in time.
    Finished,
    /// The timeout passed; this many requests were cancelled.
    Cancelled(u32),
}

impl Lifecycle {
    /// A lifecycle accepting work.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Admits one unit of work, or refuses it while draining.
    pub fn begin(self: &Arc<Self>) -> Result<WorkGuard, Error> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        // Re-check: a drain that started between the load and the increment must see this work
        // or this work must see the drain.
        if self.draining.load(Ordering::SeqCst) {
            drop(WorkGuard { lifecycle: Arc::clone(self) });
            return Err(Error::ShuttingDown);
        }
        Ok(WorkGuard { lifecycle: Arc::clone(self) })
    }

    /// Requests currently admitted.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Whether new work is accepted.
    pub fn accepting(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
    }

    /// Fires when work in flight must stop (after the drain timeout).
    pub fn cancelled(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops admitting, waits up to `timeout` for work in flight, then cancels what is left.
    pub async fn drain(&self, timeout: Duration) -> DrainOutcome {
        self.draining.store(true, Ordering::SeqCst);
        let wait_idle = async {
            loop {
                let notified = self.idle.notified();
                if self.in_flight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(timeout, wait_idle).await.is_ok() {
            return DrainOutcome::Finished;
        }
        let left = self.in_flight();
        self.cancel.cancel();
        DrainOutcome::Cancelled(left)
    }
}

/// Held while a request runs; dropping it ends the request's admission.
#[derive(Debug)]
pub struct WorkGuard {
    lifecycle: Arc<Lifecycle>,
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if self.lifecycle.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.lifecycle.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_work_in_flight_then_refuses_new_work() {
        let life = Lifecycle::new();
        let guard = life.begin().unwrap();
        let drained = {
            let life = Arc::clone(&life);
            tokio::spawn(async move { life.drain(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!drained.is_finished(), "drain must wait for the request in flight");
        assert!(matches!(life.begin(), Err(Error::ShuttingDown)));
        drop(guard);
        assert_eq!(drained.await.unwrap(), DrainOutcome::Finished);
        assert_eq!(life.in_flight(), 0);
    }

    #[tokio::test]
    async fn drain_cancels_after_timeout() {
        let life = Lifecycle::new();
        let _guard = life.begin().unwrap();
        let token = life.cancelled();
        let outcome = life.drain(Duration::from_millis(30)).await;
        assert_eq!(outcome, DrainOutcome::Cancelled(1));
        assert!(token.is_cancelled());
    }

    #[tokio::test]
    async fn idle_drain_finishes_at_once() {
        let life = Lifecycle::new();
        let outcome = life.drain(Duration::from_secs(5)).await;
        assert_eq!(outcome, DrainOutcome::Finished);
        assert!(!life.accepting());
    }
}
