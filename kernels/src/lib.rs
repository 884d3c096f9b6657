//! HyperLlama's CUDA kernels and their safe launch layer over cudarc.
//!
//! Owns: loading CUDA at run time (cudarc `dynamic-loading`, so the same binary runs with or
//! without a GPU and builds need no CUDA toolkit), GPU discovery ([`gpus`]), compiling the
//! `.cu` sources under `src/cu/` with NVRTC for each device's exact architecture and caching
//! the images on disk ([`ModuleCache`]), and typed launch wrappers on [`Gpu`], each with a
//! pure-Rust reference. The shape follows candle-kernels: one `.cu` per op family
//! ([`KernelFamily`]), `extern "C"` entry points named `<op>_<dtype>`, modules keyed by enum.
//!
//! Run-time requirements and knobs:
//! - libcuda (the NVIDIA driver). Without it every entry point returns
//!   [`KernelError::NoDriver`] ("no CUDA driver found"); nothing panics. Check with
//!   [`driver_present`].
//! - libnvrtc, only when a kernel family is not cached yet. It is found by our own loader
//!   (`src/nvrtc.rs`) because cudarc's `cuda-12080` build does not look for CUDA 13's
//!   `libnvrtc.so.13`: `$HYPERLLAMA_NVRTC_PATH` (file or directory), then the dynamic
//!   loader's search for `libnvrtc.so.{13,12,11.2}` / `libnvrtc.so`, then
//!   `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`, `/usr/local/cuda-*/lib64`.
//! - The kernel cache directory: [`default_cache_dir`] (`$HYPERLLAMA_KERNEL_CACHE`, then
//!   `$XDG_CACHE_HOME/hyperllama/kernels`, then `~/.cache/hyperllama/kernels`).

mod cache;
pub mod check;
mod device;
mod dtype;
mod error;
mod family;
mod gpu;
mod graph;
mod llama_ops;
mod nvrtc;
pub mod reference;
mod rmsnorm;
mod weights;

pub use cache::{
    CacheKeyInputs, CompiledImage, KERNEL_CACHE_ENV, ModuleCache, Target, cache_key, default_cache_dir,
    read_entry, write_entry,
};
pub use device::{GpuInfo, driver_present, gpus, numa_node, sysfs_pci_address};
pub use dtype::{Bf16, F16, FloatElement};
pub use error::KernelError;
pub use family::KernelFamily;
pub use gpu::Gpu;
pub use graph::StepGraph;
pub use llama_ops::{
    ActQ8, AttentionScratch, DeviceWeight, GEMV_MAX_TOKENS, KvWrite, PagedAttention, Rope,
    decode_gemv_variant,
};
pub use nvrtc::{ImageKind, NVRTC_PATH_ENV, nvrtc_info};
pub use rmsnorm::{
    RmsNormResidual, RmsNormResidualHost, rmsnorm_block_size, rmsnorm_residual_bytes,
    rmsnorm_residual_reference,
};
pub use weights::{WeightType, dequantize_row, random_weights};

/// Re-exported so callers can name buffer types without depending on cudarc themselves.
pub use cudarc::driver::CudaSlice;
