//! Pure-Rust references of the decoder kernels in `cu/llama.cu`, in f64 where it matters:
//! what the GPU tests compare against and what documents each kernel's exact meaning.

use crate::weights::{WeightType, dequantize_row};

/// `y[t][r] = sum_c w[r][c] * x[t][c]`, with `w` dequantised by [`dequantize_row`].
pub fn gemv(ty: WeightType, w: &[u8], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    let rb = ty.row_bytes(cols);
    let n = x.len() / cols;
    let deq: Vec<Vec<f32>> = (0..rows).map(|r| dequantize_row(ty, &w[r * rb..(r + 1) * rb], cols)).collect();
    let mut y = vec![0f32; n * rows];
    for t in 0..n {
        let xt = &x[t * cols..(t + 1) * cols];
        for (r, row) in deq.iter().enumerate() {
            let s: f64 = row.iter().zip(xt).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            y[t * rows + r] = s as f32;
        }
    }
    y
}

/// `quantize_q8_1` of `cu/llama.cu`: per block of 32 values `d = max|x| / 127`, `q = round(x /
/// d)` (ties to even, as `rintf`); returns the values the int8 GEMVs see, `q * d`.
pub fn quantize_q8_1(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|block| {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            block.iter().map(move |&v| if amax == 0.0 { 0.0 } else { (v / d).round_ties_even() * d })
        })
        .collect()
}

/// Rotary embedding of one head vector in place (see `rope_f32` in `cu/llama.cu`).
pub fn rope_head(v: &mut [f32], pos: i32, n_rot: usize, base: f32, factors: Option<&[f32]>, neox: bool) {
    let half = n_rot / 2;
    for p in 0..half {
        let mut theta = f64::from(pos) * f64::from(base).powf(-2.0 * p as f64 / n_rot as f64);
        if let Some(f) = factors {
            theta /= f64::from(f[p]);
        }
        let (s, c) = theta.sin_cos();
        let (a, b) = if neox { (p, p + half) } else { (2 * p, 2 * p + 1) };
        let (x0, x1) = (f64::from(v[a]), f64::from(v[b]));
        v[a] = (x0 * c - x1 * s) as f32;
        v[b] = (x0 * s + x1 * c) as f32;
    }
}

/// `silu(g) * u`.
pub fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| {
            let g = f64::from(g);
            (g / (1.0 + (-g).exp()) * f64::from(u)) as f32
        })
        .collect()
}

/// Attention of one query head `q` (`d` values) over `keys`/`values` (`len` rows of `d`),
/// softmax scaled by `scale`, in f64.
pub fn attention_head(q: &[f32], keys: &[f32], values: &[f32], d: usize, scale: f32) -> Vec<f32> {
    let len = keys.len() / d;
    let scores: Vec<f64> = (0..len)
        .map(|j| {
            let k = &keys[j * d..(j + 1) * d];
            q.iter().zip(k).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() * f64::from(scale)
        })
        .collect();
    let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
    let sum: f64 = e.iter().sum();
    (0..d)
        .map(|i| (0..len).map(|j| e[j] * f64::from(values[j * d + i])).sum::<f64>() / sum)
        .map(|v| v as f32)
        .collect()
}
