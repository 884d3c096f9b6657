//! The Llama-family model on the device: hyper-parameters from GGUF metadata, the weights
//! (uploaded in their GGUF encoding) and the forward pass of one batch of tokens over the
//! paged KV cache, built from `hyperllama-kernels` launches.
//!
//! Forward pass per layer (activations f32, `x` = the last sub-layer's output):
//! `h = rmsnorm(residual += x) -> q,k,v GEMV -> RoPE -> KV write -> paged attention ->
//! o GEMV -> rmsnorm(residual += x) -> gate/up GEMV -> SwiGLU -> down GEMV`.

use hyperllama_kernels::{
    ActQ8, AttentionScratch, DeviceWeight, F16, Gpu, KvWrite, PagedAttention, RmsNormResidual, Rope,
    WeightType, dequantize_row,
};

use cudarc::driver::CudaSlice;

use super::DeviceError;
use super::gguf::GgufFile;

/// Hyper-parameters of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `general.architecture` ("llama").
    pub architecture: String,
    /// Hidden size.
    pub hidden: usize,
    /// Layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// Vocabulary size (rows of the output matrix).
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// Rotated dimensions per head.
    pub rope_dims: usize,
    /// NeoX-style rotation (Qwen) instead of adjacent pairs (Llama).
    pub rope_neox: bool,
    /// Training context length.
    pub context: usize,
}

impl LlamaConfig {
    /// Reads the hyper-parameters of `file`.
    pub fn from_gguf(file: &GgufFile) -> Result<LlamaConfig, DeviceError> {
        let arch = file.str("general.architecture").unwrap_or("").to_string();
        let rope_neox = match arch.as_str() {
            "llama" | "mistral" => false,
            other => {
                return Err(DeviceError::Unsupported(format!("architecture `{other}` (supported: llama)")));
            }
        };
        let int = |k: &str| -> Result<usize, DeviceError> {
            file.int(&format!("{arch}.{k}"))
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| DeviceError::Model(format!("metadata {arch}.{k} missing")))
        };
        let hidden = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let kv_heads = int("attention.head_count_kv").unwrap_or(heads);
        let head_dim = int("attention.key_length").unwrap_or(hidden / heads.max(1));
        let vocab = file
            .tensors
            .get("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| DeviceError::Model("token_embd.weight missing".into()))?;
        let eps = file.float(&format!("{arch}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32;
        let rope_base = file.float(&format!("{arch}.rope.freq_base")).unwrap_or(10000.0) as f32;
        let cfg = LlamaConfig {
            hidden,
            layers: int("block_count")?,
            heads,
            kv_heads,
            head_dim,
            ffn: int("feed_forward_length")?,
            vocab,
            eps,
            rope_base,
            rope_dims: int("rope.dimension_count").unwrap_or(head_dim),
            rope_neox,
            context: int("context_length").unwrap_or(4096),
            architecture: arch,
        };
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || ![64, 128, 256].contains(&head_dim) {
            return Err(DeviceError::Unsupported(format!(
                "heads {heads}/{kv_heads} with head_dim {head_dim} (needs 64/128/256 and GQA groups)"
            )));
        }
        Ok(cfg)
    }
}

/// One transformer block's weights.
#[derive(Debug)]
pub struct LayerWeights {
    pub(super) attn_norm: CudaSlice<f32>,
    pub(super) q: DeviceWeight,
    pub(super) k: DeviceWeight,
    pub(super) v: DeviceWeight,
    pub(super) o: DeviceWeight,
    pub(super) ffn_norm: CudaSlice<f32>,
    pub(super) gate: DeviceWeight,
    pub(super) up: DeviceWeight,
    pub(super) down: DeviceWeight,
}

/// All weights of the model on the device.
#[derive(Debug)]
pub struct LlamaWeights {
    pub(super) embed: DeviceWeight,
    pub(super) output: Option<DeviceWeight>,
    pub(super) output_norm: CudaSlice<f32>,
    pub(super) rope_factors: Option<CudaSlice<f32>>,
    pub(super) layers: Vec<LayerWeights>,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Encodings seen, for reports ("Q4_K x 193, Q6_K x 33, ...").
    pub types: Vec<(WeightType, usize)>,
}

fn upload_matrix(
    gpu: &Gpu,
    f: &GgufFile,
    name: &str,
    types: &mut Vec<(WeightType, usize)>,
) -> Result<DeviceWeight, DeviceError> {
    let (info, bytes) = f.read(name)?;
    let ty = WeightType::from_ggml_type(info.ggml_type)
        .ok_or_else(|| DeviceError::Unsupported(format!("tensor {name} has ggml type {}", info.ggml_type)))?;
    let (cols, rows) = match info.dims.as_slice() {
        [c, r] => (*c as usize, *r as usize),
        _ => return Err(DeviceError::Model(format!("tensor {name} is not 2-D: {:?}", info.dims))),
    };
    match types.iter_mut().find(|(t, _)| *t == ty) {
        Some((_, n)) => *n += 1,
        None => types.push((ty, 1)),
    }
    Ok(gpu.upload_weight(ty, rows, cols, &bytes)?)
}

fn upload_vector(gpu: &Gpu, f: &GgufFile, name: &str) -> Result<CudaSlice<f32>, DeviceError> {
    let (info, bytes) = f.read(name)?;
    let ty = WeightType::from_ggml_type(info.ggml_type)
        .ok_or_else(|| DeviceError::Unsupported(format!("tensor {name} has ggml type {}", info.ggml_type)))?;
    let n = info.dims.iter().product::<u64>() as usize;
    Ok(gpu.upload(&dequantize_row(ty, &bytes, n))?)
}

impl LlamaWeights {
    /// Uploads every tensor the forward pass uses.
    pub fn load(gpu: &Gpu, f: &GgufFile, cfg: &LlamaConfig) -> Result<LlamaWeights, DeviceError> {
        let mut types = Vec::new();
        let embed = upload_matrix(gpu, f, "token_embd.weight", &mut types)?;
        let output = if f.tensors.contains_key("output.weight") {
            Some(upload_matrix(gpu, f, "output.weight", &mut types)?)
        } else {
            None
        };
        let output_norm = upload_vector(gpu, f, "output_norm.weight")?;
        let rope_factors = if f.tensors.contains_key("rope_freqs.weight") {
            Some(upload_vector(gpu, f, "rope_freqs.weight")?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let m = |s: &str, types: &mut Vec<(WeightType, usize)>| {
                upload_matrix(gpu, f, &format!("blk.{i}.{s}.weight"), types)
            };
            layers.push(LayerWeights {
                attn_norm: upload_vector(gpu, f, &format!("blk.{i}.attn_norm.weight"))?,
                q: m("attn_q", &mut types)?,
                k: m("attn_k", &mut types)?,
                v: m("attn_v", &mut types)?,
                o: m("attn_output", &mut types)?,
                ffn_norm: upload_vector(gpu, f, &format!("blk.{i}.ffn_norm.weight"))?,
                gate: m("ffn_gate", &mut types)?,
                up: m("ffn_up", &mut types)?,
                down: m("ffn_down", &mut types)?,
            });
        }
        let bytes = f.tensors.values().map(|t| t.bytes).sum();
        Ok(LlamaWeights { embed, output, output_norm, rope_factors, layers, bytes, types })
    }
}

/// How [`LlamaWeights::random`] encodes each matrix: `(tensor name without `.weight`, layer
/// or `None`) -> type`.
pub type TypeMix<'a> = &'a dyn Fn(&str, Option<usize>) -> WeightType;

/// `rows` x `cols` random weights of `ty`, cut from a repeated pool of about 32 MiB (content
/// does not matter for speed; the pool keeps generation fast for 8B-sized models).
fn random_matrix(
    gpu: &Gpu,
    ty: WeightType,
    rows: usize,
    cols: usize,
    seed: u64,
) -> Result<DeviceWeight, DeviceError> {
    let rb = ty.row_bytes(cols);
    let pool_rows = ((32 << 20) / rb).clamp(1, rows);
    let pool = hyperllama_kernels::random_weights(ty, pool_rows, cols, seed);
    let mut bytes = Vec::with_capacity(rows * rb);
    while bytes.len() < rows * rb {
        let take = (rows * rb - bytes.len()).min(pool.len());
        bytes.extend_from_slice(&pool[..take]);
    }
    Ok(gpu.upload_weight(ty, rows, cols, &bytes)?)
}

impl LlamaWeights {
    /// Random weights of `cfg`'s shape, each matrix encoded as `mix` says (benchmarks).
    pub fn random(gpu: &Gpu, cfg: &LlamaConfig, mix: TypeMix<'_>) -> Result<LlamaWeights, DeviceError> {
        let mut types: Vec<(WeightType, usize)> = Vec::new();
        let mut bytes = 0u64;
        let mut seed = 1u64;
        let mut m = |name: &str, layer: Option<usize>, rows: usize, cols: usize| {
            let ty = mix(name, layer);
            match types.iter_mut().find(|(t, _)| *t == ty) {
                Some((_, n)) => *n += 1,
                None => types.push((ty, 1)),
            }
            bytes += (rows * ty.row_bytes(cols)) as u64;
            seed += 1;
            random_matrix(gpu, ty, rows, cols, seed)
        };
        let (h, qd, kvd, f) = (cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ffn);
        let embed = m("token_embd", None, cfg.vocab, h)?;
        let output = Some(m("output", None, cfg.vocab, h)?);
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            layers.push(LayerWeights {
                attn_norm: gpu.upload(&vec![1.0f32; h])?,
                q: m("attn_q", Some(i), qd, h)?,
                k: m("attn_k", Some(i), kvd, h)?,
                v: m("attn_v", Some(i), kvd, h)?,
                o: m("attn_output", Some(i), h, qd)?,
                ffn_norm: gpu.upload(&vec![1.0f32; h])?,
                gate: m("ffn_gate", Some(i), f, h)?,
                up: m("ffn_up", Some(i), f, h)?,
                down: m("ffn_down", Some(i), h, f)?,
            });
        }
        let output_norm = gpu.upload(&vec![1.0f32; h])?;
        Ok(LlamaWeights { embed, output, output_norm, rope_factors: None, layers, bytes, types })
    }

    /// Bytes a decode step reads from weights (every matrix but the embedding table).
    pub fn decode_bytes(&self) -> u64 {
        let size = |w: &DeviceWeight| (w.rows * w.ty.row_bytes(w.cols)) as u64;
        let out = self.output.as_ref().unwrap_or(&self.embed);
        size(out)
            + self
                .layers
                .iter()
                .map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].into_iter().map(size).sum::<u64>())
                .sum::<u64>()
    }
}

/// Device buffers of one step, sized for `max_tokens` tokens and `max_seqs` sequences.
#[derive(Debug)]
pub struct Workspace {
    pub(super) tokens: CudaSlice<i32>,
    pub(super) pos: CudaSlice<i32>,
    pub(super) slots: CudaSlice<i32>,
    pub(super) seq: CudaSlice<i32>,
    pub(super) ctx: CudaSlice<i32>,
    pub(super) tables: CudaSlice<i32>,
    x: CudaSlice<f32>,
    residual: CudaSlice<f32>,
    normed: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    gate: CudaSlice<f32>,
    up: CudaSlice<f32>,
    rows: CudaSlice<f32>,
    pub(super) logits: CudaSlice<f32>,
    pub(super) argmax: CudaSlice<i32>,
    /// One token's activations quantised to int8 for the quantised GEMVs.
    act: ActQ8,
    /// Whether one-token steps use them (`HYPERLLAMA_NO_INT8_ACT` unset; see
    /// [`Workspace::set_int8_activations`]).
    int8: bool,
    scratch: AttentionScratch,
    scratch_triples: usize,
    max_tokens: usize,
}

impl Workspace {
    /// Allocates the buffers.
    pub fn new(
        gpu: &Gpu,
        cfg: &LlamaConfig,
        max_tokens: usize,
        max_seqs: usize,
        max_blocks: usize,
    ) -> Result<Workspace, DeviceError> {
        let t = max_tokens;
        let qd = cfg.heads * cfg.head_dim;
        let kvd = cfg.kv_heads * cfg.head_dim;
        let scratch_triples = (t * cfg.heads * 4).max(cfg.heads * 64);
        Ok(Workspace {
            tokens: gpu.alloc_zeros(t)?,
            pos: gpu.alloc_zeros(t)?,
            slots: gpu.alloc_zeros(t)?,
            seq: gpu.alloc_zeros(t)?,
            ctx: gpu.alloc_zeros(t)?,
            tables: gpu.alloc_zeros(max_seqs * max_blocks)?,
            x: gpu.alloc_zeros(t * cfg.hidden)?,
            residual: gpu.alloc_zeros(t * cfg.hidden)?,
            normed: gpu.alloc_zeros(t * cfg.hidden)?,
            q: gpu.alloc_zeros(t * qd)?,
            k: gpu.alloc_zeros(t * kvd)?,
            v: gpu.alloc_zeros(t * kvd)?,
            attn: gpu.alloc_zeros(t * qd)?,
            gate: gpu.alloc_zeros(t * cfg.ffn)?,
            up: gpu.alloc_zeros(t * cfg.ffn)?,
            rows: gpu.alloc_zeros(max_seqs * cfg.hidden)?,
            logits: gpu.alloc_zeros(max_seqs * cfg.vocab)?,
            argmax: gpu.alloc_zeros(max_seqs)?,
            act: gpu.act_q8(cfg.hidden.max(cfg.ffn).max(qd))?,
            int8: std::env::var_os("HYPERLLAMA_NO_INT8_ACT").is_none(),
            scratch: gpu.attention_scratch(scratch_triples, cfg.head_dim)?,
            scratch_triples,
            max_tokens,
        })
    }

    /// Turns int8 activations for one-token steps on or off (CUDA graphs captured before must
    /// be dropped by the caller).
    pub fn set_int8_activations(&mut self, on: bool) {
        self.int8 = on;
    }
}

/// One layer's paged K and V caches: `[slot][kv_heads][head_dim]` f16 each.
#[derive(Debug)]
pub struct LayerCache {
    pub(super) k: CudaSlice<F16>,
    pub(super) v: CudaSlice<F16>,
}

/// The shape of one step, after the host-side inputs were uploaded into the workspace.
#[derive(Debug, Clone, Copy)]
pub struct StepShape {
    /// Tokens in the step.
    pub tokens: usize,
    /// Longest context any token attends to.
    pub max_ctx: usize,
    /// Columns of the uploaded block tables.
    pub max_blocks: usize,
    /// Positions per block.
    pub block_size: usize,
}

/// Whether decode computes q, k and v in one pass (`HYPERLLAMA_NO_QKV_FUSION` turns it off,
/// for measurements).
fn fuse_qkv() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HYPERLLAMA_NO_QKV_FUSION").is_none())
}

/// Whether one-token GEMVs of `ty` read int8 activations. q4_K and q6_K do (Q4_K_M 8B: 215 ->
/// 260 tok/s on an H100); q8_0 does not: its blocks are only 2-byte aligned and its `dp4a`
/// kernel, built from 16-bit loads, was slower than the K-split f32 one (157 vs 181 tok/s).
fn reads_int8(ty: WeightType) -> bool {
    ty.int8_dot() && ty != WeightType::Q8_0
}

/// Quantises one token's `x` (`cols` values) into `act` when int8 activations are `on`, the
/// step has one token and one of `readers` takes them; returns the quantised activations then.
fn quantize_for<'a>(
    gpu: &Gpu,
    readers: &[&DeviceWeight],
    x: &CudaSlice<f32>,
    (n, cols): (usize, usize),
    on: bool,
    act: &'a mut ActQ8,
) -> Result<Option<&'a ActQ8>, DeviceError> {
    if n != 1 || !on || !readers.iter().any(|w| reads_int8(w.ty)) {
        return Ok(None);
    }
    gpu.quantize_act(x, 1, cols, act)?;
    Ok(Some(act))
}

/// `y = w x` for `n` tokens; over the int8 activations when given and `w` is quantised.
fn project(
    gpu: &Gpu,
    w: &DeviceWeight,
    x: &CudaSlice<f32>,
    act: Option<&ActQ8>,
    n: usize,
    y: &mut CudaSlice<f32>,
) -> Result<(), DeviceError> {
    match act {
        Some(a) if reads_int8(w.ty) => gpu.gemv_q8(w, a, y)?,
        _ => gpu.gemv(w, x, n, y)?,
    }
    Ok(())
}

/// Runs the layers for `shape.tokens` tokens (inputs already in `ws`), then the final norm,
/// and the output projection + argmax for the rows `out_rows` (token indices).
pub fn forward(
    gpu: &Gpu,
    cfg: &LlamaConfig,
    w: &LlamaWeights,
    cache: &mut [LayerCache],
    ws: &mut Workspace,
    shape: StepShape,
    out_rows: &[usize],
) -> Result<(), DeviceError> {
    let n = shape.tokens;
    if n == 0 || n > ws.max_tokens {
        return Err(DeviceError::Model(format!("step of {n} tokens (workspace holds {})", ws.max_tokens)));
    }
    let (h, d) = (cfg.hidden, cfg.head_dim);
    gpu.embed(&w.embed, &ws.tokens, n, &mut ws.x)?;
    gpu.stream()
        .memset_zeros(&mut ws.residual)
        .map_err(hyperllama_kernels::KernelError::driver_op("cuMemsetD8Async"))?;
    // Split-KV: enough splits to occupy the GPU at batch 1, few enough for the scratch.
    let cap_splits = (ws.scratch_triples / (n * cfg.heads)).max(1);
    let mut split_len = shape.max_ctx.div_ceil(16).max(32).next_multiple_of(32);
    while shape.max_ctx.div_ceil(split_len) > cap_splits {
        split_len *= 2;
    }
    let scale = 1.0 / (d as f32).sqrt();
    for (l, lw) in w.layers.iter().enumerate() {
        gpu.rmsnorm_residual(RmsNormResidual {
            x: &ws.x,
            residual: &mut ws.residual,
            weight: &lw.attn_norm,
            out: &mut ws.normed,
            rows: n,
            hidden: h,
            eps: cfg.eps,
        })?;
        let qkv = [&lw.q, &lw.k, &lw.v];
        let act = quantize_for(gpu, &qkv, &ws.normed, (n, h), ws.int8, &mut ws.act)?;
        let one_type = lw.q.ty == lw.k.ty && lw.q.ty == lw.v.ty;
        match act {
            Some(a) if fuse_qkv() && one_type => {
                gpu.gemv_multi_q8(qkv, a, [&mut ws.q, &mut ws.k, &mut ws.v])?
            }
            // Q8_0 over f32 activations keeps three K-split GEMVs: its coalesced kernel (which
            // the fused pass uses) is slower (notes/native-engine.md, v7).
            None if n == 1 && fuse_qkv() && one_type && lw.q.ty != WeightType::Q8_0 => {
                gpu.gemv_multi(qkv, &ws.normed, [&mut ws.q, &mut ws.k, &mut ws.v])?
            }
            _ => {
                project(gpu, &lw.q, &ws.normed, act, n, &mut ws.q)?;
                project(gpu, &lw.k, &ws.normed, act, n, &mut ws.k)?;
                project(gpu, &lw.v, &ws.normed, act, n, &mut ws.v)?;
            }
        }
        gpu.rope(Rope {
            q: &mut ws.q,
            k: &mut ws.k,
            pos: &ws.pos,
            n,
            n_head: cfg.heads,
            n_kv: cfg.kv_heads,
            head_dim: d,
            n_rot: cfg.rope_dims,
            base: cfg.rope_base,
            factors: w.rope_factors.as_ref(),
            neox: cfg.rope_neox,
        })?;
        let lc = &mut cache[l];
        gpu.kv_write(KvWrite {
            k_cache: &mut lc.k,
            v_cache: &mut lc.v,
            k: &ws.k,
            v: &ws.v,
            slots: &ws.slots,
            n,
            width: cfg.kv_heads * d,
        })?;
        gpu.paged_attention(PagedAttention {
            out: &mut ws.attn,
            q: &ws.q,
            k_cache: &lc.k,
            v_cache: &lc.v,
            block_tables: &ws.tables,
            seq: &ws.seq,
            ctx: &ws.ctx,
            n_query: n,
            n_head: cfg.heads,
            n_kv: cfg.kv_heads,
            head_dim: d,
            block_size: shape.block_size,
            max_blocks: shape.max_blocks,
            max_ctx: shape.max_ctx,
            split_len,
            scale,
            scratch: &mut ws.scratch,
        })?;
        let act = quantize_for(gpu, &[&lw.o], &ws.attn, (n, cfg.heads * d), ws.int8, &mut ws.act)?;
        project(gpu, &lw.o, &ws.attn, act, n, &mut ws.x)?;
        gpu.rmsnorm_residual(RmsNormResidual {
            x: &ws.x,
            residual: &mut ws.residual,
            weight: &lw.ffn_norm,
            out: &mut ws.normed,
            rows: n,
            hidden: h,
            eps: cfg.eps,
        })?;
        let act = quantize_for(gpu, &[&lw.gate, &lw.up], &ws.normed, (n, h), ws.int8, &mut ws.act)?;
        match act {
            Some(a) if lw.gate.ty == lw.up.ty => gpu.gemv_glu_q8(&lw.gate, &lw.up, a, &mut ws.gate)?,
            None if n == 1 && lw.gate.ty == lw.up.ty => {
                gpu.gemv_glu(&lw.gate, &lw.up, &ws.normed, &mut ws.gate)?
            }
            _ => {
                project(gpu, &lw.gate, &ws.normed, act, n, &mut ws.gate)?;
                project(gpu, &lw.up, &ws.normed, act, n, &mut ws.up)?;
                gpu.swiglu_inplace(&mut ws.gate, &ws.up, n * cfg.ffn)?;
            }
        }
        let act = quantize_for(gpu, &[&lw.down], &ws.gate, (n, cfg.ffn), ws.int8, &mut ws.act)?;
        project(gpu, &lw.down, &ws.gate, act, n, &mut ws.x)?;
    }
    gpu.rmsnorm_residual(RmsNormResidual {
        x: &ws.x,
        residual: &mut ws.residual,
        weight: &w.output_norm,
        out: &mut ws.normed,
        rows: n,
        hidden: h,
        eps: cfg.eps,
    })?;
    if out_rows.is_empty() {
        return Ok(());
    }
    for (i, &r) in out_rows.iter().enumerate() {
        let src = ws.normed.slice(r * h..(r + 1) * h);
        let mut dst = ws.rows.slice_mut(i * h..(i + 1) * h);
        gpu.stream()
            .memcpy_dtod(&src, &mut dst)
            .map_err(hyperllama_kernels::KernelError::driver_op("cuMemcpyDtoDAsync"))?;
    }
    let out_w = w.output.as_ref().unwrap_or(&w.embed);
    let act = quantize_for(gpu, &[out_w], &ws.rows, (out_rows.len(), h), ws.int8, &mut ws.act)?;
    project(gpu, out_w, &ws.rows, act, out_rows.len(), &mut ws.logits)?;
    gpu.argmax(&mut ws.argmax, &ws.logits, out_rows.len(), cfg.vocab)?;
    Ok(())
}
