//! GPU correctness check of the whole model: greedy tokens of the native executor against
//! llama.cpp's on the same GGUF files (written with `llama_reference` on a CPU machine).
//!
//! ```text
//! native_check [REF_DIR] [--batch 16]   # REF_DIR (.native-ref) holds reference.txt and tiny-*.gguf
//! ```
//!
//! For each model, three ways (issue #7: "alone and inside a batch of 16"):
//! 1. every prompt alone, on the executor directly (prefill in one step, then one token a step);
//! 2. a batch of `--batch` sequences (the reference's prompts in order, repeated when it has
//!    fewer, e.g. an 8-prompt reference twice) on the executor directly: mixed prompt lengths in
//!    one prefill step, then batched decode; alternate steps ask for full logits vs argmax only;
//! 3. the same `--batch` requests submitted at once to the core's `EngineCore` (continuous
//!    batching with 7-token prefill chunks mixed with decodes, the prefix cache on, so repeated
//!    prompts share blocks); half the requests ask for log-probabilities (full logits rows,
//!    sampled on the CPU), the other half are greedy on the device (argmax).
//!
//! Every output is compared with llama.cpp's tokens and with the same prompt's output alone.
//! Prints one line per (model, reference) pair and `RESULT: PASS` or `RESULT: FAIL`; PASS needs
//! every token equal to llama.cpp's in all three ways where llama.cpp computed in f32 (the F32
//! model and the F32 copies of the dequantized Q8_0 / Q4_K_M weights); the pairs against
//! llama.cpp on the same F16/quantized file are printed for information (llama.cpp rounds
//! activations there). Against the exact references the engine runs with f32 activations; a
//! quantized model's int8-activation path (one-token steps, as served) is compared on the side
//! and reported. Without a GPU it prints a SKIPPED line and exits 0.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use hyperllama_kernels::WeightType;
use hyperllama_kernels::check::report_skip;
use hyperllama_native::core::engine::{CoreConfig, EngineCore, SeqEvent};
use hyperllama_native::core::executor::{
    Executor, ExecutorSpec, OutputRequest, SeqStep, StepBatch, StepOutput,
};
use hyperllama_native::core::sampler::SamplerParams;
use hyperllama_native::core::scheduler::PreemptionMode;
use hyperllama_native::core::sequence::SeqRequest;
use hyperllama_native::device::LlamaExecutor;

const BLOCKS_PER_SEQ: usize = 32;
const BLOCK: usize = 16;
/// Prompt tokens per prefill chunk in the `EngineCore` run: not a multiple of the block size,
/// so chunks start and end inside blocks.
const ENGINE_CHUNK: usize = 7;

struct Case {
    prompt: Vec<u32>,
    want: Vec<u32>,
    logits: Vec<f32>,
}

fn ids(s: &str) -> Vec<u32> {
    s.split(',').filter(|t| !t.is_empty()).map(|t| t.parse().expect("token id")).collect()
}

/// Greedy generation of `n` tokens for each prompt, all in one batch (one prompt = alone).
/// Tokens of each prompt and the logits row of its first generated token.
type Generated = (Vec<Vec<u32>>, Vec<Vec<f32>>);

/// Also returns the logits row of each prompt's first generated token.
fn generate(ex: &mut LlamaExecutor, prompts: &[&[u32]], n: usize) -> Result<Generated, String> {
    let vocab = ex.config().vocab;
    let mut first: Vec<Vec<f32>> = vec![Vec::new(); prompts.len()];
    let mut out = StepOutput::default();
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut batch = StepBatch {
        seqs: prompts
            .iter()
            .enumerate()
            .map(|(i, p)| SeqStep {
                seq_id: i as u64,
                tokens: p.to_vec(),
                start_pos: 0,
                block_table: (0..BLOCKS_PER_SEQ).map(|b| (i * BLOCKS_PER_SEQ + b) as u32).collect(),
                output: OutputRequest::Logits,
            })
            .collect(),
    };
    for step in 0..n {
        ex.step(&batch, &mut out).map_err(|e| e.to_string())?;
        for row in &out.rows {
            got[row.seq_id as usize].push(row.argmax.ok_or("no argmax")?);
            if step == 0 {
                let r = row.logits_row.ok_or("no logits row")?;
                first[row.seq_id as usize] = out.logits_row(r, vocab).to_vec();
            }
        }
        if step + 1 == n {
            break;
        }
        for s in &mut batch.seqs {
            s.start_pos += s.tokens.len();
            s.tokens = vec![*got[s.seq_id as usize].last().unwrap()];
            // Alternate argmax-only and full-logits steps: both paths must agree.
            s.output = if step % 2 == 0 { OutputRequest::Logits } else { OutputRequest::Argmax };
        }
    }
    Ok((got, first))
}

/// Largest |a - b| and the gap between the best and second-best entry of `b`.
fn logit_error(a: &[f32], b: &[f32]) -> (f32, f32) {
    let max = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let mut s = b.to_vec();
    s.sort_by(|x, y| y.total_cmp(x));
    (max, s[0] - s.get(1).copied().unwrap_or(f32::NEG_INFINITY))
}

fn prefix_match(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// All `prompts` submitted at once to `core` (continuous batching: prefill chunks of
/// [`ENGINE_CHUNK`] tokens mixed with decodes), `n` greedy tokens each; odd requests also ask
/// for log-probabilities, so their rows come back as full logits and are sampled on the CPU.
/// Returns each request's tokens and the number of steps run.
fn generate_engine(
    core: &mut EngineCore,
    prompts: &[&[u32]],
    n: usize,
) -> Result<(Vec<Vec<u32>>, u64), String> {
    let steps_before = core.counters().steps;
    for (i, p) in prompts.iter().enumerate() {
        core.add(SeqRequest {
            id: i as u64,
            cache_salt: 0,
            prompt: p.to_vec(),
            sampling: SamplerParams::greedy(),
            max_new_tokens: Some(n),
            max_len: 0,
            stop_tokens: Vec::new(),
            logprobs: i % 2 == 1,
        })
        .map_err(|e| format!("request {i} (prompt len {}): {e}", p.len()))?;
    }
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    while core.has_work() {
        let before = core.counters().steps;
        for e in core.step() {
            match e {
                SeqEvent::Token { seq, token, .. } => got[seq as usize].push(token),
                SeqEvent::Failed { seq, message } => return Err(format!("sequence {seq} failed: {message}")),
                _ => {}
            }
        }
        if core.counters().steps == before {
            let (w, r, s) = core.scheduler().queue_lengths();
            return Err(format!("the scheduler planned nothing ({w} waiting, {r} running, {s} swapped)"));
        }
    }
    Ok((got, core.counters().steps - steps_before))
}

/// Command line: `[REF_DIR] [--batch N]`.
fn parse_args() -> Result<(PathBuf, usize), String> {
    let mut dir = None;
    let mut batch = 16;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--batch" {
            let v = it.next().ok_or("--batch needs a value")?;
            batch = v
                .parse()
                .ok()
                .filter(|&b| b > 0)
                .ok_or(format!("--batch `{v}`: expected a positive integer"))?;
        } else if a.starts_with('-') || dir.is_some() {
            return Err(format!("unexpected argument `{a}`"));
        } else {
            dir = Some(PathBuf::from(a));
        }
    }
    Ok((dir.unwrap_or_else(|| PathBuf::from(".native-ref")), batch))
}

/// Counts how many of `got` equal `want` in full, and describes the others.
fn compare(what: &str, got: &[Vec<u32>], want: &[&[u32]], prompts: &[&[u32]], detail: &mut String) -> usize {
    let n = want.first().map_or(0, |w| w.len());
    let mut ok = 0;
    for ((g, w), p) in got.iter().zip(want).zip(prompts) {
        let m = prefix_match(g, w);
        if m == w.len() && g.len() == w.len() {
            ok += 1;
        } else {
            *detail += &format!("\n  {what}: prompt len {} matches {m}/{n}", p.len());
        }
    }
    ok
}

fn main() -> ExitCode {
    let (dir, batch_size) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("native_check: {e}\nusage: native_check [REF_DIR] [--batch 16]");
            return ExitCode::from(2);
        }
    };
    if !hyperllama_kernels::driver_present() {
        report_skip("no CUDA driver found (native_check needs a GPU)");
        return ExitCode::SUCCESS;
    }
    let text = match std::fs::read_to_string(dir.join("reference.txt")) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "native_check: cannot read {}: {e} (write it with `llama_reference {}` on a CPU machine)",
                dir.join("reference.txt").display(),
                dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut models: BTreeMap<(String, String), Vec<Case>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 5 {
            eprintln!("native_check: reference.txt line {}: {} fields, expected 5", i + 1, f.len());
            return ExitCode::FAILURE;
        }
        let logits = f[3].split(',').map(|v| v.parse().expect("logit")).collect();
        models.entry((f[0].to_string(), f[4].to_string())).or_default().push(Case {
            prompt: ids(f[1]),
            want: ids(f[2]),
            logits,
        });
    }
    let mut all_ok = true;
    for ((model, reference), cases) in &models {
        let n = cases[0].want.len();
        // The batch: the reference's prompts in order, repeated to fill it.
        let batch: Vec<&Case> = cases.iter().cycle().take(batch_size).collect();
        let batch_prompts: Vec<&[u32]> = batch.iter().map(|c| c.prompt.as_slice()).collect();
        let batch_want: Vec<&[u32]> = batch.iter().map(|c| c.want.as_slice()).collect();
        let batch_tokens: usize = batch_prompts.iter().map(|p| p.len()).sum();
        if let Some(c) = cases.iter().find(|c| c.prompt.len() + n > BLOCKS_PER_SEQ * BLOCK) {
            println!(
                "{model}: a prompt of {} tokens + {n} generated exceeds {} positions",
                c.prompt.len(),
                BLOCKS_PER_SEQ * BLOCK
            );
            all_ok = false;
            continue;
        }
        let spec = ExecutorSpec {
            model_path: dir.join(model),
            block_size: BLOCK,
            max_context: BLOCKS_PER_SEQ * BLOCK,
            max_step_tokens: batch_tokens.max(512),
            max_step_sequences: batch_size,
            gpu_memory_utilization: 0.5,
            ..Default::default()
        };
        let mut ex = match LlamaExecutor::load(&spec) {
            Ok(ex) => ex,
            Err(e) => {
                println!("{model}: load failed: {e}");
                all_ok = false;
                continue;
            }
        };
        if ex.kv_layout().num_gpu_blocks < batch_size * BLOCKS_PER_SEQ {
            println!(
                "{model}: the KV pool has {} blocks, the batch of {batch_size} needs {}",
                ex.kv_layout().num_gpu_blocks,
                batch_size * BLOCKS_PER_SEQ
            );
            all_ok = false;
            continue;
        }
        // llama.cpp's CPU kernels round activations to f16 / q8_0 / q8_K for F16 and quantized
        // weights, so only its f32 runs (the F32 model, and F32 copies of the dequantized
        // weights) are exact references; the others are reported, not required. Against an exact
        // reference the engine runs with f32 activations too; its int8 activations (one-token
        // steps of q4_K/q6_K weights) are then compared on the side.
        let exact_reference = reference.contains("f32") || reference.contains("-deq");
        let int8_types =
            ex.weight_types().iter().any(|(t, _)| matches!(t, WeightType::Q4K | WeightType::Q6K));
        let mut int8_note = String::new();
        if exact_reference && int8_types {
            let matches = cases
                .iter()
                .filter(|c| {
                    generate(&mut ex, &[&c.prompt], n).is_ok_and(|(g, _)| prefix_match(&g[0], &c.want) == n)
                })
                .count();
            int8_note = format!(
                "\n  (with int8 activations in one-token steps, as served: alone {matches}/{} prompts; not required)",
                cases.len()
            );
            ex.set_int8_activations(false);
        }
        let mut alone_ok = 0;
        let mut alone: Vec<Option<Vec<u32>>> = Vec::new();
        let mut detail = String::new();
        let mut worst_logit = 0f32;
        for c in cases {
            match generate(&mut ex, &[&c.prompt], n) {
                Ok((g, first)) => {
                    let (err, gap) = logit_error(&first[0], &c.logits);
                    worst_logit = worst_logit.max(err);
                    if err > 0.05 {
                        detail += &format!(
                            "\n  first-token logits of prompt len {}: max |diff| {err:.4} (llama.cpp top-2 gap {gap:.4})",
                            c.prompt.len()
                        );
                    }
                    let m = prefix_match(&g[0], &c.want);
                    if m == n {
                        alone_ok += 1;
                    } else {
                        detail += &format!(
                            "\n  alone: prompt len {} matches {m}/{n} (first-token logits max |diff| {err:.4}, llama.cpp top-2 gap {gap:.4}): got {:?} want {:?}",
                            c.prompt.len(),
                            &g[0],
                            &c.want
                        );
                    }
                    alone.push(g.into_iter().next());
                }
                Err(e) => {
                    detail += &format!("\n  error: {e}");
                    alone.push(None);
                }
            }
        }
        // Each batch entry's output alone (empty where that run failed: never equal).
        let batch_alone: Vec<Vec<u32>> =
            (0..batch_size).map(|j| alone[j % cases.len()].clone().unwrap_or_default()).collect();
        let batch_alone: Vec<&[u32]> = batch_alone.iter().map(Vec::as_slice).collect();

        let (mut batch_ok, mut batch_same) = (0, 0);
        match generate(&mut ex, &batch_prompts, n) {
            Ok((g, _)) => {
                batch_ok = compare("batch vs llama.cpp", &g, &batch_want, &batch_prompts, &mut detail);
                batch_same = compare("batch vs alone", &g, &batch_alone, &batch_prompts, &mut detail);
            }
            Err(e) => detail += &format!("\n  batch error: {e}"),
        }

        let types = format!("{:?}", ex.weight_types());
        let card = ex.gpu().name().to_string();
        let mut core = EngineCore::new(
            Box::new(ex),
            CoreConfig {
                max_prefill_chunk: ENGINE_CHUNK,
                preemption: PreemptionMode::Recompute,
                prefix_caching: true,
                max_len: 0,
            },
        );
        let (mut engine_ok, mut engine_same, mut engine_steps) = (0, 0, 0);
        match generate_engine(&mut core, &batch_prompts, n) {
            Ok((g, steps)) => {
                engine_steps = steps;
                engine_ok = compare("engine vs llama.cpp", &g, &batch_want, &batch_prompts, &mut detail);
                engine_same = compare("engine vs alone", &g, &batch_alone, &batch_prompts, &mut detail);
            }
            Err(e) => detail += &format!("\n  engine error: {e}"),
        }

        let ok = alone_ok == cases.len() && batch_ok == batch_size && engine_ok == batch_size;
        detail += &int8_note;
        if exact_reference {
            all_ok &= ok;
        } else {
            detail += "\n  (informational: llama.cpp rounds activations for this file's weight type)";
        }
        let repeated = if cases.len() < batch_size {
            format!(" (its {} prompts repeated)", cases.len())
        } else {
            String::new()
        };
        println!(
            "{model} vs llama.cpp on {reference}: {types} on {card}: first-token logits max |diff| {worst_logit:.4}; \
             match llama.cpp's {n} greedy tokens: alone {alone_ok}/{} prompts, batch of {batch_size}{repeated} {batch_ok}/{batch_size}, \
             EngineCore with all {batch_size} at once ({ENGINE_CHUNK}-token prefill chunks, {engine_steps} steps) {engine_ok}/{batch_size}; \
             equal to the prompt's output alone: batch {batch_same}/{batch_size}, EngineCore {engine_same}/{batch_size}{}",
            cases.len(),
            detail
        );
    }
    println!("RESULT: {}", if all_ok { "PASS" } else { "FAIL" });
    if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
