//! Writes tiny random Llama models as GGUF files, so tests can run real llama.cpp without
//! downloading anything. The file is deterministic for a given [`TinyModelSpec`] (weights come
//! from a seeded SplitMix64 stream) and loads in llama.cpp as architecture `llama` with a
//! byte-level BPE (`gpt2`) vocabulary: the 256 byte tokens, a few dozen merges (so common
//! English pairs and some two-byte characters are single tokens while other characters span
//! several tokens), and `<|bos|>`, `<|eos|>` control tokens.
//!
//! Standard library only, so both the daemon's tests and the end-to-end tests can include it
//! (`#[path = ".../tests/support/tiny_model.rs"] mod tiny_model;`).
//!
//! GGUF layout (v3): header, key/value metadata, tensor infos, padding to `general.alignment`
//! (32), tensor data (each tensor padded to the alignment). Tensor dims are written ne0 first
//! (the contiguous dimension), as ggml stores them.

use std::io::{self, Write};
use std::path::Path;

/// Shape and contents of a tiny model.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyModelSpec {
    /// Seed of the weights.
    pub seed: u64,
    /// Transformer blocks.
    pub n_layer: u32,
    /// Hidden size.
    pub n_embd: u32,
    /// Attention heads.
    pub n_head: u32,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_head_kv: u32,
    /// Feed-forward size.
    pub n_ff: u32,
    /// Training context (`llama.context_length`).
    pub n_ctx_train: u32,
    /// Store the 2-D weights as F16 instead of F32.
    pub f16: bool,
    /// `tokenizer.chat_template`, if any.
    pub chat_template: Option<String>,
    /// `llama.pooling_type`, if any (1 mean, 2 cls, 3 last).
    pub pooling_type: Option<u32>,
}

impl Default for TinyModelSpec {
    fn default() -> Self {
        Self {
            seed: 42,
            n_layer: 2,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 128,
            n_ctx_train: 4096,
            f16: false,
            chat_template: None,
            pooling_type: None,
        }
    }
}

/// Id of `<|bos|>`.
pub const BOS: u32 = 256;
/// Id of `<|eos|>`.
pub const EOS: u32 = 257;

/// Frequent English pairs merged into single tokens (GPT-2 byte alphabet: `Ġ` is a space).
const MERGES: &[(&str, &str)] = &[
    ("Ġ", "t"),
    ("h", "e"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("Ġ", "a"),
    ("o", "n"),
    ("Ġt", "he"),
    ("r", "e"),
    ("Ġ", "s"),
    ("e", "n"),
    ("a", "t"),
    ("o", "r"),
    ("Ġ", "w"),
    ("Ġ", "o"),
    ("e", "d"),
    ("i", "s"),
    ("Ġ", "c"),
    ("i", "t"),
    ("a", "r"),
    ("Ġ", "b"),
    ("Ġ", "f"),
    ("o", "u"),
    ("Ġ", "p"),
    ("l", "l"),
    ("Ġ", "m"),
    ("in", "g"),
    ("Ġ", "in"),
    ("e", "s"),
    ("Ġ", "h"),
    // "é" (C3 A9) and "ü" (C3 BC) become single tokens; other accented letters stay split.
    ("Ã", "©"),
    ("Ã", "¼"),
];

/// The GPT-2 byte-to-unicode table: printable bytes map to themselves, the others to U+0100+.
fn byte_to_unicode() -> Vec<char> {
    let mut table = vec!['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('?')
        } else {
            let c = char::from_u32(next).unwrap_or('?');
            next += 1;
            c
        };
    }
    table
}

/// Tokens (text), token types and merges of the vocabulary.
pub fn vocabulary() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = byte_to_unicode().into_iter().map(String::from).collect();
    let mut types = vec![1; 256];
    tokens.push("<|bos|>".into());
    types.push(3);
    tokens.push("<|eos|>".into());
    types.push(3);
    let mut merges = Vec::new();
    for (a, b) in MERGES {
        merges.push(format!("{a} {b}"));
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    (tokens, types, merges)
}

/// Writes the model to `path`.
pub fn write_tiny_llama(path: &Path, spec: &TinyModelSpec) -> io::Result<()> {
    let bytes = tiny_llama_bytes(spec);
    let mut f = std::fs::File::create(path)?;
    f.write_all(&bytes)?;
    f.sync_all()
}

/// The model as GGUF bytes.
pub fn tiny_llama_bytes(spec: &TinyModelSpec) -> Vec<u8> {
    let (tokens, types, merges) = vocabulary();
    let n_vocab = tokens.len() as u64;
    let head_dim = spec.n_embd / spec.n_head;
    let n_kv = u64::from(head_dim * spec.n_head_kv);
    let (e, ff) = (u64::from(spec.n_embd), u64::from(spec.n_ff));

    let mut kv = Vec::new();
    let mut n_kv_pairs = 0u64;
    let mut put = |key: &str, value: Value| {
        write_str(&mut kv, key);
        value.write(&mut kv);
        n_kv_pairs += 1;
    };
    put("general.architecture", Value::Str("llama".into()));
    put("general.name", Value::Str("tiny-random-llama".into()));
    put("general.alignment", Value::U32(ALIGN as u32));
    put("llama.context_length", Value::U32(spec.n_ctx_train));
    put("llama.embedding_length", Value::U32(spec.n_embd));
    put("llama.block_count", Value::U32(spec.n_layer));
    put("llama.feed_forward_length", Value::U32(spec.n_ff));
    put("llama.attention.head_count", Value::U32(spec.n_head));
    put("llama.attention.head_count_kv", Value::U32(spec.n_head_kv));
    put("llama.rope.dimension_count", Value::U32(head_dim));
    put("llama.rope.freq_base", Value::F32(10_000.0));
    put("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    put("llama.vocab_size", Value::U32(n_vocab as u32));
    if let Some(p) = spec.pooling_type {
        put("llama.pooling_type", Value::U32(p));
    }
    put("tokenizer.ggml.model", Value::Str("gpt2".into()));
    put("tokenizer.ggml.pre", Value::Str("default".into()));
    put("tokenizer.ggml.tokens", Value::StrArray(tokens));
    put("tokenizer.ggml.token_type", Value::I32Array(types));
    put("tokenizer.ggml.merges", Value::StrArray(merges));
    put("tokenizer.ggml.bos_token_id", Value::U32(BOS));
    put("tokenizer.ggml.eos_token_id", Value::U32(EOS));
    put("tokenizer.ggml.add_bos_token", Value::Bool(true));
    put("tokenizer.ggml.add_eos_token", Value::Bool(false));
    if let Some(t) = &spec.chat_template {
        put("tokenizer.chat_template", Value::Str(t.clone()));
    }

    // (name, dims ne0-first, std of the values, is a norm weight)
    let mut tensors: Vec<(String, Vec<u64>, f32, bool)> = vec![
        ("token_embd.weight".into(), vec![e, n_vocab], 1.0, false),
        ("output_norm.weight".into(), vec![e], 0.0, true),
        // Large output weights spread the logits, so greedy choices are far from ties.
        ("output.weight".into(), vec![e, n_vocab], 2.0, false),
    ];
    let s = 1.0 / (e as f32).sqrt();
    for i in 0..spec.n_layer {
        let b = |n: &str| format!("blk.{i}.{n}.weight");
        tensors.push((b("attn_norm"), vec![e], 0.0, true));
        tensors.push((b("attn_q"), vec![e, e], s, false));
        tensors.push((b("attn_k"), vec![e, n_kv], s, false));
        tensors.push((b("attn_v"), vec![e, n_kv], s, false));
        tensors.push((b("attn_output"), vec![e, e], s, false));
        tensors.push((b("ffn_norm"), vec![e], 0.0, true));
        tensors.push((b("ffn_gate"), vec![e, ff], s, false));
        tensors.push((b("ffn_up"), vec![e, ff], s, false));
        tensors.push((b("ffn_down"), vec![ff, e], 1.0 / (ff as f32).sqrt(), false));
    }

    let mut rng = SplitMix64(spec.seed);
    let mut infos = Vec::new();
    let mut data = Vec::new();
    for (name, dims, std, is_norm) in &tensors {
        let count: u64 = dims.iter().product();
        let f16 = spec.f16 && dims.len() == 2;
        pad(&mut data);
        write_str(&mut infos, name);
        infos.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            infos.extend_from_slice(&d.to_le_bytes());
        }
        infos.extend_from_slice(&(if f16 { 1u32 } else { 0u32 }).to_le_bytes());
        infos.extend_from_slice(&(data.len() as u64).to_le_bytes());
        for _ in 0..count {
            let v = if *is_norm { 1.0 } else { rng.normal() * std };
            if f16 {
                data.extend_from_slice(&f32_to_f16(v).to_le_bytes());
            } else {
                data.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    pad(&mut data);

    let mut out = Vec::with_capacity(kv.len() + infos.len() + data.len() + 64);
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&n_kv_pairs.to_le_bytes());
    out.extend_from_slice(&kv);
    out.extend_from_slice(&infos);
    pad(&mut out);
    out.extend_from_slice(&data);
    out
}

const ALIGN: usize = 32;

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(ALIGN) {
        buf.push(0);
    }
}

enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
}

impl Value {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::U32(v) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::F32(v) => {
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::Bool(v) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(u8::from(*v));
            }
            Value::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                write_str(out, s);
            }
            Value::StrArray(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    write_str(out, s);
                }
            }
            Value::I32Array(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Approximately standard normal (Irwin–Hall with 4 terms, rescaled).
    fn normal(&mut self) -> f32 {
        let sum: f32 = (0..4).map(|_| self.uniform()).sum();
        (sum - 2.0) * (3.0f32).sqrt()
    }
}

/// IEEE 754 half precision, round to nearest even.
fn f32_to_f16(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x007f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = mant | 0x0080_0000;
        let shift = (14 - e) as u32;
        let half = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let mid = 1 << (shift - 1);
        let round = rem > mid || (rem == mid && half & 1 == 1);
        return sign | (half + u32::from(round)) as u16;
    }
    let half = ((e as u32) << 10) | (mant >> 13);
    let rem = mant & 0x1fff;
    let round = rem > 0x1000 || (rem == 0x1000 && half & 1 == 1);
    sign | (half + u32::from(round)) as u16
}
