//! Fair admission in front of each loaded model. A model runs at most `capacity` requests at once
//! (its engine's parallel sequences); the rest wait in per-user queues served round robin, so one
//! user's 50 queued requests do not starve another user's one. Each user is bounded by their
//! quota (running and queued requests, tokens per minute); the whole service by a global queue
//! bound. Over a user's limit: 429 with Retry-After; service full: 503 with Retry-After.
//!
//! Round robin over users with one request per turn is deficit round robin with a unit cost:
//! a grant is O(users) in the worst case, enqueue and release O(1) amortized.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::Error;

/// One user's limits as admission applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLimits {
    /// Requests running at once.
    pub max_concurrent: u32,
    /// Requests waiting.
    pub max_queued: u32,
    /// Prompt plus generated tokens per minute; 0 = unlimited.
    pub tokens_per_minute: u64,
}

/// Counts shared by every model's queue (the service-wide bound).
#[derive(Debug)]
pub struct GlobalQueue {
    waiting: AtomicUsize,
    max_waiting: usize,
    usage: Mutex<HashMap<u32, TokenWindow>>,
}

/// Tokens one user spent in the current minute.
#[derive(Debug, Clone, Copy)]
struct TokenWindow {
    started: Instant,
    tokens: u64,
}

const WINDOW: Duration = Duration::from_secs(60);

impl GlobalQueue {
    /// A service-wide bound of `max_waiting` queued requests.
    pub fn new(max_waiting: usize) -> Arc<Self> {
        Arc::new(Self { waiting: AtomicUsize::new(0), max_waiting, usage: Mutex::new(HashMap::new()) })
    }

    /// Requests waiting across all models.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Records tokens spent by `uid` (after a request, or as it streams).
    pub fn charge(&self, uid: u32, tokens: u64) {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let window = usage.entry(uid).or_insert(TokenWindow { started: now, tokens: 0 });
        if now.duration_since(window.started) >= WINDOW {
            *window = TokenWindow { started: now, tokens: 0 };
        }
        window.tokens += tokens;
    }

    /// Refuses `uid` when it spent its tokens for this minute, saying when to retry.
    fn check_rate(&self, uid: u32, limit: u64) -> Result<(), Error> {
        if limit == 0 {
            return Ok(());
        }
        let usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = usage.get(&uid) {
            let age = window.started.elapsed();
            if age < WINDOW && window.tokens >= limit {
                return Err(Error::UserOverQuota {
                    message: format!("you used your {limit} tokens for this minute"),
                    retry_after: (WINDOW - age).as_secs().max(1),
                });
            }
        }
        Ok(())
    }
}

/// The queue in front of one model.
#[derive(Debug)]
pub struct ModelQueue {
    state: Mutex<QueueState>,
    global: Arc<GlobalQueue>,
}

#[derive(Debug, Default)]
struct QueueState {
    capacity: usize,
    running: usize,
    running_by_user: HashMap<u32, u32>,
    waiting: HashMap<u32, VecDeque<Waiter>>,
    /// Users with waiters, in round-robin order.
    turn: VecDeque<u32>,
    next_ticket: u64,
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    max_concurrent: u32,
    grant: oneshot::Sender<()>,
}

/// A running slot; released on drop.
#[derive(Debug)]
pub struct Permit {
    queue: Arc<ModelQueue>,
    uid: u32,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.running -= 1;
        if let Some(n) = state.running_by_user.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                state.running_by_user.remove(&self.uid);
            }
        }
        self.queue.grant_next(&mut state);
    }
}

/// Removes a waiter whose request was abandoned before it was granted.
struct WaitGuard {
    queue: Arc<ModelQueue>,
    uid: u32,
    ticket: u64,
    armed: bool,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.queue.lock();
        if let Some(q) = state.waiting.get_mut(&self.uid)
            && let Some(pos) = q.iter().position(|w| w.ticket == self.ticket)
        {
            q.remove(pos);
            self.queue.global.waiting.fetch_sub(1, Ordering::SeqCst);
            if q.is_empty() {
                state.waiting.remove(&self.uid);
                state.turn.retain(|u| *u != self.uid);
            }
        }
    }
}

impl ModelQueue {
    /// A queue running up to `capacity` requests at once.
    pub fn new(capacity: usize, global: Arc<GlobalQueue>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(QueueState { capacity: capacity.max(1), ..Default::default() }),
            global,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests running and waiting on this model.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.running, state.waiting.values().map(VecDeque::len).sum())
    }

    /// Requests `uid` has running or waiting on this model.
    pub fn user_counts(&self, uid: u32) -> (u32, usize) {
        let state = self.lock();
        (
            state.running_by_user.get(&uid).copied().unwrap_or(0),
            state.waiting.get(&uid).map_or(0, VecDeque::len),
        )
    }

    /// Waits for a slot for `uid`. Cancel-safe: dropping the future leaves the queue.
    pub async fn admit(self: &Arc<Self>, uid: u32, limits: UserLimits) -> Result<Permit, Error> {
        self.global.check_rate(uid, limits.tokens_per_minute)?;
        let (ticket, rx) = {
            let mut state = self.lock();
            let running = state.running_by_user.get(&uid).copied().unwrap_or(0);
            let queued = state.waiting.get(&uid).map_or(0, VecDeque::len);
            let can_run = state.running < state.capacity && running < limits.max_concurrent.max(1);
            if can_run && queued == 0 && state.turn.is_empty() {
                state.running += 1;
                *state.running_by_user.entry(uid).or_default() += 1;
                return Ok(Permit { queue: Arc::clone(self), uid });
            }
            if queued >= limits.max_queued as usize {
                return Err(Error::UserOverQuota {
                    message: format!(
                        "you have {queued} request(s) waiting, your limit is {}",
                        limits.max_queued
                    ),
                    retry_after: 1,
                });
            }
            if self.global.waiting() >= self.global.max_waiting {
                return Err(Error::ServiceFull { retry_after: 2 });
            }
            let (tx, rx) = oneshot::channel();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            let q = state.waiting.entry(uid).or_default();
            q.push_back(Waiter { ticket, max_concurrent: limits.max_concurrent.max(1), grant: tx });
            if q.len() == 1 {
                state.turn.push_back(uid);
            }
            self.global.waiting.fetch_add(1, Ordering::SeqCst);
            self.grant_next(&mut state);
            (ticket, rx)
        };
        let mut guard = WaitGuard { queue: Arc::clone(self), uid, ticket, armed: true };
        match rx.await {
            Ok(()) => {
                guard.armed = false;
                Ok(Permit { queue: Arc::clone(self), uid })
            }
            Err(_) => Err(Error::Internal("admission queue dropped a waiter".into())),
        }
    }

    /// Grants free slots to waiting users in round-robin order, skipping users at their limit.
    fn grant_next(&self, state: &mut QueueState) {
        let mut skipped = 0;
        while state.running < state.capacity && skipped < state.turn.len() {
            let Some(uid) = state.turn.pop_front() else { break };
            let running = state.running_by_user.get(&uid).copied().unwrap_or(0);
            let Some(queue) = state.waiting.get_mut(&uid) else { continue };
            let at_limit = queue.front().is_some_and(|w| running >= w.max_concurrent);
            if at_limit {
                state.turn.push_back(uid);
                skipped += 1;
                continue;
            }
            skipped = 0;
            let Some(waiter) = queue.pop_front() else { continue };
            let empty = queue.is_empty();
            if empty {
                state.waiting.remove(&uid);
            } else {
                state.turn.push_back(uid);
            }
            self.global.waiting.fetch_sub(1, Ordering::SeqCst);
            state.running += 1;
            *state.running_by_user.entry(uid).or_default() += 1;
            if waiter.grant.send(()).is_err() {
                // The waiter went away between being queued and granted: give the slot back.
                state.running -= 1;
                if let Some(n) = state.running_by_user.get_mut(&uid) {
                    *n -= 1;
                    if *n == 0 {
                        state.running_by_user.remove(&uid);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: UserLimits = UserLimits { max_concurrent: 8, max_queued: 100, tokens_per_minute: 0 };

    #[tokio::test]
    async fn a_late_user_is_served_before_a_backlog_drains() {
        let queue = ModelQueue::new(1, GlobalQueue::new(1000));
        let first = queue.admit(1, ROOMY).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let (queue, order) = (Arc::clone(&queue), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let _p = queue.admit(1, ROOMY).await.unwrap();
                order.lock().unwrap().push(format!("a{i}"));
                tokio::task::yield_now().await;
            }));
            tokio::task::yield_now().await;
        }
        while queue.counts().1 < 40 {
            tokio::task::yield_now().await;
        }
        let (queue_b, order_b) = (Arc::clone(&queue), Arc::clone(&order));
        let b = tokio::spawn(async move {
            let _p = queue_b.admit(2, ROOMY).await.unwrap();
            order_b.lock().unwrap().push("b".to_string());
        });
        while queue.counts().1 < 41 {
            tokio::task::yield_now().await;
        }
        drop(first);
        b.await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let b_at = order.iter().position(|s| s == "b").unwrap();
        assert!(b_at <= 1, "B must be served within one turn of A, got position {b_at}: {order:?}");
    }

    #[tokio::test]
    async fn per_user_limits_give_429_and_the_global_bound_503() {
        let queue = ModelQueue::new(1, GlobalQueue::new(2));
        let limits = UserLimits { max_concurrent: 1, max_queued: 1, tokens_per_minute: 0 };
        let _running = queue.admit(1, limits).await.unwrap();
        let q1 = Arc::clone(&queue);
        let _waiting = tokio::spawn(async move { q1.admit(1, limits).await });
        while queue.counts().1 < 1 {
            tokio::task::yield_now().await;
        }
        let over = queue.admit(1, limits).await.unwrap_err();
        assert!(matches!(over, Error::UserOverQuota { .. }), "{over}");
        let q2 = Arc::clone(&queue);
        let _other = tokio::spawn(async move { q2.admit(2, ROOMY).await });
        while queue.counts().1 < 2 {
            tokio::task::yield_now().await;
        }
        let full = queue.admit(3, ROOMY).await.unwrap_err();
        assert!(matches!(full, Error::ServiceFull { .. }), "{full}");
    }

    #[tokio::test]
    async fn abandoned_waiters_leave_the_queue() {
        let queue = ModelQueue::new(1, GlobalQueue::new(10));
        let held = queue.admit(1, ROOMY).await.unwrap();
        let q = Arc::clone(&queue);
        let waiter = tokio::spawn(async move { q.admit(2, ROOMY).await });
        while queue.counts().1 < 1 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(queue.counts(), (1, 0));
        assert_eq!(queue.global.waiting(), 0);
        drop(held);
        assert_eq!(queue.counts(), (0, 0));
        let _again = queue.admit(3, ROOMY).await.unwrap();
    }

    #[tokio::test]
    async fn tokens_per_minute_is_enforced() {
        let global = GlobalQueue::new(10);
        let queue = ModelQueue::new(4, Arc::clone(&global));
        let limits = UserLimits { max_concurrent: 4, max_queued: 4, tokens_per_minute: 100 };
        drop(queue.admit(7, limits).await.unwrap());
        global.charge(7, 150);
        let err = queue.admit(7, limits).await.unwrap_err();
        assert!(matches!(err, Error::UserOverQuota { retry_after, .. } if retry_after >= 1), "{err}");
        drop(queue.admit(8, limits).await.unwrap());
    }

    #[tokio::test]
    async fn a_user_at_their_concurrency_limit_does_not_block_others() {
        let queue = ModelQueue::new(4, GlobalQueue::new(100));
        let one = UserLimits { max_concurrent: 1, max_queued: 10, tokens_per_minute: 0 };
        let _a = queue.admit(1, one).await.unwrap();
        let q = Arc::clone(&queue);
        let _a2 = tokio::spawn(async move { q.admit(1, one).await });
        while queue.counts().1 < 1 {
            tokio::task::yield_now().await;
        }
        // User 2 gets a free slot although user 1 waits at its limit.
        let b = tokio::time::timeout(Duration::from_secs(1), queue.admit(2, one)).await;
        assert!(b.is_ok_and(|p| p.is_ok()));
    }
}
