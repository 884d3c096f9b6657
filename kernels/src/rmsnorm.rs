//! RMSNorm fused with the residual add (`cu/norm.cu`): its safe launch wrapper on [`Gpu`] and
//! the pure-Rust reference the tests and the self-test compare it with.
//!
//! Per row of width `hidden` (Llama/Qwen "post-attention" step, as vLLM's
//! `fused_add_rms_norm`): `residual = round(x + residual)`, then
//! `out = round(residual * rsqrt(mean(residual^2) + eps) * weight)`, with f32 arithmetic on
//! the device and f64 in the reference. The residual update is exact (bit-identical).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::dtype::FloatElement;
use crate::error::KernelError;
use crate::family::KernelFamily;
use crate::gpu::Gpu;

/// Device buffers and shape for one fused residual-add + RMSNorm launch.
#[derive(Debug)]
pub struct RmsNormResidual<'a, T> {
    /// Input to add, `rows * hidden` elements (row-major).
    pub x: &'a CudaSlice<T>,
    /// Residual stream, `rows * hidden`; updated in place to `x + residual`.
    pub residual: &'a mut CudaSlice<T>,
    /// Per-channel scale, `hidden` elements.
    pub weight: &'a CudaSlice<T>,
    /// Normalised output, `rows * hidden`.
    pub out: &'a mut CudaSlice<T>,
    /// Number of rows (tokens).
    pub rows: usize,
    /// Row width (model hidden size).
    pub hidden: usize,
    /// Added to the mean square before the reciprocal square root.
    pub eps: f32,
}

/// Host buffers for [`rmsnorm_residual_reference`], same meaning as [`RmsNormResidual`].
#[derive(Debug)]
pub struct RmsNormResidualHost<'a, T> {
    /// Input to add, `rows * hidden`.
    pub x: &'a [T],
    /// Residual stream, updated in place.
    pub residual: &'a mut [T],
    /// Per-channel scale, `hidden`.
    pub weight: &'a [T],
    /// Normalised output, `rows * hidden`.
    pub out: &'a mut [T],
    /// Row width; the row count is `x.len() / hidden`.
    pub hidden: usize,
    /// Added to the mean square.
    pub eps: f32,
}

/// Threads per block for a row of `hidden` elements, counted in 16-byte packs (or elements
/// when rows cannot be vectorised): 128 threads for rows up to 512 packs, 256 above, never
/// more than the row needs (rounded up to a warp). Measured on an H200 (notes/kernels.md):
/// small blocks with 2-8 packs per thread beat one-pack-per-thread 1024-thread blocks by up
/// to 2x once there are thousands of rows; 64-row decode batches are launch-bound (~5 us).
pub fn rmsnorm_block_size<T: FloatElement>(hidden: usize) -> u32 {
    let vec = 16 / T::SIZE;
    let units = if hidden.is_multiple_of(vec) { hidden / vec } else { hidden };
    let cap = if units > 512 { 256 } else { 128 };
    let threads = (units.div_ceil(32) * 32).clamp(32, cap);
    u32::try_from(threads).unwrap_or(256)
}

/// Bytes an ideal implementation moves for one launch (read x, residual, weight once; write
/// residual and out), for bandwidth figures.
pub fn rmsnorm_residual_bytes<T: FloatElement>(rows: usize, hidden: usize) -> usize {
    (4 * rows * hidden + hidden) * T::SIZE
}

impl Gpu {
    /// Launches `rmsnorm_residual_<dtype>` on this `Gpu`'s stream (asynchronously).
    pub fn rmsnorm_residual<T: FloatElement>(&self, args: RmsNormResidual<'_, T>) -> Result<(), KernelError> {
        let RmsNormResidual { x, residual, weight, out, rows, hidden, eps } = args;
        let invalid = |m: String| Err(KernelError::InvalidArgument(m));
        if rows == 0 {
            return Ok(());
        }
        if hidden == 0 {
            return invalid("hidden must be > 0".into());
        }
        let (Ok(rows_i), Ok(hidden_i)) = (i32::try_from(rows), i32::try_from(hidden)) else {
            return invalid(format!("rows {rows} or hidden {hidden} exceed i32"));
        };
        let Some(n) = rows.checked_mul(hidden) else {
            return invalid(format!("rows {rows} * hidden {hidden} overflows"));
        };
        for (what, len, need) in [
            ("x", x.len(), n),
            ("residual", residual.len(), n),
            ("out", out.len(), n),
            ("weight", weight.len(), hidden),
        ] {
            if len < need {
                return invalid(format!("`{what}` has {len} elements, needs {need}"));
            }
        }
        self.check_same_device("x", x)?;
        self.check_same_device("residual", residual)?;
        self.check_same_device("weight", weight)?;
        self.check_same_device("out", out)?;
        if !eps.is_finite() || eps < 0.0 {
            return invalid(format!("eps must be finite and >= 0, got {eps}"));
        }

        let name = format!("rmsnorm_residual_{}", T::SUFFIX);
        let func = self.function(KernelFamily::Norm, &name)?;
        let cfg = LaunchConfig {
            grid_dim: (rows.try_into().unwrap_or(u32::MAX), 1, 1),
            block_dim: (rmsnorm_block_size::<T>(hidden), 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream().launch_builder(&func);
        launch.arg(out).arg(residual).arg(x).arg(weight).arg(&rows_i).arg(&hidden_i).arg(&eps);
        // SAFETY: the arguments match the kernel's C signature
        // `(T* out, T* residual, const T* x, const T* weight, int rows, int hidden, float eps)`
        // with T the storage type of `FloatElement` T; all four buffers live in this device's
        // context and hold at least rows*hidden (weight: hidden) elements, which is all the
        // kernel touches (one block per row, rows < 2^31); Rust's borrows guarantee `out` and
        // `residual` alias nothing else, as the kernel's __restrict__ assumes; the block size
        // is a multiple of 32 as `block_sum` requires.
        unsafe { launch.launch(cfg) }.map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }
}

/// The CPU reference: same rounding points as the kernel, f64 for the reduction and scaling.
pub fn rmsnorm_residual_reference<T: FloatElement>(args: RmsNormResidualHost<'_, T>) {
    let RmsNormResidualHost { x, residual, weight, out, hidden, eps } = args;
    assert!(hidden > 0, "hidden must be > 0");
    assert_eq!(x.len() % hidden, 0, "x must hold whole rows");
    assert_eq!(residual.len(), x.len());
    assert_eq!(out.len(), x.len());
    assert_eq!(weight.len(), hidden);
    for ((x_row, res_row), out_row) in
        x.chunks_exact(hidden).zip(residual.chunks_exact_mut(hidden)).zip(out.chunks_exact_mut(hidden))
    {
        let mut sum_sq = 0.0f64;
        for (r, a) in res_row.iter_mut().zip(x_row) {
            *r = T::from_f32(a.to_f32() + r.to_f32());
            let f = f64::from(r.to_f32());
            sum_sq += f * f;
        }
        let inv_rms = 1.0 / (sum_sq / hidden as f64 + f64::from(eps)).sqrt();
        for ((o, r), w) in out_row.iter_mut().zip(res_row.iter()).zip(weight) {
            let v = f64::from(r.to_f32()) * inv_rms * f64::from(w.to_f32());
            *o = T::from_f32(v as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::F16;

    #[test]
    fn reference_matches_hand_computed_row() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut residual = [1.0f32, 0.0, -1.0, 0.0];
        let weight = [1.0f32, 1.0, 2.0, 0.5];
        let mut out = [0.0f32; 4];
        rmsnorm_residual_reference(RmsNormResidualHost {
            x: &x,
            residual: &mut residual,
            weight: &weight,
            out: &mut out,
            hidden: 4,
            eps: 0.0,
        });
        assert_eq!(residual, [2.0, 2.0, 2.0, 4.0]);
        // mean square = (4 + 4 + 4 + 16) / 4 = 7
        let inv = 1.0 / 7.0f64.sqrt();
        let want = [2.0 * inv, 2.0 * inv, 4.0 * inv, 2.0 * inv];
        for (o, w) in out.iter().zip(want) {
            assert!((f64::from(*o) - w).abs() < 1e-6, "{o} vs {w}");
        }
    }

    #[test]
    fn block_sizes_are_warp_multiples_within_limits() {
        assert_eq!(rmsnorm_block_size::<f32>(64), 32);
        assert_eq!(rmsnorm_block_size::<f32>(896), 128);
        assert_eq!(rmsnorm_block_size::<F16>(896), 128);
        assert_eq!(rmsnorm_block_size::<F16>(4096), 128);
        assert_eq!(rmsnorm_block_size::<f32>(4096), 256);
        assert_eq!(rmsnorm_block_size::<F16>(8192), 256);
        assert_eq!(rmsnorm_block_size::<f32>(1001), 256);
        assert_eq!(rmsnorm_block_size::<f32>(1), 32);
        assert_eq!(rmsnorm_residual_bytes::<F16>(2, 8), (4 * 16 + 8) * 2);
    }
}
