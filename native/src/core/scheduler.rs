//! The continuous-batching scheduler (vLLM v1's `schedule → execute → update` shape, with the
//! Orca/Sarathi-style chunked prefill): every step it fills a token budget, first with the
//! running sequences in arrival order (a decode costs one token, a prefill chunk at most
//! `max_prefill_chunk`), then with swapped-out sequences coming back, then with new requests,
//! oldest first. New requests are admitted only while nothing was preempted this step and
//! nothing older is swapped out (first come, first served; no starvation: the oldest sequence
//! is never preempted while a younger one holds blocks).
//!
//! When a running sequence needs a block and none is available, the **youngest** running
//! sequence is preempted: swapped to host blocks ([`PreemptionMode::Swap`], if host space is
//! left) or dropped for recompute (its blocks are released, and the full ones stay in the
//! prefix cache, so the recompute mostly hits it).
//!
//! On first admission a request looks its prompt up in the prefix cache, block by block, under
//! its salt; it reuses at most `len - 1` tokens (one must run to produce logits). When the hit
//! covers the last prompt block, that block is copied before it is written (copy-on-write).
//!
//! Cost per step: O(scheduled sequences + their new blocks); a prefix lookup is
//! O(prompt blocks).

use std::collections::{HashMap, VecDeque};

use super::blocks::{BlockPool, CacheCounters, HostPool};
use super::executor::{BlockCopy, OutputRequest, SeqId, SeqStep, StepBatch};
use super::prefix::extend_keys;
use super::sequence::{SeqRequest, SeqStatus, Sequence};

/// What happens to a preempted sequence's KV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreemptionMode {
    /// Drop it and compute it again later (full blocks stay in the prefix cache).
    #[default]
    Recompute,
    /// Copy it to host swap blocks when there is room, else recompute.
    Swap,
}

/// Scheduler settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Positions per KV block.
    pub block_size: usize,
    /// Device blocks.
    pub num_gpu_blocks: usize,
    /// Host swap blocks.
    pub num_host_blocks: usize,
    /// Most tokens per step.
    pub max_step_tokens: usize,
    /// Most sequences per step.
    pub max_step_sequences: usize,
    /// Most prompt tokens of one sequence per step.
    pub max_prefill_chunk: usize,
    /// Swap or recompute.
    pub preemption: PreemptionMode,
    /// Reuse KV across requests with the same salt.
    pub prefix_caching: bool,
}

/// One step's plan: block moves to do first (in this order: swap out, swap in, copies), then
/// the batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduledStep {
    /// Device → host copies of sequences preempted to swap.
    pub swap_out: Vec<BlockCopy>,
    /// Host → device copies of sequences coming back.
    pub swap_in: Vec<BlockCopy>,
    /// Device → device copy-on-write copies.
    pub copies: Vec<BlockCopy>,
    /// The forward pass.
    pub batch: StepBatch,
    /// Sequences preempted while planning this step.
    pub preempted: Vec<SeqId>,
}

impl ScheduledStep {
    /// Whether there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.batch.seqs.is_empty()
            && self.swap_out.is_empty()
            && self.swap_in.is_empty()
            && self.copies.is_empty()
    }
}

/// Counters of the scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerCounters {
    /// Preemptions by recompute.
    pub recomputed: u64,
    /// Preemptions by swap.
    pub swapped_out: u64,
    /// Sequences swapped back in.
    pub swapped_in: u64,
    /// Prompt tokens reused from the prefix cache at admission.
    pub cached_tokens: u64,
    /// Copy-on-write block copies.
    pub cow_copies: u64,
}

/// The scheduler: sequences, queues and the KV blocks they hold.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    pool: BlockPool,
    host: HostPool,
    seqs: HashMap<SeqId, Sequence>,
    /// Oldest first.
    waiting: VecDeque<SeqId>,
    /// Oldest first.
    running: Vec<SeqId>,
    /// Oldest first.
    swapped: VecDeque<SeqId>,
    next_arrival: u64,
    counters: SchedulerCounters,
    /// Passed over in the last `schedule` (prefix in flight).
    deferred: Vec<SeqId>,
}

impl Scheduler {
    /// An empty scheduler over fresh pools.
    pub fn new(config: SchedulerConfig) -> Self {
        assert!(config.block_size > 0 && config.max_step_tokens > 0 && config.max_step_sequences > 0);
        Self {
            pool: BlockPool::new(config.num_gpu_blocks),
            host: HostPool::new(config.num_host_blocks),
            config,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            swapped: VecDeque::new(),
            next_arrival: 0,
            counters: SchedulerCounters::default(),
            deferred: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues a request (checked by the caller: non-empty prompt shorter than `max_len`).
    pub fn add(&mut self, request: SeqRequest) {
        let seq = Sequence::new(request, self.next_arrival);
        self.next_arrival += 1;
        self.waiting.push_back(seq.id);
        self.seqs.insert(seq.id, seq);
    }

    /// Whether a sequence id is live.
    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// A live sequence.
    pub fn seq(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    /// A live sequence, mutably (the engine loop samples into it).
    pub fn seq_mut(&mut self, id: SeqId) -> Option<&mut Sequence> {
        self.seqs.get_mut(&id)
    }

    /// Live sequences.
    pub fn num_seqs(&self) -> usize {
        self.seqs.len()
    }

    /// (waiting, running, swapped) counts.
    pub fn queue_lengths(&self) -> (usize, usize, usize) {
        (self.waiting.len(), self.running.len(), self.swapped.len())
    }

    /// Ids of all live sequences.
    pub fn seq_ids(&self) -> Vec<SeqId> {
        self.seqs.keys().copied().collect()
    }

    /// Running sequences, oldest first.
    pub fn running(&self) -> &[SeqId] {
        &self.running
    }

    /// The device pool (for stats and tests).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Free host blocks.
    pub fn host_available(&self) -> usize {
        self.host.num_available()
    }

    /// Counters so far.
    pub fn counters(&self) -> SchedulerCounters {
        self.counters
    }

    /// Prefix-cache counters.
    pub fn cache_counters(&self) -> CacheCounters {
        self.pool.counters()
    }

    /// Removes a sequence wherever it is and frees its blocks. Returns it, if it was live.
    pub fn remove(&mut self, id: SeqId) -> Option<Sequence> {
        let mut seq = self.seqs.remove(&id)?;
        match seq.status {
            SeqStatus::Waiting => self.waiting.retain(|&s| s != id),
            SeqStatus::Running => self.running.retain(|&s| s != id),
            SeqStatus::Swapped => self.swapped.retain(|&s| s != id),
        }
        self.pool.release_table(&mut seq.block_table);
        self.host.release_all(&mut seq.host_table);
        Some(seq)
    }

    /// Plans the next step.
    pub fn schedule(&mut self) -> ScheduledStep {
        let mut plan = ScheduledStep::default();
        let mut budget = self.config.max_step_tokens;
        self.deferred.clear();

        let mut i = 0;
        while i < self.running.len() && budget > 0 && plan.batch.seqs.len() < self.config.max_step_sequences {
            let id = self.running[i];
            let n = self.chunk_len(id, budget);
            let mut scheduled = true;
            while !self.reserve(id, n, &mut plan.copies) {
                let victim = *self.running.last().expect("running is not empty");
                self.preempt(victim, &mut plan);
                if victim == id {
                    scheduled = false;
                    break;
                }
            }
            if !scheduled {
                break;
            }
            plan.batch.seqs.push(self.step_for(id, n));
            budget -= n;
            i += 1;
        }

        if plan.preempted.is_empty() {
            self.resume_swapped(&mut plan, &mut budget);
        }
        if plan.preempted.is_empty() && self.swapped.is_empty() {
            self.admit_waiting(&mut plan, &mut budget);
        }
        plan
    }

    /// Brings swapped sequences back, oldest first, while blocks and budget allow.
    fn resume_swapped(&mut self, plan: &mut ScheduledStep, budget: &mut usize) {
        while let Some(&id) = self.swapped.front() {
            if *budget == 0 || plan.batch.seqs.len() >= self.config.max_step_sequences {
                return;
            }
            let seq = &self.seqs[&id];
            let n = seq.remaining().min(*budget).min(self.config.max_prefill_chunk.max(1));
            let need = seq.host_table.len().max(self.blocks_for(seq.num_computed + n));
            if self.pool.num_available() < need {
                return;
            }
            self.swapped.pop_front();
            let seq = self.seqs.get_mut(&id).expect("live");
            let gpu = self.pool.allocate_n(seq.host_table.len()).expect("counted");
            plan.swap_in.extend(seq.host_table.iter().zip(&gpu).map(|(&src, &dst)| BlockCopy { src, dst }));
            self.host.release_all(&mut seq.host_table);
            seq.block_table = gpu;
            seq.num_registered = 0;
            seq.status = SeqStatus::Running;
            self.counters.swapped_in += 1;
            self.insert_running(id);
            let n = self.chunk_len(id, *budget);
            if self.reserve(id, n, &mut plan.copies) {
                plan.batch.seqs.push(self.step_for(id, n));
                *budget -= n;
            }
        }
    }

    /// Admits waiting sequences, oldest first, while blocks and budget allow.
    fn admit_waiting(&mut self, plan: &mut ScheduledStep, budget: &mut usize) {
        let mut i = 0;
        while let Some(&id) = self.waiting.get(i) {
            if *budget == 0 || plan.batch.seqs.len() >= self.config.max_step_sequences {
                return;
            }
            let first = self.seqs[&id].cached_tokens.is_none();
            let hit = self.match_prefix(id);
            if self.prefix_in_flight(id) {
                // A running prefill is computing this request's next prefix block: wait for it
                // rather than compute it twice (a burst of one system prompt is prefilled once).
                self.unmatch(id);
                self.deferred.push(id);
                i += 1;
                continue;
            }
            let n = self.chunk_len(id, *budget);
            // New work leaves a watermark of free blocks (1% of the pool) for the running
            // sequences to grow into, so admitting does not force a preemption right away.
            let (need, cow) = self.blocks_needed(id, n);
            let watermark = self.config.num_gpu_blocks / 100;
            if self.pool.num_available() < need + usize::from(cow) + watermark
                || !self.reserve(id, n, &mut plan.copies)
            {
                self.unmatch(id);
                return;
            }
            self.waiting.remove(i);
            let seq = self.seqs.get_mut(&id).expect("live");
            seq.status = SeqStatus::Running;
            if first {
                seq.cached_tokens = Some(hit);
                self.counters.cached_tokens += hit as u64;
            }
            self.insert_running(id);
            plan.batch.seqs.push(self.step_for(id, n));
            *budget -= n;
        }
    }

    /// Gives back the prefix blocks a waiting sequence took in [`Self::match_prefix`].
    fn unmatch(&mut self, id: SeqId) {
        let seq = self.seqs.get_mut(&id).expect("live");
        self.pool.release_table(&mut seq.block_table);
        seq.num_computed = 0;
        seq.num_registered = 0;
    }

    /// Whether the first prefix block a waiting sequence missed is being computed right now by
    /// a running sequence's prompt (same key at the same index, not computed yet).
    fn prefix_in_flight(&self, id: SeqId) -> bool {
        if !self.config.prefix_caching {
            return false;
        }
        let seq = &self.seqs[&id];
        let k = seq.block_table.len();
        // Only blocks that would be reused: the prompt's full blocks, bar a last one that
        // holds the final token (which must run anyway).
        let Some(key) = seq.keys.get(k).filter(|_| (k + 1) * self.config.block_size < seq.tokens.len())
        else {
            return false;
        };
        let end = (k + 1) * self.config.block_size;
        self.running.iter().any(|r| {
            let r = &self.seqs[r];
            r.num_computed < end && r.keys.get(k) == Some(key)
        })
    }

    /// Waiting sequences passed over in the last [`Self::schedule`] because their prefix was
    /// being computed by a running one.
    pub fn deferred(&self) -> &[SeqId] {
        &self.deferred
    }

    /// Takes the longest cached prefix of a waiting sequence (whole blocks, at most `len - 1`
    /// tokens) into its block table; returns the tokens reused.
    fn match_prefix(&mut self, id: SeqId) -> usize {
        if !self.config.prefix_caching {
            return 0;
        }
        let bs = self.config.block_size;
        let seq = self.seqs.get_mut(&id).expect("live");
        debug_assert!(seq.block_table.is_empty() && seq.num_computed == 0);
        extend_keys(&mut seq.keys, seq.salt, &seq.tokens, bs);
        for key in &seq.keys {
            match self.pool.lookup(key) {
                Some(b) => seq.block_table.push(b),
                None => break,
            }
        }
        // Full hits are registered already; the next registration starts after them.
        seq.num_registered = seq.block_table.len();
        seq.num_computed = (seq.block_table.len() * bs).min(seq.tokens.len() - 1);
        seq.num_computed
    }

    /// Tokens to feed this step: all that is left, within the budget and the prefill chunk.
    fn chunk_len(&self, id: SeqId, budget: usize) -> usize {
        let seq = &self.seqs[&id];
        let remaining = seq.remaining();
        let n = if remaining > 1 { remaining.min(self.config.max_prefill_chunk.max(1)) } else { remaining };
        n.min(budget)
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.config.block_size)
    }

    /// Makes the blocks for positions `num_computed..num_computed + n` present and private, or
    /// changes nothing and returns false.
    fn reserve(&mut self, id: SeqId, n: usize, copies: &mut Vec<BlockCopy>) -> bool {
        let bs = self.config.block_size;
        let (need, cow) = self.blocks_needed(id, n);
        if self.pool.num_available() < need + usize::from(cow) {
            return false;
        }
        let seq = self.seqs.get_mut(&id).expect("live");
        let first_write = seq.num_computed / bs;
        if first_write < seq.block_table.len() {
            self.counters.cow_copies += u64::from(cow);
            let ok = self.pool.make_writable(&mut seq.block_table, first_write, copies);
            debug_assert!(ok, "counted");
            if seq.num_registered > first_write {
                seq.num_registered = first_write;
            }
        }
        let fresh = self.pool.allocate_n(need).expect("counted");
        seq.block_table.extend(fresh);
        true
    }

    /// New blocks for positions `num_computed..num_computed + n`, and whether the first one
    /// written must be copied first.
    fn blocks_needed(&self, id: SeqId, n: usize) -> (usize, bool) {
        let bs = self.config.block_size;
        let seq = &self.seqs[&id];
        let need = (seq.num_computed + n).div_ceil(bs).saturating_sub(seq.block_table.len());
        let first_write = seq.num_computed / bs;
        let cow =
            first_write < seq.block_table.len() && self.pool.ref_count(seq.block_table[first_write]) > 1;
        (need, cow)
    }

    fn step_for(&self, id: SeqId, n: usize) -> SeqStep {
        let seq = &self.seqs[&id];
        let end = seq.num_computed + n;
        let output = if end < seq.tokens.len() {
            OutputRequest::None
        } else if seq.sampler.argmax_suffices() && !seq.logprobs {
            OutputRequest::Argmax
        } else {
            OutputRequest::Logits
        };
        SeqStep {
            seq_id: id,
            tokens: seq.tokens[seq.num_computed..end].to_vec(),
            start_pos: seq.num_computed,
            block_table: seq.block_table.clone(),
            output,
        }
    }

    fn insert_running(&mut self, id: SeqId) {
        let arrival = self.seqs[&id].arrival;
        let at = self.running.partition_point(|s| self.seqs[s].arrival < arrival);
        self.running.insert(at, id);
    }

    /// Preempts a running sequence (swap if asked and possible, else recompute).
    fn preempt(&mut self, id: SeqId, plan: &mut ScheduledStep) {
        self.running.retain(|&s| s != id);
        let seq = self.seqs.get_mut(&id).expect("live");
        seq.preemptions += 1;
        plan.preempted.push(id);
        let swap = self.config.preemption == PreemptionMode::Swap
            && seq.num_computed > 0
            && self.host.num_available() >= seq.block_table.len();
        if swap {
            let host = self.host.allocate_n(seq.block_table.len()).expect("counted");
            plan.swap_out
                .extend(seq.block_table.iter().zip(&host).map(|(&src, &dst)| BlockCopy { src, dst }));
            seq.host_table = host;
            self.pool.release_table(&mut seq.block_table);
            seq.status = SeqStatus::Swapped;
            self.counters.swapped_out += 1;
            let arrival = seq.arrival;
            let at = self.swapped.partition_point(|s| self.seqs[s].arrival < arrival);
            self.swapped.insert(at, id);
        } else {
            self.pool.release_table(&mut seq.block_table);
            seq.num_computed = 0;
            seq.num_registered = 0;
            seq.status = SeqStatus::Waiting;
            self.counters.recomputed += 1;
            let arrival = seq.arrival;
            let at = self.waiting.partition_point(|s| self.seqs[s].arrival < arrival);
            self.waiting.insert(at, id);
        }
    }

    /// Records that a step ran: `n` more tokens of `id` are in the cache; full blocks go to the
    /// prefix cache.
    pub fn advance(&mut self, id: SeqId, n: usize) {
        let bs = self.config.block_size;
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        seq.num_computed += n;
        if !self.config.prefix_caching {
            return;
        }
        let full = seq.num_computed / bs;
        extend_keys(&mut seq.keys, seq.salt, &seq.tokens[..full * bs], bs);
        while seq.num_registered < full {
            let i = seq.num_registered;
            self.pool.register(seq.block_table[i], &seq.keys[i]);
            seq.num_registered += 1;
        }
    }

    /// Checks the bookkeeping (tests): pool invariants, every block reference accounted for by
    /// exactly the tables of live sequences, queue membership matching statuses.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pool.check_invariants()?;
        let mut refs = vec![0u32; self.pool.num_blocks()];
        let mut host_used = 0;
        for seq in self.seqs.values() {
            for &b in &seq.block_table {
                refs[b as usize] += 1;
            }
            host_used += seq.host_table.len();
            let bs = self.config.block_size;
            match seq.status {
                SeqStatus::Running => {
                    if seq.block_table.len() < seq.num_computed.div_ceil(bs) {
                        return Err(format!("seq {} lacks blocks", seq.id));
                    }
                }
                SeqStatus::Waiting => {
                    if !seq.block_table.is_empty() || seq.num_computed != 0 {
                        return Err(format!("waiting seq {} holds blocks", seq.id));
                    }
                }
                SeqStatus::Swapped => {
                    if !seq.block_table.is_empty() || seq.host_table.len() != seq.num_computed.div_ceil(bs) {
                        return Err(format!("swapped seq {} has wrong tables", seq.id));
                    }
                }
            }
        }
        for (b, &r) in refs.iter().enumerate() {
            if self.pool.ref_count(b as u32) != r {
                return Err(format!("block {b}: ref {} but {r} tables", self.pool.ref_count(b as u32)));
            }
        }
        if host_used + self.host.num_available() != self.host.num_blocks() {
            return Err("host blocks leaked".into());
        }
        let count = |st: SeqStatus| self.seqs.values().filter(|s| s.status == st).count();
        if count(SeqStatus::Waiting) != self.waiting.len()
            || count(SeqStatus::Running) != self.running.len()
            || count(SeqStatus::Swapped) != self.swapped.len()
        {
            return Err("queues and statuses disagree".into());
        }
        if self.running.windows(2).any(|w| self.seqs[&w[0]].arrival > self.seqs[&w[1]].arrival) {
            return Err("running is not in arrival order".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
