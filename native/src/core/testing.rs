//! A CPU reference executor for tests only — **not an engine**: a tiny deterministic "model"
//! whose next token is a hash of the whole prefix *as read back from the paged KV cache*. Every
//! KV slot stores the (token, position) written there, and attention reads every position
//! `0..=p` through the block table and checks the position, so a wrong block table, a missed
//! copy-on-write, a lost swap or a block shared while written shows up as wrong tokens or an
//! error. It also checks the rest of the step contract (limits, no two writers of one block).

use std::collections::HashSet;

use super::executor::{
    BlockCopy, ExecError, Executor, ExecutorLimits, KvCacheLayout, ModelShape, OutputRequest, OutputRow,
    StepBatch, StepOutput, TokenId,
};

/// What a slot holds: the token and the position it was written for.
type Slot = Option<(TokenId, usize)>;

/// The reference next token after `prefix`.
pub fn reference_next(prefix: &[TokenId], vocab: usize) -> TokenId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in prefix {
        h ^= u64::from(t) + 1;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % vocab as u64) as TokenId
}

/// The reference greedy continuation of `prompt` (`n` tokens, stopping after `stop` if given).
pub fn reference_continuation(
    prompt: &[TokenId],
    n: usize,
    vocab: usize,
    stop: Option<TokenId>,
) -> Vec<TokenId> {
    let mut all = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = reference_next(&all, vocab);
        out.push(t);
        all.push(t);
        if Some(t) == stop {
            break;
        }
    }
    out
}

/// The test executor.
#[derive(Debug)]
pub struct ReferenceExecutor {
    shape: ModelShape,
    layout: KvCacheLayout,
    limits: ExecutorLimits,
    gpu: Vec<Vec<Slot>>,
    host: Vec<Vec<Slot>>,
    /// Batches seen (for assertions on scheduling).
    pub batches: Vec<StepBatch>,
    /// Keep every batch in `batches`.
    pub record: bool,
    /// Fail the step with this number (0-based), once.
    pub fail_step: Option<usize>,
    /// Fail it with a device error (else a rejected batch).
    pub fail_with_device_error: bool,
    steps: usize,
}

impl ReferenceExecutor {
    /// A model of `vocab` tokens over `num_gpu_blocks` blocks of `block_size` positions.
    pub fn new(vocab: usize, block_size: usize, num_gpu_blocks: usize, num_host_blocks: usize) -> Self {
        Self {
            shape: ModelShape {
                architecture: "reference".into(),
                vocab_size: vocab,
                max_context: 1 << 20,
                num_layers: 1,
                num_heads: 1,
                num_kv_heads: 1,
                head_dim: 1,
                weights_bytes: 0,
            },
            layout: KvCacheLayout { block_size, num_gpu_blocks, num_host_blocks, bytes_per_block: 16 },
            limits: ExecutorLimits { max_step_tokens: 64, max_step_sequences: 16 },
            gpu: vec![vec![None; block_size]; num_gpu_blocks],
            host: vec![vec![None; block_size]; num_host_blocks],
            batches: Vec::new(),
            record: false,
            fail_step: None,
            fail_with_device_error: false,
            steps: 0,
        }
    }

    /// Sets the step limits.
    pub fn with_limits(mut self, max_step_tokens: usize, max_step_sequences: usize) -> Self {
        self.limits = ExecutorLimits { max_step_tokens, max_step_sequences };
        self
    }

    fn bad(msg: String) -> ExecError {
        ExecError::InvalidBatch(msg)
    }
}

impl Executor for ReferenceExecutor {
    fn model_shape(&self) -> &ModelShape {
        &self.shape
    }

    fn kv_layout(&self) -> KvCacheLayout {
        self.layout
    }

    fn limits(&self) -> ExecutorLimits {
        self.limits
    }

    fn step(&mut self, batch: &StepBatch, out: &mut StepOutput) -> Result<(), ExecError> {
        out.clear();
        let step = self.steps;
        self.steps += 1;
        if self.fail_step == Some(step) {
            self.fail_step = None;
            return Err(if self.fail_with_device_error {
                ExecError::Device("injected failure".into())
            } else {
                ExecError::InvalidBatch("injected failure".into())
            });
        }
        if self.record {
            self.batches.push(batch.clone());
        }
        if batch.num_tokens() > self.limits.max_step_tokens
            || batch.seqs.len() > self.limits.max_step_sequences
        {
            return Err(Self::bad("over the step limits".into()));
        }
        let bs = self.layout.block_size;
        let mut written = HashSet::new();
        let mut ids = HashSet::new();
        for s in &batch.seqs {
            if s.tokens.is_empty() || !ids.insert(s.seq_id) {
                return Err(Self::bad(format!("seq {}: empty or repeated", s.seq_id)));
            }
            let end = s.start_pos + s.tokens.len();
            if s.block_table.len() < end.div_ceil(bs) {
                return Err(Self::bad(format!("seq {}: block table too short", s.seq_id)));
            }
            let mine: HashSet<u32> = (s.start_pos..end).map(|p| s.block_table[p / bs]).collect();
            for b in mine {
                if !written.insert(b) {
                    return Err(Self::bad(format!("block {b} written by two sequences")));
                }
            }
        }
        for s in &batch.seqs {
            let mut prefix = Vec::with_capacity(s.start_pos + s.tokens.len());
            for (i, &t) in s.tokens.iter().enumerate() {
                let p = s.start_pos + i;
                self.gpu[s.block_table[p / bs] as usize][p % bs] = Some((t, p));
            }
            let end = s.start_pos + s.tokens.len();
            for p in 0..end {
                match self.gpu[s.block_table[p / bs] as usize][p % bs] {
                    Some((t, q)) if q == p => prefix.push(t),
                    other => {
                        return Err(Self::bad(format!(
                            "seq {}: slot of position {p} holds {other:?}",
                            s.seq_id
                        )));
                    }
                }
            }
            let next = reference_next(&prefix, self.shape.vocab_size);
            match s.output {
                OutputRequest::None => {}
                OutputRequest::Argmax => {
                    out.rows.push(OutputRow { seq_id: s.seq_id, argmax: Some(next), logits_row: None })
                }
                OutputRequest::Logits => {
                    let row = out.logits.len() / self.shape.vocab_size;
                    let base = out.logits.len();
                    out.logits.resize(base + self.shape.vocab_size, 0.0);
                    out.logits[base + next as usize] = 8.0;
                    out.rows.push(OutputRow { seq_id: s.seq_id, argmax: None, logits_row: Some(row) });
                }
            }
        }
        Ok(())
    }

    fn copy_blocks(&mut self, copies: &[BlockCopy]) -> Result<(), ExecError> {
        for c in copies {
            self.gpu[c.dst as usize] = self.gpu[c.src as usize].clone();
        }
        Ok(())
    }

    fn swap_out(&mut self, copies: &[BlockCopy]) -> Result<(), ExecError> {
        for c in copies {
            self.host[c.dst as usize] = self.gpu[c.src as usize].clone();
        }
        Ok(())
    }

    fn swap_in(&mut self, copies: &[BlockCopy]) -> Result<(), ExecError> {
        for c in copies {
            self.gpu[c.dst as usize] = self.host[c.src as usize].clone();
        }
        Ok(())
    }
}
