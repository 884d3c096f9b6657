//! The engine thread: owns the `LlamaContext` and runs *intake → cancel → admit → schedule →
//! decode → sample → emit* until the handle is dropped.
//!
//! One step is one `llama_decode` call holding the next token of every generating sequence
//! plus prompt chunks of prefilling ones (at most `prefill_chunk` prompt tokens while anything
//! generates, `n_batch` otherwise; the oldest request's prompt first). Tokens are added in
//! sequence-id order: with one KV stream per sequence llama.cpp forms micro-batches of
//! consecutive sequence ids, so sequences on ids 0..k decode in a single pass.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::Duration;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::embed::{EmbedJob, Embedder};
use super::sampler::Scratch;
use super::sequence::{Pending, Sequence};
use super::slots::{self, SlotInfo};
use super::{HugePageMode, LlamaCppConfig, SharedStats, hugepages};
use crate::engine::outbox::Outbox;
use crate::engine::sampling::log_prob;
use crate::engine::{EngineError, FinishReason};

/// Shortest cached prefix worth copying from another sequence's KV stream.
const MIN_COPY_TOKENS: usize = 32;

/// Work for the engine thread.
pub(crate) enum Command {
    /// A validated generation request.
    Generate(Box<Pending>),
    /// An embeddings request.
    Embed(EmbedJob),
}

/// What the thread reports once the context exists.
pub(super) struct Ready {
    pub n_ctx_seq: u32,
    pub kv_bytes: u64,
}

/// Thread entry point.
pub(super) fn run(
    model: &LlamaModel,
    backend: &'static LlamaBackend,
    config: &LlamaCppConfig,
    commands: Receiver<Command>,
    stats: &SharedStats,
    ready: SyncSender<Result<Ready, EngineError>>,
) {
    let mut worker = match Worker::new(model, backend, config, stats) {
        Ok(w) => w,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ =
        ready.send(Ok(Ready { n_ctx_seq: worker.n_ctx_seq, kv_bytes: kv_bytes(model, worker.n_ctx_total) }));
    worker.serve(&commands);
    worker.shutdown();
}

struct Slot {
    seq_id: i32,
    /// Tokens whose KV is resident in this sequence, positions `0..len`.
    cached: Vec<LlamaToken>,
    salt: Option<u64>,
    last_used: u64,
    seq: Option<Box<Sequence>>,
}

struct Worker<'m> {
    model: &'m LlamaModel,
    backend: &'static LlamaBackend,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    slots: Vec<Slot>,
    waiting: VecDeque<Box<Pending>>,
    /// Finished sequences whose last events still wait for room in their channel.
    draining: Vec<Outbox>,
    scratch: Scratch,
    stats: &'m SharedStats,
    embedder: Option<Embedder<'m>>,
    n_ctx_seq: u32,
    n_ctx_total: u32,
    n_batch: usize,
    prefill_chunk: usize,
    n_threads: i32,
    /// Sliding window of SWA layers that keep only the window (0: none or full-size cache).
    n_swa: i32,
    tick: u64,
    admitted: u64,
    /// Reused buffer: prefilling sequences by admission order.
    prefill_order: Vec<(u64, usize)>,
}

impl<'m> Worker<'m> {
    fn new(
        model: &'m LlamaModel,
        backend: &'static LlamaBackend,
        config: &LlamaCppConfig,
        stats: &'m SharedStats,
    ) -> Result<Self, EngineError> {
        let n_threads = match config.n_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as i32),
            n => i32::try_from(n).unwrap_or(i32::MAX),
        };
        let n_parallel = config.n_parallel.max(1);
        let train = model.n_ctx_train();
        let mut n_ctx_seq = config.n_ctx.max(16);
        if train > 0 {
            n_ctx_seq = n_ctx_seq.min(train);
        }
        let total = n_ctx_seq
            .checked_mul(n_parallel)
            .and_then(NonZeroU32::new)
            .ok_or_else(|| EngineError::Load("context too large".into()))?;
        let n_batch = config.n_batch.max(n_parallel).max(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(total))
            .with_n_batch(n_batch)
            .with_n_ubatch(config.n_ubatch.clamp(1, n_batch))
            .with_n_seq_max(n_parallel)
            .with_n_threads(n_threads)
            .with_n_threads_batch(n_threads)
            .with_kv_unified(config.kv_unified)
            .with_swa_full(config.swa_full)
            .with_embeddings(false);
        let (ctx, new_mappings) = match config.huge_pages {
            HugePageMode::Off => (model.new_context(backend, params), Vec::new()),
            HugePageMode::Advise => hugepages::advise_new(|| model.new_context(backend, params), false),
            HugePageMode::Collapse => hugepages::advise_new(|| model.new_context(backend, params), true),
        };
        let ctx = ctx.map_err(|e| EngineError::Load(format!("cannot create the llama.cpp context: {e}")))?;
        let usage = hugepages::usage_of(&new_mappings);
        stats.huge_page_bytes.store(usage.anon_huge + usage.hugetlb, Ordering::Relaxed);
        stats.context_bytes.store(new_mappings.iter().map(|m| m.len() as u64).sum(), Ordering::Relaxed);
        tracing::info!(
            context_mib = usage.rss >> 20,
            huge_mib = (usage.anon_huge + usage.hugetlb) >> 20,
            "llama.cpp context memory"
        );

        // llama.cpp may round the context; each stream gets an equal share.
        let actual = ctx.n_ctx();
        let n_ctx_seq =
            if config.kv_unified { n_ctx_seq.min(actual) } else { n_ctx_seq.min(actual / n_parallel) };
        let n_swa = if config.swa_full { 0 } else { sliding_window(model) };
        let n_vocab = usize::try_from(model.n_vocab()).unwrap_or(0);
        let slots = (0..n_parallel as i32)
            .map(|seq_id| Slot { seq_id, cached: Vec::new(), salt: None, last_used: 0, seq: None })
            .collect();
        Ok(Self {
            model,
            backend,
            ctx,
            batch: LlamaBatch::new(n_batch as usize, 1),
            slots,
            waiting: VecDeque::new(),
            draining: Vec::new(),
            scratch: Scratch::new(n_vocab),
            stats,
            embedder: None,
            n_ctx_seq,
            n_ctx_total: total.get(),
            n_batch: n_batch as usize,
            prefill_chunk: config.prefill_chunk.max(1) as usize,
            n_threads,
            n_swa,
            tick: 0,
            admitted: 0,
            prefill_order: Vec::with_capacity(n_parallel as usize),
        })
    }

    fn has_work(&self) -> bool {
        !self.waiting.is_empty() || self.slots.iter().any(|s| s.seq.is_some())
    }

    /// The loop; returns when the handle is gone.
    fn serve(&mut self, commands: &Receiver<Command>) {
        loop {
            if !self.has_work() {
                // Idle: block for the next command (briefly, while final events wait for room).
                let next = if self.draining.is_empty() {
                    commands.recv().map_err(|_| RecvTimeoutError::Disconnected)
                } else {
                    commands.recv_timeout(Duration::from_millis(5))
                };
                match next {
                    Ok(c) => self.handle(c),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(c) => self.handle(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            self.drop_cancelled();
            self.admit();
            self.publish();
            if self.slots.iter().any(|s| s.seq.is_some()) {
                self.step();
                self.publish();
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Generate(pending) => self.waiting.push_back(pending),
            Command::Embed(job) => {
                let result = self.embed(&job.inputs);
                let _ = job.reply.send(result);
            }
        }
    }

    fn embed(&mut self, inputs: &[Vec<LlamaToken>]) -> Result<crate::engine::EmbedResponse, EngineError> {
        if self.embedder.is_none() {
            self.embedder = Some(Embedder::new(self.model, self.backend, self.n_ctx_seq, self.n_threads)?);
        }
        match self.embedder.as_mut() {
            Some(e) => e.embed(inputs),
            None => Err(EngineError::Internal("no embedding context".into())),
        }
    }

    /// Applies cancellations: dropped receivers free their slot now.
    fn drop_cancelled(&mut self) {
        self.waiting.retain(|p| !p.tx.is_closed());
        for slot in &mut self.slots {
            if slot.seq.as_ref().is_some_and(|s| s.out.is_closed()) {
                if let Some(seq) = slot.seq.take() {
                    tracing::debug!(request = %seq.id, "cancelled by the client");
                }
                self.tick += 1;
                slot.last_used = self.tick;
            }
        }
        for out in &mut self.draining {
            out.flush();
        }
        self.draining.retain(|o| !o.is_empty() && !o.is_closed());
        for slot in &mut self.slots {
            if let Some(seq) = slot.seq.as_mut() {
                seq.out.flush();
            }
        }
    }

    /// Moves waiting requests into free slots, reusing cached prefixes.
    fn admit(&mut self) {
        let mut deferred = Vec::new();
        while let Some(pending) = self.waiting.pop_front() {
            if self.prefix_in_progress(&pending.admitted) {
                deferred.push(pending);
                continue;
            }
            let placement = {
                let infos: Vec<SlotInfo<'_, LlamaToken>> = self
                    .slots
                    .iter()
                    .map(|s| SlotInfo {
                        cached: &s.cached,
                        salt: s.salt,
                        busy: s.seq.is_some(),
                        last_used: s.last_used,
                    })
                    .collect();
                slots::place(&infos, pending.admitted.cache_salt, &pending.admitted.tokens, MIN_COPY_TOKENS)
            };
            let Some(placement) = placement else {
                self.waiting.push_front(pending);
                break;
            };
            let reuse = self.prepare_slot(placement, &pending.admitted.tokens);
            let slot = &mut self.slots[placement.slot];
            slot.salt = Some(pending.admitted.cache_salt);
            self.admitted += 1;
            let seq = Sequence::new(*pending, reuse, self.admitted);
            tracing::debug!(request = %seq.id, slot = slot.seq_id, prompt = seq.prompt.len(), reuse, "admitted");
            slot.seq = Some(Box::new(seq));
        }
        // Deferred requests keep their place at the front, in order.
        for pending in deferred.into_iter().rev() {
            self.waiting.push_front(pending);
        }
    }

    /// Whether a running sequence under the same salt is still prefilling a long prefix this
    /// request shares: waiting for it and copying its KV beats computing the prefix twice
    /// (8 clients sending one system prompt at once prefill it once, not 8 times).
    fn prefix_in_progress(&self, request: &super::prompt::Admitted) -> bool {
        let usable = request.tokens.len().saturating_sub(1);
        self.slots.iter().any(|slot| {
            let Some(seq) = slot.seq.as_ref() else { return false };
            if slot.salt != Some(request.cache_salt) || !seq.prefilling() {
                return false;
            }
            let shared = slots::common_prefix(&seq.prompt, &request.tokens).min(usable);
            shared >= MIN_COPY_TOKENS && slot.cached.len() < shared
        })
    }

    /// Makes the slot's KV hold exactly `prompt[..reuse]`; returns the `reuse` achieved.
    fn prepare_slot(&mut self, placement: slots::Placement, prompt: &[LlamaToken]) -> usize {
        let dst = placement.slot;
        let dst_id = self.slots[dst].seq_id;
        let mut reuse = placement.reuse;
        if let Some(src) = placement.copy_from {
            let src_id = self.slots[src].seq_id;
            let _ = self.ctx.clear_kv_cache_seq(Some(dst_id as u32), None, None);
            // Streams can only be copied whole; the tail is trimmed below.
            let copied = self.ctx.copy_kv_cache_seq(src_id, dst_id, None, None).is_ok();
            let cached = if copied { self.slots[src].cached[..reuse].to_vec() } else { Vec::new() };
            self.slots[dst].cached = cached;
            reuse = self.slots[dst].cached.len();
        }
        let trimmed =
            self.ctx.clear_kv_cache_seq(Some(dst_id as u32), Some(reuse as u32), None).unwrap_or(false);
        self.slots[dst].cached.truncate(reuse);
        let pos_min = self.ctx.kv_cache_seq_pos_min(dst_id);
        let pos_max = self.ctx.kv_cache_seq_pos_max(dst_id);
        let window_ok = pos_min <= 0 || (self.n_swa > 0 && pos_min <= (reuse as i32 - self.n_swa).max(0));
        let consistent = trimmed && pos_max == reuse as i32 - 1 && window_ok;
        if reuse > 0 && !consistent {
            // The cache could not be cut there (e.g. sliding-window cells already overwritten):
            // start over.
            tracing::debug!(slot = dst_id, reuse, pos_min, pos_max, "prefix not reusable");
            let _ = self.ctx.clear_kv_cache_seq(Some(dst_id as u32), None, None);
            self.slots[dst].cached.clear();
            reuse = 0;
        } else if reuse == 0 {
            let _ = self.ctx.clear_kv_cache_seq(Some(dst_id as u32), None, None);
        }
        debug_assert!(self.slots[dst].cached.as_slice() == &prompt[..reuse]);
        reuse
    }

    /// One decode step for every sequence in a slot.
    fn step(&mut self) {
        self.schedule_prefill();
        self.batch.clear();
        let mut n_prompt = 0u64;
        let mut n_generated = 0u64;
        let mut rows = 0i32;
        for slot in &mut self.slots {
            let Some(seq) = slot.seq.as_mut() else { continue };
            seq.logits_row = None;
            if let Some(token) = seq.next {
                let pos = slot.cached.len() as i32;
                if self.batch.add(token, pos, &[slot.seq_id], true).is_err() {
                    continue;
                }
                seq.logits_row = Some(rows);
                rows += 1;
                n_generated += 1;
            } else if seq.chunk > 0 {
                let start = seq.prompt_done;
                let end = start + seq.chunk;
                for (i, &token) in seq.prompt[start..end].iter().enumerate() {
                    let pos = (start + i) as i32;
                    let last = start + i + 1 == seq.prompt.len();
                    if self.batch.add(token, pos, &[slot.seq_id], last).is_err() {
                        break;
                    }
                    if last {
                        seq.logits_row = Some(rows);
                    }
                    rows += 1;
                    n_prompt += 1;
                }
            }
        }
        if rows == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            self.fail_batch(&format!("llama_decode failed: {e}"));
            return;
        }
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats.prompt_tokens.fetch_add(n_prompt, Ordering::Relaxed);
        self.stats.generated_tokens.fetch_add(n_generated, Ordering::Relaxed);
        self.commit_and_sample();
    }

    /// Splits this step's prompt budget among prefilling sequences, oldest first.
    fn schedule_prefill(&mut self) {
        let generating =
            self.slots.iter().filter(|s| s.seq.as_ref().is_some_and(|q| q.next.is_some())).count();
        let mut budget = if generating > 0 { self.prefill_chunk } else { self.n_batch };
        budget = budget.min(self.n_batch.saturating_sub(generating));
        let mut order = std::mem::take(&mut self.prefill_order);
        order.clear();
        order.extend(self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.seq.as_ref().filter(|q| q.next.is_none() && q.prefilling()).map(|q| (q.order, i))
        }));
        order.sort_unstable();
        for slot in &mut self.slots {
            if let Some(seq) = slot.seq.as_mut() {
                seq.chunk = 0;
            }
        }
        for &(_, i) in &order {
            if let Some(seq) = self.slots[i].seq.as_mut() {
                let chunk = (seq.prompt.len() - seq.prompt_done).min(budget);
                seq.chunk = chunk;
                budget -= chunk;
            }
        }
        self.prefill_order = order;
    }

    /// Records what was decoded, samples where logits are ready, emits text, ends sequences.
    fn commit_and_sample(&mut self) {
        for slot in &mut self.slots {
            let Some(seq) = slot.seq.as_mut() else { continue };
            if let Some(token) = seq.next.take() {
                slot.cached.push(token);
            } else if seq.chunk > 0 {
                let start = seq.prompt_done;
                slot.cached.extend_from_slice(&seq.prompt[start..start + seq.chunk]);
                seq.prompt_done += seq.chunk;
                seq.chunk = 0;
            }
            let Some(row) = seq.logits_row.take() else { continue };
            seq.finish_prompt();
            let finish = if seq.max_tokens == Some(0) {
                Some(FinishReason::Length)
            } else {
                let logits = self.ctx.get_logits_ith(row);
                match seq.sampler.sample(logits, &mut self.scratch) {
                    Some(token) => {
                        let logprob = seq.logprobs.then(|| log_prob(logits, token.0 as usize));
                        seq.sampler.accept(token);
                        seq.on_token(self.model, token, slot.cached.len(), logprob)
                    }
                    None => {
                        seq.fail("the output grammar allows no further token".into());
                        Some(FinishReason::Cancelled)
                    }
                }
            };
            if let Some(reason) = finish {
                if let Some(mut seq) = slot.seq.take() {
                    seq.finish(reason);
                    seq.out.flush();
                    if !seq.out.is_empty() {
                        self.draining.push(seq.out);
                    }
                }
                self.tick += 1;
                slot.last_used = self.tick;
            }
        }
    }

    /// A failed decode: every sequence in the batch gets an error and loses its KV.
    fn fail_batch(&mut self, message: &str) {
        tracing::error!("{message}");
        for slot in &mut self.slots {
            if let Some(mut seq) = slot.seq.take() {
                seq.fail(message.to_owned());
                seq.out.flush();
                if !seq.out.is_empty() {
                    self.draining.push(seq.out);
                }
            }
            let _ = self.ctx.clear_kv_cache_seq(Some(slot.seq_id as u32), None, None);
            slot.cached.clear();
            slot.salt = None;
        }
    }

    fn publish(&self) {
        let active = self.slots.iter().filter(|s| s.seq.is_some()).count();
        self.stats.active.store(active, Ordering::Relaxed);
        self.stats.waiting.store(self.waiting.len(), Ordering::Relaxed);
    }

    /// The handle is gone: tell whoever still listens.
    fn shutdown(&mut self) {
        for slot in &mut self.slots {
            if let Some(mut seq) = slot.seq.take() {
                seq.fail("the engine stopped".into());
                seq.out.flush();
            }
        }
        for pending in self.waiting.drain(..) {
            let _ = pending.tx.try_send(crate::engine::EngineEvent::Error("the engine stopped".into()));
        }
        self.publish();
    }
}

/// `<arch>.attention.sliding_window`, 0 when absent.
fn sliding_window(model: &LlamaModel) -> i32 {
    let arch = model.meta_val_str("general.architecture").unwrap_or_default();
    model
        .meta_val_str(&format!("{arch}.attention.sliding_window"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Size of an F16 KV cache of `cells` cells over all layers (an estimate: sliding-window
/// layers may be smaller when `swa_full` is off).
fn kv_bytes(model: &LlamaModel, cells: u32) -> u64 {
    let arch = model.meta_val_str("general.architecture").unwrap_or_default();
    let meta = |key: &str| {
        model.meta_val_str(&format!("{arch}.{key}")).ok().and_then(|v| v.trim().parse::<u64>().ok())
    };
    let n_head = u64::from(model.n_head().max(1));
    let n_head_kv = u64::from(model.n_head_kv().max(1));
    let head = u64::try_from(model.n_embd()).unwrap_or(0) / n_head;
    let k = meta("attention.key_length").unwrap_or(head);
    let v = meta("attention.value_length").unwrap_or(head);
    u64::from(model.n_layer()) * (k + v) * n_head_kv * 2 * u64::from(cells)
}
