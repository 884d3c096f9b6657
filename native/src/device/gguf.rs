//! A small GGUF (v2/v3) reader for the device executor: the metadata values it needs, the
//! tensor directory, and the raw bytes of one tensor at a time (so a 15 GiB file is streamed
//! to the GPU tensor by tensor, never held whole in memory).
//!
//! Every count, length and offset read from the file is bounded by the file's size before
//! anything is allocated (the daemon's own parser in `daemon/src/gguf` does the same for the
//! store; this one is kept separate so the native crate does not depend on the daemon).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::DeviceError;

/// A metadata value (arrays keep only what the executor uses).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any integer type, widened.
    Int(i64),
    /// f32 or f64.
    Float(f64),
    /// bool.
    Bool(bool),
    /// UTF-8 string (lossy).
    Str(String),
    /// An array: its length only (vocabularies are not needed on the device).
    Array(u64),
}

/// One tensor's directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// ggml type code.
    pub ggml_type: u32,
    /// Dimensions, ne0 (contiguous) first.
    pub dims: Vec<u64>,
    /// Absolute file offset of the data.
    pub offset: u64,
    /// Bytes of data.
    pub bytes: u64,
}

/// An open GGUF file: metadata and tensor directory; tensor data is read on demand.
#[derive(Debug)]
pub struct GgufFile {
    file: File,
    /// Metadata by key.
    pub meta: HashMap<String, Value>,
    /// Tensors by name.
    pub tensors: HashMap<String, TensorInfo>,
    /// Tensor names in file order.
    pub order: Vec<String>,
    /// Byte range of the metadata key/value section (to copy it into a rewritten file).
    pub kv_range: (u64, u64),
    /// GGUF version.
    pub version: u32,
}

fn bad(m: impl Into<String>) -> DeviceError {
    DeviceError::Model(m.into())
}

struct Cursor<R> {
    r: R,
    len: u64,
}

impl<R: Read> Cursor<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], DeviceError> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|e| bad(format!("truncated GGUF: {e}")))?;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, DeviceError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, DeviceError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn string(&mut self) -> Result<String, DeviceError> {
        let n = self.u64()?;
        if n > self.len {
            return Err(bad(format!("string of {n} bytes in a {} byte file", self.len)));
        }
        let mut b = vec![0u8; usize::try_from(n).map_err(|_| bad("string too long"))?];
        self.r.read_exact(&mut b).map_err(|e| bad(format!("truncated GGUF: {e}")))?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
    fn skip(&mut self, n: u64) -> Result<(), DeviceError> {
        if n > self.len {
            return Err(bad("array larger than the file"));
        }
        std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink()).map_err(|e| bad(e.to_string()))?;
        Ok(())
    }
    fn value(&mut self, ty: u32) -> Result<Value, DeviceError> {
        Ok(match ty {
            0 => Value::Int(i64::from(self.bytes::<1>()?[0])),
            1 => Value::Int(i64::from(i8::from_le_bytes(self.bytes()?))),
            2 => Value::Int(i64::from(u16::from_le_bytes(self.bytes()?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.bytes()?))),
            4 => Value::Int(i64::from(self.u32()?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.bytes()?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.bytes()?))),
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let elem = self.u32()?;
                let n = self.u64()?;
                if n > self.len {
                    return Err(bad("array longer than the file"));
                }
                match elem {
                    0 | 1 | 7 => self.skip(n)?,
                    2 | 3 => self.skip(n * 2)?,
                    4..=6 => self.skip(n * 4)?,
                    10..=12 => self.skip(n * 8)?,
                    8 => {
                        for _ in 0..n {
                            let l = self.u64()?;
                            self.skip(l)?;
                        }
                    }
                    _ => return Err(bad(format!("unsupported array element type {elem}"))),
                }
                Value::Array(n)
            }
            10 => Value::Int(i64::try_from(self.u64()?).unwrap_or(i64::MAX)),
            11 => Value::Int(i64::from_le_bytes(self.bytes()?)),
            12 => Value::Float(f64::from_le_bytes(self.bytes()?)),
            _ => return Err(bad(format!("unknown metadata type {ty}"))),
        })
    }
}

/// Bytes of a tensor of `ggml_type` with `n` values, for the types the kernels read.
fn tensor_bytes(ggml_type: u32, n: u64) -> Option<u64> {
    let ty = hyperllama_kernels::WeightType::from_ggml_type(ggml_type)?;
    let bv = ty.block_values() as u64;
    n.is_multiple_of(bv).then(|| n / bv * ty.block_bytes() as u64)
}

impl GgufFile {
    /// Opens and parses the header, metadata and tensor directory of `path`.
    pub fn open(path: &Path) -> Result<GgufFile, DeviceError> {
        let file = File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
        let mut c = Cursor { r: BufReader::new(&file), len };
        if &c.bytes::<4>()? != b"GGUF" {
            return Err(bad(format!("{} is not a GGUF file", path.display())));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("GGUF version {version} not supported")));
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        if n_tensors > len / 24 || n_kv > len / 12 {
            return Err(bad("GGUF counts larger than the file allows"));
        }
        let mut meta = HashMap::new();
        let kv_start = 24;
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            meta.insert(key, c.value(ty)?);
        }
        let kv_end = c.r.stream_position().map_err(|e| bad(e.to_string()))?;
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()?;
            if nd > 4 {
                return Err(bad(format!("tensor {name} has {nd} dimensions")));
            }
            let dims = (0..nd).map(|_| c.u64()).collect::<Result<Vec<_>, _>>()?;
            let ggml_type = c.u32()?;
            let offset = c.u64()?;
            infos.push((name, ggml_type, dims, offset));
        }
        let align = match meta.get("general.alignment") {
            Some(Value::Int(a)) if *a > 0 && (*a as u64).is_power_of_two() => *a as u64,
            _ => 32,
        };
        let header_end = c.r.stream_position().map_err(|e| bad(e.to_string()))?;
        let data_start = header_end.div_ceil(align) * align;
        let mut tensors = HashMap::new();
        let order = infos.iter().map(|i| i.0.clone()).collect();
        for (name, ggml_type, dims, rel) in infos {
            let n = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad("tensor too large"))?;
            // Types the kernels cannot read still get an entry (bytes 0) so that the model
            // loader can name the offending tensor.
            let bytes = tensor_bytes(ggml_type, n).unwrap_or(0);
            let offset = data_start.checked_add(rel).ok_or_else(|| bad("tensor offset overflows"))?;
            if offset.checked_add(bytes).is_none_or(|end| end > len) {
                return Err(bad(format!("tensor {name} lies outside the file")));
            }
            tensors.insert(name, TensorInfo { ggml_type, dims, offset, bytes });
        }
        Ok(GgufFile { file, meta, tensors, order, kv_range: (kv_start, kv_end), version })
    }

    /// An integer metadata value.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.meta.get(key)? {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// A float metadata value (integers widen).
    pub fn float(&self, key: &str) -> Option<f64> {
        match self.meta.get(key)? {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// A string metadata value.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.meta.get(key)? {
            Value::Str(v) => Some(v),
            _ => None,
        }
    }

    /// The raw bytes of the metadata section.
    pub fn raw_kv(&self) -> Result<Vec<u8>, DeviceError> {
        let (a, b) = self.kv_range;
        let mut buf = vec![0u8; usize::try_from(b - a).map_err(|_| bad("metadata too large"))?];
        let mut f = &self.file;
        f.seek(SeekFrom::Start(a)).map_err(|e| bad(e.to_string()))?;
        f.read_exact(&mut buf).map_err(|e| bad(e.to_string()))?;
        Ok(buf)
    }

    /// The raw bytes of tensor `name`.
    pub fn read(&self, name: &str) -> Result<(TensorInfo, Vec<u8>), DeviceError> {
        let info = self.tensors.get(name).ok_or_else(|| bad(format!("tensor {name} missing")))?.clone();
        if info.bytes == 0 {
            return Err(DeviceError::Unsupported(format!("tensor {name} has ggml type {}", info.ggml_type)));
        }
        let mut buf = vec![0u8; usize::try_from(info.bytes).map_err(|_| bad("tensor too large"))?];
        let mut f = &self.file;
        f.seek(SeekFrom::Start(info.offset)).map_err(|e| bad(e.to_string()))?;
        f.read_exact(&mut buf).map_err(|e| bad(format!("reading {name}: {e}")))?;
        Ok((info, buf))
    }
}
