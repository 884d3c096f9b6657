//! The process-wide llama.cpp backend: initialized once (llama.cpp allows one
//! `llama_backend_init` per process), with llama.cpp's and ggml's logs routed to `tracing`
//! (target `llama_cpp_2`; filter them with `RUST_LOG`).

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::{LogOptions, send_logs_to_tracing};

use crate::engine::EngineError;

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// The process-wide backend, initializing it on first use (tests that drive llama-cpp-2
/// directly must use this one: llama.cpp refuses a second initialization).
pub fn get() -> Result<&'static LlamaBackend, EngineError> {
    BACKEND
        .get_or_init(|| {
            send_logs_to_tracing(LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Load(format!("llama.cpp backend: {e}")))
}
