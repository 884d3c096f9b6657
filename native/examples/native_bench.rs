//! Benchmarks of the native engine on a Llama-3.1-8B-shaped model with random weights (hidden
//! 4096, 32 layers, 32/8 heads, ffn 14336, vocab 128256), in four parts (`--parts`, all by
//! default, each printing its table when done):
//!
//! - `gemv`: the HBM bandwidth (device-to-device copy, bytes read + written) and each batch-1
//!   GEMV kernel variant's bandwidth.
//! - `batch1`: batch-1 decode of the executor alone in F16, Q8_0 and Q4_K_M (`--types`; Q4_K_M
//!   is llama.cpp's type mix: Q6_K for output, and attn_v/ffn_down of the layers llama.cpp gives
//!   more bits), with and without CUDA graphs, against the roofline (bandwidth / weight bytes
//!   read per token).
//! - `conc`: continuous batching through the core's [`EngineCore`] (chunked prefill, prefix
//!   cache, greedy with the argmax on the device) over the [`LlamaExecutor`]: N requests of
//!   `--conc-prompt` random tokens each asking for `--conc-gen` tokens, all submitted at once,
//!   for each N of `--conc` (issue #7: 1024 in / 128 out at 1, 8 and 32 sequences). Reports the
//!   wall time, the prefill time (submission to the last sequence's first token), the decode
//!   throughput while all N sequences decode (the figure llama.cpp's batched bench calls S_TG)
//!   and the aggregate rates, next to issue #7's llama.cpp reference.
//! - `ttft`: time to first token of one request alone (prefill + first token) for each prompt
//!   length of `--ttft`, through the same core.
//!
//! `conc` and `ttft` use the type `--model` (Q4_K_M by default) and the daemon's default engine
//! settings (`--step-tokens 2048 --prefill-chunk 512 --block 16`). Every request has its own
//! random prompt and cache salt, so nothing is served from the prefix cache. Before the timed
//! runs each executor runs one full prefill step and one decode step of every batch size (which
//! captures the decode CUDA graphs), so no run times a capture.
//!
//! ```text
//! native_bench [--parts gemv,batch1,conc,ttft] [--layers 32]
//!              [--types f16,q8_0,q4_k_m] [--gen 128] [--prompt 16] [--runs 3]         (batch1)
//!              [--model q4_k_m] [--step-tokens 2048] [--prefill-chunk 512] [--block 16]
//!              [--conc 1,8,32] [--conc-prompt 1024] [--conc-gen 128] [--conc-runs 1] (conc)
//!              [--ttft 1024,8192] [--ttft-runs 3]                                     (ttft)
//! ```
//! Progress goes to stderr, tables to stdout; without a GPU it prints a SKIPPED line.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use hyperllama_kernels::check::{SplitMix64, report_skip};
use hyperllama_kernels::{Gpu, ModuleCache, WeightType, default_cache_dir, random_weights};
use hyperllama_native::core::engine::{CoreConfig, EngineCore, SeqEvent};
use hyperllama_native::core::executor::{
    Executor, ExecutorSpec, OutputRequest, SeqStep, StepBatch, StepOutput, TokenId,
};
use hyperllama_native::core::sampler::SamplerParams;
use hyperllama_native::core::scheduler::PreemptionMode;
use hyperllama_native::core::sequence::{SeqRequest, SeqStatus};
use hyperllama_native::device::LlamaExecutor;
use hyperllama_native::device::model::{LlamaConfig, LlamaWeights};

/// Issue #7's reference: llama.cpp b11434 (CUDA) on an H100, 32 concurrent sequences of 1024
/// prompt + 128 generated tokens, Q4_K_M: decode throughput in tok/s.
const LLAMA_CPP_32X_DECODE: f64 = 2763.0;
/// Issue #7's target: at least 1.3x llama.cpp.
const TARGET_FACTOR: f64 = 1.3;

/// Prompt token ids are drawn below this (inside the vocabulary, clear of its special tokens).
const PROMPT_VOCAB: u64 = 128_000;

fn config(layers: usize) -> LlamaConfig {
    LlamaConfig {
        architecture: "llama".into(),
        hidden: 4096,
        layers,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        ffn: 14336,
        vocab: 128256,
        eps: 1e-5,
        rope_base: 500000.0,
        rope_dims: 128,
        rope_neox: false,
        // Llama 3.1's; each executor below serves only the context its part needs.
        context: 131072,
    }
}

/// Which encoding each matrix gets.
type Mix = Box<dyn Fn(&str, Option<usize>) -> WeightType>;

fn mix_of(kind: &str, layers: usize) -> Result<Mix, String> {
    Ok(match kind {
        "f16" => Box::new(|_, _| WeightType::F16),
        "bf16" => Box::new(|_, _| WeightType::Bf16),
        "q8_0" => Box::new(|_, _| WeightType::Q8_0),
        "q4_k_m" => Box::new(move |name, layer| {
            // llama.cpp's use_more_bits for Q4_K_M.
            let more = |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
            match (name, layer) {
                ("output", _) => WeightType::Q6K,
                ("attn_v" | "ffn_down", Some(i)) if more(i) => WeightType::Q6K,
                _ => WeightType::Q4K,
            }
        }),
        other => return Err(format!("unknown weight type `{other}` (f16, bf16, q8_0, q4_k_m)")),
    })
}

fn drv(op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> String {
    move |e| format!("{op}: {e}")
}

/// Device-to-device copy bandwidth (GB/s, bytes read + written), median of 10.
fn hbm_bandwidth(gpu: &Gpu) -> Result<f64, String> {
    let n = 1usize << 31;
    let src = gpu.alloc_zeros::<u8>(n).map_err(|e| e.to_string())?;
    let mut dst = gpu.alloc_zeros::<u8>(n).map_err(|e| e.to_string())?;
    let ctx = gpu.context();
    let mut times = Vec::new();
    for _ in 0..12 {
        let a = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("event"))?;
        let b = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("event"))?;
        a.record(gpu.stream()).map_err(drv("record"))?;
        gpu.stream().memcpy_dtod(&src, &mut dst).map_err(drv("memcpy"))?;
        b.record(gpu.stream()).map_err(drv("record"))?;
        b.synchronize().map_err(drv("sync"))?;
        times.push(f64::from(a.elapsed_ms(&b).map_err(drv("elapsed"))?));
    }
    times.sort_by(f64::total_cmp);
    Ok(2.0 * n as f64 / (times[times.len() / 2] * 1e-3) / 1e9)
}

/// GEMV bandwidth (GB/s of weight bytes) of `ty` on a rows x cols matrix, batch 1, median of 20,
/// rotating over enough matrices to defeat the 50 MB L2.
fn gemv_bandwidth(
    gpu: &Gpu,
    ty: WeightType,
    rows: usize,
    cols: usize,
    r: &str,
) -> Result<(f64, f64), String> {
    let copies = 4;
    let ws: Vec<_> = (0..copies)
        .map(|i| gpu.upload_weight(ty, rows, cols, &random_weights(ty, rows, cols, 9 + i as u64)))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let x = gpu.upload(&SplitMix64::new(3).vec::<f32>(cols, -1.0, 1.0)).map_err(|e| e.to_string())?;
    let mut y = gpu.alloc_zeros::<f32>(rows).map_err(|e| e.to_string())?;
    let ctx = gpu.context();
    let mut times = Vec::new();
    for it in 0..24 {
        let a = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("event"))?;
        let b = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("event"))?;
        a.record(gpu.stream()).map_err(drv("record"))?;
        gpu.gemv_variant(&ws[it % copies], &x, &mut y, r).map_err(|e| e.to_string())?;
        b.record(gpu.stream()).map_err(drv("record"))?;
        b.synchronize().map_err(drv("sync"))?;
        if it >= 4 {
            times.push(f64::from(a.elapsed_ms(&b).map_err(drv("elapsed"))?));
        }
    }
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    Ok(((rows * ty.row_bytes(cols)) as f64 / (ms * 1e-3) / 1e9, ms * 1e3))
}

/// The GEMV variant table.
fn gemv_table(gpu: &Gpu, bw: f64) {
    println!(
        "| GEMV batch 1 | rows x cols | variant | us | GB/s | % of copy |\n| --- | --- | ---: | ---: | ---: | ---: |"
    );
    for ty in [WeightType::F16, WeightType::Q8_0, WeightType::Q4K, WeightType::Q6K] {
        for (rows, cols) in [(14336usize, 4096usize), (4096, 14336), (4096, 4096)] {
            for r in ["r4", "k4", "c2", "c4"] {
                match gemv_bandwidth(gpu, ty, rows, cols, r) {
                    Ok((gbs, us)) => println!(
                        "| {ty:?} | {rows}x{cols} | {r} | {us:.1} | {gbs:.0} | {:.0}% |",
                        100.0 * gbs / bw
                    ),
                    Err(e) => println!("| {ty:?} | {rows}x{cols} | {r} | error: {e} |"),
                }
            }
        }
    }
}

/// A fresh GPU handle with every kernel loaded and random weights of `kind` uploaded.
fn random_model(kind: &str, layers: usize) -> Result<(Gpu, LlamaConfig, LlamaWeights), String> {
    let mix = mix_of(kind, layers)?;
    let gpu = Gpu::open_single_stream(0, ModuleCache::new(default_cache_dir())).map_err(|e| e.to_string())?;
    gpu.load_all().map_err(|e| e.to_string())?;
    let cfg = config(layers);
    let t0 = Instant::now();
    let weights = LlamaWeights::random(&gpu, &cfg, mix.as_ref()).map_err(|e| e.to_string())?;
    eprintln!(
        "{kind}: {:.2} GiB of weights uploaded in {:.1} s: {:?}",
        weights.bytes as f64 / (1u64 << 30) as f64,
        t0.elapsed().as_secs_f64(),
        weights.types
    );
    Ok((gpu, cfg, weights))
}

struct Batch1Row {
    kind: String,
    no_graph: f64,
    weights_gib: f64,
    tok_s: f64,
    step_ms: f64,
    roofline: f64,
}

fn bench_batch1(
    kind: &str,
    layers: usize,
    prompt: usize,
    n_gen: usize,
    runs: usize,
    bw: f64,
) -> Result<Batch1Row, String> {
    let (gpu, cfg, weights) = random_model(kind, layers)?;
    let decode_bytes = weights.decode_bytes();
    let total = weights.bytes;
    let spec = ExecutorSpec {
        block_size: 16,
        max_context: 1024,
        max_step_tokens: 256,
        max_step_sequences: 4,
        gpu_memory_utilization: 0.9,
        ..Default::default()
    };
    if prompt == 0 || prompt + n_gen > spec.max_context {
        return Err(format!("--prompt {prompt} + --gen {n_gen} must be 1..={} tokens", spec.max_context));
    }
    let mut ex = LlamaExecutor::from_parts(gpu, cfg, weights, &spec).map_err(|e| e.to_string())?;
    let mut out = StepOutput::default();
    let mut rates = Vec::new();
    let mut no_graph = 0.0;
    for run in 0..runs + 2 {
        // The last run measures the same decode without CUDA graphs.
        ex.set_cuda_graphs(run <= runs);
        let mut batch = StepBatch {
            seqs: vec![SeqStep {
                seq_id: 1,
                tokens: (0..prompt as u32).map(|i| (i * 7919 + run as u32) % 128000).collect(),
                start_pos: 0,
                block_table: (0..64).collect(),
                output: OutputRequest::Argmax,
            }],
        };
        ex.step(&batch, &mut out).map_err(|e| e.to_string())?;
        let t = Instant::now();
        for _ in 0..n_gen {
            let next = out.rows[0].argmax.unwrap_or(0);
            let s = &mut batch.seqs[0];
            s.start_pos += s.tokens.len();
            s.tokens = vec![next];
            ex.step(&batch, &mut out).map_err(|e| e.to_string())?;
        }
        let rate = n_gen as f64 / t.elapsed().as_secs_f64();
        let note = match run {
            0 => " (warm-up)",
            r if r > runs => " (no CUDA graphs)",
            _ => "",
        };
        eprintln!("{kind} run {run}: {rate:.1} tok/s{note}");
        if run > runs {
            no_graph = rate;
        } else if run > 0 {
            rates.push(rate);
        }
    }
    let tok_s = median(&mut rates);
    Ok(Batch1Row {
        kind: kind.to_string(),
        no_graph,
        weights_gib: total as f64 / (1u64 << 30) as f64,
        tok_s,
        step_ms: 1e3 / tok_s,
        roofline: bw * 1e9 / decode_bytes as f64,
    })
}

fn batch1_table(
    rows: &[Batch1Row],
    layers: usize,
    prompt: usize,
    n_gen: usize,
    runs: usize,
    bw: f64,
    card: &str,
) {
    println!(
        "\nbatch-1 decode, Llama-3.1-8B shape ({layers} layers), random weights, prompt {prompt} tokens, {n_gen} generated, median of {runs} runs, card: {card}"
    );
    println!(
        "| weights | GiB | tok/s | ms/token | tok/s without CUDA graphs | roofline tok/s (HBM {bw:.0} GB/s) | % of roofline |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {:.2} | {:.1} | {:.2} | {:.1} | {:.0} | {:.0}% |",
            r.kind,
            r.weights_gib,
            r.tok_s,
            r.step_ms,
            r.no_graph,
            r.roofline,
            100.0 * r.tok_s / r.roofline
        );
    }
}

/// The median (upper middle for an even count); NaN for none.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Engine settings of the `conc` and `ttft` parts.
#[derive(Clone, Copy)]
struct EngineSettings {
    step_tokens: usize,
    prefill_chunk: usize,
    block: usize,
}

/// A core over a fresh executor of random `kind` weights, sized for `max_seqs` sequences of up
/// to `max_len` tokens (prompt + generated): the KV pool is capped at `max_seqs` full-length
/// sequences. Warmed up: one full prefill step, then one decode step of every batch size
/// `1..=max_seqs` (each captures its CUDA graph). Returns the core and the card's name.
fn engine(
    kind: &str,
    layers: usize,
    max_seqs: usize,
    max_len: usize,
    s: EngineSettings,
) -> Result<(EngineCore, String), String> {
    let (gpu, cfg, weights) = random_model(kind, layers)?;
    let spec = ExecutorSpec {
        block_size: s.block,
        max_context: max_len,
        max_step_tokens: s.step_tokens,
        max_step_sequences: max_seqs,
        gpu_memory_utilization: 0.9,
        host_swap_bytes: 0,
        ..Default::default()
    };
    let mut ex = LlamaExecutor::from_parts(gpu, cfg, weights, &spec).map_err(|e| e.to_string())?;
    let card = ex.gpu().name().to_string();
    let layout = ex.kv_layout();
    let want = max_seqs * max_len.div_ceil(s.block);
    eprintln!(
        "KV pool: {} blocks of {} positions ({:.2} GiB); {max_seqs} sequences of {max_len} tokens need {want}",
        layout.num_gpu_blocks,
        layout.block_size,
        (layout.num_gpu_blocks as u64 * layout.bytes_per_block) as f64 / (1u64 << 30) as f64
    );
    if layout.num_gpu_blocks < want {
        eprintln!("warning: the KV pool is smaller than the benchmark needs: expect preemptions");
    }
    let t0 = Instant::now();
    warm_up(&mut ex, max_seqs, s.prefill_chunk).map_err(|e| format!("warm-up: {e}"))?;
    eprintln!(
        "warm-up (a full prefill step, decode steps of 1..={max_seqs}): {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let core = EngineCore::new(
        Box::new(ex),
        CoreConfig {
            max_prefill_chunk: s.prefill_chunk,
            preemption: PreemptionMode::Recompute,
            prefix_caching: true,
            max_len,
        },
    );
    Ok((core, card))
}

/// Runs the executor directly (before a core owns its blocks): one step as large as the core
/// will schedule (prefill chunks filling the step budget), then a decode step of each batch
/// size, so first-use costs and CUDA graph captures are not timed.
fn warm_up(ex: &mut LlamaExecutor, max_seqs: usize, chunk: usize) -> Result<(), String> {
    let bs = ex.kv_layout().block_size;
    let pool = ex.kv_layout().num_gpu_blocks;
    let budget = ex.limits().max_step_tokens;
    let chunk = chunk.min(budget).min(ex.model_shape().max_context).max(1);
    let blocks = chunk.div_ceil(bs);
    let seqs = budget.div_ceil(chunk).min(max_seqs).min(pool / blocks);
    let mut out = StepOutput::default();
    let prefill = StepBatch {
        seqs: (0..seqs)
            .map(|i| {
                let len = chunk.min(budget - i * chunk);
                SeqStep {
                    seq_id: i as u64,
                    tokens: (0..len as u32).map(|t| (t * 7919 + i as u32) % 128000).collect(),
                    start_pos: 0,
                    block_table: (0..blocks).map(|b| (i * blocks + b) as u32).collect(),
                    output: OutputRequest::Argmax,
                }
            })
            .collect(),
    };
    if !prefill.seqs.is_empty() {
        ex.step(&prefill, &mut out).map_err(|e| e.to_string())?;
    }
    for k in 1..=max_seqs.min(pool) {
        let decode = StepBatch {
            seqs: (0..k)
                .map(|i| SeqStep {
                    seq_id: i as u64,
                    tokens: vec![1],
                    start_pos: 0,
                    block_table: vec![i as u32],
                    output: OutputRequest::Argmax,
                })
                .collect(),
        };
        ex.step(&decode, &mut out).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A greedy request of `len` random prompt tokens, with its own cache salt.
fn request(id: u64, len: usize, n_gen: usize) -> SeqRequest {
    let mut rng = SplitMix64::new(0x5eed ^ id.wrapping_mul(0x9e37_79b9));
    SeqRequest {
        id,
        cache_salt: id,
        prompt: (0..len).map(|_| (rng.next_u64() % PROMPT_VOCAB) as TokenId).collect(),
        sampling: SamplerParams::greedy(),
        max_new_tokens: Some(n_gen),
        max_len: 0,
        stop_tokens: Vec::new(),
        logprobs: false,
    }
}

/// What one run of N concurrent requests measured.
#[derive(Clone, Copy, Default)]
struct ConcRun {
    /// Submission to the last sequence finished, s.
    wall: f64,
    /// Submission to the last sequence's first token, s.
    prefill: f64,
    /// Mean over sequences of submission to first token, s.
    ttft_mean: f64,
    /// Generated tokens / time of the steps where all N sequences decoded.
    decode_tok_s: f64,
    /// Mean time of those steps, ms.
    decode_step_ms: f64,
    /// Steps where all N sequences decoded.
    decode_steps: usize,
    /// Steps in all.
    steps: u64,
    /// Generated tokens in all.
    generated: usize,
    /// Preemptions (recompute) during the run.
    preemptions: u64,
    /// Prompt tokens served from the prefix cache (0 expected: every prompt is unique).
    cached: u64,
}

/// Submits `n` requests at once and steps the core until all are done.
fn run_concurrent(
    core: &mut EngineCore,
    next_id: &mut u64,
    n: usize,
    prompt: usize,
    n_gen: usize,
) -> Result<ConcRun, String> {
    let ids: Vec<u64> = (0..n as u64).map(|i| *next_id + i).collect();
    *next_id += n as u64;
    let before = core.scheduler().counters();
    let t0 = Instant::now();
    for &id in &ids {
        core.add(request(id, prompt, n_gen)).map_err(|e| format!("request {id}: {e}"))?;
    }
    let mut first_at: HashMap<u64, f64> = HashMap::new();
    let mut run = ConcRun::default();
    let mut decode_time = 0.0;
    let mut decode_tokens = 0usize;
    while core.has_work() {
        // Every sequence live, running and feeding exactly its last token: a pure decode step
        // of all N (running sequences are scheduled first, so all N are in the step).
        let all_decoding = core.scheduler().num_seqs() == n
            && ids.iter().all(|id| {
                core.scheduler()
                    .seq(*id)
                    .is_some_and(|s| s.status == SeqStatus::Running && !s.in_prefill() && s.remaining() == 1)
            });
        let steps_before = core.counters().steps;
        let ts = Instant::now();
        let events = core.step();
        let dt = ts.elapsed().as_secs_f64();
        if core.counters().steps == steps_before {
            let (w, r, s) = core.scheduler().queue_lengths();
            return Err(format!(
                "the scheduler planned nothing ({w} waiting, {r} running, {s} swapped): KV pool too small?"
            ));
        }
        let mut tokens = 0;
        for e in events {
            match e {
                SeqEvent::Token { seq, first, .. } => {
                    tokens += 1;
                    if first {
                        first_at.insert(seq, t0.elapsed().as_secs_f64());
                    }
                }
                SeqEvent::Failed { seq, message } => return Err(format!("sequence {seq} failed: {message}")),
                _ => {}
            }
        }
        run.generated += tokens;
        run.steps += 1;
        if all_decoding {
            decode_time += dt;
            decode_tokens += tokens;
            run.decode_steps += 1;
        }
    }
    run.wall = t0.elapsed().as_secs_f64();
    run.prefill = first_at.values().copied().fold(0.0, f64::max);
    run.ttft_mean = first_at.values().sum::<f64>() / first_at.len().max(1) as f64;
    run.decode_tok_s = decode_tokens as f64 / decode_time;
    run.decode_step_ms = 1e3 * decode_time / run.decode_steps.max(1) as f64;
    let after = core.scheduler().counters();
    run.preemptions = after.recomputed + after.swapped_out - before.recomputed - before.swapped_out;
    run.cached = after.cached_tokens - before.cached_tokens;
    if run.generated != n * n_gen {
        eprintln!("warning: {} tokens generated, expected {}", run.generated, n * n_gen);
    }
    Ok(run)
}

/// The `conc` part: runs and prints its table.
fn conc_part(
    kind: &str,
    layers: usize,
    s: EngineSettings,
    ns: &[usize],
    prompt: usize,
    n_gen: usize,
    runs: usize,
) -> Result<(), String> {
    let max_seqs = ns.iter().copied().max().unwrap_or(1);
    let max_len = prompt + n_gen;
    let (mut core, card) = engine(kind, layers, max_seqs, max_len, s)?;
    let mut next_id = 1u64;
    let mut rows = Vec::new();
    for &n in ns {
        let mut runs_of_n = Vec::new();
        for r in 0..runs {
            let run = run_concurrent(&mut core, &mut next_id, n, prompt, n_gen)?;
            eprintln!(
                "{n} concurrent, run {r}: wall {:.2} s, prefill {:.2} s, decode {:.1} tok/s over {} steps, {} preemptions",
                run.wall, run.prefill, run.decode_tok_s, run.decode_steps, run.preemptions
            );
            runs_of_n.push(run);
        }
        let col = |f: fn(&ConcRun) -> f64| median(&mut runs_of_n.iter().map(f).collect::<Vec<_>>());
        let row = ConcRun {
            wall: col(|r| r.wall),
            prefill: col(|r| r.prefill),
            ttft_mean: col(|r| r.ttft_mean),
            decode_tok_s: col(|r| r.decode_tok_s),
            decode_step_ms: col(|r| r.decode_step_ms),
            decode_steps: runs_of_n.iter().map(|r| r.decode_steps).min().unwrap_or(0),
            steps: runs_of_n.iter().map(|r| r.steps).max().unwrap_or(0),
            generated: runs_of_n.iter().map(|r| r.generated).min().unwrap_or(0),
            preemptions: runs_of_n.iter().map(|r| r.preemptions).sum(),
            cached: runs_of_n.iter().map(|r| r.cached).sum(),
        };
        rows.push((n, row));
    }
    println!(
        "\nconcurrent requests through EngineCore over LlamaExecutor: {prompt} prompt + {n_gen} generated tokens each, all submitted at once, greedy (argmax on the device); Llama-3.1-8B shape ({layers} layers), {kind} random weights; step budget {} tokens, prefill chunk {}, block {}; median of {runs} run(s); card: {card}",
        s.step_tokens, s.prefill_chunk, s.block
    );
    println!(
        "reference (issue #7): llama.cpp b11434 CUDA on H100, 32 concurrent 1024+128 Q4_K_M: decode throughput {LLAMA_CPP_32X_DECODE:.0} tok/s; target >= {TARGET_FACTOR}x = {:.0} tok/s",
        TARGET_FACTOR * LLAMA_CPP_32X_DECODE
    );
    println!(
        "| concurrent | wall s | prefill s (last first token) | mean TTFT s | decode tok/s (all N decoding) | ms/decode step | decode steps timed | generated tok/s (wall) | prompt+generated tok/s (wall) | steps | preemptions |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (n, r) in &rows {
        println!(
            "| {n} | {:.2} | {:.2} | {:.3} | {:.1} | {:.2} | {} | {:.1} | {:.0} | {} | {} |",
            r.wall,
            r.prefill,
            r.ttft_mean,
            r.decode_tok_s,
            r.decode_step_ms,
            r.decode_steps,
            r.generated as f64 / r.wall,
            (n * prompt + r.generated) as f64 / r.wall,
            r.steps,
            r.preemptions
        );
        if r.cached > 0 {
            println!("(warning: {} prompt tokens came from the prefix cache at {n} concurrent)", r.cached);
        }
    }
    if let Some((_, r)) = rows.iter().find(|(n, _)| *n == 32) {
        let comparable = kind == "q4_k_m" && prompt == 1024 && n_gen == 128 && layers == 32;
        let target = TARGET_FACTOR * LLAMA_CPP_32X_DECODE;
        println!(
            "32 concurrent decode: {:.1} tok/s = {:.2}x llama.cpp's {LLAMA_CPP_32X_DECODE:.0} (target {target:.0}): {}{}",
            r.decode_tok_s,
            r.decode_tok_s / LLAMA_CPP_32X_DECODE,
            if r.decode_tok_s >= target { "MET" } else { "NOT MET" },
            if comparable { "" } else { " (not the issue's setting: q4_k_m, 1024+128, 32 layers)" }
        );
    }
    Ok(())
}

/// The `ttft` part: one request alone per prompt length, median of `runs`; prints its table.
fn ttft_part(
    kind: &str,
    layers: usize,
    s: EngineSettings,
    lens: &[usize],
    runs: usize,
) -> Result<(), String> {
    let longest = lens.iter().copied().max().unwrap_or(1);
    // Room for the prompt and the first generated token.
    let (mut core, card) = engine(kind, layers, 1, longest + 1, s)?;
    let mut next_id = 1u64;
    let mut rows = Vec::new();
    for &len in lens {
        let mut times = Vec::new();
        let mut steps = 0;
        let mut cached = 0;
        for r in 0..runs {
            let id = next_id;
            next_id += 1;
            let steps_before = core.counters().steps;
            let t0 = Instant::now();
            core.add(request(id, len, 1)).map_err(|e| format!("request of {len} tokens: {e}"))?;
            let mut first = None;
            while core.has_work() {
                let before = core.counters().steps;
                for e in core.step() {
                    match e {
                        SeqEvent::Token { first: true, .. } => first = Some(t0.elapsed().as_secs_f64()),
                        SeqEvent::PromptDone { cached_tokens, .. } => cached += cached_tokens,
                        SeqEvent::Failed { message, .. } => return Err(format!("{len} tokens: {message}")),
                        _ => {}
                    }
                }
                if core.counters().steps == before {
                    return Err(format!("{len} tokens: the scheduler planned nothing (KV pool too small?)"));
                }
            }
            let t = first.ok_or_else(|| format!("{len} tokens: no first token"))?;
            steps = core.counters().steps - steps_before;
            eprintln!("TTFT {len} tokens, run {r}: {:.1} ms in {steps} steps", 1e3 * t);
            times.push(t);
        }
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        rows.push((len, median(&mut times), best, steps, cached));
    }
    println!(
        "\ntime to first token, one request alone through EngineCore (prefill in chunks of {} under a {}-token step budget, then the first token, argmax on the device); Llama-3.1-8B shape ({layers} layers), {kind} random weights; median of {runs} run(s); card: {card}",
        s.prefill_chunk, s.step_tokens
    );
    println!("| prompt tokens | TTFT ms (median) | best ms | prompt tok/s (median) | steps |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for (len, med, best, steps, cached) in rows {
        println!("| {len} | {:.1} | {:.1} | {:.0} | {steps} |", 1e3 * med, 1e3 * best, len as f64 / med);
        if cached > 0 {
            println!("(warning: {cached} prompt tokens came from the prefix cache at {len})");
        }
    }
    Ok(())
}

/// `--name value` flags over known names; `Err` names the bad one.
struct Args(Vec<(String, String)>);

const FLAGS: &[(&str, &str)] = &[
    ("--parts", "gemv,batch1,conc,ttft"),
    ("--layers", "32"),
    ("--types", "f16,q8_0,q4_k_m"),
    ("--gen", "128"),
    ("--prompt", "16"),
    ("--runs", "3"),
    ("--model", "q4_k_m"),
    ("--step-tokens", "2048"),
    ("--prefill-chunk", "512"),
    ("--block", "16"),
    ("--conc", "1,8,32"),
    ("--conc-prompt", "1024"),
    ("--conc-gen", "128"),
    ("--conc-runs", "1"),
    ("--ttft", "1024,8192"),
    ("--ttft-runs", "3"),
];

impl Args {
    fn parse() -> Result<Args, String> {
        let mut given = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(name) = it.next() {
            if !FLAGS.iter().any(|(f, _)| *f == name) {
                return Err(format!("unknown argument `{name}`"));
            }
            let value = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            given.push((name, value));
        }
        Ok(Args(given))
    }

    fn str(&self, name: &str) -> String {
        let default = FLAGS.iter().find(|(f, _)| *f == name).map(|(_, d)| *d).unwrap_or("");
        self.0.iter().rev().find(|(f, _)| f == name).map(|(_, v)| v.clone()).unwrap_or_else(|| default.into())
    }

    fn num(&self, name: &str) -> Result<usize, String> {
        let v = self.str(name);
        match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{name} `{v}`: expected a positive integer")),
        }
    }

    fn nums(&self, name: &str) -> Result<Vec<usize>, String> {
        let v = self.str(name);
        v.split(',')
            .map(|t| match t.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{name} `{v}`: expected positive integers separated by commas")),
            })
            .collect()
    }
}

fn usage() -> String {
    let mut s = String::from("usage: native_bench");
    for (f, d) in FLAGS {
        s += &format!(" [{f} {d}]");
    }
    s
}

/// Everything the command line says, checked before the GPU is touched.
struct Opts {
    parts: Vec<String>,
    layers: usize,
    kinds: Vec<String>,
    n_gen: usize,
    prompt: usize,
    runs: usize,
    model: String,
    engine: EngineSettings,
    conc: Vec<usize>,
    conc_prompt: usize,
    conc_gen: usize,
    conc_runs: usize,
    ttft: Vec<usize>,
    ttft_runs: usize,
}

impl Opts {
    fn parse() -> Result<Opts, String> {
        let args = Args::parse()?;
        let list = |name: &str| -> Vec<String> {
            args.str(name).split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()
        };
        let parts = list("--parts");
        if let Some(bad) = parts.iter().find(|p| !["gemv", "batch1", "conc", "ttft"].contains(&p.as_str())) {
            return Err(format!("--parts: unknown part `{bad}` (gemv, batch1, conc, ttft)"));
        }
        let kinds = list("--types");
        let model = args.str("--model");
        // Unknown type names fail here, before the GPU is touched.
        for k in kinds.iter().chain([&model]) {
            mix_of(k, 1).map(drop)?;
        }
        let engine = EngineSettings {
            step_tokens: args.num("--step-tokens")?,
            prefill_chunk: args.num("--prefill-chunk")?,
            block: args.num("--block")?,
        };
        let conc = args.nums("--conc")?;
        if let Some(n) = conc.iter().find(|&&n| n > engine.step_tokens) {
            return Err(format!("--conc {n}: more sequences than --step-tokens {}", engine.step_tokens));
        }
        Ok(Opts {
            parts,
            layers: args.num("--layers")?,
            kinds,
            n_gen: args.num("--gen")?,
            prompt: args.num("--prompt")?,
            runs: args.num("--runs")?,
            model,
            engine,
            conc,
            conc_prompt: args.num("--conc-prompt")?,
            conc_gen: args.num("--conc-gen")?,
            conc_runs: args.num("--conc-runs")?,
            ttft: args.nums("--ttft")?,
            ttft_runs: args.num("--ttft-runs")?,
        })
    }

    fn on(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

fn main() -> ExitCode {
    let o = match Opts::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("native_bench: {e}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    if !hyperllama_kernels::driver_present() {
        report_skip("no CUDA driver found (native_bench needs a GPU)");
        return ExitCode::SUCCESS;
    }
    let mut ok = true;
    if o.on("gemv") || o.on("batch1") {
        let gpu = match Gpu::open(0, ModuleCache::new(default_cache_dir())) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("native_bench: cannot open GPU 0: {e}");
                return ExitCode::FAILURE;
            }
        };
        let card = gpu.name().to_string();
        let bw = match hbm_bandwidth(&gpu) {
            Ok(bw) => bw,
            Err(e) => {
                eprintln!("native_bench: bandwidth measurement failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("card: {card}; HBM device-to-device copy: {bw:.0} GB/s (read + write)");
        if o.on("gemv") {
            gemv_table(&gpu, bw);
        }
        drop(gpu);
        if o.on("batch1") {
            let mut rows = Vec::new();
            for kind in &o.kinds {
                match bench_batch1(kind, o.layers, o.prompt, o.n_gen, o.runs, bw) {
                    Ok(r) => rows.push(r),
                    Err(e) => {
                        println!("{kind}: error: {e}");
                        ok = false;
                    }
                }
            }
            batch1_table(&rows, o.layers, o.prompt, o.n_gen, o.runs, bw, &card);
        }
    }
    if o.on("conc")
        && let Err(e) =
            conc_part(&o.model, o.layers, o.engine, &o.conc, o.conc_prompt, o.conc_gen, o.conc_runs)
    {
        println!("concurrent part: error: {e}");
        ok = false;
    }
    if o.on("ttft")
        && let Err(e) = ttft_part(&o.model, o.layers, o.engine, &o.ttft, o.ttft_runs)
    {
        println!("time-to-first-token part: error: {e}");
        ok = false;
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
