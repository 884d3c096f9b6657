//! Hand-built GGUF files for tests: a small well-formed model (llama architecture, a few F32
//! tensors of zeros, a byte-level vocabulary) and the hostile variants the store must refuse —
//! truncated files, huge counts, tensors past the end or overlapping, wrong value types.
//!
//! Only `std` is used, so the daemon's unit tests include this file by path as well.

/// A metadata value to write.
#[derive(Debug, Clone)]
pub enum Meta {
    /// uint32
    U32(u32),
    /// uint64
    U64(u64),
    /// int32
    I32(i32),
    /// float32
    F32(f32),
    /// bool (any byte, so invalid bools can be written)
    Bool(u8),
    /// string
    Str(String),
    /// array of strings
    Strings(Vec<String>),
    /// array of float32
    F32s(Vec<f32>),
    /// array of int32
    I32s(Vec<i32>),
    /// an array header claiming `count` elements of `element_type`, followed by `bytes`
    RawArray { element_type: u32, count: u64, bytes: Vec<u8> },
    /// a value of an arbitrary type code followed by raw bytes
    Raw { type_code: u32, bytes: Vec<u8> },
}

/// A tensor to write.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Name.
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// ggml type code (0 = F32).
    pub type_code: u32,
    /// Offset to write instead of the computed one.
    pub offset: Option<u64>,
}

/// Builds GGUF bytes.
#[derive(Debug, Clone)]
pub struct GgufBuilder {
    /// Format version written.
    pub version: u32,
    /// Metadata in order.
    pub metadata: Vec<(String, Meta)>,
    /// Tensors in order.
    pub tensors: Vec<Tensor>,
    /// Tensor count written instead of the real one.
    pub claimed_tensors: Option<u64>,
    /// Metadata count written instead of the real one.
    pub claimed_metadata: Option<u64>,
    /// Extra bytes appended after the data (to make files of a chosen size).
    pub padding: usize,
}

const ALIGNMENT: u64 = 32;

/// Bytes of an F32 tensor (0 when the shape overflows, as hostile shapes do).
fn f32_bytes(dims: &[u64]) -> u64 {
    dims.iter().try_fold(4u64, |bytes, d| bytes.checked_mul(*d)).unwrap_or(0)
}

impl GgufBuilder {
    /// An empty version-3 file.
    pub fn new() -> Self {
        Self {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
            claimed_tensors: None,
            claimed_metadata: None,
            padding: 0,
        }
    }

    /// A small llama-architecture model: 2 layers of width 64, a 256-token byte vocabulary,
    /// F32 tensors of zeros. `seed` changes the name (and so the file's digest).
    pub fn tiny_llama(seed: &str) -> Self {
        let vocab: Vec<String> = (0..256).map(|b| format!("<0x{b:02X}>")).collect();
        let mut b = Self::new()
            .meta("general.architecture", Meta::Str("llama".into()))
            .meta("general.name", Meta::Str(format!("tiny-{seed}")))
            .meta("general.file_type", Meta::U32(0))
            .meta("llama.context_length", Meta::U32(2048))
            .meta("llama.embedding_length", Meta::U32(64))
            .meta("llama.block_count", Meta::U32(2))
            .meta("llama.feed_forward_length", Meta::U32(128))
            .meta("llama.attention.head_count", Meta::U32(4))
            .meta("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5))
            .meta("tokenizer.ggml.model", Meta::Str("llama".into()))
            .meta("tokenizer.ggml.scores", Meta::F32s(vec![0.0; 256]))
            .meta("tokenizer.ggml.token_type", Meta::I32s(vec![6; 256]))
            .meta("tokenizer.ggml.tokens", Meta::Strings(vocab))
            .tensor("token_embd.weight", &[64, 256])
            .tensor("output_norm.weight", &[64]);
        for layer in 0..2 {
            b = b
                .tensor(&format!("blk.{layer}.attn_norm.weight"), &[64])
                .tensor(&format!("blk.{layer}.attn_q.weight"), &[64, 64]);
        }
        b
    }

    /// Adds a metadata entry.
    pub fn meta(mut self, key: &str, value: Meta) -> Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Replaces (or adds) a metadata entry.
    pub fn set_meta(mut self, key: &str, value: Meta) -> Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.into(), value)),
        }
        self
    }

    /// Adds an F32 tensor.
    pub fn tensor(mut self, name: &str, dims: &[u64]) -> Self {
        self.tensors.push(Tensor { name: name.into(), dims: dims.to_vec(), type_code: 0, offset: None });
        self
    }

    /// Makes the file at least `bytes` long (zeros after the tensor data).
    pub fn pad_to(mut self, bytes: usize) -> Self {
        let now = self.clone().build().len();
        self.padding = bytes.saturating_sub(now);
        self
    }

    /// The file's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        let tensors = self.claimed_tensors.unwrap_or(self.tensors.len() as u64);
        let metadata = self.claimed_metadata.unwrap_or(self.metadata.len() as u64);
        out.extend_from_slice(&tensors.to_le_bytes());
        out.extend_from_slice(&metadata.to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            put_meta(&mut out, value);
        }
        let mut next = 0u64;
        let mut data_len = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_code.to_le_bytes());
            let offset = t.offset.unwrap_or(next);
            out.extend_from_slice(&offset.to_le_bytes());
            let size = f32_bytes(&t.dims);
            next = (next + size).div_ceil(ALIGNMENT) * ALIGNMENT;
            data_len = data_len.max(next);
        }
        while !(out.len() as u64).is_multiple_of(ALIGNMENT) {
            out.push(0);
        }
        out.resize(out.len() + data_len as usize + self.padding, 0);
        out
    }
}

impl Default for GgufBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_meta(out: &mut Vec<u8>, value: &Meta) {
    let mut typed = |code: u32, bytes: &[u8]| {
        out.extend_from_slice(&code.to_le_bytes());
        out.extend_from_slice(bytes);
    };
    match value {
        Meta::U32(v) => typed(4, &v.to_le_bytes()),
        Meta::I32(v) => typed(5, &v.to_le_bytes()),
        Meta::F32(v) => typed(6, &v.to_le_bytes()),
        Meta::Bool(v) => typed(7, &[*v]),
        Meta::U64(v) => typed(10, &v.to_le_bytes()),
        Meta::Str(s) => {
            out.extend_from_slice(&8u32.to_le_bytes());
            put_str(out, s);
        }
        Meta::Strings(items) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&8u32.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for s in items {
                put_str(out, s);
            }
        }
        Meta::F32s(items) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&6u32.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for v in items {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Meta::I32s(items) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&5u32.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for v in items {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Meta::RawArray { element_type, count, bytes } => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&element_type.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(bytes);
        }
        Meta::Raw { type_code, bytes } => typed(*type_code, bytes),
    }
}

/// A named hostile variant of [`GgufBuilder::tiny_llama`] and a phrase its error must contain.
#[derive(Debug, Clone)]
pub struct Hostile {
    /// What is wrong, for test messages.
    pub name: &'static str,
    /// The file.
    pub bytes: Vec<u8>,
    /// Text the reader's error must contain.
    pub expect: &'static str,
}

/// The hostile files every layer of the store must refuse with a clear error.
pub fn hostile_files() -> Vec<Hostile> {
    let good = GgufBuilder::tiny_llama("hostile");
    let full = good.build();
    let mut cases = Vec::new();
    let mut push = |name, bytes, expect| cases.push(Hostile { name, bytes, expect });
    push("not GGUF at all", b"root:x:0:0:root:/root:/bin/bash\n".to_vec(), "not a GGUF file");
    push("empty", Vec::new(), "truncated");
    push("truncated in the metadata", full[..300].to_vec(), "truncated");
    push("truncated in the tensor data", full[..full.len() - 100].to_vec(), "past the end");
    push(
        "huge tensor count",
        GgufBuilder { claimed_tensors: Some(u64::MAX / 2), ..good.clone() }.build(),
        "tensors",
    );
    push(
        "huge metadata count",
        GgufBuilder { claimed_metadata: Some(1 << 40), ..good.clone() }.build(),
        "metadata entries",
    );
    push(
        "huge array length",
        good.clone()
            .meta("evil.array", Meta::RawArray { element_type: 8, count: u64::MAX, bytes: Vec::new() })
            .build(),
        "elements of array",
    );
    push(
        "huge string length",
        good.clone()
            .meta("evil.string", Meta::Raw { type_code: 8, bytes: u64::MAX.to_le_bytes().to_vec() })
            .build(),
        "over the limit",
    );
    push(
        "deeply nested arrays",
        good.clone()
            .meta("evil.nested", Meta::RawArray { element_type: 9, count: 1, bytes: nested_arrays(64) })
            .build(),
        "nesting",
    );
    let mut past_end = good.clone();
    past_end.tensors[0].offset = Some(1 << 40);
    push("tensor offset past the end", past_end.build(), "past the end");
    let mut overlapping = good.clone();
    overlapping.tensors[1].offset = Some(0);
    push("overlapping tensors", overlapping.build(), "overlaps");
    let mut misaligned = good.clone();
    misaligned.tensors[1].offset = Some(3);
    push("misaligned tensor", misaligned.build(), "alignment");
    let mut bad_type = good.clone();
    bad_type.tensors[0].type_code = 4;
    push("removed tensor type", bad_type.build(), "unknown tensor type");
    let mut huge_dims = good.clone();
    huge_dims.tensors[0].dims = vec![1 << 40, 1 << 40];
    push("element count overflow", huge_dims.build(), "overflows");
    push(
        "architecture of the wrong type",
        good.clone().set_meta("general.architecture", Meta::U32(7)).build(),
        "general.architecture",
    );
    push(
        "alignment of the wrong type",
        good.clone().meta("general.alignment", Meta::Str("32".into())).build(),
        "general.alignment",
    );
    push(
        "context length of the wrong type",
        good.clone().set_meta("llama.context_length", Meta::Str("lots".into())).build(),
        "llama.context_length",
    );
    push("invalid bool", good.clone().meta("evil.bool", Meta::Bool(7)).build(), "bool");
    push(
        "unknown value type",
        good.clone().meta("evil.type", Meta::Raw { type_code: 99, bytes: vec![0; 8] }).build(),
        "unknown value type",
    );
    let mut v1 = good.clone();
    v1.version = 1;
    push("version 1", v1.build(), "version 1");
    cases
}

/// `depth` levels of one-element arrays of arrays (after the outer header).
fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..depth {
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes());
    }
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}
