//! GPU correctness check of the whole model: greedy tokens of the native executor against
//! llama.cpp's on the same GGUF files (written with `llama_reference` on a CPU machine).
//!
//! ```text
//! native_check REF_DIR     # REF_DIR holds reference.txt and the tiny-*.gguf files
//! ```
//!
//! For each model: every prompt alone (prefill in one step, then one token per step), then all
//! prompts together in one batch (mixed prompt lengths in one prefill step, then batched decode).
//! Prints one line per (model, reference) pair and `RESULT: PASS` or `RESULT: FAIL`; PASS needs
//! every token equal where llama.cpp computed in f32 (the F32 model and the F32 copies of the
//! dequantized Q8_0 / Q4_K_M weights); the pairs against llama.cpp on the same F16/quantized file
//! are printed for information (llama.cpp rounds activations there). Without a GPU it prints a
//! SKIPPED line and exits 0.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use hyperllama_kernels::check::report_skip;
use hyperllama_native::core::executor::{
    Executor, ExecutorSpec, OutputRequest, SeqStep, StepBatch, StepOutput,
};
use hyperllama_native::device::LlamaExecutor;

const BLOCKS_PER_SEQ: usize = 32;
const BLOCK: usize = 16;

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

fn main() -> ExitCode {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".native-ref".into()));
    if !hyperllama_kernels::driver_present() {
        report_skip("no CUDA driver found (native_check needs a GPU)");
        return ExitCode::SUCCESS;
    }
    let text = std::fs::read_to_string(dir.join("reference.txt")).expect("reference.txt");
    let mut models: BTreeMap<(String, String), Vec<Case>> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let logits = f[3].split(',').map(|v| v.parse().expect("logit")).collect();
        models.entry((f[0].to_string(), f[4].to_string())).or_default().push(Case {
            prompt: ids(f[1]),
            want: ids(f[2]),
            logits,
        });
    }
    let mut all_ok = true;
    for ((model, reference), cases) in &models {
        let spec = ExecutorSpec {
            model_path: dir.join(model),
            block_size: BLOCK,
            max_context: BLOCKS_PER_SEQ * BLOCK,
            max_step_tokens: 512,
            max_step_sequences: 16,
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
        let n = cases[0].want.len();
        let mut alone_ok = 0;
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
                }
                Err(e) => detail += &format!("\n  error: {e}"),
            }
        }
        let prompts: Vec<&[u32]> = cases.iter().map(|c| c.prompt.as_slice()).collect();
        let mut batch_ok = 0;
        match generate(&mut ex, &prompts, n) {
            Ok((g, _)) => {
                for (c, got) in cases.iter().zip(&g) {
                    let m = prefix_match(got, &c.want);
                    if m == n {
                        batch_ok += 1;
                    } else {
                        detail += &format!("\n  batch: prompt len {} matches {m}/{n}", c.prompt.len());
                    }
                }
            }
            Err(e) => detail += &format!("\n  batch error: {e}"),
        }
        let ok = alone_ok == cases.len() && batch_ok == cases.len();
        // llama.cpp's CPU kernels round activations to f16 / q8_0 / q8_K for F16 and quantized
        // weights, so only its f32 runs (the F32 model, and F32 copies of the dequantized
        // weights) are exact references; the others are reported, not required.
        let exact_reference = reference.contains("f32") || reference.contains("-deq");
        if exact_reference {
            all_ok &= ok;
        } else {
            detail += "\n  (informational: llama.cpp rounds activations for this file's weight type)";
        }
        println!(
            "{model} vs llama.cpp on {reference}: {:?} on {}: first-token logits max |diff| {worst_logit:.4}; alone {alone_ok}/{} prompts, batch of {} {batch_ok}/{} prompts match llama.cpp's {n} greedy tokens{}",
            ex.weight_types(),
            ex.gpu().name(),
            cases.len(),
            cases.len(),
            cases.len(),
            detail
        );
    }
    println!("RESULT: {}", if all_ok { "PASS" } else { "FAIL" });
    if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
