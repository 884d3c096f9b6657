//! One running request: its prompt progress, sampler, text pipeline (UTF-8 → stop strings),
//! timings, and the outbox that delivers events without ever blocking the engine thread.
//!
//! The event channel is bounded. When a client reads slowly, events wait in the outbox, and
//! consecutive text is merged into one event, so the queue stays short and the engine never
//! waits for a client. A closed channel means the client is gone: the sequence is cancelled.

use std::time::Instant;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;

use super::prompt::Admitted;
use super::sampler::SequenceSampler;
use crate::engine::outbox::Outbox;
use crate::engine::stop::{StopMatcher, StopOutcome, Utf8Stream};
use crate::engine::{EngineEvent, FinishReason, RequestStats};

/// A request on its way to the engine thread.
pub(crate) struct Pending {
    pub admitted: Admitted,
    pub tx: mpsc::Sender<EngineEvent>,
}

/// A request holding a slot.
pub(super) struct Sequence {
    pub id: String,
    pub prompt: Vec<LlamaToken>,
    /// Prompt tokens whose KV is resident (reused or decoded).
    pub prompt_done: usize,
    pub cached_tokens: u32,
    pub sampler: SequenceSampler,
    /// The last sampled token, to be decoded in the next step.
    pub next: Option<LlamaToken>,
    /// Prompt tokens to decode in the current step.
    pub chunk: usize,
    /// Row of this sequence's logits in the current batch.
    pub logits_row: Option<i32>,
    pub generated: u32,
    pub max_tokens: Option<u32>,
    /// Positions this sequence may use.
    pub n_ctx: u32,
    pub logprobs: bool,
    /// Admission order, for prefill scheduling.
    pub order: u64,
    utf8: Utf8Stream,
    stop: StopMatcher,
    piece: Vec<u8>,
    text: String,
    logprob_acc: Option<f32>,
    /// A stop string matched (its text and anything after it is never sent).
    stop_hit: bool,
    pub out: Outbox,
    admitted_at: Instant,
    prompt_done_at: Option<Instant>,
}

impl Sequence {
    pub(super) fn new(pending: Pending, reuse: usize, order: u64) -> Self {
        let Pending { admitted, tx } = pending;
        Self {
            id: admitted.id,
            prompt_done: reuse,
            cached_tokens: u32::try_from(reuse).unwrap_or(u32::MAX),
            prompt: admitted.tokens,
            sampler: admitted.sampler,
            next: None,
            chunk: 0,
            logits_row: None,
            generated: 0,
            max_tokens: admitted.max_tokens,
            n_ctx: admitted.n_ctx,
            logprobs: admitted.logprobs,
            order,
            utf8: Utf8Stream::new(),
            stop: StopMatcher::new(&admitted.stop),
            piece: Vec::with_capacity(32),
            text: String::with_capacity(32),
            logprob_acc: None,
            stop_hit: false,
            out: Outbox::new(tx),
            admitted_at: {
                let now = Instant::now();
                tracing::trace!(
                    queued_us = now.duration_since(admitted.received).as_micros() as u64,
                    "slot assigned"
                );
                now
            },
            prompt_done_at: None,
        }
    }

    /// Whether prompt tokens remain to be decoded.
    pub(super) fn prefilling(&self) -> bool {
        self.prompt_done < self.prompt.len()
    }

    /// Marks the end of prompt evaluation (first logits are available).
    pub(super) fn finish_prompt(&mut self) {
        if self.prompt_done_at.is_none() {
            self.prompt_done_at = Some(Instant::now());
            self.out.push(EngineEvent::PromptDone {
                prompt_tokens: self.prompt_tokens(),
                cached_tokens: self.cached_tokens,
            });
        }
    }

    /// Handles a sampled token at `position`; returns why the sequence ends, if it does.
    pub(super) fn on_token(
        &mut self,
        model: &LlamaModel,
        token: LlamaToken,
        position: usize,
        logprob: Option<f32>,
    ) -> Option<FinishReason> {
        let vocab = model.vocab();
        if vocab.is_eog(token) {
            return Some(FinishReason::Stop);
        }
        self.generated += 1;
        if let Some(lp) = logprob {
            self.logprob_acc = Some(self.logprob_acc.unwrap_or(0.0) + lp);
        }
        self.piece.clear();
        vocab.token_to_piece_into(token, &mut self.piece, false, None);
        self.text.clear();
        self.utf8.push(&self.piece, &mut self.text);
        if !self.text.is_empty() {
            let text = std::mem::take(&mut self.text);
            let stopped = self.release(&text);
            self.text = text;
            if stopped {
                return Some(FinishReason::Stop);
            }
        }
        if self.max_tokens.is_some_and(|m| self.generated >= m) || position + 1 >= self.n_ctx as usize {
            return Some(FinishReason::Length);
        }
        self.next = Some(token);
        None
    }

    /// Passes text through the stop matcher and queues what may be sent; `true` on a stop.
    fn release(&mut self, text: &str) -> bool {
        let (out, stopped) = match self.stop.push(text) {
            StopOutcome::Continue(t) => (t, false),
            StopOutcome::Stopped(t) => (t, true),
        };
        if !out.is_empty() {
            let logprob = self.logprob_acc.take();
            self.out.push(EngineEvent::Text { text: out, logprob });
        }
        self.stop_hit |= stopped;
        stopped
    }

    /// Ends the sequence: flushes held text (unless a stop string matched) and queues `Done`.
    pub(super) fn finish(&mut self, reason: FinishReason) {
        if reason == FinishReason::Cancelled {
            return;
        }
        self.finish_prompt();
        if !self.stop_hit {
            let mut tail = String::new();
            self.utf8.finish(&mut tail);
            if !tail.is_empty() && self.release(&tail) {
                self.send_done(FinishReason::Stop);
                return;
            }
            let held = self.stop.finish();
            if !held.is_empty() {
                let logprob = self.logprob_acc.take();
                self.out.push(EngineEvent::Text { text: held, logprob });
            }
        }
        self.send_done(reason);
    }

    fn send_done(&mut self, reason: FinishReason) {
        let now = Instant::now();
        let prompt_done_at = self.prompt_done_at.unwrap_or(now);
        let stats = RequestStats {
            prompt_tokens: self.prompt_tokens(),
            cached_tokens: self.cached_tokens,
            prompt_eval_ns: nanos(prompt_done_at.duration_since(self.admitted_at)),
            generated_tokens: self.generated,
            eval_ns: nanos(now.duration_since(prompt_done_at)),
        };
        self.out.push(EngineEvent::Done { reason, stats });
    }

    /// Fails the request.
    pub(super) fn fail(&mut self, message: String) {
        self.out.push(EngineEvent::Error(message));
    }

    fn prompt_tokens(&self) -> u32 {
        u32::try_from(self.prompt.len()).unwrap_or(u32::MAX)
    }
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
