//! Writes tiny random Llama GGUF models and llama.cpp's greedy tokens for them: the reference
//! the native engine's GPU check (`native_check`) compares with. Runs on the CPU (llama.cpp via
//! llama-cpp-2), so it is run on the development machine and its output carried to the GPU one.
//!
//! ```text
//! cargo run --release -p hyperllama-native --example llama_reference -- OUT_DIR
//! ```
//!
//! Writes `OUT_DIR/tiny-{f32,f16,q8_0,q4_k_m}.gguf` (llama.cpp's own quantizer makes the last
//! two from the f32 file) and `OUT_DIR/reference.txt`, one line per (model, prompt; 16 prompts
//! of 1 to 128 tokens, so `native_check` batches 16 distinct ones):
//! `MODEL<TAB>prompt ids<TAB>32 greedy ids<TAB>logits of the first generated token<TAB>the file
//! llama.cpp ran` (lists comma separated). For the quantized models llama.cpp also runs an F32
//! copy holding exactly the dequantized weights (`tiny-*-deq.gguf`): llama.cpp's CPU kernels
//! quantize activations (to q8_0 / q8_K) for quantized weights, the native engine does not.

#[path = "../../tests/support/tiny_model.rs"]
#[allow(dead_code)]
mod tiny_model;

use std::ffi::CString;
use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use hyperllama_kernels::{WeightType, dequantize_row};
use hyperllama_native::device::gguf::GgufFile;

/// Tokens generated per prompt.
const GEN: usize = 32;

fn prompts() -> Vec<Vec<i32>> {
    let mut out = vec![
        vec![256, 72, 101, 108, 108, 111],
        vec![256],
        vec![256, 84, 104, 101, 32, 113, 117, 105, 99, 107],
    ];
    // A long one (crosses several KV blocks) and a few pseudo-random ones.
    out.push(std::iter::once(256).chain((0..70).map(|i| 32 + (i * 37) % 90)).collect());
    for s in 0..4 {
        out.push(std::iter::once(256).chain((0..(5 + 3 * s)).map(|i| (i * 53 + s * 17) % 256)).collect());
    }
    // Eight more, so `native_check` runs a batch of 16 distinct prompts: lengths at and around
    // KV block boundaries (blocks of 16) up to 8 blocks; 537 prompt tokens in all 16.
    for (s, len) in [2, 16, 17, 31, 48, 65, 100, 128].into_iter().enumerate() {
        let s = s as i32;
        out.push(std::iter::once(256).chain((1..len).map(|i| (i * 131 + s * 29 + 7) % 256)).collect());
    }
    out
}

fn quantize(src: &Path, dst: &Path, ftype: u32) {
    let (s, d) = (CString::new(src.to_str().unwrap()).unwrap(), CString::new(dst.to_str().unwrap()).unwrap());
    // SAFETY: plain FFI into llama.cpp: the default-params call has no preconditions; the
    // quantize call receives two NUL-terminated paths that outlive it and a pointer to a
    // params struct on our stack; it returns 0 on success.
    let rc = unsafe {
        let mut p = llama_cpp_sys_2::llama_model_quantize_default_params();
        p.ftype = ftype;
        p.nthread = 2;
        llama_cpp_sys_2::llama_model_quantize(s.as_ptr(), d.as_ptr(), &p)
    };
    assert_eq!(rc, 0, "llama_model_quantize {} failed", dst.display());
}

/// Greedy tokens and the logits row of the first one.
fn greedy(backend: &LlamaBackend, model_path: &Path, prompt: &[i32]) -> (Vec<i32>, Vec<f32>) {
    let model =
        LlamaModel::load_from_file(backend, model_path, &LlamaModelParams::default()).expect("load model");
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(512))
        .with_n_batch(512)
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(backend, params).expect("context");
    let mut batch = LlamaBatch::new(512, 1);
    for (i, &t) in prompt.iter().enumerate() {
        batch.add(LlamaToken(t), i as i32, &[0], i + 1 == prompt.len()).unwrap();
    }
    let mut out = Vec::new();
    let mut first = Vec::new();
    for pos in (prompt.len() as i32..).take(GEN) {
        ctx.decode(&mut batch).expect("decode");
        let logits = ctx.get_logits_ith(batch.n_tokens() - 1);
        if first.is_empty() {
            first = logits.to_vec();
        }
        let best = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b }) as i32;
        out.push(best);
        batch.clear();
        batch.add(LlamaToken(best), pos, &[0], true).unwrap();
    }
    (out, first)
}

/// Writes a copy of `src` whose every tensor is F32 with the values the quantized blocks
/// decode to (same metadata): llama.cpp on it computes with the engine's exact weights and
/// f32 activations, free of the activation quantization llama.cpp's CPU kernels apply.
fn dequantized_copy(src: &Path, dst: &Path) {
    let f = GgufFile::open(src).expect("open gguf");
    let mut out: Vec<u8> = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&f.version.to_le_bytes());
    out.extend_from_slice(&(f.order.len() as u64).to_le_bytes());
    out.extend_from_slice(&(f.meta.len() as u64).to_le_bytes());
    out.extend_from_slice(&f.raw_kv().expect("metadata"));
    let mut data: Vec<u8> = Vec::new();
    for name in &f.order {
        let (info, bytes) = f.read(name).expect("tensor");
        let ty = WeightType::from_ggml_type(info.ggml_type).expect("tensor type");
        let n = info.dims.iter().product::<u64>() as usize;
        let values = dequantize_row(ty, &bytes, n);
        out.extend_from_slice(&(name.len() as u64).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(info.dims.len() as u32).to_le_bytes());
        for d in &info.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&0u32.to_le_bytes()); // F32
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        data.resize(data.len().next_multiple_of(32), 0);
    }
    out.resize(out.len().next_multiple_of(32), 0);
    out.extend_from_slice(&data);
    std::fs::write(dst, out).expect("write dequantized copy");
}

fn join(v: &[i32]) -> String {
    v.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: llama_reference OUT_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = tiny_model::TinyModelSpec {
        seed: 7,
        n_layer: 2,
        n_embd: 256,
        n_head: 4,
        n_head_kv: 2,
        n_ff: 512,
        n_ctx_train: 4096,
        ..Default::default()
    };
    let f32_path = dir.join("tiny-f32.gguf");
    tiny_model::write_tiny_llama(&f32_path, &spec).unwrap();
    tiny_model::write_tiny_llama(
        &dir.join("tiny-f16.gguf"),
        &tiny_model::TinyModelSpec { f16: true, ..spec.clone() },
    )
    .unwrap();
    let backend = LlamaBackend::init().unwrap();
    quantize(&f32_path, &dir.join("tiny-q8_0.gguf"), llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0);
    quantize(&f32_path, &dir.join("tiny-q4_k_m.gguf"), llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M);
    for q in ["q8_0", "q4_k_m"] {
        dequantized_copy(&dir.join(format!("tiny-{q}.gguf")), &dir.join(format!("tiny-{q}-deq.gguf")));
    }
    let mut text = String::new();
    // (file the engine loads, file llama.cpp runs)
    let pairs = [
        ("tiny-f32.gguf", "tiny-f32.gguf"),
        ("tiny-f16.gguf", "tiny-f16.gguf"),
        ("tiny-q8_0.gguf", "tiny-q8_0.gguf"),
        ("tiny-q4_k_m.gguf", "tiny-q4_k_m.gguf"),
        ("tiny-q8_0.gguf", "tiny-q8_0-deq.gguf"),
        ("tiny-q4_k_m.gguf", "tiny-q4_k_m-deq.gguf"),
    ];
    for (model, reference) in pairs {
        for p in prompts() {
            let (toks, logits) = greedy(&backend, &dir.join(reference), &p);
            let logits: Vec<String> = logits.iter().map(|v| format!("{v:.6}")).collect();
            writeln!(text, "{model}\t{}\t{}\t{}\t{reference}", join(&p), join(&toks), logits.join(","))
                .unwrap();
        }
    }
    std::fs::write(dir.join("reference.txt"), &text).unwrap();
    print!("{text}");
}
