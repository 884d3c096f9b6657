//! [`LlamaExecutor`]: the core's [`Executor`] over the device model. It owns the GPU, the
//! weights, the paged KV pool (one K and one V buffer per layer, `num_gpu_blocks * block_size`
//! slots each, so a block id names the same slot range in every layer) and the step workspace.
//! A step turns the core's [`StepBatch`] into flat device inputs (token ids, positions, cache
//! slots, per-token sequence index and context length, block tables), runs
//! [`model::forward`](super::model::forward) and reads back argmax ids and logits rows.
//! Host swap space is not implemented yet: `num_host_blocks` is 0 (preemption recomputes).

use std::collections::HashMap;

use hyperllama_kernels::{F16, Gpu, KernelError, ModuleCache, StepGraph, default_cache_dir, driver_present};

use crate::core::executor::{
    BlockCopy, ExecError, Executor, ExecutorLimits, ExecutorSpec, KvCacheLayout, ModelShape, OutputRequest,
    OutputRow, StepBatch, StepOutput,
};

use super::gguf::GgufFile;
use super::model::{LayerCache, LlamaConfig, LlamaWeights, StepShape, Workspace, forward};
use super::safetensors::{HfModel, is_hf_model_path};

/// A Llama-family model (GGUF or Hugging Face safetensors) loaded on one GPU.
pub struct LlamaExecutor {
    gpu: Gpu,
    cfg: LlamaConfig,
    weights: LlamaWeights,
    cache: Vec<LayerCache>,
    ws: Workspace,
    shape: ModelShape,
    layout: KvCacheLayout,
    limits: ExecutorLimits,
    max_blocks_per_seq: usize,
    host: HostInputs,
    /// Captured decode steps (every sequence feeds one token), by number of sequences.
    graphs: HashMap<usize, StepGraph>,
    use_graphs: bool,
}

#[derive(Default)]
struct HostInputs {
    tokens: Vec<i32>,
    pos: Vec<i32>,
    slots: Vec<i32>,
    seq: Vec<i32>,
    ctx: Vec<i32>,
    tables: Vec<i32>,
    out_rows: Vec<usize>,
    out_seq: Vec<usize>,
    argmax: Vec<i32>,
}

fn dev(e: KernelError) -> ExecError {
    ExecError::Device(e.to_string())
}

impl LlamaExecutor {
    /// Loads `spec.model_path` onto `spec.device`: a GGUF file, or a Hugging Face model
    /// (a folder with `config.json` and safetensors, or one `.safetensors` file in such a folder).
    pub fn load(spec: &ExecutorSpec) -> Result<LlamaExecutor, ExecError> {
        if !driver_present() {
            return Err(ExecError::Unavailable("no CUDA driver found".into()));
        }
        // A Hugging Face model's config and headers are checked before the GPU is touched.
        let hf =
            if is_hf_model_path(&spec.model_path) { Some(HfModel::open(&spec.model_path)?) } else { None };
        let gpu = Gpu::open_single_stream(spec.device, ModuleCache::new(default_cache_dir())).map_err(
            |e| match e {
                KernelError::NoDriver | KernelError::NoSuchDevice { .. } => {
                    ExecError::Unavailable(e.to_string())
                }
                other => dev(other),
            },
        )?;
        gpu.load_all().map_err(dev)?;
        if let Some(hf) = hf {
            let weights = hf.load_weights(&gpu)?;
            return Self::from_parts(gpu, hf.config.llama, weights, spec);
        }
        let file = GgufFile::open(&spec.model_path)?;
        let cfg = LlamaConfig::from_gguf(&file)?;
        let weights = LlamaWeights::load(&gpu, &file, &cfg)?;
        drop(file);
        Self::from_parts(gpu, cfg, weights, spec)
    }

    /// An executor over weights already on `gpu` (e.g. [`LlamaWeights::random`] for benchmarks);
    /// `spec.model_path` is ignored.
    pub fn from_parts(
        gpu: Gpu,
        cfg: LlamaConfig,
        weights: LlamaWeights,
        spec: &ExecutorSpec,
    ) -> Result<LlamaExecutor, ExecError> {
        let max_context = if spec.max_context == 0 { cfg.context } else { spec.max_context.min(cfg.context) };
        let block_size = spec.block_size.max(1);
        let max_blocks_per_seq = max_context.div_ceil(block_size);
        let limits = ExecutorLimits {
            max_step_tokens: spec.max_step_tokens.max(1),
            max_step_sequences: spec.max_step_sequences.max(1),
        };
        let ws = Workspace::new(
            &gpu,
            &cfg,
            limits.max_step_tokens,
            limits.max_step_sequences,
            max_blocks_per_seq,
        )?;

        let slot_bytes = (2 * cfg.kv_heads * cfg.head_dim * std::mem::size_of::<F16>()) as u64;
        let bytes_per_block = slot_bytes * block_size as u64 * cfg.layers as u64;
        let (free, total) = gpu.context().mem_get_info().map_err(|e| ExecError::Device(e.to_string()))?;
        let allowed = (total as f64 * f64::from(spec.gpu_memory_utilization.clamp(0.05, 1.0))) as u64;
        let used = (total - free) as u64;
        let budget = allowed.saturating_sub(used);
        // Never more blocks than every sequence at full length needs.
        let cap = (limits.max_step_sequences * max_blocks_per_seq) as u64;
        let num_gpu_blocks = (budget / bytes_per_block).min(cap) as usize;
        if num_gpu_blocks < max_blocks_per_seq.clamp(1, 4) {
            return Err(ExecError::OutOfMemory(format!(
                "{} bytes of weights leave room for {num_gpu_blocks} KV blocks of {bytes_per_block} bytes",
                weights.bytes
            )));
        }
        let slots = num_gpu_blocks * block_size * cfg.kv_heads * cfg.head_dim;
        let cache = (0..cfg.layers)
            .map(|_| Ok(LayerCache { k: gpu.alloc_zeros(slots)?, v: gpu.alloc_zeros(slots)? }))
            .collect::<Result<Vec<_>, KernelError>>()
            .map_err(|e| ExecError::OutOfMemory(e.to_string()))?;
        let shape = ModelShape {
            architecture: cfg.architecture.clone(),
            vocab_size: cfg.vocab,
            max_context,
            num_layers: cfg.layers,
            num_heads: cfg.heads,
            num_kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim,
            weights_bytes: weights.bytes,
        };
        let layout = KvCacheLayout { block_size, num_gpu_blocks, num_host_blocks: 0, bytes_per_block };
        Ok(LlamaExecutor {
            gpu,
            cfg,
            weights,
            cache,
            ws,
            shape,
            layout,
            limits,
            max_blocks_per_seq,
            host: HostInputs::default(),
            graphs: HashMap::new(),
            use_graphs: std::env::var_os("HYPERLLAMA_NO_CUDA_GRAPHS").is_none(),
        })
    }

    /// The GPU this executor runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Turns CUDA graphs for decode steps on or off (on by default unless
    /// `HYPERLLAMA_NO_CUDA_GRAPHS` is set); for measurements.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.use_graphs = on;
        self.graphs.clear();
    }

    /// Turns int8 activations (`dp4a` GEMVs of q4_K/q6_K weights in one-token steps) on or off
    /// (on by default unless `HYPERLLAMA_NO_INT8_ACT` is set); for exactness checks against
    /// f32 references and measurements.
    pub fn set_int8_activations(&mut self, on: bool) {
        self.ws.set_int8_activations(on);
        self.graphs.clear();
    }

    /// Runs the forward pass of a prepared step: replays (or first captures) the CUDA graph of
    /// a pure decode step, or launches the kernels directly.
    fn run_forward(&mut self, batch: &StepBatch, shape: StepShape) -> Result<(), ExecError> {
        let out_rows = std::mem::take(&mut self.host.out_rows);
        let decode = self.use_graphs
            && batch.seqs.iter().all(|s| s.tokens.len() == 1 && s.output != OutputRequest::None);
        let result = if decode {
            self.decode_graph(shape, &out_rows)
        } else {
            forward(&self.gpu, &self.cfg, &self.weights, &mut self.cache, &mut self.ws, shape, &out_rows)
                .map_err(ExecError::from)
        };
        self.host.out_rows = out_rows;
        result
    }

    fn decode_graph(&mut self, shape: StepShape, out_rows: &[usize]) -> Result<(), ExecError> {
        let n = shape.tokens;
        if !self.graphs.contains_key(&n) {
            // Captured with the longest context the executor serves, so the split count (a
            // launch dimension) fits every later step; positions, slots, context lengths and
            // block tables are read from device buffers the step uploads before each replay.
            let fixed = StepShape { max_ctx: self.shape.max_context, ..shape };
            self.gpu.begin_capture().map_err(dev)?;
            let captured =
                forward(&self.gpu, &self.cfg, &self.weights, &mut self.cache, &mut self.ws, fixed, out_rows);
            let graph = self.gpu.end_capture();
            captured?;
            self.graphs.insert(n, graph.map_err(dev)?);
        }
        self.graphs[&n].launch().map_err(dev)
    }

    /// The weights.
    pub fn weights(&self) -> &LlamaWeights {
        &self.weights
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Weight encodings and how many matrices use each.
    pub fn weight_types(&self) -> &[(hyperllama_kernels::WeightType, usize)] {
        &self.weights.types
    }

    fn prepare(&mut self, batch: &StepBatch) -> Result<StepShape, ExecError> {
        let h = &mut self.host;
        for v in [&mut h.tokens, &mut h.pos, &mut h.slots, &mut h.seq, &mut h.ctx, &mut h.tables] {
            v.clear();
        }
        h.out_rows.clear();
        h.out_seq.clear();
        let n = batch.num_tokens();
        if n == 0 || n > self.limits.max_step_tokens || batch.seqs.len() > self.limits.max_step_sequences {
            return Err(ExecError::InvalidBatch(format!(
                "{n} tokens in {} sequences (limits {:?})",
                batch.seqs.len(),
                self.limits
            )));
        }
        let bs = self.layout.block_size;
        let mut max_ctx = 0;
        for (si, s) in batch.seqs.iter().enumerate() {
            let end = s.start_pos + s.tokens.len();
            if s.tokens.is_empty() || end > self.shape.max_context || s.block_table.len() < end.div_ceil(bs) {
                return Err(ExecError::InvalidBatch(format!(
                    "sequence {}: {} tokens at {} with {} blocks",
                    s.seq_id,
                    s.tokens.len(),
                    s.start_pos,
                    s.block_table.len()
                )));
            }
            for (i, &t) in s.tokens.iter().enumerate() {
                if t as usize >= self.cfg.vocab {
                    return Err(ExecError::InvalidBatch(format!("token {t} outside the vocabulary")));
                }
                let p = s.start_pos + i;
                let block = s.block_table[p / bs] as usize;
                if block >= self.layout.num_gpu_blocks {
                    return Err(ExecError::InvalidBatch(format!("block {block} outside the pool")));
                }
                h.tokens.push(t as i32);
                h.pos.push(p as i32);
                h.slots.push((block * bs + p % bs) as i32);
                h.seq.push(si as i32);
                h.ctx.push(p as i32 + 1);
            }
            let used = end.div_ceil(bs);
            h.tables.extend(s.block_table[..used].iter().map(|&b| b as i32));
            h.tables.resize((si + 1) * self.max_blocks_per_seq, 0);
            max_ctx = max_ctx.max(end);
            if s.output != OutputRequest::None {
                h.out_rows.push(h.tokens.len() - 1);
                h.out_seq.push(si);
            }
        }
        let st = self.gpu.stream();
        let ws = &mut self.ws;
        for (src, dst) in [
            (&h.tokens, &mut ws.tokens),
            (&h.pos, &mut ws.pos),
            (&h.slots, &mut ws.slots),
            (&h.seq, &mut ws.seq),
            (&h.ctx, &mut ws.ctx),
            (&h.tables, &mut ws.tables),
        ] {
            let mut view = dst.slice_mut(..src.len());
            st.memcpy_htod(src.as_slice(), &mut view).map_err(|e| ExecError::Device(e.to_string()))?;
        }
        Ok(StepShape { tokens: n, max_ctx, max_blocks: self.max_blocks_per_seq, block_size: bs })
    }
}

impl Executor for LlamaExecutor {
    fn model_shape(&self) -> &ModelShape {
        &self.shape
    }

    fn kv_layout(&self) -> KvCacheLayout {
        self.layout
    }

    fn limits(&self) -> ExecutorLimits {
        self.limits
    }

    fn step(&mut self, batch: &StepBatch, out: &mut StepOutput) -> Result<(), ExecError> {
        out.clear();
        let shape = self.prepare(batch)?;
        self.run_forward(batch, shape)?;
        let n_out = self.host.out_rows.len();
        if n_out == 0 {
            return self.gpu.synchronize().map_err(dev);
        }
        self.host.argmax.resize(n_out, 0);
        let st = self.gpu.stream();
        st.memcpy_dtoh(&self.ws.argmax.slice(..n_out), self.host.argmax.as_mut_slice())
            .map_err(|e| ExecError::Device(e.to_string()))?;
        let want_logits: Vec<bool> =
            self.host.out_seq.iter().map(|&si| batch.seqs[si].output == OutputRequest::Logits).collect();
        let vocab = self.cfg.vocab;
        if want_logits.iter().any(|&b| b) {
            let mut all = vec![0f32; n_out * vocab];
            st.memcpy_dtoh(&self.ws.logits.slice(..n_out * vocab), all.as_mut_slice())
                .map_err(|e| ExecError::Device(e.to_string()))?;
            for (i, &want) in want_logits.iter().enumerate() {
                if want {
                    out.logits.extend_from_slice(&all[i * vocab..(i + 1) * vocab]);
                }
            }
        }
        st.synchronize().map_err(|e| ExecError::Device(e.to_string()))?;
        let mut next_row = 0;
        for (i, &si) in self.host.out_seq.iter().enumerate() {
            let logits_row = want_logits[i].then(|| {
                next_row += 1;
                next_row - 1
            });
            out.rows.push(OutputRow {
                seq_id: batch.seqs[si].seq_id,
                argmax: u32::try_from(self.host.argmax[i]).ok(),
                logits_row,
            });
        }
        Ok(())
    }

    fn copy_blocks(&mut self, copies: &[BlockCopy]) -> Result<(), ExecError> {
        let per_block = self.layout.block_size * self.cfg.kv_heads * self.cfg.head_dim;
        let st = self.gpu.stream().clone();
        for c in copies {
            let (s, d) = (c.src as usize * per_block, c.dst as usize * per_block);
            if c.src as usize >= self.layout.num_gpu_blocks || c.dst as usize >= self.layout.num_gpu_blocks {
                return Err(ExecError::InvalidBatch(format!("copy {c:?} outside the pool")));
            }
            for layer in &mut self.cache {
                for buf in [&mut layer.k, &mut layer.v] {
                    // Source and destination are distinct blocks: copy through a host-free
                    // device staging of the source range.
                    let src = buf.slice(s..s + per_block);
                    let tmp = st.clone_dtod(&src).map_err(|e| ExecError::Device(e.to_string()))?;
                    let mut dst = buf.slice_mut(d..d + per_block);
                    st.memcpy_dtod(&tmp, &mut dst).map_err(|e| ExecError::Device(e.to_string()))?;
                }
            }
        }
        Ok(())
    }

    fn swap_out(&mut self, copies: &[BlockCopy]) -> Result<(), ExecError> {
        if copies.is_empty() {
            return Ok(());
        }
        Err(ExecError::InvalidBatch("no host swap space (num_host_blocks is 0)".into()))
    }

    fn swap_in(&mut self, copies: &[BlockCopy]) -> Result<(), ExecError> {
        self.swap_out(copies)
    }
}
