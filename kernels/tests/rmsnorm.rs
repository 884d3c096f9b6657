//! GPU tests of `rmsnorm_residual_<dtype>` against the CPU reference over shapes, seeds and
//! dtypes. Without a CUDA driver (or GPU) each test prints a SKIPPED line and returns.
//!
//! Tolerances (`check::Tolerance::for_element`): f32 `1e-5 + 1e-5*|ref|`; f16
//! `1e-4 + 2e-3*|ref|`; bf16 `1e-3 + 1.6e-2*|ref|` on `out`. The updated `residual` must be
//! bit-identical to the reference (both add in f32 and round once).

use hyperllama_kernels::check::{SplitMix64, Tolerance, compare};
use hyperllama_kernels::{
    Bf16, F16, FloatElement, Gpu, KernelError, ModuleCache, RmsNormResidual, RmsNormResidualHost,
    driver_present, gpus, rmsnorm_residual_reference,
};

// 17, 1003, 2050 and 4099 take the scalar path for every dtype; 4099 and 20480 (f32) also
// exceed the packs a thread keeps in registers, so they cover the re-read path.
const HIDDENS: [usize; 10] = [64, 896, 1000, 1003, 4096, 5120, 17, 2050, 4099, 20480];
const ROWS: [usize; 3] = [1, 7, 64];
const SEEDS: [u64; 3] = [1, 2, 3];
const EPS: f32 = 1e-6;

/// Opens GPU 0 with a fresh cache directory, or explains on stderr why the test is skipped.
fn gpu_or_skip(test: &str) -> Option<(Gpu, tempfile::TempDir)> {
    if !driver_present() {
        hyperllama_kernels::check::report_skip(&format!(
            "no CUDA driver found (kernel {test} test needs a GPU)"
        ));
        return None;
    }
    match gpus() {
        Ok(list) if list.is_empty() => {
            hyperllama_kernels::check::report_skip(&format!(
                "the CUDA driver reports no GPU (kernel {test} test needs one)"
            ));
            None
        }
        Ok(_) => {
            let dir = tempfile::tempdir().expect("temp cache dir");
            let gpu = Gpu::open(0, ModuleCache::new(dir.path().to_path_buf())).expect("open GPU 0");
            Some((gpu, dir))
        }
        Err(e) => panic!("driver present but GPU discovery failed: {e}"),
    }
}

struct Case {
    rows: usize,
    hidden: usize,
    seed: u64,
}

fn run_case<T: FloatElement>(gpu: &Gpu, case: &Case) -> Result<(), String> {
    let Case { rows, hidden, seed } = *case;
    let n = rows * hidden;
    let mut rng = SplitMix64::new(seed ^ ((hidden as u64) << 20) ^ ((rows as u64) << 40));
    let scale = if seed % 2 == 0 { 4.0 } else { 0.5 };
    let x: Vec<T> = rng.vec(n, -scale, scale);
    let residual: Vec<T> = rng.vec(n, -scale, scale);
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

    let dx = gpu.upload(&x).map_err(|e| e.to_string())?;
    let mut dres = gpu.upload(&residual).map_err(|e| e.to_string())?;
    let dw = gpu.upload(&weight).map_err(|e| e.to_string())?;
    let mut dout = gpu.alloc_zeros::<T>(n).map_err(|e| e.to_string())?;
    gpu.rmsnorm_residual(RmsNormResidual {
        x: &dx,
        residual: &mut dres,
        weight: &dw,
        out: &mut dout,
        rows,
        hidden,
        eps: EPS,
    })
    .map_err(|e| e.to_string())?;
    let got_res = gpu.download(&dres).map_err(|e| e.to_string())?;
    let got_out = gpu.download(&dout).map_err(|e| e.to_string())?;

    let res = compare(&got_res, &want_res, Tolerance { atol: 0.0, rtol: 0.0 });
    let out = compare(&got_out, &want_out, Tolerance::for_element::<T>());
    let tag = format!("{} rows={rows} hidden={hidden} seed={seed}", T::SUFFIX);
    if res.bit_mismatches != 0 {
        return Err(format!("{tag}: residual differs in {} elements: {res:?}", res.bit_mismatches));
    }
    if !out.passed() {
        let i = out.first_failure.unwrap_or(0);
        return Err(format!(
            "{tag}: out outside tolerance: {out:?}; first at {i}: got {:?} want {:?}",
            got_out[i], want_out[i]
        ));
    }
    Ok(())
}

fn sweep<T: FloatElement>(test: &str) {
    let Some((gpu, _dir)) = gpu_or_skip(test) else {
        return;
    };
    let mut failures = Vec::new();
    let mut cases = 0;
    for hidden in HIDDENS {
        for rows in ROWS {
            for seed in SEEDS {
                cases += 1;
                if let Err(e) = run_case::<T>(&gpu, &Case { rows, hidden, seed }) {
                    failures.push(e);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {cases} cases failed:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{test}: {cases} cases passed on {}", gpu.name());
}

#[test]
fn rmsnorm_residual_f32_matches_reference() {
    sweep::<f32>("rmsnorm_residual f32");
}

#[test]
fn rmsnorm_residual_f16_matches_reference() {
    sweep::<F16>("rmsnorm_residual f16");
}

#[test]
fn rmsnorm_residual_bf16_matches_reference() {
    sweep::<Bf16>("rmsnorm_residual bf16");
}

#[test]
fn rmsnorm_residual_rejects_short_buffers() {
    let Some((gpu, _dir)) = gpu_or_skip("rmsnorm_residual argument check") else {
        return;
    };
    let x = gpu.alloc_zeros::<f32>(64).unwrap();
    let mut res = gpu.alloc_zeros::<f32>(64).unwrap();
    let w = gpu.alloc_zeros::<f32>(32).unwrap();
    let mut out = gpu.alloc_zeros::<f32>(64).unwrap();
    let err = gpu
        .rmsnorm_residual(RmsNormResidual {
            x: &x,
            residual: &mut res,
            weight: &w,
            out: &mut out,
            rows: 2,
            hidden: 64,
            eps: EPS,
        })
        .unwrap_err();
    assert!(matches!(err, KernelError::InvalidArgument(_)), "{err}");
}

#[test]
fn second_open_reuses_the_disk_cache() {
    let Some((gpu, dir)) = gpu_or_skip("module cache reuse") else {
        return;
    };
    gpu.load_all().unwrap();
    let cache = ModuleCache::new(dir.path().to_path_buf());
    let image = cache.image(hyperllama_kernels::KernelFamily::Norm, gpu.compute_capability()).unwrap();
    assert!(image.from_cache, "second lookup compiled again: {image:?}");
    let again = Gpu::open(0, cache).unwrap();
    again.load_all().unwrap();
}
