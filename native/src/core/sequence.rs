//! One request's state in the core: its tokens (prompt, then generated), how many of them have
//! KV in the cache, where that KV lives (device block table, or host blocks while swapped out),
//! the prefix-cache keys of its full blocks, and its sampler.

use super::executor::{BlockId, SeqId, TokenId};
use super::prefix::BlockKey;
use super::sampler::{Sampler, SamplerParams};

/// What the engine is asked to run.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqRequest {
    /// Unique while the request lives.
    pub id: SeqId,
    /// Prefix-cache partition (the user's salt, or an admin-shared one).
    pub cache_salt: u64,
    /// Prompt token ids; never empty.
    pub prompt: Vec<TokenId>,
    /// Sampling.
    pub sampling: SamplerParams,
    /// Most tokens to generate (`None`: until `max_len`).
    pub max_new_tokens: Option<usize>,
    /// Most tokens (prompt + generated) this sequence may hold.
    pub max_len: usize,
    /// Tokens that end the generation (end of generation); not counted as generated.
    pub stop_tokens: Vec<TokenId>,
    /// Report the log-probability of each generated token.
    pub logprobs: bool,
}

/// Where a sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStatus {
    /// Queued (new, or preempted for recompute).
    Waiting,
    /// Has device blocks and is scheduled each step.
    Running,
    /// Preempted; its KV is in host blocks.
    Swapped,
}

/// Why a sequence finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token.
    Stop,
    /// `max_new_tokens` or `max_len` reached.
    Length,
}

/// A sequence in the core.
#[derive(Debug)]
pub struct Sequence {
    /// Its id.
    pub id: SeqId,
    /// Prefix-cache partition.
    pub salt: u64,
    /// Arrival order (lower is older; older runs first and is preempted last).
    pub arrival: u64,
    /// Prompt then generated tokens.
    pub tokens: Vec<TokenId>,
    /// Prompt length.
    pub prompt_len: usize,
    /// Tokens whose KV is in the cache (device, or host while swapped).
    pub num_computed: usize,
    /// Device blocks, position 0 first.
    pub block_table: Vec<BlockId>,
    /// Host blocks while swapped.
    pub host_table: Vec<BlockId>,
    /// Prefix-cache keys of the full blocks computed so far.
    pub keys: Vec<BlockKey>,
    /// Blocks of `block_table` already offered to the prefix cache.
    pub num_registered: usize,
    /// Where it is.
    pub status: SeqStatus,
    /// Prompt tokens reused from the prefix cache at first admission (`None` before).
    pub cached_tokens: Option<usize>,
    /// Times preempted.
    pub preemptions: u32,
    /// Token choice.
    pub sampler: Sampler,
    /// Limits and stop tokens.
    pub max_new_tokens: Option<usize>,
    /// Most tokens in all.
    pub max_len: usize,
    /// End-of-generation tokens.
    pub stop_tokens: Vec<TokenId>,
    /// Whether log-probabilities are wanted.
    pub logprobs: bool,
}

impl Sequence {
    /// A waiting sequence for a request.
    pub fn new(request: SeqRequest, arrival: u64) -> Self {
        let mut sampler = Sampler::new(request.sampling, request.max_len);
        sampler.accept_prompt(&request.prompt);
        Self {
            id: request.id,
            salt: request.cache_salt,
            arrival,
            prompt_len: request.prompt.len(),
            tokens: request.prompt,
            num_computed: 0,
            block_table: Vec::new(),
            host_table: Vec::new(),
            keys: Vec::new(),
            num_registered: 0,
            status: SeqStatus::Waiting,
            cached_tokens: None,
            preemptions: 0,
            sampler,
            max_new_tokens: request.max_new_tokens,
            max_len: request.max_len,
            stop_tokens: request.stop_tokens,
            logprobs: request.logprobs,
        }
    }

    /// Tokens generated so far.
    pub fn num_generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to feed before the next token can be sampled.
    pub fn remaining(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Whether it is still in its prompt (the first token is not sampled yet).
    pub fn in_prefill(&self) -> bool {
        self.num_generated() == 0
    }
}
