//! The pure half of the native engine: everything that decides what runs, with no CUDA and no
//! tokio, so it is unit-tested on any machine.
//!
//! - [`executor`]: the contract with the device half (what a step is).
//! - [`blocks`], [`prefix`]: the paged KV block pool and the salted prefix cache over it.
//! - [`sequence`], [`scheduler`]: request state and continuous batching with chunked prefill
//!   and preemption.
//! - [`sampler`]: token choice with llama.cpp's parameters.
//! - [`engine`]: the step loop tying them to an executor.

pub mod blocks;
pub mod engine;
pub mod executor;
pub mod penalty;
pub mod prefix;
pub mod rng;
pub mod sampler;
pub mod scheduler;
pub mod sequence;

#[cfg(test)]
pub mod testing;
