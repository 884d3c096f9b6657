//! Batch-1 decode benchmark of the native executor on a Llama-3.1-8B-shaped model with random
//! weights (hidden 4096, 32 layers, 32/8 heads, ffn 14336, vocab 128256), in F16, Q8_0 and
//! Q4_K_M encodings (Q4_K_M: llama.cpp's type mix, Q6_K for output, and attn_v/ffn_down of
//! the layers llama.cpp gives more bits). Also measures, in the same run, the HBM bandwidth
//! (device-to-device copy, bytes read + written) and each GEMV kernel's bandwidth, and prints
//! the roofline (bandwidth / weight bytes read per token).
//!
//! ```text
//! native_bench [--gen 128] [--prompt 16] [--runs 3] [--types f16,q8_0,q4_k_m] [--layers 32]
//! ```
//! Prints a table last; without a GPU prints a SKIPPED line.

use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use hyperllama_kernels::check::{SplitMix64, report_skip};
use hyperllama_kernels::{Gpu, ModuleCache, WeightType, default_cache_dir, random_weights};
use hyperllama_native::core::executor::{
    Executor, ExecutorSpec, OutputRequest, SeqStep, StepBatch, StepOutput,
};
use hyperllama_native::device::LlamaExecutor;
use hyperllama_native::device::model::{LlamaConfig, LlamaWeights};

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
        context: 8192,
    }
}

/// Which encoding each matrix gets.
type Mix = Box<dyn Fn(&str, Option<usize>) -> WeightType>;

fn mix_of(kind: &str, layers: usize) -> Mix {
    match kind {
        "f16" => Box::new(|_, _| WeightType::F16),
        "bf16" => Box::new(|_, _| WeightType::Bf16),
        "q8_0" => Box::new(|_, _| WeightType::Q8_0),
        _ => Box::new(move |name, layer| {
            // llama.cpp's use_more_bits for Q4_K_M.
            let more = |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
            match (name, layer) {
                ("output", _) => WeightType::Q6K,
                ("attn_v" | "ffn_down", Some(i)) if more(i) => WeightType::Q6K,
                _ => WeightType::Q4K,
            }
        }),
    }
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

struct Row {
    kind: String,
    no_graph: f64,
    weights_gib: f64,
    tok_s: f64,
    step_ms: f64,
    roofline: f64,
}

fn bench_model(
    kind: &str,
    layers: usize,
    prompt: usize,
    n_gen: usize,
    runs: usize,
    bw: f64,
) -> Result<Row, String> {
    let gpu = Gpu::open_single_stream(0, ModuleCache::new(default_cache_dir())).map_err(|e| e.to_string())?;
    gpu.load_all().map_err(|e| e.to_string())?;
    let cfg = config(layers);
    let t0 = Instant::now();
    let mix = mix_of(kind, layers);
    let weights = LlamaWeights::random(&gpu, &cfg, mix.as_ref()).map_err(|e| e.to_string())?;
    let decode_bytes = weights.decode_bytes();
    let total = weights.bytes;
    eprintln!(
        "{kind}: {:.2} GiB of weights uploaded in {:.1} s: {:?}",
        total as f64 / (1u64 << 30) as f64,
        t0.elapsed().as_secs_f64(),
        weights.types
    );
    let spec = ExecutorSpec {
        block_size: 16,
        max_context: 1024,
        max_step_tokens: 256,
        max_step_sequences: 4,
        gpu_memory_utilization: 0.9,
        ..Default::default()
    };
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
    rates.sort_by(f64::total_cmp);
    let tok_s = rates[rates.len() / 2];
    Ok(Row {
        kind: kind.to_string(),
        no_graph,
        weights_gib: total as f64 / (1u64 << 30) as f64,
        tok_s,
        step_ms: 1e3 / tok_s,
        roofline: bw * 1e9 / decode_bytes as f64,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let n_gen: usize = arg("--gen", "128").parse().expect("--gen");
    let prompt: usize = arg("--prompt", "16").parse().expect("--prompt");
    let runs: usize = arg("--runs", "3").parse().expect("--runs");
    let layers: usize = arg("--layers", "32").parse().expect("--layers");
    let kinds = arg("--types", "f16,q8_0,q4_k_m");
    if !hyperllama_kernels::driver_present() {
        report_skip("no CUDA driver found (native_bench needs a GPU)");
        return;
    }
    let gpu = Gpu::open(0, ModuleCache::new(default_cache_dir())).expect("GPU 0");
    let name = gpu.name().to_string();
    let bw = hbm_bandwidth(&gpu).expect("bandwidth");
    println!("card: {name}; HBM device-to-device copy: {bw:.0} GB/s (read + write)");
    println!(
        "| GEMV batch 1 | rows x cols | variant | us | GB/s | % of copy |\n| --- | --- | ---: | ---: | ---: | ---: |"
    );
    for ty in [WeightType::F16, WeightType::Q8_0, WeightType::Q4K, WeightType::Q6K] {
        for (rows, cols) in [(14336usize, 4096usize), (4096, 14336), (4096, 4096)] {
            for r in ["r4", "k4", "c2", "c4"] {
                match gemv_bandwidth(&gpu, ty, rows, cols, r) {
                    Ok((gbs, us)) => println!(
                        "| {ty:?} | {rows}x{cols} | {r} | {us:.1} | {gbs:.0} | {:.0}% |",
                        100.0 * gbs / bw
                    ),
                    Err(e) => println!("| {ty:?} | {rows}x{cols} | {r} | error: {e} |"),
                }
            }
        }
    }
    drop(gpu);
    let mut rows = Vec::new();
    for kind in kinds.split(',') {
        match bench_model(kind, layers, prompt, n_gen, runs, bw) {
            Ok(r) => rows.push(r),
            Err(e) => println!("{kind}: error: {e}"),
        }
    }
    println!(
        "\nbatch-1 decode, Llama-3.1-8B shape ({layers} layers), random weights, prompt {prompt} tokens, {n_gen} generated, median of {runs} runs, card: {name}"
    );
    println!(
        "| weights | GiB | tok/s | ms/token | tok/s without CUDA graphs | roofline tok/s (HBM {bw:.0} GB/s) | % of roofline |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
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
