//! A safe reader for GGUF model files: the header, the metadata and the tensor directory, never
//! the weights. Model files come from registries and users, so the reader treats them as hostile
//! (llama.cpp CVE-2025-53630, CVE-2025-49847; Ollama CVE-2024-12055): every count, string length,
//! array size and nesting depth is bounded by [`Limits`] and by what the rest of the file can
//! hold, every tensor must satisfy `offset + size <= data length` without overlapping another,
//! and the memory kept is capped. Errors are one line, naming what is wrong.
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md> (versions 2 and 3,
//! little-endian). Cost: one sequential pass over the metadata, O(metadata + tensors) time;
//! memory is bounded by `Limits::max_memory` because long arrays keep only their first elements.
//!
//! This module depends on nothing else in the daemon so the fuzz target (`fuzz/`) can build it
//! on its own.

pub mod reader;
pub mod types;

use std::fmt;
use std::path::Path;

pub use reader::parse;
use types::{TensorType, ValueType, file_type_name};

/// Bounds the reader enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most tensors a file may declare.
    pub max_tensors: u64,
    /// Most metadata entries.
    pub max_metadata: u64,
    /// Longest metadata key.
    pub max_key_len: u64,
    /// Longest string value (chat templates are the long ones).
    pub max_string_len: u64,
    /// Most elements in one array (tokenizer vocabularies are the long ones).
    pub max_array_len: u64,
    /// Deepest nesting of arrays in arrays.
    pub max_depth: u32,
    /// Elements of each array that are kept (the rest are checked and skipped).
    pub array_head: u64,
    /// Total memory the parsed result may take.
    pub max_memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tensors: 1 << 20,
            max_metadata: 1 << 16,
            max_key_len: 1 << 16,
            max_string_len: 16 << 20,
            max_array_len: 1 << 28,
            max_depth: 4,
            array_head: 16,
            max_memory: 256 << 20,
        }
    }
}

/// Why a file is not a usable GGUF file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GgufError {
    /// Wrong magic number.
    #[error("not a GGUF file (GGUF files begin with the bytes \"GGUF\")")]
    NotGguf,
    /// A version or byte order this reader does not handle.
    #[error("{0}")]
    Unsupported(String),
    /// Something runs past the end of the file.
    #[error("truncated GGUF file: {what} at byte {offset} runs past the end of the file")]
    Truncated { what: String, offset: u64 },
    /// A count or size over a limit.
    #[error("{what} is {size}, over the limit of {limit}")]
    TooLarge { what: String, size: u64, limit: u64 },
    /// A structurally invalid record.
    #[error("invalid GGUF file: {0}")]
    Invalid(String),
    /// A tensor that is malformed, out of the file or overlapping another.
    #[error("invalid GGUF file: tensor `{name}`: {reason}")]
    BadTensor { name: String, reason: String },
    /// A well-known key with the wrong value type.
    #[error("invalid GGUF file: `{key}` is a {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: &'static str },
    /// Reading failed.
    #[error("cannot read the GGUF file: {0}")]
    Io(String),
}

/// A metadata value. Arrays keep their length and first elements only.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// uint8
    U8(u8),
    /// int8
    I8(i8),
    /// uint16
    U16(u16),
    /// int16
    I16(i16),
    /// uint32
    U32(u32),
    /// int32
    I32(i32),
    /// float32
    F32(f32),
    /// bool
    Bool(bool),
    /// UTF-8 string (invalid sequences replaced)
    String(String),
    /// array
    Array(Array),
    /// uint64
    U64(u64),
    /// int64
    I64(i64),
    /// float64
    F64(f64),
}

/// An array value: its element type, full length and first elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Element type.
    pub element: ValueType,
    /// Number of elements in the file.
    pub len: u64,
    /// The first elements (up to `Limits::array_head`).
    pub head: Vec<Value>,
}

impl Value {
    /// The type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "uint8",
            Value::I8(_) => "int8",
            Value::U16(_) => "uint16",
            Value::I16(_) => "int16",
            Value::U32(_) => "uint32",
            Value::I32(_) => "int32",
            Value::F32(_) => "float32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "uint64",
            Value::I64(_) => "int64",
            Value::F64(_) => "float64",
        }
    }

    /// A non-negative integer value of any integer type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(u64::from(v)),
            Value::U16(v) => Some(u64::from(v)),
            Value::U32(v) => Some(u64::from(v)),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    /// Rendered for `hyperctl show --verbose`: strings as they are (long ones cut), arrays as
    /// their first elements and length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::String(s) => {
                let cut: String = s.chars().take(200).collect();
                if cut.len() < s.len() { write!(f, "{cut:?}…") } else { write!(f, "{s:?}") }
            }
            Value::Array(a) => {
                f.write_str("[")?;
                for (i, v) in a.head.iter().take(4).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if a.len > 4 {
                    f.write_str(", …")?;
                }
                write!(f, "] ({} {})", a.len, if a.len == 1 { "item" } else { "items" })
            }
        }
    }
}

/// One metadata entry.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataEntry {
    /// Its key, e.g. `general.architecture`.
    pub key: String,
    /// Its value.
    pub value: Value,
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Element type.
    pub tensor_type: TensorType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size_bytes: u64,
    /// Number of elements.
    pub elements: u64,
}

/// A parsed GGUF file (metadata and tensor directory).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<MetadataEntry>,
    /// The tensor directory in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section.
    pub alignment: u64,
    /// Where the data section starts.
    pub data_offset: u64,
    /// The file's length.
    pub file_len: u64,
}

/// What the store and `hyperctl show` need to know about a model file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// `general.architecture`, e.g. "llama", "gemma3".
    pub architecture: String,
    /// Sum of all tensors' elements.
    pub parameter_count: u64,
    /// `<arch>.context_length` (0 when absent).
    pub context_length: u64,
    /// `<arch>.embedding_length` (0 when absent).
    pub embedding_length: u64,
    /// The quantization by name ("Q4_K_M"), from `general.file_type` or the tensors.
    pub quantization: String,
    /// `general.type` when present ("model", "adapter", "mmproj").
    pub kind: Option<String>,
}

impl GgufFile {
    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => {
                Err(GgufError::WrongType { key: key.into(), expected: "string", found: other.type_name() })
            }
        }
    }

    fn get_count(&self, key: &str) -> Result<Option<u64>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| GgufError::WrongType {
                key: key.into(),
                expected: "a non-negative integer",
                found: v.type_name(),
            }),
        }
    }

    /// The facts a model store shows, checking the well-known keys' types.
    pub fn model_info(&self) -> Result<ModelInfo, GgufError> {
        let architecture = self
            .get_str("general.architecture")?
            .ok_or_else(|| GgufError::Invalid("`general.architecture` is missing".into()))?
            .to_string();
        if architecture.is_empty()
            || !architecture.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(GgufError::Invalid(format!(
                "`general.architecture` {:?} is not an architecture name",
                reader::printable(&architecture)
            )));
        }
        let context_length = self.get_count(&format!("{architecture}.context_length"))?.unwrap_or(0);
        let embedding_length = self.get_count(&format!("{architecture}.embedding_length"))?.unwrap_or(0);
        let parameter_count = self.tensors.iter().fold(0u64, |sum, t| sum.saturating_add(t.elements));
        let quantization = match self.get_count("general.file_type")? {
            Some(ft) => file_type_name(ft).map(str::to_string).unwrap_or_else(|| format!("file type {ft}")),
            None => self.dominant_tensor_type().unwrap_or("unknown").to_string(),
        };
        let kind = self.get_str("general.type")?.map(str::to_string);
        Ok(ModelInfo { architecture, parameter_count, context_length, embedding_length, quantization, kind })
    }

    /// The tensor type holding the most bytes (a quantization guess when the file does not say).
    fn dominant_tensor_type(&self) -> Option<&'static str> {
        let mut bytes: Vec<(&'static str, u64)> = Vec::new();
        for t in &self.tensors {
            match bytes.iter_mut().find(|(n, _)| *n == t.tensor_type.name) {
                Some((_, b)) => *b = b.saturating_add(t.size_bytes),
                None => bytes.push((t.tensor_type.name, t.size_bytes)),
            }
        }
        bytes.into_iter().max_by_key(|(_, b)| *b).map(|(n, _)| n)
    }
}

/// Reads the metadata and tensor directory of the GGUF file at `path` (a file the daemon itself
/// owns: a blob or a staged upload).
pub fn read_file(path: &Path, limits: &Limits) -> Result<GgufFile, GgufError> {
    let file = std::fs::File::open(path).map_err(|e| GgufError::Io(e.to_string()))?;
    let len = file.metadata().map_err(|e| GgufError::Io(e.to_string()))?.len();
    parse(std::io::BufReader::with_capacity(1 << 16, file), len, limits)
}

/// Parses a GGUF file held in memory.
pub fn parse_bytes(bytes: &[u8], limits: &Limits) -> Result<GgufFile, GgufError> {
    parse(bytes, bytes.len() as u64, limits)
}

#[cfg(test)]
mod tests;
