//! `Gpu`: one device's cudarc context and stream, plus the kernel modules loaded into it
//! (compiled for this device's architecture through a [`ModuleCache`]). Launch wrappers for
//! each op family are `impl Gpu` blocks in their own modules (e.g. `rmsnorm.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use crate::cache::ModuleCache;
use crate::device::{self, device_count};
use crate::error::KernelError;
use crate::family::KernelFamily;

/// A CUDA device opened for kernel launches: context, stream and loaded modules.
/// `Send + Sync`; launches from several threads are serialised on the one stream.
pub struct Gpu {
    index: u32,
    name: String,
    capability: (u32, u32),
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    cache: ModuleCache,
    modules: Mutex<HashMap<KernelFamily, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("index", &self.index)
            .field("name", &self.name)
            .field("capability", &self.capability)
            .field("cache", &self.cache.dir())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves only a cache map behind: still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Gpu {
    /// Opens device `index` (its primary context and a new stream). Kernels are compiled
    /// lazily, on the first launch of each family, or eagerly with [`Gpu::load_all`].
    pub fn open(index: u32, cache: ModuleCache) -> Result<Gpu, KernelError> {
        Self::open_with(index, cache, true)
    }

    /// Like [`Gpu::open`], but buffers allocated afterwards in this device's context skip
    /// cudarc's per-launch event tracking (one `cuEventRecord` per buffer argument per launch,
    /// which costs more than a decode-step kernel). Sound as long as every buffer is used on
    /// this `Gpu`'s one stream only, which is how the native engine works; other `Gpu`s on the
    /// same device in the same process must not share its buffers.
    pub fn open_single_stream(index: u32, cache: ModuleCache) -> Result<Gpu, KernelError> {
        Self::open_with(index, cache, false)
    }

    fn open_with(index: u32, cache: ModuleCache, track_events: bool) -> Result<Gpu, KernelError> {
        let count = device_count()?;
        if index >= count {
            return Err(KernelError::NoSuchDevice { index, count });
        }
        let ordinal = usize::try_from(index).map_err(|_| KernelError::NoSuchDevice { index, count })?;
        let ctx = CudaContext::new(ordinal).map_err(KernelError::driver("cuDevicePrimaryCtxRetain"))?;
        let name = ctx.name().map_err(KernelError::driver("cuDeviceGetName"))?;
        let capability = device::compute_capability(ctx.cu_device())?;
        if !track_events {
            // SAFETY: the caller promises (see `open_single_stream`) that buffers created from
            // now on are only used on this Gpu's stream, so no cross-stream synchronisation is
            // lost by not recording events.
            unsafe { ctx.disable_event_tracking() };
        }
        let stream = ctx.new_stream().map_err(KernelError::driver("cuStreamCreate"))?;
        Ok(Gpu {
            index,
            name,
            capability,
            ctx,
            stream,
            cache,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// The device ordinal.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability `(major, minor)`; kernels are compiled for exactly this.
    pub fn compute_capability(&self) -> (u32, u32) {
        self.capability
    }

    /// The cudarc context (for allocations and other libraries, e.g. cuBLAS).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every launch of this `Gpu` goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The disk cache used for this device's modules.
    pub fn cache(&self) -> &ModuleCache {
        &self.cache
    }

    /// The loaded module of `family`, compiling (or reading the cache) on first use.
    pub fn module(&self, family: KernelFamily) -> Result<Arc<CudaModule>, KernelError> {
        let mut modules = lock(&self.modules);
        if let Some(m) = modules.get(&family) {
            return Ok(m.clone());
        }
        let image = self.cache.image(family, self.capability)?;
        let module = self
            .ctx
            .load_module(Ptx::from_binary(image.bytes))
            .map_err(KernelError::driver("cuModuleLoadData"))?;
        modules.insert(family, module.clone());
        Ok(module)
    }

    /// Compiles/loads every kernel family now, so the first request pays nothing.
    pub fn load_all(&self) -> Result<(), KernelError> {
        KernelFamily::ALL.iter().try_for_each(|&f| self.module(f).map(drop))
    }

    /// The entry point `name` of `family` (e.g. `rmsnorm_residual_f16` in `Norm`).
    pub fn function(&self, family: KernelFamily, name: &str) -> Result<CudaFunction, KernelError> {
        if let Some(f) = lock(&self.functions).get(name) {
            return Ok(f.clone());
        }
        let f =
            self.module(family)?.load_function(name).map_err(KernelError::driver("cuModuleGetFunction"))?;
        lock(&self.functions).insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Copies `host` to a new device buffer (on this `Gpu`'s stream).
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, KernelError> {
        self.stream.clone_htod(host).map_err(KernelError::driver("cuMemcpyHtoDAsync"))
    }

    /// Copies a device buffer back to the host (waits for the stream).
    pub fn download<T: DeviceRepr>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>, KernelError> {
        self.stream.clone_dtoh(dev).map_err(KernelError::driver("cuMemcpyDtoHAsync"))
    }

    /// A zeroed device buffer of `len` elements.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>, KernelError> {
        self.stream.alloc_zeros(len).map_err(KernelError::driver("cuMemAllocAsync"))
    }

    /// Waits for all work queued on this `Gpu`'s stream.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.stream.synchronize().map_err(KernelError::driver("cuStreamSynchronize"))
    }

    /// Checks that a buffer was allocated in this device's context.
    pub(crate) fn check_same_device<T>(&self, what: &str, s: &CudaSlice<T>) -> Result<(), KernelError> {
        if Arc::ptr_eq(s.context(), &self.ctx) || **s.context() == *self.ctx {
            Ok(())
        } else {
            Err(KernelError::InvalidArgument(format!(
                "`{what}` lives on device {}, not on device {}",
                s.ordinal(),
                self.index
            )))
        }
    }
}
