//! The bounded GGUF parser. It reads the header, the metadata and the tensor directory from any
//! `Read` whose total length is known, and never the tensor data. Every count is checked against
//! what the rest of the file could hold before anything is allocated, every string and array
//! against [`Limits`], and every tensor against the file's end and its neighbours.

use std::collections::HashSet;
use std::io::Read;

use super::types::{TensorType, ValueType};
use super::{Array, GgufError, GgufFile, Limits, MetadataEntry, TensorInfo, Value};

/// The magic at the start of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// llama.cpp's maximum tensor rank.
const MAX_DIMS: u32 = 4;
/// llama.cpp's `GGML_MAX_NAME`: tensor names must be shorter.
const MAX_TENSOR_NAME: u64 = 64;
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Smallest tensor-info record: name length, rank, type, offset.
const MIN_TENSOR_INFO: u64 = 8 + 4 + 4 + 8;
/// Smallest metadata record: key length, value type, and one byte of value.
const MIN_METADATA_ENTRY: u64 = 8 + 4 + 1;
/// Bytes a kept tensor-info record is charged against the allocation budget.
const TENSOR_INFO_COST: u64 = 96;
/// Bytes a kept metadata value is charged besides its strings.
const VALUE_COST: u64 = 48;

/// Reads a GGUF file's metadata and tensor directory from `source`, which holds `file_len` bytes.
pub fn parse<R: Read>(source: R, file_len: u64, limits: &Limits) -> Result<GgufFile, GgufError> {
    let mut r = Cursor { inner: source, pos: 0, len: file_len, spent: 0, limits };
    let magic = r.bytes_array::<4>("the magic number")?;
    if &magic != MAGIC {
        return Err(GgufError::NotGguf);
    }
    let version = r.u32("the version")?;
    if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
        return Err(GgufError::Unsupported("big-endian GGUF files are not supported".into()));
    }
    if version != 2 && version != 3 {
        return Err(GgufError::Unsupported(format!("GGUF version {version} is not supported (2 and 3 are)")));
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    r.check_count("tensors", tensor_count, limits.max_tensors, MIN_TENSOR_INFO)?;
    r.check_count("metadata entries", kv_count, limits.max_metadata, MIN_METADATA_ENTRY)?;

    let mut metadata = Vec::with_capacity(usize::try_from(kv_count).unwrap_or(0));
    let mut keys = HashSet::new();
    for _ in 0..kv_count {
        let key = r.string("a metadata key", limits.max_key_len)?;
        if !keys.insert(key.clone()) {
            return Err(GgufError::Invalid(format!("metadata key `{}` appears twice", printable(&key))));
        }
        let code = r.u32("a metadata value type")?;
        let ty = ValueType::from_code(code).ok_or_else(|| {
            GgufError::Invalid(format!("metadata key `{}` has unknown value type {code}", printable(&key)))
        })?;
        let value = r.value(ty, &key, 0)?;
        metadata.push(MetadataEntry { key, value });
    }

    let alignment = match metadata.iter().find(|e| e.key == "general.alignment").map(|e| &e.value) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if *a != 0 && a.is_power_of_two() => u64::from(*a),
        Some(Value::U32(a)) => {
            return Err(GgufError::Invalid(format!("general.alignment {a} is not a power of two")));
        }
        Some(other) => {
            return Err(GgufError::WrongType {
                key: "general.alignment".into(),
                expected: "uint32",
                found: other.type_name(),
            });
        }
    };

    let mut tensors = Vec::with_capacity(usize::try_from(tensor_count).unwrap_or(0));
    let mut names = HashSet::new();
    for _ in 0..tensor_count {
        let info = r.tensor_info()?;
        if !names.insert(info.name.clone()) {
            return Err(GgufError::Invalid(format!("tensor `{}` appears twice", printable(&info.name))));
        }
        tensors.push(info);
    }

    let data_offset = align(r.pos, alignment)
        .filter(|d| *d <= file_len || tensor_count == 0)
        .ok_or_else(|| GgufError::Truncated { what: "the tensor data".into(), offset: r.pos })?;
    check_tensor_layout(&tensors, data_offset, file_len, alignment)?;
    Ok(GgufFile { version, metadata, tensors, alignment, data_offset, file_len })
}

/// Every tensor aligned, inside the file, and not overlapping another.
fn check_tensor_layout(
    tensors: &[TensorInfo],
    data_offset: u64,
    file_len: u64,
    alignment: u64,
) -> Result<(), GgufError> {
    let data_len = file_len.saturating_sub(data_offset);
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
    for t in tensors {
        let bad = |reason: String| GgufError::BadTensor { name: printable(&t.name), reason };
        if t.offset % alignment != 0 {
            return Err(bad(format!(
                "its offset {} is not a multiple of the alignment {alignment}",
                t.offset
            )));
        }
        let end = t.offset.checked_add(t.size_bytes).filter(|end| *end <= data_len).ok_or_else(|| {
            bad(format!(
                "its {} bytes at offset {} run past the end of the file ({data_len} bytes of tensor data)",
                t.size_bytes, t.offset
            ))
        })?;
        spans.push((t.offset, end, &t.name));
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let ((_, end, first), (start, _, second)) = (pair[0], pair[1]);
        if start < end {
            return Err(GgufError::BadTensor {
                name: printable(second),
                reason: format!("it overlaps tensor `{}`", printable(first)),
            });
        }
    }
    Ok(())
}

fn align(pos: u64, alignment: u64) -> Option<u64> {
    let rem = pos % alignment;
    if rem == 0 { Some(pos) } else { pos.checked_add(alignment - rem) }
}

/// A name or key made safe for a one-line message.
pub(super) fn printable(text: &str) -> String {
    let mut out: String = text.chars().take(80).flat_map(char::escape_default).collect();
    if text.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// Position-tracking reader that knows how much of the file is left and charges what it keeps
/// to the allocation budget.
struct Cursor<'a, R> {
    inner: R,
    pos: u64,
    len: u64,
    spent: u64,
    limits: &'a Limits,
}

impl<R: Read> Cursor<'_, R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Fails unless `n` more bytes are in the file.
    fn need(&self, n: u64, what: &str) -> Result<(), GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated { what: what.into(), offset: self.pos });
        }
        Ok(())
    }

    fn charge(&mut self, bytes: u64) -> Result<(), GgufError> {
        self.spent = self.spent.saturating_add(bytes);
        if self.spent > self.limits.max_memory {
            return Err(GgufError::TooLarge {
                what: "the metadata and tensor directory".into(),
                size: self.spent,
                limit: self.limits.max_memory,
            });
        }
        Ok(())
    }

    /// A count of records is refused when over `limit` or when the rest of the file cannot hold
    /// that many records of at least `min_size` bytes.
    fn check_count(&self, what: &str, count: u64, limit: u64, min_size: u64) -> Result<(), GgufError> {
        if count > limit {
            return Err(GgufError::TooLarge { what: format!("the number of {what}"), size: count, limit });
        }
        if count.saturating_mul(min_size) > self.remaining() {
            return Err(GgufError::Truncated { what: format!("{count} {what}"), offset: self.pos });
        }
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), GgufError> {
        self.need(buf.len() as u64, what)?;
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => GgufError::Truncated { what: what.into(), offset: self.pos },
            _ => GgufError::Io(e.to_string()),
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn bytes_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes_array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes_array(what)?))
    }

    /// Skips `n` bytes by reading them (the source need not seek).
    fn skip(&mut self, n: u64, what: &str) -> Result<(), GgufError> {
        self.need(n, what)?;
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|e| GgufError::Io(e.to_string()))?;
        if copied != n {
            return Err(GgufError::Truncated { what: what.into(), offset: self.pos.saturating_add(copied) });
        }
        self.pos += n;
        Ok(())
    }

    /// A length-prefixed string of at most `max` bytes, kept (charged to the budget).
    fn string(&mut self, what: &str, max: u64) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > max {
            return Err(GgufError::TooLarge { what: what.into(), size: len, limit: max });
        }
        self.need(len, what)?;
        self.charge(len)?;
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| GgufError::Io("string too long".into()))?];
        self.fill(&mut buf, what)?;
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// Skips a string value, bounding its length all the same.
    fn skip_string(&mut self, what: &str) -> Result<(), GgufError> {
        let len = self.u64(what)?;
        if len > self.limits.max_string_len {
            return Err(GgufError::TooLarge {
                what: what.into(),
                size: len,
                limit: self.limits.max_string_len,
            });
        }
        self.skip(len, what)
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<Value, GgufError> {
        let what = || format!("the value of `{}`", printable(key));
        self.charge(VALUE_COST)?;
        Ok(match ty {
            ValueType::U8 => Value::U8(self.bytes_array::<1>(&what())?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.bytes_array(&what())?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.bytes_array(&what())?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.bytes_array(&what())?)),
            ValueType::U32 => Value::U32(self.u32(&what())?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.bytes_array(&what())?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.bytes_array(&what())?)),
            ValueType::U64 => Value::U64(self.u64(&what())?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.bytes_array(&what())?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.bytes_array(&what())?)),
            ValueType::Bool => match self.bytes_array::<1>(&what())?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => {
                    return Err(GgufError::Invalid(format!(
                        "`{}` is a bool holding {other}, not 0 or 1",
                        printable(key)
                    )));
                }
            },
            ValueType::String => Value::String(self.string(&what(), self.limits.max_string_len)?),
            ValueType::Array => Value::Array(self.array(key, depth)?),
        })
    }

    /// An array: the first `limits.array_head` elements are kept, the rest validated and skipped.
    fn array(&mut self, key: &str, depth: u32) -> Result<Array, GgufError> {
        if depth >= self.limits.max_depth {
            return Err(GgufError::TooLarge {
                what: format!("the nesting of arrays in `{}`", printable(key)),
                size: u64::from(depth) + 1,
                limit: u64::from(self.limits.max_depth),
            });
        }
        let code = self.u32("an array's element type")?;
        let element = ValueType::from_code(code).ok_or_else(|| {
            GgufError::Invalid(format!("array `{}` has unknown element type {code}", printable(key)))
        })?;
        let len = self.u64("an array's length")?;
        self.check_count(
            &format!("elements of array `{}`", printable(key)),
            len,
            self.limits.max_array_len,
            element.min_size(),
        )?;
        let keep = len.min(self.limits.array_head);
        let mut head = Vec::with_capacity(usize::try_from(keep).unwrap_or(0));
        for _ in 0..keep {
            head.push(self.value(element, key, depth + 1)?);
        }
        let rest = len - keep;
        match element.fixed_size() {
            Some(size) if element != ValueType::Bool => {
                self.skip(rest.saturating_mul(size), &format!("array `{}`", printable(key)))?
            }
            _ => {
                let what = format!("array `{}`", printable(key));
                for _ in 0..rest {
                    match element {
                        ValueType::String => self.skip_string(&what)?,
                        ValueType::Bool => {
                            if self.bytes_array::<1>(&what)?[0] > 1 {
                                return Err(GgufError::Invalid(format!(
                                    "{what} holds a bool that is not 0 or 1"
                                )));
                            }
                        }
                        // Nested arrays are read (and checked) in full, then dropped.
                        other => drop(self.value(other, key, depth + 1)?),
                    }
                }
            }
        }
        Ok(Array { element, len, head })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, GgufError> {
        self.charge(TENSOR_INFO_COST)?;
        let name = self.string("a tensor name", MAX_TENSOR_NAME - 1)?;
        let bad = |reason: String| GgufError::BadTensor { name: printable(&name), reason };
        let rank = self.u32("a tensor's rank")?;
        if rank > MAX_DIMS {
            return Err(bad(format!("it has {rank} dimensions; at most {MAX_DIMS} are allowed")));
        }
        let mut dims = Vec::with_capacity(rank as usize);
        let mut elements: u64 = 1;
        for _ in 0..rank {
            let d = self.u64("a tensor dimension")?;
            if i64::try_from(d).is_err() {
                return Err(bad(format!("dimension {d} is negative or too large")));
            }
            elements = elements
                .checked_mul(d)
                .filter(|n| i64::try_from(*n).is_ok())
                .ok_or_else(|| bad("its element count overflows".into()))?;
            dims.push(d);
        }
        let code = self.u32("a tensor type")?;
        let ty = TensorType::from_code(code).ok_or_else(|| bad(format!("unknown tensor type {code}")))?;
        let first = dims.first().copied().unwrap_or(1);
        if first % ty.block_size != 0 {
            return Err(bad(format!(
                "its first dimension {first} is not a multiple of the {} block size {}",
                ty.name, ty.block_size
            )));
        }
        let size_bytes = (elements / ty.block_size)
            .checked_mul(ty.type_size)
            .ok_or_else(|| bad("its size in bytes overflows".into()))?;
        let offset = self.u64("a tensor offset")?;
        Ok(TensorInfo { name, dims, tensor_type: ty, offset, size_bytes, elements })
    }
}
