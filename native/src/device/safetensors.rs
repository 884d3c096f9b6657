//! Hugging Face model folders for the device executor: a bounded reader of the safetensors
//! format, `config.json` of the Llama family (`LlamaForCausalLM`, `MistralForCausalLM`), and
//! the weights uploaded in their stored encoding (BF16, F16 or F32; norms as f32).
//!
//! A safetensors file is an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {..}}`) and the
//! data buffer; offsets are relative to the buffer. Everything read from a file is checked
//! before it is used, as in [`super::gguf`]: the header length against a cap and the file size,
//! every tensor's byte range against its dtype x shape (checked arithmetic) and the buffer, and
//! the ranges must tile the buffer exactly (no overlap, no hole, no trailing bytes: what the
//! reference implementation writes and accepts). Files are opened only if they are regular
//! files; JSON side files (`config.json`, the shard index) are read up to a size cap; shard
//! names from the index must be plain file names in the model folder.
//!
//! Hugging Face keeps q/k projections in the "rotate half" (NeoX) pair order; llama.cpp's
//! converter permutes them into adjacent pairs for GGUF. The weights are uploaded unpermuted
//! and the config says `rope_neox: true`, which the RoPE kernel supports.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use cudarc::driver::CudaSlice;
use hyperllama_kernels::{DeviceWeight, Gpu, WeightType, dequantize_row};
use serde_json::{Map, Value};

use super::DeviceError;
use super::model::{LayerWeights, LlamaConfig, LlamaWeights};

/// Largest accepted JSON header of a safetensors file (the reference implementation's cap).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Largest accepted `config.json`.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest accepted `model.safetensors.index.json`.
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Most dimensions a tensor may have.
const MAX_RANK: usize = 8;
/// Most shard files a sharded model may name.
const MAX_SHARDS: usize = 4096;
/// Longest `max_position_embeddings` accepted (sizes host and device tables).
const MAX_CONTEXT: usize = 1 << 26;
/// Largest accepted width or count in `config.json` (vocabulary, hidden, ffn, heads): far above
/// any real model, low enough that products of two cannot overflow.
const MAX_DIM: usize = 1 << 24;
/// Most layers accepted.
const MAX_LAYERS: usize = 1 << 12;

fn bad(m: impl Into<String>) -> DeviceError {
    DeviceError::Model(m.into())
}

/// Element types of the safetensors format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// `BOOL`.
    Bool,
    /// `U8`.
    U8,
    /// `I8`.
    I8,
    /// `F8_E4M3`.
    F8E4M3,
    /// `F8_E5M2`.
    F8E5M2,
    /// `I16`.
    I16,
    /// `U16`.
    U16,
    /// `F16`.
    F16,
    /// `BF16`.
    Bf16,
    /// `I32`.
    I32,
    /// `U32`.
    U32,
    /// `F32`.
    F32,
    /// `I64`.
    I64,
    /// `U64`.
    U64,
    /// `F64`.
    F64,
}

impl Dtype {
    /// The dtype of a header's `dtype` string.
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "BOOL" => Dtype::Bool,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "F8_E4M3" => Dtype::F8E4M3,
            "F8_E5M2" => Dtype::F8E5M2,
            "I16" => Dtype::I16,
            "U16" => Dtype::U16,
            "F16" => Dtype::F16,
            "BF16" => Dtype::Bf16,
            "I32" => Dtype::I32,
            "U32" => Dtype::U32,
            "F32" => Dtype::F32,
            "I64" => Dtype::I64,
            "U64" => Dtype::U64,
            "F64" => Dtype::F64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::U64 | Dtype::F64 => 8,
        }
    }

    /// The kernels' encoding of the same bytes, for the dtypes weights may have.
    pub fn weight_type(self) -> Option<WeightType> {
        match self {
            Dtype::F32 => Some(WeightType::F32),
            Dtype::F16 => Some(WeightType::F16),
            Dtype::Bf16 => Some(WeightType::Bf16),
            _ => None,
        }
    }
}

/// One tensor of a safetensors file, validated against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first (a `[rows, cols]` matrix is row-major).
    pub shape: Vec<usize>,
    /// Absolute file offset of the data.
    pub offset: u64,
    /// Bytes of data (`dtype.size() * product(shape)`).
    pub bytes: u64,
}

/// Parses and validates a safetensors JSON header. `data_start` is the absolute offset of
/// the data buffer (8 + header length), `data_len` its length (the rest of the file).
pub fn parse_header(
    header: &[u8],
    data_start: u64,
    data_len: u64,
) -> Result<HashMap<String, TensorEntry>, DeviceError> {
    let text =
        std::str::from_utf8(header).map_err(|e| bad(format!("safetensors header is not UTF-8 ({e})")))?;
    let root: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("safetensors header is not valid JSON: {e}")))?;
    // A name given twice keeps its last entry; the other's bytes then leave a hole (refused
    // below) unless both named the same range.
    let Value::Object(root) = root else {
        return Err(bad("safetensors header is not a JSON object"));
    };
    let mut tensors = HashMap::with_capacity(root.len());
    let mut ranges: Vec<(u64, u64, &str)> = Vec::with_capacity(root.len());
    for (name, v) in &root {
        if name == "__metadata__" {
            let ok = v.as_object().is_some_and(|m| m.values().all(Value::is_string));
            if !ok {
                return Err(bad("safetensors __metadata__ is not an object of strings"));
            }
            continue;
        }
        let t = v.as_object().ok_or_else(|| bad(format!("tensor `{name}`: entry is not an object")))?;
        let dtype_s = t
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("tensor `{name}`: dtype missing or not a string")))?;
        let dtype = Dtype::parse(dtype_s)
            .ok_or_else(|| bad(format!("tensor `{name}`: unknown dtype `{dtype_s}`")))?;
        let dims = t
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("tensor `{name}`: shape missing or not an array")))?;
        if dims.len() > MAX_RANK {
            return Err(bad(format!("tensor `{name}`: {} dimensions (at most {MAX_RANK})", dims.len())));
        }
        let shape = dims
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {dims:?} is not a list of sizes")))?;
        let offs = t
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| match a.as_slice() {
                [b, e] => Some((b.as_u64()?, e.as_u64()?)),
                _ => None,
            })
            .ok_or_else(|| bad(format!("tensor `{name}`: data_offsets is not [begin, end]")))?;
        let (begin, end) = offs;
        if begin > end || end > data_len {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] outside the {data_len}-byte data buffer"
            )));
        }
        let need = shape
            .iter()
            .try_fold(dtype.size(), |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {shape:?} overflows")))?;
        if end - begin != need {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] hold {} bytes but {dtype_s} x {shape:?} needs {need}",
                end - begin
            )));
        }
        let offset =
            data_start.checked_add(begin).ok_or_else(|| bad(format!("tensor `{name}`: offset overflows")))?;
        ranges.push((begin, end, name));
        tensors.insert(name.clone(), TensorEntry { dtype, shape, offset, bytes: need });
    }
    ranges.sort_unstable();
    let mut at = 0u64;
    for (begin, end, name) in ranges {
        if begin < at {
            return Err(bad(format!("tensor `{name}`: data [{begin}, {end}] overlaps the previous tensor")));
        }
        if begin > at {
            return Err(bad(format!(
                "tensor `{name}`: gap of {} unindexed bytes before its data",
                begin - at
            )));
        }
        at = end;
    }
    if at != data_len {
        return Err(bad(format!("{} bytes after the last tensor's data", data_len - at)));
    }
    Ok(tensors)
}

/// Opens `path` for reading if it is a regular file (never a FIFO or device, which could
/// block or never end); symbolic links (the Hugging Face cache's layout) are followed.
fn open_regular(path: &Path) -> Result<(File, u64), DeviceError> {
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(bad(format!("{} is not a regular file", path.display())));
    }
    let file = File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let meta = file.metadata().map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(bad(format!("{} is not a regular file", path.display())));
    }
    Ok((file, meta.len()))
}

/// Reads a JSON file of at most `cap` bytes.
fn read_json(path: &Path, cap: u64) -> Result<Value, DeviceError> {
    let (file, len) = open_regular(path)?;
    if len > cap {
        return Err(bad(format!("{} is {len} bytes (at most {cap})", path.display())));
    }
    let mut buf = Vec::with_capacity(len as usize);
    file.take(cap + 1).read_to_end(&mut buf).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if buf.len() as u64 > cap {
        return Err(bad(format!("{} is larger than {cap} bytes", path.display())));
    }
    let text =
        std::str::from_utf8(&buf).map_err(|e| bad(format!("{} is not UTF-8 ({e})", path.display())))?;
    serde_json::from_str(text).map_err(|e| bad(format!("{} is not valid JSON: {e}", path.display())))
}

/// An open safetensors file: its validated tensor directory; data is read on demand.
#[derive(Debug)]
pub struct SafetensorsFile {
    file: File,
    path: PathBuf,
    /// Tensors by name.
    pub tensors: HashMap<String, TensorEntry>,
}

impl SafetensorsFile {
    /// Opens `path` and validates its header against the file's size.
    pub fn open(path: &Path) -> Result<SafetensorsFile, DeviceError> {
        let (mut file, len) = open_regular(path)?;
        let p = path.display();
        if len < 8 {
            return Err(bad(format!("{p}: {len} bytes, too short for a safetensors file")));
        }
        let mut n = [0u8; 8];
        file.read_exact(&mut n).map_err(|e| bad(format!("{p}: {e}")))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER_BYTES {
            return Err(bad(format!("{p}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")));
        }
        if n > len - 8 {
            return Err(bad(format!("{p}: header length {n} runs past the end of the {len}-byte file")));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(|e| bad(format!("{p}: reading the header: {e}")))?;
        let tensors = parse_header(&header, 8 + n, len - 8 - n).map_err(|e| bad(format!("{p}: {e}")))?;
        Ok(SafetensorsFile { file, path: path.to_path_buf(), tensors })
    }

    /// The raw bytes of tensor `name`.
    pub fn read(&self, name: &str) -> Result<(TensorEntry, Vec<u8>), DeviceError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| bad(format!("{}: tensor {name} missing", self.path.display())))?
            .clone();
        let mut buf = vec![0u8; usize::try_from(t.bytes).map_err(|_| bad("tensor too large"))?];
        let mut f = &self.file;
        f.seek(SeekFrom::Start(t.offset)).map_err(|e| bad(e.to_string()))?;
        f.read_exact(&mut buf).map_err(|e| bad(format!("{}: reading {name}: {e}", self.path.display())))?;
        Ok((t, buf))
    }
}

/// Llama 3 RoPE scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    /// `factor`.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor`.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`.
    pub original_context: f64,
}

/// Per-frequency divisors of the rotation angle (what llama.cpp's converter writes as
/// `rope_freqs.weight`), computed in f32 step by step as its torch code does: frequency `i` of
/// `head_dim / 2` is `1 / base^(2i/head_dim)`, its wavelength `2 pi / freq`; short wavelengths
/// keep 1, long ones get `factor`, those between `1 / ((1 - s) / factor + s)` with
/// `s = (original_context / wavelength - low) / (high - low)`. Transformers' llama3 scaling
/// divides the inverse frequency by the same amount.
pub fn llama3_rope_factors(head_dim: usize, base: f64, s: &Llama3Scaling) -> Vec<f32> {
    let low_wavelen = (s.original_context / s.low_freq_factor) as f32;
    let high_wavelen = (s.original_context / s.high_freq_factor) as f32;
    let span = (s.high_freq_factor - s.low_freq_factor) as f32;
    let (factor, low, old) = (s.factor as f32, s.low_freq_factor as f32, s.original_context as f32);
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    (0..head_dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            let freq = 1.0f32 / (base as f32).powf(exponent);
            let wavelen = two_pi / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old / wavelen - low) / span;
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// A Hugging Face `config.json` of the Llama family, as the device half uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    /// The hyper-parameters (`rope_neox` is true: Hugging Face's q/k pair order).
    pub llama: LlamaConfig,
    /// Llama 3 per-frequency RoPE divisors (`head_dim / 2` values), if scaled.
    pub rope_factors: Option<Vec<f32>>,
    /// The output projection is the embedding matrix.
    pub tie_word_embeddings: bool,
}

/// Typed access to a JSON object's fields (absent and `null` are the same).
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    fn usize(&self, k: &str) -> Result<Option<usize>, DeviceError> {
        self.get(k)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad(format!("config.json: {k} = {v} is not a size")))
            })
            .transpose()
    }
    /// A required size in `1..=max`.
    fn need_usize(&self, k: &str, max: usize) -> Result<usize, DeviceError> {
        match self.usize(k)? {
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(n) => Err(bad(format!("config.json: {k} = {n} (1..={max})"))),
            None => Err(bad(format!("config.json: {k} missing"))),
        }
    }
    fn f64(&self, k: &str) -> Result<Option<f64>, DeviceError> {
        self.get(k)
            .map(|v| {
                v.as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| bad(format!("config.json: {k} = {v} is not a number")))
            })
            .transpose()
    }
    fn bool(&self, k: &str) -> Result<Option<bool>, DeviceError> {
        self.get(k)
            .map(|v| v.as_bool().ok_or_else(|| bad(format!("config.json: {k} = {v} is not a boolean"))))
            .transpose()
    }
    fn str(&self, k: &str) -> Result<Option<&str>, DeviceError> {
        self.get(k)
            .map(|v| v.as_str().ok_or_else(|| bad(format!("config.json: {k} = {v} is not a string"))))
            .transpose()
    }
    fn object(&self, k: &str) -> Result<Option<Fields<'_>>, DeviceError> {
        self.get(k)
            .map(|v| {
                v.as_object().map(Fields).ok_or_else(|| bad(format!("config.json: {k} is not an object")))
            })
            .transpose()
    }
}

/// Parses `config.json` text.
pub fn parse_config(text: &str) -> Result<HfConfig, DeviceError> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("config.json is not valid JSON: {e}")))?;
    let obj = root.as_object().ok_or_else(|| bad("config.json is not a JSON object"))?;
    config_from_json(&Fields(obj))
}

fn config_from_json(c: &Fields<'_>) -> Result<HfConfig, DeviceError> {
    let archs: Vec<&str> = match c.get("architectures") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| bad("config.json: architectures is not a list of strings"))?,
    };
    let architecture = if archs.is_empty() {
        match c.str("model_type")? {
            Some(t @ ("llama" | "mistral")) => t.to_string(),
            other => {
                return Err(DeviceError::Unsupported(format!(
                    "model_type {other:?} (supported: llama, mistral)"
                )));
            }
        }
    } else if archs.contains(&"LlamaForCausalLM") {
        "llama".to_string()
    } else if archs.contains(&"MistralForCausalLM") {
        "mistral".to_string()
    } else {
        return Err(DeviceError::Unsupported(format!(
            "architectures {archs:?} (supported: LlamaForCausalLM, MistralForCausalLM)"
        )));
    };
    if let Some(act) = c.str("hidden_act")?
        && act != "silu"
    {
        return Err(DeviceError::Unsupported(format!("hidden_act `{act}` (supported: silu)")));
    }
    for k in ["attention_bias", "mlp_bias"] {
        if c.bool(k)? == Some(true) {
            return Err(DeviceError::Unsupported(format!("{k} = true (no bias support)")));
        }
    }
    let hidden = c.need_usize("hidden_size", MAX_DIM)?;
    let heads = c.need_usize("num_attention_heads", MAX_DIM)?;
    let kv_heads = c.usize("num_key_value_heads")?.unwrap_or(heads);
    let head_dim = match c.usize("head_dim")? {
        Some(d) => d,
        None if hidden.is_multiple_of(heads) => hidden / heads,
        None => {
            return Err(bad(format!("config.json: hidden_size {hidden} is not a multiple of {heads} heads")));
        }
    };
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || ![64, 128, 256].contains(&head_dim) {
        return Err(DeviceError::Unsupported(format!(
            "heads {heads}/{kv_heads} with head_dim {head_dim} (needs 64/128/256 and GQA groups)"
        )));
    }
    let mut context = c.usize("max_position_embeddings")?.unwrap_or(2048);
    if context == 0 || context > MAX_CONTEXT {
        return Err(bad(format!("config.json: max_position_embeddings {context} (1..={MAX_CONTEXT})")));
    }
    // Mistral's sliding window: attention over the whole context equals the windowed one as
    // long as the context is no longer than the window.
    if let Some(w) = c.usize("sliding_window")?
        && w > 0
    {
        context = context.min(w);
    }

    // Transformers 5 keeps RoPE settings in `rope_parameters` (with `rope_theta`); earlier
    // versions use a top-level `rope_theta` and `rope_scaling`.
    let params = c.object("rope_parameters")?;
    let scaling = match &params {
        Some(p) => Some(Fields(p.0)),
        None => c.object("rope_scaling")?,
    };
    let base = match params.as_ref().map(|p| p.f64("rope_theta")).transpose()?.flatten() {
        Some(b) => b,
        None => c.f64("rope_theta")?.unwrap_or(10000.0),
    };
    if base <= 1.0 {
        return Err(bad(format!("config.json: rope_theta {base} must be > 1")));
    }
    if let Some(f) = c.f64("partial_rotary_factor")?
        && f != 1.0
    {
        return Err(DeviceError::Unsupported(format!("partial_rotary_factor {f}")));
    }
    let rope_factors = match scaling {
        None => None,
        Some(s) => {
            let ty = match s.str("rope_type")? {
                Some(t) => Some(t),
                None => s.str("type")?,
            };
            match ty.map(str::to_ascii_lowercase).as_deref() {
                None | Some("default") => None,
                Some("llama3") => {
                    // llama.cpp's converter defaults; transformers requires every field.
                    let sc = Llama3Scaling {
                        factor: s.f64("factor")?.unwrap_or(8.0),
                        low_freq_factor: s.f64("low_freq_factor")?.unwrap_or(1.0),
                        high_freq_factor: s.f64("high_freq_factor")?.unwrap_or(4.0),
                        original_context: match s.f64("original_max_position_embeddings")? {
                            Some(v) => v,
                            None => c.f64("original_max_position_embeddings")?.unwrap_or(8192.0),
                        },
                    };
                    if sc.factor <= 0.0
                        || sc.low_freq_factor <= 0.0
                        || sc.high_freq_factor <= sc.low_freq_factor
                        || sc.original_context <= 0.0
                    {
                        return Err(bad(format!("config.json: llama3 rope scaling {sc:?} is not usable")));
                    }
                    Some(llama3_rope_factors(head_dim, base, &sc))
                }
                Some(other) => {
                    return Err(DeviceError::Unsupported(format!(
                        "rope scaling `{other}` (supported: llama3)"
                    )));
                }
            }
        }
    };
    let eps = c.f64("rms_norm_eps")?.unwrap_or(1e-6);
    if !(0.0..1.0).contains(&eps) {
        return Err(bad(format!("config.json: rms_norm_eps {eps} (0..1)")));
    }
    let eps = eps as f32;
    let llama = LlamaConfig {
        architecture,
        hidden,
        layers: c.need_usize("num_hidden_layers", MAX_LAYERS)?,
        heads,
        kv_heads,
        head_dim,
        ffn: c.need_usize("intermediate_size", MAX_DIM)?,
        vocab: c.need_usize("vocab_size", MAX_DIM)?,
        eps,
        rope_base: base as f32,
        rope_dims: head_dim,
        rope_neox: true,
        context,
    };
    Ok(HfConfig { llama, rope_factors, tie_word_embeddings: c.bool("tie_word_embeddings")?.unwrap_or(false) })
}

/// Whether `path` names a Hugging Face model (a folder, or a `.safetensors` file) rather than
/// a GGUF file.
pub fn is_hf_model_path(path: &Path) -> bool {
    path.is_dir() || path.extension().is_some_and(|e| e == "safetensors")
}

/// A shard name from the index: a plain `*.safetensors` file name inside the model folder.
fn valid_shard_name(name: &str) -> bool {
    name.ends_with(".safetensors")
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && Path::new(name).file_name().is_some_and(|f| f == name)
}

/// An open Hugging Face model: its config and the safetensors files holding its tensors.
#[derive(Debug)]
pub struct HfModel {
    /// The model folder.
    pub dir: PathBuf,
    /// The parsed `config.json`.
    pub config: HfConfig,
    shards: Vec<SafetensorsFile>,
    /// Tensor name -> index into `shards`.
    location: HashMap<String, usize>,
}

const INDEX_FILE: &str = "model.safetensors.index.json";

impl HfModel {
    /// Opens a model folder (`config.json` and `model.safetensors`, or the shards named by
    /// `model.safetensors.index.json`), or one `.safetensors` file with `config.json` beside it.
    pub fn open(path: &Path) -> Result<HfModel, DeviceError> {
        let (dir, file) = if path.is_dir() {
            (path.to_path_buf(), None)
        } else {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            (dir.to_path_buf(), Some(path.to_path_buf()))
        };
        let config_path = dir.join("config.json");
        let config = match read_json(&config_path, MAX_CONFIG_BYTES)? {
            Value::Object(o) => config_from_json(&Fields(&o)).map_err(|e| match e {
                DeviceError::Model(m) => bad(format!("{}: {m}", config_path.display())),
                other => other,
            })?,
            _ => return Err(bad(format!("{} is not a JSON object", config_path.display()))),
        };
        let index_path = dir.join(INDEX_FILE);
        let index = if index_path.exists() { Some(Self::read_index(&index_path)?) } else { None };
        // One named file uses the index only if the index names it (a shard of that model).
        let index = match (&file, index) {
            (Some(f), Some(map)) => {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                map.values().any(|s| s == name).then_some(map)
            }
            (_, index) => index,
        };
        let mut shards = Vec::new();
        let mut location = HashMap::new();
        match index {
            Some(map) => {
                let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
                for shard in map.values() {
                    if !by_name.contains_key(shard.as_str()) {
                        if by_name.len() >= MAX_SHARDS {
                            return Err(bad(format!(
                                "{}: more than {MAX_SHARDS} shards",
                                index_path.display()
                            )));
                        }
                        by_name.insert(shard, shards.len());
                        shards.push(SafetensorsFile::open(&dir.join(shard))?);
                    }
                }
                for (tensor, shard) in &map {
                    let i = by_name[shard.as_str()];
                    if !shards[i].tensors.contains_key(tensor) {
                        return Err(bad(format!(
                            "{}: tensor {tensor} is mapped to {shard}, which does not hold it",
                            index_path.display()
                        )));
                    }
                    location.insert(tensor.clone(), i);
                }
            }
            None => {
                let f = file.unwrap_or_else(|| dir.join("model.safetensors"));
                if !f.exists() {
                    return Err(bad(format!("{}: no model.safetensors and no {INDEX_FILE}", dir.display())));
                }
                let st = SafetensorsFile::open(&f)?;
                location.extend(st.tensors.keys().map(|k| (k.clone(), 0)));
                shards.push(st);
            }
        }
        Ok(HfModel { dir, config, shards, location })
    }

    /// `weight_map` of a shard index: tensor name -> shard file name (validated).
    fn read_index(path: &Path) -> Result<BTreeMap<String, String>, DeviceError> {
        let p = path.display();
        let root = read_json(path, MAX_INDEX_BYTES)?;
        let map = root
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad(format!("{p}: weight_map missing or not an object")))?;
        let mut out = BTreeMap::new();
        for (tensor, shard) in map {
            let shard =
                shard.as_str().ok_or_else(|| bad(format!("{p}: shard of {tensor} is not a string")))?;
            if !valid_shard_name(shard) {
                return Err(bad(format!(
                    "{p}: shard name {shard:?} is not a .safetensors file in the model folder"
                )));
            }
            out.insert(tensor.clone(), shard.to_string());
        }
        if out.is_empty() {
            return Err(bad(format!("{p}: weight_map is empty")));
        }
        Ok(out)
    }

    /// The directory entry and file of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<(&TensorEntry, &SafetensorsFile)> {
        let shard = &self.shards[*self.location.get(name)?];
        Some((shard.tensors.get(name)?, shard))
    }

    /// The encoding and bytes of tensor `name`, whose shape must be `shape`.
    fn read_checked(&self, name: &str, shape: &[usize]) -> Result<(WeightType, Vec<u8>), DeviceError> {
        let (t, shard) = self.tensor(name).ok_or_else(|| bad(format!("tensor {name} missing")))?;
        if t.shape != shape {
            return Err(bad(format!("tensor {name} has shape {:?}, the config needs {shape:?}", t.shape)));
        }
        let ty = t.dtype.weight_type().ok_or_else(|| {
            DeviceError::Unsupported(format!("tensor {name} is {:?} (supported: F32, F16, BF16)", t.dtype))
        })?;
        let (_, bytes) = shard.read(name)?;
        Ok((ty, bytes))
    }

    fn matrix(
        &self,
        gpu: &Gpu,
        name: &str,
        rows: usize,
        cols: usize,
        types: &mut Vec<(WeightType, usize)>,
        total: &mut u64,
    ) -> Result<DeviceWeight, DeviceError> {
        let (ty, bytes) = self.read_checked(name, &[rows, cols])?;
        match types.iter_mut().find(|(t, _)| *t == ty) {
            Some((_, n)) => *n += 1,
            None => types.push((ty, 1)),
        }
        *total += bytes.len() as u64;
        Ok(gpu.upload_weight(ty, rows, cols, &bytes)?)
    }

    fn vector(
        &self,
        gpu: &Gpu,
        name: &str,
        n: usize,
        total: &mut u64,
    ) -> Result<CudaSlice<f32>, DeviceError> {
        let (ty, bytes) = self.read_checked(name, &[n])?;
        *total += bytes.len() as u64;
        Ok(gpu.upload(&dequantize_row(ty, &bytes, n))?)
    }

    /// Uploads every tensor the forward pass uses: matrices in their stored encoding (q/k
    /// unpermuted, see the module header), norms as f32, the Llama 3 RoPE factors if scaled.
    pub fn load_weights(&self, gpu: &Gpu) -> Result<LlamaWeights, DeviceError> {
        let c = &self.config.llama;
        let (h, qd, kvd, f) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim, c.ffn);
        let mut types = Vec::new();
        let mut bytes = 0u64;
        let embed = self.matrix(gpu, "model.embed_tokens.weight", c.vocab, h, &mut types, &mut bytes)?;
        let output = if self.config.tie_word_embeddings {
            None
        } else {
            Some(self.matrix(gpu, "lm_head.weight", c.vocab, h, &mut types, &mut bytes)?)
        };
        let output_norm = self.vector(gpu, "model.norm.weight", h, &mut bytes)?;
        let rope_factors = match &self.config.rope_factors {
            Some(v) => Some(gpu.upload(v)?),
            None => None,
        };
        let mut layers = Vec::new();
        for i in 0..c.layers {
            let p = format!("model.layers.{i}");
            let mut m = |s: &str, rows: usize, cols: usize| {
                self.matrix(gpu, &format!("{p}.{s}.weight"), rows, cols, &mut types, &mut bytes)
            };
            let q = m("self_attn.q_proj", qd, h)?;
            let k = m("self_attn.k_proj", kvd, h)?;
            let v = m("self_attn.v_proj", kvd, h)?;
            let o = m("self_attn.o_proj", h, qd)?;
            let gate = m("mlp.gate_proj", f, h)?;
            let up = m("mlp.up_proj", f, h)?;
            let down = m("mlp.down_proj", h, f)?;
            layers.push(LayerWeights {
                attn_norm: self.vector(gpu, &format!("{p}.input_layernorm.weight"), h, &mut bytes)?,
                q,
                k,
                v,
                o,
                ffn_norm: self.vector(gpu, &format!("{p}.post_attention_layernorm.weight"), h, &mut bytes)?,
                gate,
                up,
                down,
            });
        }
        Ok(LlamaWeights { embed, output, output_norm, rope_factors, layers, bytes, types })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The header and data buffer of a safetensors file holding `(name, dtype, shape, data)`
    /// in order.
    fn build(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> (String, Vec<u8>) {
        let mut header = Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let begin = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                (*name).to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        (Value::Object(header).to_string(), data)
    }

    fn file_bytes(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    fn open_bytes(bytes: &[u8]) -> Result<SafetensorsFile, DeviceError> {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "x.safetensors", bytes);
        SafetensorsFile::open(&p)
    }

    fn err_of(r: Result<SafetensorsFile, DeviceError>) -> String {
        match r {
            Ok(_) => panic!("accepted a malformed file"),
            Err(e) => e.to_string(),
        }
    }

    fn bf16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect()
    }

    #[test]
    fn good_file_round_trips() {
        let w = bf16_bytes(&[1.0, -2.0, 0.5, 4.0, 8.0, -0.25]);
        let f: Vec<u8> = [1.5f32, 2.5].iter().flat_map(|x| x.to_le_bytes()).collect();
        let (h, d) = build(&[("a.weight", "BF16", &[2, 3], w.clone()), ("b", "F32", &[2], f.clone())]);
        // Trailing spaces in the header are allowed (writers pad it to 8 bytes).
        let h = format!("{h}   ");
        let st = open_bytes(&file_bytes(&h, &d)).unwrap();
        assert_eq!(st.tensors.len(), 2);
        let (a, bytes) = st.read("a.weight").unwrap();
        assert_eq!((a.dtype, a.shape.clone(), a.bytes), (Dtype::Bf16, vec![2, 3], 12));
        assert_eq!(a.offset, 8 + h.len() as u64);
        assert_eq!(bytes, w);
        assert_eq!(dequantize_row(WeightType::Bf16, &bytes, 6), vec![1.0, -2.0, 0.5, 4.0, 8.0, -0.25]);
        assert_eq!(st.read("b").unwrap().1, f);
        assert!(st.read("c").is_err());
        // A scalar (shape []) and an empty tensor are fine.
        let (h, d) = build(&[("s", "F32", &[], vec![0; 4]), ("e", "F16", &[0, 7], vec![])]);
        let st = open_bytes(&file_bytes(&h, &d)).unwrap();
        assert_eq!(st.tensors["e"].bytes, 0);
    }

    #[test]
    fn truncated_files_are_rejected() {
        let (h, d) = build(&[("a", "F16", &[4], vec![0; 8])]);
        let good = file_bytes(&h, &d);
        assert!(open_bytes(&good).is_ok());
        for cut in [0, 4, 7, 8, 8 + h.len() / 2, good.len() - 1] {
            let e = err_of(open_bytes(&good[..cut]));
            assert!(
                e.contains("too short")
                    || e.contains("runs past the end")
                    || e.contains("outside the")
                    || e.contains("needs"),
                "cut at {cut}: {e}"
            );
        }
        // Extra bytes after the data are not indexed by any tensor.
        let mut long = good.clone();
        long.extend_from_slice(&[0; 3]);
        assert!(err_of(open_bytes(&long)).contains("after the last tensor"));
    }

    #[test]
    fn offsets_must_tile_the_buffer() {
        let t = |name: &str, begin: u64, end: u64| {
            let entry =
                serde_json::json!({"dtype": "U8", "shape": [end - begin], "data_offsets": [begin, end]});
            serde_json::json!({ name: entry })
        };
        let merge = |parts: &[Value]| {
            let mut m = Map::new();
            for p in parts {
                m.extend(p.as_object().unwrap().clone());
            }
            Value::Object(m).to_string()
        };
        let data = [0u8; 16];
        // Overlap.
        let e = err_of(open_bytes(&file_bytes(&merge(&[t("a", 0, 10), t("b", 8, 16)]), &data)));
        assert!(e.contains("overlaps"), "{e}");
        // Same range twice.
        let e = err_of(open_bytes(&file_bytes(&merge(&[t("a", 0, 16), t("b", 0, 16)]), &data)));
        assert!(e.contains("overlaps"), "{e}");
        // Hole.
        let e = err_of(open_bytes(&file_bytes(&merge(&[t("a", 0, 4), t("b", 8, 16)]), &data)));
        assert!(e.contains("gap"), "{e}");
        // Past the end.
        let e = err_of(open_bytes(&file_bytes(&merge(&[t("a", 0, 17)]), &data)));
        assert!(e.contains("outside"), "{e}");
        let e = err_of(open_bytes(&file_bytes(&merge(&[t("a", 0, u64::MAX)]), &data)));
        assert!(e.contains("outside"), "{e}");
        // begin > end.
        let h = r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[9,8]}}"#;
        assert!(err_of(open_bytes(&file_bytes(h, &data))).contains("outside"));
        // Negative or fractional offsets, wrong arity.
        for offs in ["[-1,15]", "[0.5,16]", "[0]", "[0,8,16]", "\"0-16\""] {
            let h = format!(r#"{{"a":{{"dtype":"U8","shape":[16],"data_offsets":{offs}}}}}"#);
            assert!(err_of(open_bytes(&file_bytes(&h, &data))).contains("data_offsets"), "{offs}");
        }
        // A name given twice: the dropped entry's bytes are a hole.
        let h = r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"a":{"dtype":"U8","shape":[8],"data_offsets":[8,16]}}"#;
        let e = err_of(open_bytes(&file_bytes(h, &data)));
        assert!(e.contains("gap") || e.contains("after the last"), "{e}");
        // Good tiling of the same data.
        assert!(open_bytes(&file_bytes(&merge(&[t("a", 0, 10), t("b", 10, 16)]), &data)).is_ok());
    }

    #[test]
    fn dtype_and_shape_must_match_the_bytes() {
        let data = [0u8; 16];
        let one = |dtype: &str, shape: &str| {
            format!(r#"{{"w":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[0,16]}}}}"#)
        };
        assert!(open_bytes(&file_bytes(&one("F16", "[8]"), &data)).is_ok());
        assert!(open_bytes(&file_bytes(&one("F32", "[2,2]"), &data)).is_ok());
        for (dtype, shape) in [("F32", "[8]"), ("BF16", "[4]"), ("F64", "[3]"), ("U8", "[4,5]")] {
            let e = err_of(open_bytes(&file_bytes(&one(dtype, shape), &data)));
            assert!(e.contains("needs"), "{dtype} {shape}: {e}");
        }
        // Unknown dtype, bad shapes, overflowing shapes, too many dimensions.
        assert!(err_of(open_bytes(&file_bytes(&one("Q4_K", "[8]"), &data))).contains("unknown dtype"));
        assert!(err_of(open_bytes(&file_bytes(&one("F16", "[-8]"), &data))).contains("shape"));
        assert!(err_of(open_bytes(&file_bytes(&one("F16", "8"), &data))).contains("shape"));
        let huge = format!("[{},{}]", u64::MAX / 2, 4);
        assert!(err_of(open_bytes(&file_bytes(&one("F16", &huge), &data))).contains("overflows"));
        let deep = format!("[{}]", ["1"; 9].join(","));
        assert!(err_of(open_bytes(&file_bytes(&one("U8", &deep), &data))).contains("dimensions"));
        // A dtype that is not a string, a missing field, a non-object entry.
        let h = r#"{"w":{"dtype":7,"shape":[16],"data_offsets":[0,16]}}"#;
        assert!(err_of(open_bytes(&file_bytes(h, &data))).contains("dtype"));
        let h = r#"{"w":{"dtype":"U8","data_offsets":[0,16]}}"#;
        assert!(err_of(open_bytes(&file_bytes(h, &data))).contains("shape"));
        let h = r#"{"w":[1,2,3]}"#;
        assert!(err_of(open_bytes(&file_bytes(h, &data))).contains("not an object"));
        let h = r#"{"__metadata__":{"a":1}}"#;
        assert!(err_of(open_bytes(&file_bytes(h, &[]))).contains("__metadata__"));
    }

    #[test]
    fn header_length_is_bounded() {
        // Huge lengths are refused before anything is allocated.
        for n in [u64::MAX, MAX_HEADER_BYTES + 1] {
            let mut b = n.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            assert!(err_of(open_bytes(&b)).contains("exceeds"), "{n}");
        }
        let mut b = 1000u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(err_of(open_bytes(&b)).contains("runs past the end"));
        // An empty JSON object is a valid (empty) file.
        assert!(open_bytes(&file_bytes("{}", &[])).unwrap().tensors.is_empty());
    }

    #[test]
    fn header_must_be_utf8_json_object() {
        let e = err_of(open_bytes(&file_bytes_raw(&[b'{', 0xff, 0xfe, b'}'])));
        assert!(e.contains("not UTF-8"), "{e}");
        for h in ["", "{", "{\"a\":}", "nul", "[1,2]", "\"x\"", "{} {}"] {
            let e = err_of(open_bytes(&file_bytes(h, &[])));
            assert!(e.contains("JSON"), "{h:?}: {e}");
        }
        // Deeply nested JSON is refused by the parser's depth limit, not the stack.
        let deep = format!("{{\"__metadata__\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(err_of(open_bytes(&file_bytes(&deep, &[]))).contains("JSON"));
    }

    fn file_bytes_raw(header: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header);
        out
    }

    #[test]
    fn mutated_headers_never_panic() {
        // Seeded byte-level mutations of a good header (flips, digit swaps, deletions,
        // insertions of JSON punctuation): every outcome is Ok with in-bounds entries or Err.
        let w = bf16_bytes(&[1.0; 12]);
        let (h, d) = build(&[
            ("a.weight", "BF16", &[3, 4], w),
            ("b", "F32", &[2], vec![0; 8]),
            ("c", "U8", &[0], vec![]),
        ]);
        let mut rng = crate::core::rng::SplitMix64::new(7);
        let alphabet = b"{}[],:\"0123456789-.eE aF16BU8_";
        let mut accepted = 0;
        for _ in 0..5000 {
            let mut m = h.as_bytes().to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(m.len().max(1));
                match rng.below(4) {
                    0 if !m.is_empty() => m[at] = rng.next_u64() as u8,
                    1 if !m.is_empty() => m[at] = alphabet[rng.below(alphabet.len())],
                    2 if !m.is_empty() => {
                        let end = (at + 1 + rng.below(8)).min(m.len());
                        m.drain(at..end);
                    }
                    _ => m.insert(at.min(m.len()), alphabet[rng.below(alphabet.len())]),
                }
            }
            let data_len = (d.len() as u64).saturating_add_signed(rng.below(5) as i64 - 2);
            if let Ok(t) = parse_header(&m, 8 + m.len() as u64, data_len) {
                accepted += 1;
                let end = 8 + m.len() as u64 + data_len;
                assert!(t.values().all(|e| e.offset + e.bytes <= end), "{}", String::from_utf8_lossy(&m));
            }
        }
        assert!(accepted < 5000);
    }

    #[test]
    fn only_regular_files_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let e = SafetensorsFile::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(SafetensorsFile::open(&dir.path().join("missing.safetensors")).is_err());
    }

    const LLAMA31: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "attention_bias": false, "mlp_bias": false, "hidden_size": 4096, "intermediate_size": 14336,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 128256
    }"#;

    /// Transformers' formulation (`inv_freq / inv_freq_llama`), in f64.
    fn hf_factors(dim: usize, base: f64, s: &Llama3Scaling) -> Vec<f64> {
        (0..dim / 2)
            .map(|i| {
                let inv = 1.0 / base.powf((2 * i) as f64 / dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / inv;
                let scaled = if wavelen < s.original_context / s.high_freq_factor {
                    inv
                } else if wavelen > s.original_context / s.low_freq_factor {
                    inv / s.factor
                } else {
                    let sm = (s.original_context / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - sm) * inv / s.factor + sm * inv
                };
                inv / scaled
            })
            .collect()
    }

    #[test]
    fn llama31_config() {
        let c = parse_config(LLAMA31).unwrap();
        let l = &c.llama;
        assert_eq!(
            (l.architecture.as_str(), l.hidden, l.layers, l.heads, l.kv_heads, l.head_dim, l.ffn, l.vocab),
            ("llama", 4096, 32, 32, 8, 128, 14336, 128256)
        );
        assert_eq!(
            (l.eps, l.rope_base, l.rope_dims, l.rope_neox, l.context),
            (1e-5, 500000.0, 128, true, 131072)
        );
        assert!(!c.tie_word_embeddings);
        let f = c.rope_factors.unwrap();
        assert_eq!(f.len(), 64);
        let s = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192.0,
        };
        let want = hf_factors(128, 500000.0, &s);
        for (i, (g, w)) in f.iter().zip(&want).enumerate() {
            assert!((f64::from(*g) - w).abs() <= 1e-5 * w, "factor {i}: {g} vs {w}");
        }
        // Wavelength 2 pi 500000^(i/64): below 2048 (i <= 28) untouched, above 8192 (i >= 35)
        // divided by 8, a rising ramp between.
        assert_eq!(&f[..29], &[1.0; 29]);
        assert_eq!(&f[35..], &[8.0; 29]);
        assert!(f[28..36].windows(2).all(|w| w[0] < w[1]), "{:?}", &f[28..36]);
    }

    #[test]
    fn llama3_factors_by_hand() {
        // head_dim 8, base 16: wavelengths 2pi, 4pi, 8pi, 16pi against original context 32,
        // low 1 (wavelength 32), high 4 (wavelength 8), factor 4.
        let s = Llama3Scaling {
            factor: 4.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 32.0,
        };
        let f = llama3_rope_factors(8, 16.0, &s);
        let pi = std::f64::consts::PI;
        let ramp = |smooth: f64| 1.0 / ((1.0 - smooth) / 4.0 + smooth);
        let want = [1.0, ramp((8.0 / pi - 1.0) / 3.0), ramp((4.0 / pi - 1.0) / 3.0), 4.0];
        for (g, w) in f.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{f:?} vs {want:?}");
        }
        // The ramp happens to give pi/2 and pi here.
        assert!((f64::from(f[1]) - pi / 2.0).abs() < 1e-5 && (f64::from(f[2]) - pi).abs() < 1e-5, "{f:?}");
    }

    #[test]
    fn config_variants() {
        // Transformers 5: rope settings in rope_parameters; explicit head_dim; tied; defaults.
        let c = parse_config(
            r#"{"architectures":["LlamaForCausalLM"],"hidden_size":256,"intermediate_size":512,
                "num_attention_heads":4,"num_hidden_layers":2,"num_key_value_heads":2,"head_dim":128,
                "vocab_size":512,"tie_word_embeddings":true,
                "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
                  "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":32}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.llama.head_dim, c.llama.rope_base, c.llama.eps, c.llama.context),
            (128, 500000.0, 1e-6, 2048)
        );
        assert!(c.tie_word_embeddings);
        let s = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 32.0,
        };
        assert_eq!(c.rope_factors.unwrap(), llama3_rope_factors(128, 500000.0, &s));
        // Default rope in rope_parameters, null head_dim, Mistral's sliding window caps the context.
        let c = parse_config(
            r#"{"architectures":["MistralForCausalLM"],"hidden_size":512,"intermediate_size":512,
                "num_attention_heads":8,"num_hidden_layers":1,"head_dim":null,"vocab_size":32,
                "max_position_embeddings":32768,"sliding_window":4096,"rope_scaling":null,
                "rope_parameters":{"rope_type":"default","rope_theta":1000000.0}}"#,
        )
        .unwrap();
        assert_eq!(
            (
                c.llama.architecture.as_str(),
                c.llama.kv_heads,
                c.llama.head_dim,
                c.llama.context,
                c.llama.rope_base
            ),
            ("mistral", 8, 64, 4096, 1e6)
        );
        assert!(c.rope_factors.is_none());
        // Old-style `type` key.
        let c = parse_config(&LLAMA31.replace("\"rope_type\"", "\"type\"")).unwrap();
        assert!(c.rope_factors.is_some());
        // Missing model_type/architectures fallback.
        let c = parse_config(
            r#"{"model_type":"llama","hidden_size":128,"intermediate_size":64,"num_attention_heads":2,
                "num_hidden_layers":1,"vocab_size":8}"#,
        )
        .unwrap();
        assert_eq!((c.llama.head_dim, c.llama.rope_base), (64, 10000.0));
    }

    #[test]
    fn config_refusals() {
        let unsupported = |json: &str| matches!(parse_config(json), Err(DeviceError::Unsupported(_)));
        let malformed = |json: &str| matches!(parse_config(json), Err(DeviceError::Model(_)));
        assert!(unsupported(&LLAMA31.replace("LlamaForCausalLM", "Qwen2ForCausalLM")));
        assert!(unsupported(&LLAMA31.replace("\"llama3\"", "\"yarn\"")));
        assert!(unsupported(&LLAMA31.replace("\"silu\"", "\"gelu\"")));
        assert!(unsupported(&LLAMA31.replace("\"attention_bias\": false", "\"attention_bias\": true")));
        assert!(unsupported(&LLAMA31.replace("\"num_key_value_heads\": 8", "\"num_key_value_heads\": 5")));
        assert!(unsupported(
            &LLAMA31.replace("\"hidden_size\": 4096", "\"hidden_size\": 4096, \"head_dim\": 96")
        ));
        assert!(malformed(&LLAMA31.replace("\"hidden_size\": 4096,", "")));
        assert!(malformed(&LLAMA31.replace("\"vocab_size\": 128256", "\"vocab_size\": -1")));
        assert!(malformed(&LLAMA31.replace("\"vocab_size\": 128256", "\"vocab_size\": 0")));
        assert!(malformed(&LLAMA31.replace("\"vocab_size\": 128256", "\"vocab_size\": \"many\"")));
        assert!(malformed(&LLAMA31.replace("\"rope_theta\": 500000.0", "\"rope_theta\": 0.5")));
        assert!(malformed(&LLAMA31.replace("\"high_freq_factor\": 4.0", "\"high_freq_factor\": 1.0")));
        assert!(malformed(&LLAMA31.replace("131072", "1e30")));
        assert!(malformed(&LLAMA31.replace("131072", "4294967296000")));
        assert!(malformed(
            &LLAMA31.replace("\"num_hidden_layers\": 32", "\"num_hidden_layers\": 1000000000000")
        ));
        assert!(malformed(&LLAMA31.replace("\"vocab_size\": 128256", "\"vocab_size\": 4294967296")));
        assert!(malformed(&LLAMA31.replace("1e-05", "-1.0")));
        assert!(malformed("[1, 2]"));
        assert!(malformed("{"));
    }

    fn tiny_config(tied: bool) -> String {
        format!(
            r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":32,
                "num_attention_heads":1,"num_hidden_layers":1,"vocab_size":4,"tie_word_embeddings":{tied}}}"#
        )
    }

    /// The tensor names, shapes and bytes of the tiny config's model (BF16).
    fn tiny_tensors(tied: bool) -> Vec<(String, Vec<usize>)> {
        let mut t = vec![
            ("model.embed_tokens.weight".to_string(), vec![4, 64]),
            ("model.norm.weight".into(), vec![64]),
            ("model.layers.0.input_layernorm.weight".into(), vec![64]),
            ("model.layers.0.post_attention_layernorm.weight".into(), vec![64]),
            ("model.layers.0.self_attn.q_proj.weight".into(), vec![64, 64]),
            ("model.layers.0.self_attn.k_proj.weight".into(), vec![64, 64]),
            ("model.layers.0.self_attn.v_proj.weight".into(), vec![64, 64]),
            ("model.layers.0.self_attn.o_proj.weight".into(), vec![64, 64]),
            ("model.layers.0.mlp.gate_proj.weight".into(), vec![32, 64]),
            ("model.layers.0.mlp.up_proj.weight".into(), vec![32, 64]),
            ("model.layers.0.mlp.down_proj.weight".into(), vec![64, 32]),
        ];
        if !tied {
            t.push(("lm_head.weight".into(), vec![4, 64]));
        }
        t
    }

    fn st_file(tensors: &[(String, Vec<usize>)]) -> Vec<u8> {
        let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, s)| (n.clone(), s.clone(), vec![0u8; 2 * s.iter().product::<usize>()]))
            .collect();
        let refs: Vec<(&str, &str, &[usize], Vec<u8>)> =
            owned.iter().map(|(n, s, b)| (n.as_str(), "BF16", s.as_slice(), b.clone())).collect();
        let (h, d) = build(&refs);
        file_bytes(&h, &d)
    }

    #[test]
    fn model_folders() {
        // One file.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "config.json", tiny_config(true).as_bytes());
        let e = HfModel::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no model.safetensors"), "{e}");
        write(dir.path(), "model.safetensors", &st_file(&tiny_tensors(true)));
        let m = HfModel::open(dir.path()).unwrap();
        assert!(m.config.tie_word_embeddings);
        assert!(m.tensor("model.layers.0.mlp.down_proj.weight").is_some());
        assert!(m.tensor("lm_head.weight").is_none());
        // The file named directly.
        assert!(HfModel::open(&dir.path().join("model.safetensors")).is_ok());
        assert!(is_hf_model_path(dir.path()) && is_hf_model_path(Path::new("x/model.safetensors")));
        assert!(!is_hf_model_path(Path::new("x/model.gguf")));

        // Sharded, with an index.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "config.json", tiny_config(false).as_bytes());
        let all = tiny_tensors(false);
        let (a, b) = all.split_at(5);
        write(dir.path(), "model-00001-of-00002.safetensors", &st_file(a));
        write(dir.path(), "model-00002-of-00002.safetensors", &st_file(b));
        let mut map = Map::new();
        for (n, _) in a {
            map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
        }
        for (n, _) in b {
            map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
        }
        let index = serde_json::json!({"metadata": {"total_size": 1}, "weight_map": map.clone()});
        write(dir.path(), INDEX_FILE, index.to_string().as_bytes());
        let m = HfModel::open(dir.path()).unwrap();
        assert_eq!(m.shards.len(), 2);
        for (n, s) in &all {
            assert_eq!(&m.tensor(n).unwrap().0.shape, s, "{n}");
        }
        // A shard named directly loads the whole model through the index.
        assert_eq!(
            HfModel::open(&dir.path().join("model-00002-of-00002.safetensors")).unwrap().shards.len(),
            2
        );

        // The index names a tensor its shard does not hold.
        let mut wrong = map.clone();
        wrong.insert("lm_head.weight".into(), "model-00001-of-00002.safetensors".into());
        write(dir.path(), INDEX_FILE, serde_json::json!({"weight_map": wrong}).to_string().as_bytes());
        assert!(HfModel::open(dir.path()).unwrap_err().to_string().contains("does not hold it"));
        // Shard names that leave the folder or are not safetensors files.
        for evil in [
            "../model.safetensors",
            "/etc/passwd.safetensors",
            "sub/x.safetensors",
            "config.json",
            ".safetensors",
        ] {
            let mut m2 = map.clone();
            m2.insert("lm_head.weight".into(), evil.into());
            write(dir.path(), INDEX_FILE, serde_json::json!({"weight_map": m2}).to_string().as_bytes());
            let e = HfModel::open(dir.path()).unwrap_err().to_string();
            assert!(e.contains("is not a .safetensors file in the model folder"), "{evil}: {e}");
        }
        // A missing config.json, a broken one.
        std::fs::remove_file(dir.path().join("config.json")).unwrap();
        assert!(HfModel::open(dir.path()).unwrap_err().to_string().contains("config.json"));
        write(dir.path(), "config.json", b"{\"hidden_size\": ");
        assert!(HfModel::open(dir.path()).unwrap_err().to_string().contains("not valid JSON"));
    }

    #[test]
    fn shard_names() {
        assert!(valid_shard_name("model-00001-of-00004.safetensors"));
        assert!(valid_shard_name("model.safetensors"));
        for n in [
            "",
            "..",
            "../a.safetensors",
            "a/b.safetensors",
            "a\\b.safetensors",
            "a.bin",
            ".safetensors",
            "a\0.safetensors",
        ] {
            assert!(!valid_shard_name(n), "{n:?}");
        }
    }
}
