//! Safe launchers for the decoder kernels of `cu/llama.cu` (embedding lookup, dequantising
//! GEMV, RoPE, SwiGLU, paged KV writes, split-KV paged attention, argmax). Activations are
//! f32, weights keep their GGUF encoding ([`DeviceWeight`]), the KV cache is f16. The
//! one-token GEMVs of quantised weights can also take activations quantised to int8
//! ([`ActQ8`], [`Gpu::quantize_act`]).
//! Every launcher checks buffer lengths against the shape before the `unsafe` launch; the CPU
//! references live in [`crate::reference`].

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use crate::dtype::F16;
use crate::error::KernelError;
use crate::family::KernelFamily;
use crate::gpu::Gpu;
use crate::weights::WeightType;

/// A weight matrix on the device in its GGUF encoding: `rows` rows of `cols` values.
#[derive(Debug)]
pub struct DeviceWeight {
    /// The encoded bytes, `rows * ty.row_bytes(cols)`.
    pub data: CudaSlice<u8>,
    /// Encoding.
    pub ty: WeightType,
    /// Output dimension (rows).
    pub rows: usize,
    /// Input dimension (values per row).
    pub cols: usize,
}

/// The batch-1 GEMV variant [`Gpu::gemv`] uses for one token of a `ty` matrix (see
/// [`Gpu::gemv_variant`]): the fastest on an H100 for the Llama-8B shapes (notes/kernels.md).
pub fn decode_gemv_variant(ty: WeightType) -> &'static str {
    match ty {
        WeightType::Q8_0 => "k4",
        _ => "c2",
    }
}

/// Activations quantised to int8 blocks of 32 (q8_1: per block a scale `d = max|x| / 127` and
/// `d * sum(q)`), the input of the `dp4a` GEMVs ([`Gpu::gemv_q8`], [`Gpu::gemv_glu_q8`],
/// [`Gpu::gemv_multi_q8`]). Made by [`Gpu::act_q8`], filled by [`Gpu::quantize_act`].
#[derive(Debug)]
pub struct ActQ8 {
    q: CudaSlice<i8>,
    ds: CudaSlice<f32>,
    /// Values per token of the last [`Gpu::quantize_act`] (checked against each matrix's width).
    cols: usize,
}

/// Tokens per GEMV launch (the kernel keeps one accumulator per token in registers).
pub const GEMV_MAX_TOKENS: usize = 8;

fn invalid<T>(m: String) -> Result<T, KernelError> {
    Err(KernelError::InvalidArgument(m))
}

fn i32_of(what: &str, v: usize) -> Result<i32, KernelError> {
    i32::try_from(v).map_err(|_| KernelError::InvalidArgument(format!("{what} = {v} exceeds i32")))
}

fn need(what: &str, len: usize, want: usize) -> Result<(), KernelError> {
    if len < want { invalid(format!("`{what}` has {len} elements, needs {want}")) } else { Ok(()) }
}

fn grid_1d(n: usize, threads: u32) -> Result<LaunchConfig, KernelError> {
    let blocks = u32::try_from(n.div_ceil(threads as usize))
        .map_err(|_| KernelError::InvalidArgument(format!("{n} threads is too large a grid")))?;
    Ok(LaunchConfig { grid_dim: (blocks.max(1), 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
}

/// Checked launch parameters of a three-matrix GEMV (`gemv_multi*`): one type and width, each
/// output long enough; 2 rows per warp over the largest matrix.
struct MultiShape {
    rows: [i32; 3],
    cols: i32,
    row_bytes: i64,
    grid: LaunchConfig,
}

fn multi_shape(ws: [&DeviceWeight; 3], ys: &[&mut CudaSlice<f32>; 3]) -> Result<MultiShape, KernelError> {
    let (ty, cols) = (ws[0].ty, ws[0].cols);
    if ws.iter().any(|w| w.ty != ty || w.cols != cols) {
        return invalid("gemv_multi needs matrices of one type and width".into());
    }
    for (w, y) in ws.iter().zip(ys.iter()) {
        need("y", y.len(), w.rows)?;
    }
    let max_rows = ws.iter().map(|w| w.rows).max().unwrap_or(0);
    Ok(MultiShape {
        rows: [i32_of("rows", ws[0].rows)?, i32_of("rows", ws[1].rows)?, i32_of("rows", ws[2].rows)?],
        cols: i32_of("cols", cols)?,
        row_bytes: i64::try_from(ty.row_bytes(cols)).unwrap_or(i64::MAX),
        grid: grid_1d(max_rows.div_ceil(2) * 32, 128)?,
    })
}

/// Arguments of [`Gpu::rope`]: rotates `q` (`n * n_head * head_dim`) and `k` (`n * n_kv *
/// head_dim`) in place.
#[derive(Debug)]
pub struct Rope<'a> {
    /// Queries, rotated in place.
    pub q: &'a mut CudaSlice<f32>,
    /// Keys, rotated in place.
    pub k: &'a mut CudaSlice<f32>,
    /// Position of each of the `n` tokens.
    pub pos: &'a CudaSlice<i32>,
    /// Tokens.
    pub n: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_kv: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// Rotated dimensions (even, <= head_dim).
    pub n_rot: usize,
    /// Frequency base (`rope.freq_base`).
    pub base: f32,
    /// Per-frequency divisors (`n_rot / 2`), e.g. Llama 3's `rope_freqs.weight`.
    pub factors: Option<&'a CudaSlice<f32>>,
    /// NeoX pairing (i, i + n_rot/2) instead of adjacent pairs.
    pub neox: bool,
}

/// Arguments of [`Gpu::kv_write`]: stores `n` tokens' keys and values (f32, `n * width`) into
/// the f16 paged caches at `slots[t]` (negative: skipped).
#[derive(Debug)]
pub struct KvWrite<'a> {
    /// Key cache, `slots_total * width`.
    pub k_cache: &'a mut CudaSlice<F16>,
    /// Value cache, same shape.
    pub v_cache: &'a mut CudaSlice<F16>,
    /// Keys to store.
    pub k: &'a CudaSlice<f32>,
    /// Values to store.
    pub v: &'a CudaSlice<f32>,
    /// Slot of each token (`block * block_size + offset`).
    pub slots: &'a CudaSlice<i32>,
    /// Tokens.
    pub n: usize,
    /// `n_kv * head_dim`.
    pub width: usize,
}

/// Scratch for split-KV attention: partial outputs and (max, sum) pairs.
#[derive(Debug)]
pub struct AttentionScratch {
    part_o: CudaSlice<f32>,
    part_ml: CudaSlice<f32>,
    /// Capacity in (query, head, split) triples.
    capacity: usize,
}

/// Arguments of [`Gpu::paged_attention`].
#[derive(Debug)]
pub struct PagedAttention<'a> {
    /// Output, `n_query * n_head * head_dim`.
    pub out: &'a mut CudaSlice<f32>,
    /// Queries (already rotated), same shape as `out`.
    pub q: &'a CudaSlice<f32>,
    /// Key cache `[slot][n_kv][head_dim]`.
    pub k_cache: &'a CudaSlice<F16>,
    /// Value cache, same layout.
    pub v_cache: &'a CudaSlice<F16>,
    /// `[n_seqs][max_blocks]` block ids.
    pub block_tables: &'a CudaSlice<i32>,
    /// Sequence (row of `block_tables`) of each query.
    pub seq: &'a CudaSlice<i32>,
    /// Tokens each query attends to (its position + 1 for causal attention).
    pub ctx: &'a CudaSlice<i32>,
    /// Queries.
    pub n_query: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (divides `n_head`).
    pub n_kv: usize,
    /// 64, 128 or 256.
    pub head_dim: usize,
    /// Tokens per cache block.
    pub block_size: usize,
    /// Columns of `block_tables`.
    pub max_blocks: usize,
    /// An upper bound of every `ctx[t]` (sets the number of splits).
    pub max_ctx: usize,
    /// Tokens per split.
    pub split_len: usize,
    /// Softmax scale, usually `1/sqrt(head_dim)`.
    pub scale: f32,
    /// Partial results.
    pub scratch: &'a mut AttentionScratch,
}

impl Gpu {
    /// Uploads GGUF-encoded bytes as a weight matrix (checks the size and row alignment).
    pub fn upload_weight(
        &self,
        ty: WeightType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<DeviceWeight, KernelError> {
        if cols == 0 || !cols.is_multiple_of(ty.cols_multiple()) {
            return invalid(format!(
                "{ty:?} rows need a multiple of {} values, got {cols}",
                ty.cols_multiple()
            ));
        }
        if bytes.len() != rows * ty.row_bytes(cols) {
            return invalid(format!(
                "{ty:?} {rows}x{cols} needs {} bytes, got {}",
                rows * ty.row_bytes(cols),
                bytes.len()
            ));
        }
        Ok(DeviceWeight { data: self.upload(bytes)?, ty, rows, cols })
    }

    /// A scratch buffer for [`Gpu::paged_attention`] with room for `triples` (query, head,
    /// split) triples of `head_dim` values.
    pub fn attention_scratch(
        &self,
        triples: usize,
        head_dim: usize,
    ) -> Result<AttentionScratch, KernelError> {
        Ok(AttentionScratch {
            part_o: self.alloc_zeros(triples.max(1) * head_dim)?,
            part_ml: self.alloc_zeros(2 * triples.max(1))?,
            capacity: triples.max(1),
        })
    }

    /// `out[t] = dequant(w[ids[t]])` for `n` token ids (`out`: `n * w.cols` f32).
    pub fn embed(
        &self,
        w: &DeviceWeight,
        ids: &CudaSlice<i32>,
        n: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        need("ids", ids.len(), n)?;
        need("out", out.len(), n * w.cols)?;
        if n == 0 {
            return Ok(());
        }
        let func = self.function(KernelFamily::Llama, &format!("embed_{}", w.ty.suffix()))?;
        let (n_i, cols_i) = (i32_of("n", n)?, i32_of("cols", w.cols)?);
        let row_bytes = i64::try_from(w.ty.row_bytes(w.cols)).unwrap_or(i64::MAX);
        let cfg = grid_1d(n * w.cols / 32, 256)?;
        let mut b = self.stream().launch_builder(&func);
        b.arg(out).arg(&w.data).arg(ids).arg(&n_i).arg(&cols_i).arg(&row_bytes);
        // SAFETY: signature `(float* out, const u8* w, const int* ids, int n, int cols, long long
        // row_bytes)`; out holds n*cols floats, ids n entries; the kernel reads rows ids[t] of w,
        // which the caller guarantees are < w.rows (token ids come from the model's vocabulary).
        unsafe { b.launch(cfg) }.map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    /// `y[t][r] = sum_c w[r][c] * x[t][c]` for `n` tokens (`x`: `n * w.cols`, `y`: `n * w.rows`).
    pub fn gemv(
        &self,
        w: &DeviceWeight,
        x: &CudaSlice<f32>,
        n: usize,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        need("x", x.len(), n * w.cols)?;
        need("y", y.len(), n * w.rows)?;
        if n == 1 {
            return self.gemv_variant(w, x, y, decode_gemv_variant(w.ty));
        }
        let mut t0 = 0;
        while t0 < n {
            let nt = (n - t0).min(GEMV_MAX_TOKENS);
            let xv = x.slice(t0 * w.cols..(t0 + nt) * w.cols);
            let mut yv = y.slice_mut(t0 * w.rows..(t0 + nt) * w.rows);
            self.gemv_views(w, &xv, nt, &mut yv)?;
            t0 += nt;
        }
        Ok(())
    }

    /// Batch-1 GEMV `y = w x` with an explicit kernel variant: `n1`, `r2`, `r4` (1, 2 or 4 rows
    /// per warp), `k1`, `k2`, `k4` (1, 2 or 4 rows per block, columns split over 4 warps) or
    /// `c2`, `c4` (2 or 4 rows per warp, coalesced 16-byte segments).
    pub fn gemv_variant(
        &self,
        w: &DeviceWeight,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        variant: &str,
    ) -> Result<(), KernelError> {
        need("x", x.len(), w.cols)?;
        need("y", y.len(), w.rows)?;
        let threads_for_rows = match variant {
            "n1" => w.rows * 32,
            "r2" => w.rows.div_ceil(2) * 32,
            "r4" => w.rows.div_ceil(4) * 32,
            "k1" => w.rows * 128,
            "k2" => w.rows.div_ceil(2) * 128,
            "k4" => w.rows.div_ceil(4) * 128,
            "c2" => w.rows.div_ceil(2) * 32,
            "c4" => w.rows.div_ceil(4) * 32,
            v => return invalid(format!("GEMV variant {v} (n1, r2, r4, k1, k2, k4, c2, c4)")),
        };
        let func = self.function(KernelFamily::Llama, &format!("gemv_{}_{variant}", w.ty.suffix()))?;
        let (rows, cols, n_i) = (i32_of("rows", w.rows)?, i32_of("cols", w.cols)?, 1i32);
        let row_bytes = i64::try_from(w.ty.row_bytes(w.cols)).unwrap_or(i64::MAX);
        let cfg = grid_1d(threads_for_rows, 128)?;
        let mut b = self.stream().launch_builder(&func);
        b.arg(y).arg(&w.data).arg(x).arg(&rows).arg(&cols).arg(&n_i).arg(&row_bytes);
        // SAFETY: same signature and sizes as `gemv_views` with n = 1 (x: cols, y: rows floats);
        // the grid covers every row group of the variant; loads of rows past the end are
        // clamped in-kernel and never written.
        unsafe { b.launch(cfg) }.map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    /// Room for `values` quantised activations (rounded up to a block of 32).
    pub fn act_q8(&self, values: usize) -> Result<ActQ8, KernelError> {
        let values = values.max(32).next_multiple_of(32);
        Ok(ActQ8 { q: self.alloc_zeros(values)?, ds: self.alloc_zeros(values / 16)?, cols: 0 })
    }

    /// Quantises `n` rows of `cols` activations (`cols` a multiple of 32) into `out`.
    pub fn quantize_act(
        &self,
        x: &CudaSlice<f32>,
        n: usize,
        cols: usize,
        out: &mut ActQ8,
    ) -> Result<(), KernelError> {
        if cols == 0 || !cols.is_multiple_of(32) {
            return invalid(format!("int8 activations need a multiple of 32 values per row, got {cols}"));
        }
        need("x", x.len(), n * cols)?;
        need("int8 activations", out.q.len(), n * cols)?;
        out.cols = cols;
        let blocks = i64::try_from(n * cols / 32).unwrap_or(i64::MAX);
        let func = self.function(KernelFamily::Llama, "quantize_q8_1")?;
        let mut b = self.stream().launch_builder(&func);
        b.arg(&mut out.q).arg(&mut out.ds).arg(x).arg(&blocks);
        // SAFETY: signature `(i8* q, float2* ds, const float* x, long long blocks)`; x holds
        // blocks*32 floats, q blocks*32 bytes and ds 2*blocks floats (checked: ds has q/16);
        // one warp per block, warps past `blocks` return.
        unsafe { b.launch(grid_1d(n * cols, 256)?) }.map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    fn check_q8(w: &DeviceWeight, x: &ActQ8) -> Result<(), KernelError> {
        if !w.ty.int8_dot() {
            return invalid(format!("{:?} weights take f32 activations, not int8", w.ty));
        }
        if x.cols != w.cols {
            return invalid(format!(
                "int8 activations of {} values for a matrix of {} columns",
                x.cols, w.cols
            ));
        }
        Ok(())
    }

    /// One token's `y = w x` over int8 activations (`dp4a`); `w` quantised (q8_0, q4_K, q6_K).
    pub fn gemv_q8(&self, w: &DeviceWeight, x: &ActQ8, y: &mut CudaSlice<f32>) -> Result<(), KernelError> {
        Self::check_q8(w, x)?;
        need("y", y.len(), w.rows)?;
        let func = self.function(KernelFamily::Llama, &format!("gemv_{}_q8", w.ty.suffix()))?;
        let (rows, cols) = (i32_of("rows", w.rows)?, i32_of("cols", w.cols)?);
        let row_bytes = i64::try_from(w.ty.row_bytes(w.cols)).unwrap_or(i64::MAX);
        let mut b = self.stream().launch_builder(&func);
        b.arg(y).arg(&w.data).arg(&x.q).arg(&x.ds).arg(&rows).arg(&cols).arg(&row_bytes);
        // SAFETY: signature `(float* y, const u8* w, const i8* xq, const float2* xds, int rows,
        // int cols, long long rb)`; x holds cols int8 values and cols/32 (d, s) pairs (checked
        // cols), y rows floats, w rows rows of rb bytes; 2 rows per warp, clamped loads.
        unsafe { b.launch(grid_1d(w.rows.div_ceil(2) * 32, 128)?) }
            .map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    /// [`Gpu::gemv_glu`] over int8 activations.
    pub fn gemv_glu_q8(
        &self,
        gate: &DeviceWeight,
        up: &DeviceWeight,
        x: &ActQ8,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        if gate.ty != up.ty || gate.rows != up.rows || gate.cols != up.cols {
            return invalid("gate and up must have the same type and shape".into());
        }
        Self::check_q8(gate, x)?;
        need("y", y.len(), gate.rows)?;
        let func = self.function(KernelFamily::Llama, &format!("gemv_glu_{}_q8", gate.ty.suffix()))?;
        let (rows, cols) = (i32_of("rows", gate.rows)?, i32_of("cols", gate.cols)?);
        let row_bytes = i64::try_from(gate.ty.row_bytes(gate.cols)).unwrap_or(i64::MAX);
        let mut b = self.stream().launch_builder(&func);
        b.arg(y).arg(&gate.data).arg(&up.data).arg(&x.q).arg(&x.ds).arg(&rows).arg(&cols).arg(&row_bytes);
        // SAFETY: signature `(float* y, const u8* wg, const u8* wu, const i8* xq, const float2*
        // xds, int rows, int cols, long long rb)`; both matrices rows rows of rb bytes (same
        // shape, checked), x cols values (checked), y rows floats; 2 rows per warp, clamped.
        unsafe { b.launch(grid_1d(gate.rows.div_ceil(2) * 32, 128)?) }
            .map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    /// [`Gpu::gemv_multi`] over int8 activations.
    pub fn gemv_multi_q8(
        &self,
        ws: [&DeviceWeight; 3],
        x: &ActQ8,
        ys: [&mut CudaSlice<f32>; 3],
    ) -> Result<(), KernelError> {
        let m = multi_shape(ws, &ys)?;
        Self::check_q8(ws[0], x)?;
        let func = self.function(KernelFamily::Llama, &format!("gemv_multi_{}_q8", ws[0].ty.suffix()))?;
        let [y0, y1, y2] = ys;
        let mut b = self.stream().launch_builder(&func);
        b.arg(y0).arg(&ws[0].data).arg(&m.rows[0]).arg(y1).arg(&ws[1].data).arg(&m.rows[1]);
        b.arg(y2).arg(&ws[2].data).arg(&m.rows[2]).arg(&x.q).arg(&x.ds).arg(&m.cols).arg(&m.row_bytes);
        // SAFETY: signature `(float* y0, const u8* w0, int rows0, float* y1, const u8* w1, int
        // rows1, float* y2, const u8* w2, int rows2, const i8* xq, const float2* xds, int cols,
        // long long rb)`; each w_i rows_i rows of rb bytes (one type and width, checked), each
        // y_i rows_i floats, x cols values (checked); grid covers the largest matrix.
        unsafe { b.launch(m.grid) }.map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    /// One token's `y = silu(gate x) * (up x)` in one launch (`gate`, `up`: same type and shape).
    pub fn gemv_glu(
        &self,
        gate: &DeviceWeight,
        up: &DeviceWeight,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        if gate.ty != up.ty || gate.rows != up.rows || gate.cols != up.cols {
            return invalid("gate and up must have the same type and shape".into());
        }
        need("x", x.len(), gate.cols)?;
        need("y", y.len(), gate.rows)?;
        let func = self.function(KernelFamily::Llama, &format!("gemv_glu_{}", gate.ty.suffix()))?;
        let (rows, cols) = (i32_of("rows", gate.rows)?, i32_of("cols", gate.cols)?);
        let row_bytes = i64::try_from(gate.ty.row_bytes(gate.cols)).unwrap_or(i64::MAX);
        let mut b = self.stream().launch_builder(&func);
        b.arg(y).arg(&gate.data).arg(&up.data).arg(x).arg(&rows).arg(&cols).arg(&row_bytes);
        // SAFETY: signature `(float* y, const u8* wg, const u8* wu, const float* x, int rows,
        // int cols, long long row_bytes)`; both matrices hold rows rows of row_bytes (same
        // shape, checked), x cols and y rows floats; 2 rows per warp, clamped loads.
        unsafe { b.launch(grid_1d(gate.rows.div_ceil(2) * 32, 128)?) }
            .map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    /// One token's `y_i = w_i x` for three matrices of the same type and width (q, k, v) in one
    /// launch.
    pub fn gemv_multi(
        &self,
        ws: [&DeviceWeight; 3],
        x: &CudaSlice<f32>,
        ys: [&mut CudaSlice<f32>; 3],
    ) -> Result<(), KernelError> {
        let m = multi_shape(ws, &ys)?;
        need("x", x.len(), ws[0].cols)?;
        let func = self.function(KernelFamily::Llama, &format!("gemv_multi_{}", ws[0].ty.suffix()))?;
        let [y0, y1, y2] = ys;
        let mut b = self.stream().launch_builder(&func);
        b.arg(y0).arg(&ws[0].data).arg(&m.rows[0]).arg(y1).arg(&ws[1].data).arg(&m.rows[1]);
        b.arg(y2).arg(&ws[2].data).arg(&m.rows[2]).arg(x).arg(&m.cols).arg(&m.row_bytes);
        // SAFETY: signature `(float* y0, const u8* w0, int rows0, float* y1, const u8* w1, int
        // rows1, float* y2, const u8* w2, int rows2, const float* x, int cols, long long rb)`;
        // each w_i holds rows_i rows of rb bytes (one type and width, checked), each y_i rows_i
        // floats, x cols floats; the grid covers the largest matrix, 2 rows per warp.
        unsafe { b.launch(m.grid) }.map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    fn gemv_views(
        &self,
        w: &DeviceWeight,
        x: &CudaView<'_, f32>,
        n: usize,
        y: &mut CudaViewMut<'_, f32>,
    ) -> Result<(), KernelError> {
        let nt = match n {
            1 => 1,
            2 => 2,
            3 | 4 => 4,
            _ => 8,
        };
        let func = self.function(KernelFamily::Llama, &format!("gemv_{}_n{nt}", w.ty.suffix()))?;
        let (rows, cols, n_i) = (i32_of("rows", w.rows)?, i32_of("cols", w.cols)?, i32_of("n", n)?);
        let row_bytes = i64::try_from(w.ty.row_bytes(w.cols)).unwrap_or(i64::MAX);
        let cfg = grid_1d(w.rows * 32, 128)?;
        let mut b = self.stream().launch_builder(&func);
        b.arg(y).arg(&w.data).arg(x).arg(&rows).arg(&cols).arg(&n_i).arg(&row_bytes);
        // SAFETY: signature `(float* y, const u8* w, const float* x, int rows, int cols, int n,
        // long long row_bytes)`; the caller checked x (n*cols) and y (n*rows); w holds rows rows
        // of row_bytes (checked at upload, cols a multiple of the block and of 32); n <= NT.
        unsafe { b.launch(cfg) }.map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    /// Rotary position embedding on `q` and `k` in place.
    pub fn rope(&self, a: Rope<'_>) -> Result<(), KernelError> {
        if !a.n_rot.is_multiple_of(2) || a.n_rot > a.head_dim || a.n_rot == 0 {
            return invalid(format!("n_rot {} must be even, > 0 and <= head_dim {}", a.n_rot, a.head_dim));
        }
        need("q", a.q.len(), a.n * a.n_head * a.head_dim)?;
        need("k", a.k.len(), a.n * a.n_kv * a.head_dim)?;
        need("pos", a.pos.len(), a.n)?;
        if let Some(f) = a.factors {
            need("factors", f.len(), a.n_rot / 2)?;
        }
        if a.n == 0 {
            return Ok(());
        }
        let func = self.function(KernelFamily::Llama, "rope_f32")?;
        let (n, nh, nkv) = (i32_of("n", a.n)?, i32_of("n_head", a.n_head)?, i32_of("n_kv", a.n_kv)?);
        let (hd, nr) = (i32_of("head_dim", a.head_dim)?, i32_of("n_rot", a.n_rot)?);
        let neox = i32::from(a.neox);
        let cfg = grid_1d(a.n * (a.n_head + a.n_kv) * a.n_rot / 2, 256)?;
        let null: u64 = 0;
        let mut b = self.stream().launch_builder(&func);
        b.arg(a.q).arg(a.k).arg(a.pos).arg(&n).arg(&nh).arg(&nkv).arg(&hd).arg(&nr).arg(&a.base);
        match a.factors {
            Some(f) => b.arg(f),
            None => b.arg(&null),
        };
        b.arg(&neox);
        // SAFETY: signature `(float* q, float* k, const int* pos, int n, int n_head, int n_kv,
        // int head_dim, int n_rot, float base, const float* factors, int neox)`; lengths checked
        // above; a null `factors` (0) is handled by the kernel.
        unsafe { b.launch(cfg) }.map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    /// `out = silu(gate) * up` over `n` values.
    pub fn swiglu(
        &self,
        out: &mut CudaSlice<f32>,
        gate: &CudaSlice<f32>,
        up: &CudaSlice<f32>,
        n: usize,
    ) -> Result<(), KernelError> {
        need("out", out.len(), n)?;
        need("gate", gate.len(), n)?;
        need("up", up.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let func = self.function(KernelFamily::Llama, "swiglu_f32")?;
        let n_i = i64::try_from(n).unwrap_or(i64::MAX);
        let mut b = self.stream().launch_builder(&func);
        b.arg(out).arg(gate).arg(up).arg(&n_i);
        // SAFETY: signature `(float* out, const float* gate, const float* up, long long n)`;
        // all three hold n floats (checked).
        unsafe { b.launch(grid_1d(n, 256)?) }.map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    /// `gate = silu(gate) * up` over `n` values, in place.
    pub fn swiglu_inplace(
        &self,
        gate: &mut CudaSlice<f32>,
        up: &CudaSlice<f32>,
        n: usize,
    ) -> Result<(), KernelError> {
        need("gate", gate.len(), n)?;
        need("up", up.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let func = self.function(KernelFamily::Llama, "swiglu_inplace_f32")?;
        let n_i = i64::try_from(n).unwrap_or(i64::MAX);
        let mut b = self.stream().launch_builder(&func);
        b.arg(gate).arg(up).arg(&n_i);
        // SAFETY: signature `(float* gate, const float* up, long long n)`; both hold n floats.
        unsafe { b.launch(grid_1d(n, 256)?) }.map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    /// Writes keys and values into the paged f16 caches.
    pub fn kv_write(&self, a: KvWrite<'_>) -> Result<(), KernelError> {
        need("k", a.k.len(), a.n * a.width)?;
        need("v", a.v.len(), a.n * a.width)?;
        need("slots", a.slots.len(), a.n)?;
        if a.k_cache.len() != a.v_cache.len() || a.width == 0 || !a.k_cache.len().is_multiple_of(a.width) {
            return invalid("k and v caches must be equal whole numbers of slots".into());
        }
        if a.n == 0 {
            return Ok(());
        }
        let func = self.function(KernelFamily::Llama, "kv_write_f16")?;
        let (n, width) = (i32_of("n", a.n)?, i32_of("width", a.width)?);
        let mut b = self.stream().launch_builder(&func);
        b.arg(a.k_cache).arg(a.v_cache).arg(a.k).arg(a.v).arg(a.slots).arg(&n).arg(&width);
        // SAFETY: signature `(hl_f16* kc, hl_f16* vc, const float* k, const float* v, const int*
        // slots, int n, int width)`; k, v, slots checked; the caller's slot ids are below
        // cache.len() / width (they come from the block manager's tables).
        unsafe { b.launch(grid_1d(a.n * a.width, 256)?) }.map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    /// Attention of each query over its sequence's paged cache (split-KV, then a reduction).
    pub fn paged_attention(&self, a: PagedAttention<'_>) -> Result<(), KernelError> {
        if ![64, 128, 256].contains(&a.head_dim) {
            return invalid(format!("head_dim {} not supported (64, 128, 256)", a.head_dim));
        }
        if a.n_kv == 0 || !a.n_head.is_multiple_of(a.n_kv) || a.block_size == 0 || a.split_len == 0 {
            return invalid("n_head must be a multiple of n_kv; block_size, split_len > 0".into());
        }
        if a.n_query == 0 {
            return Ok(());
        }
        let n_split = a.max_ctx.div_ceil(a.split_len).max(1);
        need("q", a.q.len(), a.n_query * a.n_head * a.head_dim)?;
        need("out", a.out.len(), a.n_query * a.n_head * a.head_dim)?;
        need("seq", a.seq.len(), a.n_query)?;
        need("ctx", a.ctx.len(), a.n_query)?;
        if a.scratch.capacity < a.n_query * a.n_head * n_split {
            return invalid(format!(
                "attention scratch holds {} triples, needs {}",
                a.scratch.capacity,
                a.n_query * a.n_head * n_split
            ));
        }
        let d = a.head_dim;
        let ints = [a.n_head, a.n_kv, a.block_size, a.max_blocks, a.split_len, n_split, a.n_query];
        let mut v = [0i32; 7];
        for (slot, x) in v.iter_mut().zip(ints) {
            *slot = i32_of("attention shape", x)?;
        }
        let [nh, nkv, bs, mb, sl, ns, nq] = v;
        let grid =
            (u32::try_from(nh).unwrap_or(0), u32::try_from(nq).unwrap_or(0), u32::try_from(ns).unwrap_or(0));
        let func = self.function(KernelFamily::Llama, &format!("paged_attention_d{d}"))?;
        let mut b = self.stream().launch_builder(&func);
        b.arg(&mut a.scratch.part_o).arg(&mut a.scratch.part_ml).arg(a.q).arg(a.k_cache).arg(a.v_cache);
        b.arg(a.block_tables)
            .arg(a.seq)
            .arg(a.ctx)
            .arg(&nh)
            .arg(&nkv)
            .arg(&bs)
            .arg(&mb)
            .arg(&sl)
            .arg(&a.scale);
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: signature `(float* part_o, float2* part_ml, const float* q, const hl_f16* kc,
        // const hl_f16* vc, const int* block_tables, const int* seq, const int* ctx, int n_head,
        // int n_kv, int block_size, int max_blocks, int split_len, float scale)`; q and the
        // scratch are sized for the grid (checked); the caller guarantees that seq[t] indexes a
        // row of block_tables and that the first ctx[t] tokens' blocks are valid cache blocks.
        unsafe { b.launch(cfg) }.map_err(KernelError::driver("cuLaunchKernel"))?;

        let func = self.function(KernelFamily::Llama, &format!("attention_reduce_d{d}"))?;
        let mut b = self.stream().launch_builder(&func);
        b.arg(a.out).arg(&a.scratch.part_o).arg(&a.scratch.part_ml).arg(&nh).arg(&ns);
        let cfg = LaunchConfig {
            grid_dim: (grid.0, grid.1, 1),
            block_dim: (u32::try_from(d).unwrap_or(128), 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: signature `(float* out, const float* part_o, const float2* part_ml, int n_head,
        // int n_split)`; out holds n_query*n_head*D floats and the scratch the triples written
        // by the launch above, on the same stream.
        unsafe { b.launch(cfg) }.map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }

    /// `out[r] = argmax(x[r])` (smallest index on ties) for `rows` rows of `cols`.
    pub fn argmax(
        &self,
        out: &mut CudaSlice<i32>,
        x: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<(), KernelError> {
        need("out", out.len(), rows)?;
        need("x", x.len(), rows * cols)?;
        if rows == 0 {
            return Ok(());
        }
        let func = self.function(KernelFamily::Llama, "argmax_f32")?;
        let cols_i = i32_of("cols", cols)?;
        let mut b = self.stream().launch_builder(&func);
        b.arg(out).arg(x).arg(&cols_i);
        let cfg = LaunchConfig {
            grid_dim: (u32::try_from(rows).unwrap_or(u32::MAX), 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: signature `(int* out, const float* x, int cols)`, one block per row; sizes checked.
        unsafe { b.launch(cfg) }.map_err(KernelError::driver("cuLaunchKernel"))?;
        Ok(())
    }
}
