//! The engine loop of the core, one call per step: apply the plan's block moves, run the batch on
//! the [`Executor`], then update: advance computed tokens, sample where a sequence finished its
//! known tokens, detect the end (stop token, `max_new_tokens`, `max_len`) and free finished
//! sequences. Requests join ([`EngineCore::add`]) and leave ([`EngineCore::abort`]) between steps,
//! so a cancellation takes effect within one step. No threads and no clocks here: the daemon's
//! adapter owns the thread, the timings and the text.

use super::executor::{ExecError, Executor, OutputRequest, SeqId, StepOutput, TokenId};
use super::sampler::log_prob;
use super::scheduler::{Scheduler, SchedulerConfig};
use super::sequence::{FinishReason, SeqRequest};

/// Errors of the core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The request cannot run on this model (empty prompt, too long, bad sampling values).
    #[error("{0}")]
    InvalidRequest(String),
    /// A sequence id that is already live.
    #[error("sequence {0} already exists")]
    DuplicateSeq(SeqId),
    /// The executor failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// What happened to one sequence in a step.
#[derive(Debug, Clone, PartialEq)]
pub enum SeqEvent {
    /// The prompt is done (sent just before the first `Token`).
    PromptDone {
        /// Which sequence.
        seq: SeqId,
        /// Prompt tokens reused from the prefix cache at admission.
        cached_tokens: usize,
    },
    /// A token was generated. `first` marks the first one (the prompt is done).
    Token {
        /// Which sequence.
        seq: SeqId,
        /// The token (a stop token too, then followed by `Finished { Stop }`).
        token: TokenId,
        /// `log softmax` of the raw logits at `token`, when asked for.
        logprob: Option<f32>,
        /// The first generated token.
        first: bool,
        /// A stop token (end of generation): not text, not counted as generated.
        stop: bool,
    },
    /// The sequence ended and was freed.
    Finished {
        /// Which sequence.
        seq: SeqId,
        /// Why.
        reason: FinishReason,
        /// Tokens generated, the stop token excluded.
        generated: usize,
        /// Prompt tokens reused from the prefix cache.
        cached_tokens: usize,
    },
    /// The step that held this sequence failed; it was removed.
    Failed {
        /// Which sequence.
        seq: SeqId,
        /// The executor's error.
        message: String,
    },
}

/// Counters for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepCounters {
    /// Steps run.
    pub steps: u64,
    /// Tokens fed (prompt, recompute and decode).
    pub tokens_fed: u64,
    /// Tokens generated.
    pub tokens_generated: u64,
}

/// The scheduler plus an executor.
pub struct EngineCore {
    scheduler: Scheduler,
    executor: Box<dyn Executor>,
    out: StepOutput,
    vocab_size: usize,
    max_len: usize,
    counters: StepCounters,
    device_failure: Option<String>,
}

impl std::fmt::Debug for EngineCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineCore").field("scheduler", &self.scheduler).finish_non_exhaustive()
    }
}

/// Settings the executor does not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    /// Most prompt tokens of one sequence per step.
    pub max_prefill_chunk: usize,
    /// Swap or recompute.
    pub preemption: super::scheduler::PreemptionMode,
    /// Reuse KV across requests with the same salt.
    pub prefix_caching: bool,
    /// Longest sequence to serve (0: the model's, bounded by the KV pool).
    pub max_len: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            max_prefill_chunk: 512,
            preemption: super::scheduler::PreemptionMode::Swap,
            prefix_caching: true,
            max_len: 0,
        }
    }
}

impl EngineCore {
    /// A core over a loaded executor.
    pub fn new(executor: Box<dyn Executor>, config: CoreConfig) -> Self {
        let layout = executor.kv_layout();
        let limits = executor.limits();
        let shape = executor.model_shape();
        let pool_len = layout.num_gpu_blocks * layout.block_size;
        let mut max_len = shape.max_context.min(pool_len);
        if config.max_len > 0 {
            max_len = max_len.min(config.max_len);
        }
        let scheduler = Scheduler::new(SchedulerConfig {
            block_size: layout.block_size,
            num_gpu_blocks: layout.num_gpu_blocks,
            num_host_blocks: layout.num_host_blocks,
            max_step_tokens: limits.max_step_tokens,
            max_step_sequences: limits.max_step_sequences,
            max_prefill_chunk: config.max_prefill_chunk.min(limits.max_step_tokens),
            preemption: config.preemption,
            prefix_caching: config.prefix_caching,
        });
        Self {
            vocab_size: shape.vocab_size,
            scheduler,
            executor,
            out: StepOutput::default(),
            max_len,
            counters: StepCounters::default(),
            device_failure: None,
        }
    }

    /// Longest sequence (prompt + generated) served.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The executor (shape, layout).
    pub fn executor(&self) -> &dyn Executor {
        self.executor.as_ref()
    }

    /// The scheduler (queues, pools, counters).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Counters so far.
    pub fn counters(&self) -> StepCounters {
        self.counters
    }

    /// The device error that made this core unusable, if any: the executor may be in an
    /// undefined state (e.g. a sticky CUDA error), so the owner should restart it.
    pub fn device_failure(&self) -> Option<&str> {
        self.device_failure.as_deref()
    }

    /// Whether anything is left to run.
    pub fn has_work(&self) -> bool {
        self.scheduler.num_seqs() > 0
    }

    /// Queues a request; `max_len` is clamped to the engine's.
    pub fn add(&mut self, mut request: SeqRequest) -> Result<(), CoreError> {
        if let Some(failure) = &self.device_failure {
            return Err(CoreError::Exec(ExecError::Device(failure.clone())));
        }
        if self.scheduler.contains(request.id) {
            return Err(CoreError::DuplicateSeq(request.id));
        }
        if request.prompt.is_empty() {
            return Err(CoreError::InvalidRequest("the prompt is empty".into()));
        }
        request.max_len = if request.max_len == 0 { self.max_len } else { request.max_len.min(self.max_len) };
        if request.prompt.len() >= request.max_len {
            return Err(CoreError::InvalidRequest(format!(
                "the prompt has {} tokens; this model's context here is {}",
                request.prompt.len(),
                request.max_len
            )));
        }
        if let Some(&bad) = request.prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(CoreError::InvalidRequest(format!("token {bad} is outside the vocabulary")));
        }
        request.sampling.validate().map_err(CoreError::InvalidRequest)?;
        self.scheduler.add(request);
        Ok(())
    }

    /// Drops a request wherever it is; its blocks are freed now. Returns whether it was live.
    pub fn abort(&mut self, id: SeqId) -> bool {
        self.scheduler.remove(id).is_some()
    }

    /// Runs one step; returns what happened. With nothing to run it returns no events.
    pub fn step(&mut self) -> Vec<SeqEvent> {
        let plan = self.scheduler.schedule();
        let mut events = Vec::new();
        if plan.is_empty() {
            return events;
        }
        let result = self.run_plan(&plan);
        self.counters.steps += 1;
        if let Err(e) = result {
            let message = e.to_string();
            // A device error may leave the device unusable (CUDA errors are sticky): every
            // sequence fails and the owner is told to restart; a rejected batch fails only
            // its own sequences.
            let fatal = !matches!(e, ExecError::InvalidBatch(_));
            let failed: Vec<SeqId> = if fatal {
                self.scheduler.seq_ids()
            } else {
                plan.batch.seqs.iter().map(|s| s.seq_id).collect()
            };
            for id in failed {
                self.scheduler.remove(id);
                events.push(SeqEvent::Failed { seq: id, message: message.clone() });
            }
            if fatal {
                self.device_failure = Some(message);
            }
            return events;
        }
        let mut row = 0;
        for s in &plan.batch.seqs {
            self.counters.tokens_fed += s.tokens.len() as u64;
            self.scheduler.advance(s.seq_id, s.tokens.len());
            if s.output == OutputRequest::None {
                continue;
            }
            let Some(out_row) = self.out.rows.get(row).copied().filter(|r| r.seq_id == s.seq_id) else {
                self.scheduler.remove(s.seq_id);
                events.push(SeqEvent::Failed {
                    seq: s.seq_id,
                    message: "the executor returned no output row".into(),
                });
                continue;
            };
            row += 1;
            self.sample_into(s.seq_id, s.output, out_row, &mut events);
        }
        events
    }

    fn run_plan(&mut self, plan: &super::scheduler::ScheduledStep) -> Result<(), ExecError> {
        if !plan.swap_out.is_empty() {
            self.executor.swap_out(&plan.swap_out)?;
        }
        if !plan.swap_in.is_empty() {
            self.executor.swap_in(&plan.swap_in)?;
        }
        if !plan.copies.is_empty() {
            self.executor.copy_blocks(&plan.copies)?;
        }
        self.out.clear();
        if !plan.batch.seqs.is_empty() {
            self.executor.step(&plan.batch, &mut self.out)?;
        }
        Ok(())
    }

    fn sample_into(
        &mut self,
        id: SeqId,
        want: OutputRequest,
        row: super::executor::OutputRow,
        events: &mut Vec<SeqEvent>,
    ) {
        let vocab = self.vocab_size;
        let seq = self.scheduler.seq_mut(id).expect("scheduled sequences are live");
        if seq.max_new_tokens == Some(0) {
            // Prompt evaluation only (warming the prefix cache), as the llama.cpp engine does.
            let cached_tokens = seq.cached_tokens.unwrap_or(0);
            self.scheduler.remove(id);
            events.push(SeqEvent::PromptDone { seq: id, cached_tokens });
            events.push(SeqEvent::Finished {
                seq: id,
                reason: FinishReason::Length,
                generated: 0,
                cached_tokens,
            });
            return;
        }
        let logits = row.logits_row.map(|r| self.out.logits_row(r, vocab));
        let (token, logprob) = match (want, logits) {
            (OutputRequest::Argmax, _) => match row.argmax {
                Some(t) => (t, None),
                None => {
                    self.scheduler.remove(id);
                    events.push(SeqEvent::Failed {
                        seq: id,
                        message: "the executor returned no argmax".into(),
                    });
                    return;
                }
            },
            (_, Some(logits)) => {
                let t = seq.sampler.sample(logits);
                (t, seq.logprobs.then(|| log_prob(logits, t as usize)))
            }
            (_, None) => {
                self.scheduler.remove(id);
                events.push(SeqEvent::Failed { seq: id, message: "the executor returned no logits".into() });
                return;
            }
        };
        seq.tokens.push(token);
        seq.sampler.accept(token);
        let first = seq.num_generated() == 1;
        if first {
            events.push(SeqEvent::PromptDone { seq: id, cached_tokens: seq.cached_tokens.unwrap_or(0) });
        }
        let stop = seq.stop_tokens.contains(&token);
        events.push(SeqEvent::Token { seq: id, token, logprob, first, stop });
        let generated = seq.num_generated();
        let reason = if stop {
            Some((super::sequence::FinishReason::Stop, generated - 1))
        } else if seq.max_new_tokens.is_some_and(|m| generated >= m) || seq.tokens.len() >= seq.max_len {
            Some((super::sequence::FinishReason::Length, generated))
        } else {
            None
        };
        self.counters.tokens_generated += 1;
        if let Some((reason, generated)) = reason {
            let cached_tokens = seq.cached_tokens.unwrap_or(0);
            self.scheduler.remove(id);
            events.push(SeqEvent::Finished { seq: id, reason, generated, cached_tokens });
        }
    }
}

#[cfg(test)]
mod tests;
