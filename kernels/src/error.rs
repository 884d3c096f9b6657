//! `KernelError`: the one error type of this crate (driver, NVRTC, kernel cache, launch checks).

use std::io;
use std::path::PathBuf;

use cudarc::driver::DriverError;

/// Everything that can go wrong loading CUDA, compiling kernels or launching them.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// libcuda could not be loaded: no NVIDIA driver on this machine (or not visible to us).
    #[error("no CUDA driver found")]
    NoDriver,
    /// A CUDA driver API call failed.
    #[error("CUDA driver error in {op}: {source}")]
    Driver {
        /// What we were doing, e.g. `cuDeviceGetPCIBusId`.
        op: &'static str,
        /// The driver's result code.
        #[source]
        source: DriverError,
    },
    /// The driver has no device with this index.
    #[error("no GPU with index {index}: the driver reports {count} device(s)")]
    NoSuchDevice {
        /// The index asked for.
        index: u32,
        /// How many devices the driver reports.
        count: u32,
    },
    /// libnvrtc could not be loaded from any of the places searched.
    #[error(
        "NVRTC library not found (set HYPERLLAMA_NVRTC_PATH to libnvrtc.so.* or its directory); tried: {tried}"
    )]
    NvrtcNotFound {
        /// The names and paths tried, with the last loader error.
        tried: String,
    },
    /// An NVRTC API call failed outside compilation (missing symbol, bad program, ...).
    #[error("NVRTC error in {op}: {message}")]
    Nvrtc {
        /// The NVRTC call or step.
        op: &'static str,
        /// NVRTC's description of the error.
        message: String,
    },
    /// NVRTC rejected a kernel source; `log` is the compiler's full output.
    #[error("NVRTC failed to compile kernel family `{family}` for {arch}: {message}\n{log}")]
    Compile {
        /// The kernel family (`.cu` file) being compiled.
        family: &'static str,
        /// The target, e.g. `sm_90`.
        arch: String,
        /// NVRTC's error string.
        message: String,
        /// The compiler log.
        log: String,
    },
    /// Reading or writing the on-disk kernel cache failed.
    #[error("kernel cache I/O on {}: {source}", path.display())]
    CacheIo {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A launch wrapper was called with arguments that do not fit the kernel's contract.
    #[error("invalid kernel arguments: {0}")]
    InvalidArgument(String),
}

impl KernelError {
    /// Wraps a driver error with the name of the operation that produced it (for callers
    /// that use cudarc directly, e.g. for events or copies).
    pub fn driver_op(op: &'static str) -> impl FnOnce(DriverError) -> KernelError {
        Self::driver(op)
    }

    /// Wraps a driver error with the name of the operation that produced it.
    pub(crate) fn driver(op: &'static str) -> impl FnOnce(DriverError) -> KernelError {
        move |source| KernelError::Driver { op, source }
    }

    /// Wraps an I/O error with the cache path it happened on.
    pub(crate) fn cache_io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> KernelError {
        let path = path.into();
        move |source| KernelError::CacheIo { path, source }
    }
}
