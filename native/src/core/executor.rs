//! The contract between the pure core and the device half: the core decides *what* runs each step
//! (which tokens of which sequences, where their KV lives); an [`Executor`] runs the model forward
//! over the paged KV cache and hands back logits (or greedy token ids) for the rows asked for.
//!
//! # The paged KV cache
//!
//! The executor owns a pool of `num_gpu_blocks` KV blocks on the device and `num_host_blocks` blocks
//! of swap space in host memory ([`KvCacheLayout`]). A block holds the keys and values of
//! `block_size` consecutive positions of one sequence, for **every** layer (so one [`BlockId`]
//! names the same slot in every layer's cache). Block ids are plain indices: `0..num_gpu_blocks`
//! on the device, `0..num_host_blocks` on the host; the two id spaces are separate.
//! The core alone decides which block holds what: the executor never allocates, frees or
//! reorders blocks on its own.
//!
//! # A step
//!
//! [`Executor::step`] receives a [`StepBatch`]: for each scheduled sequence the token ids to feed
//! this step (`tokens`), the position of the first one (`start_pos`; token `i` is at position
//! `start_pos + i`), and its block table. Position `p` of a sequence lives in block
//! `block_table[p / block_size]`, slot `p % block_size`. Contract, per sequence:
//! - `block_table.len() >= ceil((start_pos + tokens.len()) / block_size)`; extra entries are
//!   allowed and must be ignored.
//! - positions `0..start_pos` are already in the cache (written by earlier steps, shared from the
//!   prefix cache, or restored by [`Executor::swap_in`] / [`Executor::copy_blocks`]); the
//!   executor reads them, and must never write them.
//! - the executor writes K/V of positions `start_pos..start_pos + tokens.len()` into their slots
//!   and attends causally over positions `0..=p` for the token at `p`.
//! - `tokens` is never empty; a prefill chunk has many tokens, a decode step has one. Decode and
//!   prefill sequences are mixed freely in one batch, in any order.
//! - two sequences of one batch never *write* the same block (the core copies shared blocks
//!   before a write: copy-on-write); they may *read* the same blocks (a shared prefix).
//! - [`OutputRequest`] says what to return for the sequence's **last** token of this step:
//!   nothing (a prefill chunk that does not end the prompt), the argmax, or the full logits row
//!   (the core samples on the CPU). Logits are f32, before any temperature or penalty, over
//!   `ModelShape::vocab_size` entries.
//! - the total of `tokens.len()` is at most [`ExecutorLimits::max_step_tokens`] and the number of
//!   sequences at most [`ExecutorLimits::max_step_sequences`].
//!
//! # Block movement
//!
//! `copy_blocks`, `swap_out` and `swap_in` move whole blocks (all layers, K and V). The core calls
//! them *between* steps; they must be complete (or ordered on the same stream) before the next
//! `step` reads the blocks, and `swap_out` must have finished reading a device block before a later
//! step overwrites it. Within one call the pairs never repeat a destination, and a destination is
//! never a source of the same call.
//!
//! # Errors
//!
//! A `step` that fails leaves the written slots undefined. [`ExecError::InvalidBatch`] fails
//! the sequences of that batch only (the device is fine); any other error from `step` or a
//! block move is taken as a broken device: every sequence fails and the engine (in a runner:
//! the process) is restarted. [`ExecError::OutOfMemory`] at load is a "model does not fit" for the
//! user. An executor is moved to the engine's thread once (`Send`) and only ever used from there.
//!
//! # Loading
//!
//! The device half provides `crate::device::load_executor(&ExecutorSpec) -> Result<Box<dyn
//! Executor>, ExecError>`, which reads the weights, sizes the KV pool from free memory and
//! [`ExecutorSpec::gpu_memory_utilization`], and fails with [`ExecError::Unavailable`] when there is
//! no GPU or driver (the daemon then reports the native engine unavailable).

use std::path::PathBuf;

/// A token id of the model's vocabulary.
pub type TokenId = u32;

/// Index of a KV block, on the device (`0..num_gpu_blocks`) or on the host (`0..num_host_blocks`).
pub type BlockId = u32;

/// The engine's id of a sequence (one request); stable while the request lives.
pub type SeqId = u64;

/// The shape of the loaded model, as far as the core and the daemon need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelShape {
    /// "llama", "qwen2", "qwen3", ... (GGUF `general.architecture` naming).
    pub architecture: String,
    /// Rows of the logits (entries of a logits row).
    pub vocab_size: usize,
    /// Longest context the model supports (positions `0..max_context`).
    pub max_context: usize,
    /// Transformer layers.
    pub num_layers: usize,
    /// Attention (query) heads.
    pub num_heads: usize,
    /// Key/value heads (GQA).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Bytes of weights resident on the device.
    pub weights_bytes: u64,
}

/// How the KV pool is cut into blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheLayout {
    /// Positions per block (e.g. 16).
    pub block_size: usize,
    /// Blocks in device memory.
    pub num_gpu_blocks: usize,
    /// Blocks of host swap space (0: preemption always recomputes).
    pub num_host_blocks: usize,
    /// Bytes of one block (all layers, K and V).
    pub bytes_per_block: u64,
}

/// The most one step may hold (sizes of workspaces and CUDA graphs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorLimits {
    /// Most tokens (all sequences together) in one step.
    pub max_step_tokens: usize,
    /// Most sequences in one step.
    pub max_step_sequences: usize,
}

/// What the executor returns for a sequence's last token of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputRequest {
    /// Nothing (a prefill chunk in the middle of the prompt).
    #[default]
    None,
    /// Only the argmax of the logits (greedy sampling; may run on the device). Ties: lowest id.
    Argmax,
    /// The full logits row (the core samples on the CPU). The executor may fill `argmax` too.
    Logits,
}

/// One sequence's part of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqStep {
    /// Which sequence (echoed in the output).
    pub seq_id: SeqId,
    /// Token ids to feed, at positions `start_pos..start_pos + tokens.len()`; never empty.
    pub tokens: Vec<TokenId>,
    /// Position of `tokens[0]`; positions before it are already in the cache.
    pub start_pos: usize,
    /// Device block of each `block_size` positions, from position 0.
    pub block_table: Vec<BlockId>,
    /// What to return for the last token.
    pub output: OutputRequest,
}

/// Everything one forward pass runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepBatch {
    /// Scheduled sequences, in no particular order; each `seq_id` at most once.
    pub seqs: Vec<SeqStep>,
}

impl StepBatch {
    /// Tokens fed this step, all sequences together.
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }
}

/// The result for one sequence that asked for output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputRow {
    /// Which sequence.
    pub seq_id: SeqId,
    /// The argmax (required for [`OutputRequest::Argmax`], optional for `Logits`).
    pub argmax: Option<TokenId>,
    /// For [`OutputRequest::Logits`]: index of this row in [`StepOutput::logits`] (the row is
    /// `logits[i * vocab_size..(i + 1) * vocab_size]`).
    pub logits_row: Option<usize>,
}

/// What a step produced. Reused across steps: the executor clears it first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutput {
    /// One row per sequence whose output was not `None`, in batch order.
    pub rows: Vec<OutputRow>,
    /// Logits rows, `vocab_size` f32 each, row-major.
    pub logits: Vec<f32>,
}

impl StepOutput {
    /// Empties it for the next step, keeping capacity.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.logits.clear();
    }

    /// The logits row `row` of a model with `vocab_size` entries.
    pub fn logits_row(&self, row: usize, vocab_size: usize) -> &[f32] {
        &self.logits[row * vocab_size..(row + 1) * vocab_size]
    }
}

/// A block move: copy block `src` to block `dst` (all layers, K and V).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    /// Where from.
    pub src: BlockId,
    /// Where to.
    pub dst: BlockId,
}

/// What a device executor is asked to load.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorSpec {
    /// Model file (GGUF) or directory (safetensors + config.json).
    pub model_path: PathBuf,
    /// CUDA device ordinal (after `CUDA_VISIBLE_DEVICES`).
    pub device: u32,
    /// Fraction of the device's memory the executor may use for weights, KV blocks and
    /// workspaces together (like vLLM's `gpu_memory_utilization`).
    pub gpu_memory_utilization: f32,
    /// Positions per KV block.
    pub block_size: usize,
    /// Bytes of pinned host memory for swap space (0: none).
    pub host_swap_bytes: u64,
    /// Longest context to serve (≤ the model's); 0 means the model's.
    pub max_context: usize,
    /// Most tokens per step.
    pub max_step_tokens: usize,
    /// Most sequences per step.
    pub max_step_sequences: usize,
}

impl Default for ExecutorSpec {
    fn default() -> Self {
        Self {
            model_path: PathBuf::new(),
            device: 0,
            gpu_memory_utilization: 0.9,
            block_size: 16,
            host_swap_bytes: 4 << 30,
            max_context: 0,
            max_step_tokens: 2048,
            max_step_sequences: 64,
        }
    }
}

/// Errors of an executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No GPU, no driver, or no device support built: the native engine cannot run here.
    #[error("native engine unavailable: {0}")]
    Unavailable(String),
    /// The model is not supported (architecture, tensor type, shape).
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// Weights plus the minimum KV pool do not fit the device memory allowed.
    #[error("out of GPU memory: {0}")]
    OutOfMemory(String),
    /// The batch breaks the contract above (a bug in the core).
    #[error("invalid step batch: {0}")]
    InvalidBatch(String),
    /// A CUDA or kernel failure.
    #[error("device error: {0}")]
    Device(String),
}

/// A model loaded on a device, run one step at a time by the core. See the module header for the
/// contract.
pub trait Executor: Send {
    /// The loaded model's shape.
    fn model_shape(&self) -> &ModelShape;
    /// How the KV pool is cut into blocks (fixed after load).
    fn kv_layout(&self) -> KvCacheLayout;
    /// The most one step may hold.
    fn limits(&self) -> ExecutorLimits;
    /// Runs one forward pass; clears `out` and fills one row per sequence that asked for output.
    fn step(&mut self, batch: &StepBatch, out: &mut StepOutput) -> Result<(), ExecError>;
    /// Copies device blocks to device blocks (copy-on-write of a shared block).
    fn copy_blocks(&mut self, copies: &[BlockCopy]) -> Result<(), ExecError>;
    /// Copies device blocks (`src`) to host blocks (`dst`) for a preempted sequence.
    fn swap_out(&mut self, copies: &[BlockCopy]) -> Result<(), ExecError>;
    /// Copies host blocks (`src`) back to device blocks (`dst`) when a swapped sequence resumes.
    fn swap_in(&mut self, copies: &[BlockCopy]) -> Result<(), ExecError>;
}
