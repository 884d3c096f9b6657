//! Event delivery from an engine thread to one request's receiver: never blocks the thread
//! (a full channel queues, consecutive text pieces merge while the client lags, log-probabilities
//! summed), and a dropped receiver discards what was queued. Shared by the llama.cpp and native
//! engines.

use std::collections::VecDeque;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::EngineEvent;

/// Delivers events in order without blocking; consecutive text merges while the client lags.
pub(crate) struct Outbox {
    tx: mpsc::Sender<EngineEvent>,
    queue: VecDeque<EngineEvent>,
}

impl Outbox {
    pub(crate) fn new(tx: mpsc::Sender<EngineEvent>) -> Self {
        Self { tx, queue: VecDeque::new() }
    }

    /// Whether the receiver was dropped.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Whether everything was delivered.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn push(&mut self, event: EngineEvent) {
        if self.queue.is_empty() {
            match self.tx.try_send(event) {
                Ok(()) | Err(TrySendError::Closed(_)) => {}
                Err(TrySendError::Full(event)) => self.queue.push_back(event),
            }
            return;
        }
        if let (Some(EngineEvent::Text { text, logprob }), EngineEvent::Text { text: more, logprob: lp }) =
            (self.queue.back_mut(), &event)
        {
            text.push_str(more);
            *logprob = match (*logprob, *lp) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
            return;
        }
        self.queue.push_back(event);
    }

    /// Sends what the channel has room for.
    pub(crate) fn flush(&mut self) {
        while let Some(event) = self.queue.pop_front() {
            match self.tx.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.queue.push_front(event);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    self.queue.clear();
                    return;
                }
            }
        }
    }
}
