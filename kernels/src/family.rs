//! The kernel families: one `.cu` file each under `src/cu/`, embedded in the binary, plus the
//! in-memory headers they may `#include`. `KernelFamily` is the key of every module cache.

/// One `.cu` source, compiled and loaded as one CUDA module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelFamily {
    /// `cu/norm.cu`: `rmsnorm_residual_{f32,f16,bf16}`.
    Norm,
    /// `cu/llama.cu`: embedding, dequantising GEMV, RoPE, SwiGLU, paged KV and attention, argmax.
    Llama,
}

/// Headers every family can `#include "<name>"`; NVRTC receives them in memory.
pub(crate) const HEADERS: &[(&str, &str)] = &[("hl_common.cuh", include_str!("cu/common.cuh"))];

impl KernelFamily {
    /// Every family, e.g. to warm the cache at install time.
    pub const ALL: &'static [KernelFamily] = &[KernelFamily::Norm, KernelFamily::Llama];

    /// Short name, used in cache file names and NVRTC program names.
    pub fn name(self) -> &'static str {
        match self {
            KernelFamily::Norm => "norm",
            KernelFamily::Llama => "llama",
        }
    }

    /// The CUDA C++ source.
    pub fn source(self) -> &'static str {
        match self {
            KernelFamily::Norm => include_str!("cu/norm.cu"),
            KernelFamily::Llama => include_str!("cu/llama.cu"),
        }
    }
}
