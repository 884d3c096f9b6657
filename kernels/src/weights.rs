//! Weight encodings the decoder kernels read directly (GGUF's F32, F16, BF16, Q8_0, Q4_K,
//! Q6_K, byte for byte as stored in the file), their row sizes, and the pure-Rust
//! dequantisation that serves as the reference for `cu/llama.cu` (same formulas as ggml's
//! `dequantize_row_*`).

use crate::dtype::{F16, FloatElement};

/// One GGUF tensor encoding the kernels understand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    /// 32-bit floats.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: f16 scale + 32 int8.
    Q8_0,
    /// Super-blocks of 256: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
    Q4K,
    /// Super-blocks of 256: 128 bytes low nibbles, 64 bytes high 2 bits, 16 int8 scales, f16 d.
    Q6K,
}

impl WeightType {
    /// Every type, for tests.
    pub const ALL: [WeightType; 6] = [
        WeightType::F32,
        WeightType::F16,
        WeightType::Bf16,
        WeightType::Q8_0,
        WeightType::Q4K,
        WeightType::Q6K,
    ];

    /// Whether GEMVs of this type can take int8 activations ([`crate::ActQ8`], `dp4a`):
    /// the quantised formats.
    pub fn int8_dot(self) -> bool {
        matches!(self, WeightType::Q8_0 | WeightType::Q4K | WeightType::Q6K)
    }

    /// The GGUF/ggml type code.
    pub fn ggml_type(self) -> u32 {
        match self {
            WeightType::F32 => 0,
            WeightType::F16 => 1,
            WeightType::Q8_0 => 8,
            WeightType::Q4K => 12,
            WeightType::Q6K => 14,
            WeightType::Bf16 => 30,
        }
    }

    /// The type of a GGUF/ggml type code, if the kernels support it.
    pub fn from_ggml_type(code: u32) -> Option<WeightType> {
        WeightType::ALL.into_iter().find(|t| t.ggml_type() == code)
    }

    /// Suffix of the `embed_<w>` / `gemv_<w>_n<NT>` entry points.
    pub fn suffix(self) -> &'static str {
        match self {
            WeightType::F32 => "f32",
            WeightType::F16 => "f16",
            WeightType::Bf16 => "bf16",
            WeightType::Q8_0 => "q8_0",
            WeightType::Q4K => "q4_k",
            WeightType::Q6K => "q6_k",
        }
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 | WeightType::Bf16 => 1,
            WeightType::Q8_0 => 32,
            WeightType::Q4K | WeightType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 | WeightType::Bf16 => 2,
            WeightType::Q8_0 => 34,
            WeightType::Q4K => 144,
            WeightType::Q6K => 210,
        }
    }

    /// The row width the kernels require to be a multiple of (chunks of 32, whole blocks).
    pub fn cols_multiple(self) -> usize {
        self.block_values().max(32)
    }

    /// Bytes of one row of `cols` values (`cols` a multiple of [`Self::block_values`]).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_values() * self.block_bytes()
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    F16(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Dequantises one row of `cols` values (`row` holds exactly [`WeightType::row_bytes`]).
pub fn dequantize_row(ty: WeightType, row: &[u8], cols: usize) -> Vec<f32> {
    assert_eq!(row.len(), ty.row_bytes(cols), "row bytes");
    let mut out = Vec::with_capacity(cols);
    match ty {
        WeightType::F32 => {
            out.extend(row.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        }
        WeightType::F16 => out.extend(row.chunks_exact(2).map(|c| f16_at(c, 0))),
        WeightType::Bf16 => out.extend(
            row.chunks_exact(2).map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)),
        ),
        WeightType::Q8_0 => {
            for b in row.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..].iter().map(|&q| d * f32::from(i8::from_le_bytes([q]))));
            }
        }
        WeightType::Q4K => {
            for b in row.chunks_exact(144) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                for j in 0..4 {
                    let qs = &b[16 + 32 * j..16 + 32 * j + 32];
                    for (half, shift) in [(0usize, 0u8), (1, 4)] {
                        let (sc, m) = q4k_scale_min(2 * j + half, scales);
                        let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
                        out.extend(qs.iter().map(|&q| d1 * f32::from((q >> shift) & 0xF) - m1));
                    }
                }
            }
        }
        WeightType::Q6K => {
            for b in row.chunks_exact(210) {
                let d = f16_at(b, 208);
                let mut y = [0f32; 256];
                for n in 0..2 {
                    let ql = &b[64 * n..64 * n + 64];
                    let qh = &b[128 + 32 * n..128 + 32 * n + 32];
                    let sc = |i: usize| f32::from(i8::from_le_bytes([b[192 + 8 * n + i]]));
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                        let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                        let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                        let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                        let base = 128 * n;
                        y[base + l] = d * sc(is) * q1 as f32;
                        y[base + l + 32] = d * sc(is + 2) * q2 as f32;
                        y[base + l + 64] = d * sc(is + 4) * q3 as f32;
                        y[base + l + 96] = d * sc(is + 6) * q4 as f32;
                    }
                }
                out.extend_from_slice(&y);
            }
        }
    }
    out
}

/// Random but well-formed bytes of `rows` x `cols` weights of `ty` (finite scales of moderate
/// size, values roughly in [-1, 1]), from a SplitMix64 stream: test and benchmark data.
pub fn random_weights(ty: WeightType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut rng = crate::check::SplitMix64::new(seed);
    let n = rows * ty.row_bytes(cols);
    let mut bytes: Vec<u8> = (0..n).map(|_| (rng.next_u64() >> 56) as u8).collect();
    let put_f16 = |bytes: &mut [u8], at: usize, v: f32| {
        bytes[at..at + 2].copy_from_slice(&F16::from_f32(v).0.to_le_bytes());
    };
    match ty {
        WeightType::F32 => {
            for c in bytes.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.uniform(-1.0, 1.0).to_le_bytes());
            }
        }
        WeightType::F16 => {
            for c in bytes.chunks_exact_mut(2) {
                put_f16(c, 0, rng.uniform(-1.0, 1.0));
            }
        }
        WeightType::Bf16 => {
            for c in bytes.chunks_exact_mut(2) {
                c.copy_from_slice(&crate::dtype::Bf16::from_f32(rng.uniform(-1.0, 1.0)).0.to_le_bytes());
            }
        }
        WeightType::Q8_0 => {
            for b in bytes.chunks_exact_mut(34) {
                put_f16(b, 0, rng.uniform(0.001, 0.01));
            }
        }
        WeightType::Q4K => {
            for b in bytes.chunks_exact_mut(144) {
                put_f16(b, 0, rng.uniform(0.001, 0.004));
                put_f16(b, 2, rng.uniform(0.001, 0.004));
            }
        }
        WeightType::Q6K => {
            for b in bytes.chunks_exact_mut(210) {
                put_f16(b, 208, rng.uniform(0.0001, 0.0005));
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml() {
        assert_eq!(WeightType::Q4K.row_bytes(4096), 16 * 144);
        assert_eq!(WeightType::Q6K.row_bytes(256), 210);
        assert_eq!(WeightType::Q8_0.row_bytes(64), 68);
        assert_eq!(WeightType::from_ggml_type(12), Some(WeightType::Q4K));
        assert_eq!(WeightType::from_ggml_type(2), None);
    }

    #[test]
    fn q8_0_dequantises_scale_times_value() {
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&F16::from_f32(0.5).0.to_le_bytes());
        b[2] = 4;
        b[3] = 0xfe; // -2
        let v = dequantize_row(WeightType::Q8_0, &b, 32);
        assert_eq!((v[0], v[1], v[2]), (2.0, -1.0, 0.0));
    }

    #[test]
    fn q4k_uses_scales_and_mins() {
        let mut b = vec![0u8; 144];
        b[0..2].copy_from_slice(&F16::from_f32(1.0).0.to_le_bytes());
        b[2..4].copy_from_slice(&F16::from_f32(0.5).0.to_le_bytes());
        b[4] = 2; // sub-block 0 scale 2
        b[8] = 4; // sub-block 0 min 4
        b[5] = 3; // sub-block 1 scale 3
        b[16] = 0x57; // value 0 = 7 (low nibble), value 32 = 5 (high nibble)
        let v = dequantize_row(WeightType::Q4K, &b, 256);
        assert_eq!(v[0], 2.0 * 7.0 - 0.5 * 4.0);
        assert_eq!(v[32], 3.0 * 5.0);
    }

    #[test]
    fn q6k_centres_on_32() {
        let mut b = vec![0u8; 210];
        b[208..210].copy_from_slice(&F16::from_f32(1.0).0.to_le_bytes());
        b[192] = 1;
        b[0] = 0x01; // value 0 low bits 1, high bits 0 -> 1 - 32
        let v = dequantize_row(WeightType::Q6K, &b, 256);
        assert_eq!(v[0], -31.0);
        assert_eq!(v[1], -32.0);
        assert_eq!(v[16], 0.0, "second scale of the group is 0");
    }
}
