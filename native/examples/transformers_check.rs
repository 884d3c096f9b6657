//! GPU check of the safetensors path: logits of the native executor on Hugging Face model
//! folders against transformers' logits for the same token ids (written by
//! `native/examples/transformers_ref.py` on a machine with torch + transformers).
//!
//! ```text
//! python3 native/examples/transformers_ref.py REF_DIR      # models + reference logits
//! transformers_check REF_DIR                               # needs a GPU
//! ```
//!
//! Each model folder is loaded by `LlamaExecutor::load` (folder path, as the daemon would name
//! it) and every prompt's logits are computed at every position three ways:
//! - `decode`: each prompt alone, one token per step (KV cache + decode path, CUDA graphs);
//! - `prefill`: for each prompt one step holding every prefix of it as its own sequence
//!   (causal prefill kernels, mixed lengths in one step);
//! - `batched`: all prompts together, one token each per step (batched decode).
//!
//! Two references per model: transformers on the same weights in float32 (the engine computes
//! in f32 with an f16 KV cache, so it should be close: `max|diff| <= 2^-7 * scale`, scale =
//! the largest |logit| of the reference over all prompts, 2^-7 being bf16's epsilon) and
//! transformers in the saved dtype (bf16/f16 arithmetic: `max|diff| <= 4 * 2^-7 * scale`).
//! Argmax must agree at every position up to near ties (the engine's top token must score
//! within the tolerance of the reference's best). The device argmax must equal the argmax of
//! the returned logits row. Prints a table and `RESULT: PASS` or `RESULT: FAIL`; without a GPU,
//! a SKIPPED line and exit 0.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hyperllama_kernels::check::report_skip;
use hyperllama_native::core::executor::{
    Executor, ExecutorSpec, OutputRequest, SeqStep, StepBatch, StepOutput,
};
use hyperllama_native::device::LlamaExecutor;
use hyperllama_native::device::safetensors::HfModel;
use serde_json::Value;

const BLOCK: usize = 16;
const BLOCKS_PER_SEQ: usize = 4;
const MAX_SEQS: usize = 32;
/// bf16's machine epsilon.
const BF16_EPS: f32 = 1.0 / 128.0;
/// Tolerance (times the logit scale) against the f32 reference and the bf16/f16 one.
const TOL_F32: f32 = BF16_EPS;
const TOL_NATIVE: f32 = 4.0 * BF16_EPS;

/// Logits per prompt: `len x vocab` each.
type Rows = Vec<Vec<f32>>;

fn read_f32(path: &Path) -> Result<Vec<f32>, String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !b.len().is_multiple_of(4) {
        return Err(format!("{}: {} bytes is not a whole number of f32", path.display(), b.len()));
    }
    Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Splits a flat `sum(len) x vocab` reference into per-prompt rows.
fn split(flat: &[f32], prompts: &[Vec<u32>], vocab: usize) -> Result<Rows, String> {
    let total: usize = prompts.iter().map(Vec::len).sum();
    if flat.len() != total * vocab {
        return Err(format!("reference holds {} values, expected {total} x {vocab}", flat.len()));
    }
    let mut at = 0;
    Ok(prompts
        .iter()
        .map(|p| {
            let r = flat[at * vocab..(at + p.len()) * vocab].to_vec();
            at += p.len();
            r
        })
        .collect())
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

fn table(seq: usize) -> Vec<u32> {
    (0..BLOCKS_PER_SEQ).map(|b| (seq * BLOCKS_PER_SEQ + b) as u32).collect()
}

/// Runs `batch` and stores each output row's logits at `(prompt, position)` given by `place`
/// (indexed by `seq_id`); checks the device argmax against the row.
fn run_step(
    ex: &mut LlamaExecutor,
    batch: &StepBatch,
    out: &mut StepOutput,
    got: &mut Rows,
    place: &dyn Fn(u64) -> (usize, usize),
    argmax_mismatch: &mut usize,
) -> Result<(), String> {
    let vocab = ex.config().vocab;
    ex.step(batch, out).map_err(|e| e.to_string())?;
    if out.rows.len() != batch.seqs.len() {
        return Err(format!("{} output rows for {} sequences", out.rows.len(), batch.seqs.len()));
    }
    for row in &out.rows {
        let r = row.logits_row.ok_or("no logits row")?;
        let logits = out.logits_row(r, vocab);
        let dev = row.argmax.ok_or("no argmax")? as usize;
        // Ties: the device takes the lowest id, as `argmax` here.
        if dev != argmax(logits) && logits[dev] != logits[argmax(logits)] {
            *argmax_mismatch += 1;
        }
        let (p, pos) = place(row.seq_id);
        got[p][pos * vocab..(pos + 1) * vocab].copy_from_slice(logits);
    }
    Ok(())
}

fn empty_rows(prompts: &[Vec<u32>], vocab: usize) -> Rows {
    prompts.iter().map(|p| vec![f32::NAN; p.len() * vocab]).collect()
}

/// Every prompt alone, one token per step.
fn decode(ex: &mut LlamaExecutor, prompts: &[Vec<u32>], mismatch: &mut usize) -> Result<Rows, String> {
    let mut got = empty_rows(prompts, ex.config().vocab);
    let mut out = StepOutput::default();
    for (pi, p) in prompts.iter().enumerate() {
        for (pos, &t) in p.iter().enumerate() {
            let batch = StepBatch {
                seqs: vec![SeqStep {
                    seq_id: pos as u64,
                    tokens: vec![t],
                    start_pos: pos,
                    block_table: table(0),
                    output: OutputRequest::Logits,
                }],
            };
            run_step(ex, &batch, &mut out, &mut got, &|id| (pi, id as usize), mismatch)?;
        }
    }
    Ok(got)
}

/// For each prompt, one step with every prefix of it as its own sequence.
fn prefill(ex: &mut LlamaExecutor, prompts: &[Vec<u32>], mismatch: &mut usize) -> Result<Rows, String> {
    let mut got = empty_rows(prompts, ex.config().vocab);
    let mut out = StepOutput::default();
    for (pi, p) in prompts.iter().enumerate() {
        let batch = StepBatch {
            seqs: (0..p.len())
                .map(|j| SeqStep {
                    seq_id: j as u64,
                    tokens: p[..=j].to_vec(),
                    start_pos: 0,
                    block_table: table(j),
                    output: OutputRequest::Logits,
                })
                .collect(),
        };
        run_step(ex, &batch, &mut out, &mut got, &|id| (pi, id as usize), mismatch)?;
    }
    Ok(got)
}

/// All prompts at once, one token each per step (shorter prompts drop out).
fn batched(ex: &mut LlamaExecutor, prompts: &[Vec<u32>], mismatch: &mut usize) -> Result<Rows, String> {
    let mut got = empty_rows(prompts, ex.config().vocab);
    let mut out = StepOutput::default();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    for pos in 0..longest {
        let batch = StepBatch {
            seqs: prompts
                .iter()
                .enumerate()
                .filter(|(_, p)| p.len() > pos)
                .map(|(pi, p)| SeqStep {
                    seq_id: pi as u64,
                    tokens: vec![p[pos]],
                    start_pos: pos,
                    block_table: table(pi),
                    output: OutputRequest::Logits,
                })
                .collect(),
        };
        run_step(ex, &batch, &mut out, &mut got, &|id| (id as usize, pos), mismatch)?;
    }
    Ok(got)
}

/// Comparison of engine rows against one reference.
struct Cmp {
    max_diff: f32,
    scale: f32,
    positions: usize,
    argmax_equal: usize,
    argmax_ok: usize,
    worst: String,
}

fn compare(got: &Rows, want: &Rows, vocab: usize, tol: f32) -> Cmp {
    let scale = want.iter().flatten().fold(0f32, |a, &v| a.max(v.abs()));
    let mut c =
        Cmp { max_diff: 0.0, scale, positions: 0, argmax_equal: 0, argmax_ok: 0, worst: String::new() };
    for (pi, (g, w)) in got.iter().zip(want).enumerate() {
        for (pos, (gr, wr)) in g.chunks_exact(vocab).zip(w.chunks_exact(vocab)).enumerate() {
            c.positions += 1;
            let d = gr
                .iter()
                .zip(wr)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, |a, x| if x.is_nan() { f32::INFINITY } else { a.max(x) });
            if d > c.max_diff || (c.worst.is_empty() && d == c.max_diff) {
                c.max_diff = d;
                c.worst = format!("prompt {pi} position {pos}");
            }
            let (ga, wa) = (argmax(gr), argmax(wr));
            c.argmax_equal += usize::from(ga == wa);
            c.argmax_ok += usize::from(wr[ga] >= wr[wa] - tol * scale);
        }
    }
    c
}

struct ModelRef {
    name: String,
    dir: PathBuf,
    dtype: String,
    vocab: usize,
    prompts: Vec<Vec<u32>>,
    f32: PathBuf,
    native: PathBuf,
}

fn manifest(dir: &Path) -> Result<(String, Vec<ModelRef>), String> {
    let path = dir.join("reference.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let s =
        |v: &Value, k: &str| v[k].as_str().map(str::to_string).ok_or(format!("reference.json: {k} missing"));
    let about = format!(
        "transformers {} / torch {} on {}",
        s(&v, "transformers")?,
        s(&v, "torch")?,
        s(&v, "device")?
    );
    let models = v["models"]
        .as_array()
        .ok_or("reference.json: models missing")?
        .iter()
        .map(|m| {
            let prompts = m["prompts"]
                .as_array()
                .ok_or("prompts missing")?
                .iter()
                .map(|p| {
                    p.as_array()
                        .and_then(|a| {
                            a.iter().map(|t| t.as_u64().map(|t| t as u32)).collect::<Option<Vec<u32>>>()
                        })
                        .ok_or("bad prompt".to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ModelRef {
                name: s(m, "name")?,
                dir: dir.join(s(m, "dir")?),
                dtype: s(m, "dtype")?,
                vocab: m["vocab"].as_u64().ok_or("vocab missing")? as usize,
                prompts,
                f32: dir.join(s(m, "f32")?),
                native: dir.join(s(m, "native")?),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((about, models))
}

/// Checks one model; returns whether it passed.
fn check_model(m: &ModelRef) -> Result<bool, String> {
    let hf = HfModel::open(&m.dir).map_err(|e| e.to_string())?;
    let spec = ExecutorSpec {
        model_path: m.dir.clone(),
        block_size: BLOCK,
        max_context: BLOCKS_PER_SEQ * BLOCK,
        max_step_tokens: 512,
        max_step_sequences: MAX_SEQS,
        gpu_memory_utilization: 0.5,
        ..Default::default()
    };
    if m.prompts.iter().any(|p| p.is_empty() || p.len() > (BLOCKS_PER_SEQ * BLOCK).min(MAX_SEQS)) {
        return Err("prompts must hold 1 to 32 tokens".into());
    }
    let mut ex = LlamaExecutor::load(&spec).map_err(|e| format!("load: {e}"))?;
    let cfg = ex.config().clone();
    if cfg.vocab != m.vocab {
        return Err(format!("vocab {} vs reference {}", cfg.vocab, m.vocab));
    }
    let factors = match &hf.config.rope_factors {
        Some(f) => format!("llama3 factors {:.3?}..{:.3?}", &f[..2], &f[f.len() - 2..]),
        None => "no rope scaling".into(),
    };
    println!(
        "{}: {} on {}; hidden {} layers {} heads {}/{} head_dim {} ffn {} vocab {}; rope base {} neox {} ({factors}); tied {}; weights {:?}",
        m.name,
        m.dir.display(),
        ex.gpu().name(),
        cfg.hidden,
        cfg.layers,
        cfg.heads,
        cfg.kv_heads,
        cfg.head_dim,
        cfg.ffn,
        cfg.vocab,
        cfg.rope_base,
        cfg.rope_neox,
        hf.config.tie_word_embeddings,
        ex.weight_types()
    );
    let want32 = split(&read_f32(&m.f32)?, &m.prompts, m.vocab)?;
    let wantnat = split(&read_f32(&m.native)?, &m.prompts, m.vocab)?;
    let own = compare(&wantnat, &want32, m.vocab, TOL_F32);
    println!(
        "  transformers {} vs its f32: max|diff| {:.4} = {:.3}% of scale {:.2}; argmax equal {}/{}",
        m.dtype,
        own.max_diff,
        100.0 * own.max_diff / own.scale,
        own.scale,
        own.argmax_equal,
        own.positions
    );
    println!(
        "  {:<8} {:<13} {:>10} {:>8} {:>8} {:>13} {:>13} {:>9}  worst at",
        "mode", "reference", "max|diff|", "% scale", "tol %", "argmax equal", "argmax ~tie", "dev argmx"
    );
    let mut ok = true;
    type Mode = fn(&mut LlamaExecutor, &[Vec<u32>], &mut usize) -> Result<Rows, String>;
    for (mode, f) in [("decode", decode as Mode), ("prefill", prefill as Mode), ("batched", batched as Mode)]
    {
        let mut mismatch = 0;
        let got = f(&mut ex, &m.prompts, &mut mismatch)?;
        for (rname, want, tol) in [("f32", &want32, TOL_F32), (m.dtype.as_str(), &wantnat, TOL_NATIVE)] {
            let c = compare(&got, want, m.vocab, tol);
            let pass = c.max_diff <= tol * c.scale && c.argmax_ok == c.positions && mismatch == 0;
            ok &= pass;
            println!(
                "  {:<8} {:<13} {:>10.4} {:>7.3}% {:>7.3}% {:>13} {:>13} {:>9}  {} {}",
                mode,
                format!("tf {rname}"),
                c.max_diff,
                100.0 * c.max_diff / c.scale,
                100.0 * tol,
                format!("{}/{}", c.argmax_equal, c.positions),
                format!("{}/{}", c.argmax_ok, c.positions),
                if mismatch == 0 { "ok".to_string() } else { format!("{mismatch} bad") },
                c.worst,
                if pass { "" } else { "FAIL" }
            );
        }
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".tf-ref".into()));
    if !hyperllama_kernels::driver_present() {
        report_skip("no CUDA driver found (transformers_check needs a GPU)");
        return ExitCode::SUCCESS;
    }
    let (about, models) = match manifest(&dir) {
        Ok(m) => m,
        Err(e) => {
            println!("{e}\nRESULT: FAIL");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "references: {about}; tolerance: max|diff| <= {:.3}% (vs f32) / {:.3}% (vs bf16/f16) of the largest |logit|",
        100.0 * TOL_F32,
        100.0 * TOL_NATIVE
    );
    let mut all_ok = !models.is_empty();
    for m in &models {
        match check_model(m) {
            Ok(ok) => all_ok &= ok,
            Err(e) => {
                println!("{}: error: {e}", m.name);
                all_ok = false;
            }
        }
    }
    println!("RESULT: {}", if all_ok { "PASS" } else { "FAIL" });
    if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
