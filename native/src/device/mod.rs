//! The device half of the native engine: model weights on the GPU and the forward pass over the
//! paged KV cache, built from `hyperllama-kernels`.
//!
//! - [`gguf`]: a bounded GGUF reader (metadata, tensor directory, one tensor's bytes at a time).
//! - [`model`]: Llama hyper-parameters, weights uploaded in their GGUF encoding, the forward pass.
//! - [`safetensors`]: Hugging Face model folders (bounded safetensors reader, `config.json`),
//!   weights uploaded as stored (BF16/F16/F32).
//! - [`executor`]: [`LlamaExecutor`], the core's `Executor` over them; [`load_executor`].

pub mod executor;
pub mod gguf;
pub mod model;
pub mod safetensors;

pub use executor::LlamaExecutor;

use crate::core::executor::{ExecError, Executor, ExecutorSpec};
use hyperllama_kernels::KernelError;

/// Errors of the device half; converted to the core's [`ExecError`] at the trait boundary.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A kernel launch, allocation or copy failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The model file is malformed or lacks something the forward pass needs.
    #[error("model file: {0}")]
    Model(String),
    /// The model uses an architecture or tensor type the device half does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl From<DeviceError> for ExecError {
    fn from(e: DeviceError) -> Self {
        match e {
            DeviceError::Kernel(KernelError::NoDriver) => ExecError::Unavailable(e.to_string()),
            DeviceError::Kernel(KernelError::Driver { source, op })
                if source.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY =>
            {
                ExecError::OutOfMemory(format!("{op}: {source}"))
            }
            DeviceError::Kernel(k) => ExecError::Device(k.to_string()),
            DeviceError::Model(m) => ExecError::Unsupported(format!("model file: {m}")),
            DeviceError::Unsupported(m) => ExecError::Unsupported(m),
        }
    }
}

/// Loads the model of `spec` on its GPU (see the core's `executor` module for the contract).
pub fn load_executor(spec: &ExecutorSpec) -> Result<Box<dyn Executor>, ExecError> {
    Ok(Box::new(LlamaExecutor::load(spec)?))
}
