//! GPU self-test: lists the GPUs, compiles (or loads from cache) every kernel family, checks
//! `rmsnorm_residual` against the CPU reference at several sizes and dtypes, and times it.
//!
//! Usage: `gpu_selftest [CACHE_DIR]` (default: `default_cache_dir()`). Exit status 0 when
//! everything passed or no GPU is present (a SKIPPED line says so), 1 on any FAIL.

use std::process::ExitCode;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use hyperllama_kernels::check::{SplitMix64, Tolerance, compare};
use hyperllama_kernels::{
    Bf16, F16, FloatElement, Gpu, KernelError, KernelFamily, ModuleCache, RmsNormResidual,
    RmsNormResidualHost, default_cache_dir, driver_present, gpus, nvrtc_info, rmsnorm_residual_bytes,
    rmsnorm_residual_reference,
};

const SIZES: [(usize, usize); 6] = [(1, 4096), (7, 1003), (64, 896), (64, 5120), (4096, 4096), (16384, 8192)];
const SWEEP_SIZES: [(usize, usize); 4] = [(64, 5120), (16384, 896), (4096, 4096), (16384, 8192)];
const EPS: f32 = 1e-6;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            println!("RESULT: FAIL");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("RESULT: ERROR: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, KernelError> {
    println!("driver present: {}", driver_present());
    match nvrtc_info() {
        Ok((path, (major, minor))) => println!("nvrtc: {major}.{minor} from {path}"),
        Err(e) => println!("nvrtc: unavailable: {e}"),
    }
    let list = match gpus() {
        Err(KernelError::NoDriver) => {
            println!("SKIPPED: no CUDA driver found");
            return Ok(true);
        }
        other => other?,
    };
    for g in &list {
        println!(
            "gpu {}: {} sm_{}{} total {:.1} GiB free {:.1} GiB pci {} numa {:?}",
            g.index,
            g.name,
            g.compute_capability.0,
            g.compute_capability.1,
            g.total_bytes as f64 / (1u64 << 30) as f64,
            g.free_bytes as f64 / (1u64 << 30) as f64,
            g.pci_bus_id,
            g.numa_node
        );
    }
    if list.is_empty() {
        println!("SKIPPED: the driver reports no GPU");
        return Ok(true);
    }

    let cache_dir = std::env::args_os().nth(1).map(Into::into).unwrap_or_else(default_cache_dir);
    println!("cache dir: {}", cache_dir.display());
    let cache = ModuleCache::new(cache_dir);
    let gpu = Gpu::open(0, cache.clone())?;
    for &family in KernelFamily::ALL {
        let t = Instant::now();
        let image = cache.image(family, gpu.compute_capability())?;
        println!(
            "module {}: {} {} bytes, {} in {:.1} ms ({})",
            family.name(),
            image.kind.extension(),
            image.bytes.len(),
            if image.from_cache { "cache hit" } else { "compiled" },
            t.elapsed().as_secs_f64() * 1e3,
            image.path.display()
        );
    }
    let t = Instant::now();
    gpu.load_all()?;
    println!("modules loaded in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);

    println!("memcpy d2d: {:.0} GB/s (read + write of 1 GiB)", memcpy_bandwidth(&gpu)?);
    let mut ok = true;
    for (rows, hidden) in SIZES {
        ok &= check_and_time::<f32>(&gpu, rows, hidden)?;
        ok &= check_and_time::<F16>(&gpu, rows, hidden)?;
        ok &= check_and_time::<Bf16>(&gpu, rows, hidden)?;
    }
    for (rows, hidden) in SWEEP_SIZES {
        sweep_block_sizes::<f32>(&gpu, rows, hidden)?;
        sweep_block_sizes::<F16>(&gpu, rows, hidden)?;
        sweep_block_sizes::<Bf16>(&gpu, rows, hidden)?;
    }
    println!("RESULT: {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

fn timed<F: FnMut() -> Result<(), KernelError>>(gpu: &Gpu, iters: u32, mut f: F) -> Result<f64, KernelError> {
    let ctx = gpu.context();
    let drv = |op| KernelError::driver_op(op);
    let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("cuEventCreate"))?;
    let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("cuEventCreate"))?;
    f()?; // warm-up
    start.record(gpu.stream()).map_err(drv("cuEventRecord"))?;
    for _ in 0..iters {
        f()?;
    }
    end.record(gpu.stream()).map_err(drv("cuEventRecord"))?;
    end.synchronize().map_err(drv("cuEventSynchronize"))?;
    let ms = start.elapsed_ms(&end).map_err(drv("cuEventElapsedTime"))?;
    Ok(f64::from(ms) * 1e-3 / f64::from(iters))
}

fn memcpy_bandwidth(gpu: &Gpu) -> Result<f64, KernelError> {
    let n = 1usize << 28; // 2^28 f32 = 1 GiB
    let src = gpu.alloc_zeros::<f32>(n)?;
    let mut dst = gpu.alloc_zeros::<f32>(n)?;
    let secs = timed(gpu, 20, || {
        gpu.stream().memcpy_dtod(&src, &mut dst).map_err(KernelError::driver_op("cuMemcpyDtoDAsync"))
    })?;
    Ok(2.0 * (n * 4) as f64 / secs / 1e9)
}

fn check_and_time<T: FloatElement>(gpu: &Gpu, rows: usize, hidden: usize) -> Result<bool, KernelError> {
    let n = rows * hidden;
    let mut rng = SplitMix64::new(0x5eed ^ n as u64);
    let x: Vec<T> = rng.vec(n, -2.0, 2.0);
    let residual: Vec<T> = rng.vec(n, -2.0, 2.0);
    let weight: Vec<T> = rng.vec(hidden, 0.5, 1.5);
    let mut want_res = residual.clone();
    let mut want_out = vec![T::default(); n];
    rmsnorm_residual_reference(RmsNormResidualHost {
        x: &x,
        residual: &mut want_res,
        weight: &weight,
        out: &mut want_out,
        hidden,
        eps: EPS,
    });
    let dx = gpu.upload(&x)?;
    let mut dres = gpu.upload(&residual)?;
    let dw = gpu.upload(&weight)?;
    let mut dout = gpu.alloc_zeros::<T>(n)?;
    let launch = |dres: &mut _, dout: &mut _| {
        gpu.rmsnorm_residual(RmsNormResidual {
            x: &dx,
            residual: dres,
            weight: &dw,
            out: dout,
            rows,
            hidden,
            eps: EPS,
        })
    };
    launch(&mut dres, &mut dout)?;
    let res = compare(&gpu.download(&dres)?, &want_res, Tolerance { atol: 0.0, rtol: 0.0 });
    let out = compare(&gpu.download(&dout)?, &want_out, Tolerance::for_element::<T>());
    let pass = res.bit_mismatches == 0 && out.passed();

    let iters = if n >= 1 << 24 { 20 } else { 200 };
    let secs = timed(gpu, iters, || launch(&mut dres, &mut dout))?;
    let gbps = rmsnorm_residual_bytes::<T>(rows, hidden) as f64 / secs / 1e9;
    println!(
        "rmsnorm_residual {:<4} rows {rows:>5} hidden {hidden:>5}: out max abs {:.2e} max rel {:.2e} \
         (bit-exact {:.1}%), residual mismatches {}, {:>8.2} us, {:>6.0} GB/s  {}",
        T::SUFFIX,
        out.max_abs,
        out.max_rel,
        100.0 * (n - out.bit_mismatches) as f64 / n as f64,
        res.bit_mismatches,
        secs * 1e6,
        gbps,
        if pass { "PASS" } else { "FAIL" }
    );
    Ok(pass)
}

/// Tuning experiment: the same kernel launched at other block sizes than the wrapper's
/// `rmsnorm_block_size` picks, to check that heuristic on the card at hand.
fn sweep_block_sizes<T: FloatElement>(gpu: &Gpu, rows: usize, hidden: usize) -> Result<(), KernelError> {
    let n = rows * hidden;
    let x = gpu.alloc_zeros::<T>(n)?;
    let w = gpu.alloc_zeros::<T>(hidden)?;
    let mut res = gpu.alloc_zeros::<T>(n)?;
    let mut out = gpu.alloc_zeros::<T>(n)?;
    let func = gpu.function(KernelFamily::Norm, &format!("rmsnorm_residual_{}", T::SUFFIX))?;
    let bad = |_| KernelError::InvalidArgument("size exceeds i32".into());
    let rows_i = i32::try_from(rows).map_err(bad)?;
    let hidden_i = i32::try_from(hidden).map_err(bad)?;
    let grid = u32::try_from(rows).map_err(bad)?;
    let bytes = rmsnorm_residual_bytes::<T>(rows, hidden) as f64;
    let mut line = format!(
        "block sweep {:<4} rows {rows:>5} hidden {hidden:>5} (wrapper picks {}):",
        T::SUFFIX,
        hyperllama_kernels::rmsnorm_block_size::<T>(hidden)
    );
    for threads in [128u32, 256, 512, 1024] {
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let secs = timed(gpu, 20, || {
            let mut b = gpu.stream().launch_builder(&func);
            b.arg(&mut out).arg(&mut res).arg(&x).arg(&w).arg(&rows_i).arg(&hidden_i).arg(&EPS);
            // SAFETY: same contract as `Gpu::rmsnorm_residual`: the arguments match the
            // kernel's signature, every buffer holds rows*hidden (weight: hidden) elements of
            // T on this device, and the block size is a multiple of 32 (at most 1024).
            unsafe { b.launch(cfg) }.map(drop).map_err(KernelError::driver_op("cuLaunchKernel"))
        })?;
        line += &format!(" {threads}: {:.0} GB/s", bytes / secs / 1e9);
    }
    println!("{line}");
    Ok(())
}
