//! The native GPU engine. Two halves, kept apart so the scheduling logic is testable anywhere:
//! - [`core`]: pure Rust (no CUDA, no tokio): sequence state, the continuous-batching scheduler,
//!   the paged KV block manager, the per-user salted prefix cache and the sampler.
//! - [`device`]: the model executor over `hyperllama-kernels` (weights from GGUF/safetensors,
//!   the forward pass over the paged KV cache), which the core drives one step at a time.

pub mod core;
pub mod device;
