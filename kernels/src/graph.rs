//! CUDA graph capture of the work queued on a [`Gpu`]'s stream, so a decode step (hundreds of
//! small launches) replays with one `cuGraphLaunch`. [`StepGraph`] is `Send` (cudarc's
//! `CudaGraph` is not), so an executor holding graphs can move to its engine thread.

use cudarc::driver::CudaGraph;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};

use crate::error::KernelError;
use crate::gpu::Gpu;

/// An instantiated graph captured from a [`Gpu`]'s stream; replays on that stream.
pub struct StepGraph(CudaGraph);

impl std::fmt::Debug for StepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepGraph")
    }
}

// SAFETY: a CUDA graph and its executable instance are plain driver handles that any host
// thread may use once the owning context is bound (cudarc binds it in `launch`); `StepGraph`
// is not `Sync`, so it is never used from two threads at once.
unsafe impl Send for StepGraph {}

impl StepGraph {
    /// Replays the graph on the stream it was captured from (asynchronously).
    pub fn launch(&self) -> Result<(), KernelError> {
        self.0.launch().map_err(KernelError::driver("cuGraphLaunch"))
    }
}

impl Gpu {
    /// Starts capturing this `Gpu`'s stream: launches until [`Gpu::end_capture`] are recorded,
    /// not run. Nothing may allocate or synchronise on the stream meanwhile.
    pub fn begin_capture(&self) -> Result<(), KernelError> {
        self.stream()
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(KernelError::driver("cuStreamBeginCapture"))
    }

    /// Ends the capture begun by [`Gpu::begin_capture`] and instantiates the graph.
    pub fn end_capture(&self) -> Result<StepGraph, KernelError> {
        let graph = self
            .stream()
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(KernelError::driver("cuStreamEndCapture"))?;
        graph
            .map(StepGraph)
            .ok_or_else(|| KernelError::InvalidArgument("stream capture recorded no work".into()))
    }
}
