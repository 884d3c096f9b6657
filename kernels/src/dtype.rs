//! Element types the kernels are instantiated for (`f32`, [`F16`], [`Bf16`]) and their exact
//! host-side conversions, so CPU references round exactly like the device code in `cu/common.cuh`.
//!
//! `F16`/`Bf16` are plain 16-bit storage types: the crate needs no `half` dependency, and both
//! implement cudarc's `DeviceRepr` so they can live in `CudaSlice`s and be kernel arguments.

use std::fmt;

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

/// An element type with a kernel instantiation: the `<dtype>` suffix of `<op>_<dtype>` entry points.
pub trait FloatElement:
    DeviceRepr + ValidAsZeroBits + Copy + Default + PartialEq + Send + Sync + fmt::Debug + 'static
{
    /// Suffix of the `extern "C"` entry points, e.g. `f16` in `rmsnorm_residual_f16`.
    const SUFFIX: &'static str;
    /// Bytes per element.
    const SIZE: usize;
    /// Widens to f32 exactly.
    fn to_f32(self) -> f32;
    /// Rounds from f32 to nearest, ties to even (the device's `cvt.rn`).
    fn from_f32(value: f32) -> Self;
}

impl FloatElement for f32 {
    const SUFFIX: &'static str = "f32";
    const SIZE: usize = 4;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(value: f32) -> Self {
        value
    }
}

/// IEEE 754 binary16, stored as its bits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct F16(pub u16);

/// bfloat16 (the upper half of an f32), stored as its bits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Bf16(pub u16);

// SAFETY: F16 is #[repr(transparent)] over u16, which CUDA receives as an `unsigned short`
// (the device-side `hl_f16`); any bit pattern is a valid value.
unsafe impl DeviceRepr for F16 {}
// SAFETY: all-zero bits are +0.0 in binary16.
unsafe impl ValidAsZeroBits for F16 {}
// SAFETY: Bf16 is #[repr(transparent)] over u16, the device-side `hl_bf16`; any bit pattern is valid.
unsafe impl DeviceRepr for Bf16 {}
// SAFETY: all-zero bits are +0.0 in bfloat16.
unsafe impl ValidAsZeroBits for Bf16 {}

impl fmt::Debug for F16 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "F16({})", self.to_f32())
    }
}

impl fmt::Debug for Bf16 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bf16({})", self.to_f32())
    }
}

impl FloatElement for F16 {
    const SUFFIX: &'static str = "f16";
    const SIZE: usize = 2;
    fn to_f32(self) -> f32 {
        f16_bits_to_f32(self.0)
    }
    fn from_f32(value: f32) -> Self {
        F16(f32_to_f16_bits(value))
    }
}

impl FloatElement for Bf16 {
    const SUFFIX: &'static str = "bf16";
    const SIZE: usize = 2;
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }
    fn from_f32(value: f32) -> Self {
        let u = value.to_bits();
        if u & 0x7fff_ffff > 0x7f80_0000 {
            return Bf16(high_half(u) | 0x40);
        }
        let rounded = u.wrapping_add(0x7fff + ((u >> 16) & 1));
        Bf16(high_half(rounded))
    }
}

fn high_half(u: u32) -> u16 {
    u16::try_from(u >> 16).unwrap_or(u16::MAX)
}

fn low_u16(u: u32) -> u16 {
    u16::try_from(u & 0xffff).unwrap_or(u16::MAX)
}

/// binary16 bits to f32 (exact: every binary16 value is an f32 value).
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let man = h & 0x3ff;
    let magnitude = match exp {
        // Zero or subnormal: man * 2^-24, exact in f32.
        0 => f32::from(low_u16(man)) * f32::from_bits(0x3380_0000),
        0x1f => f32::from_bits(0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(((exp + 112) << 23) | (man << 13)),
    };
    f32::from_bits(sign | magnitude.to_bits())
}

/// f32 to binary16 bits, round to nearest, ties to even (like PTX `cvt.rn.f16.f32`).
fn f32_to_f16_bits(f: f32) -> u16 {
    let x = f.to_bits();
    let sign = high_half(x) & 0x8000;
    let exp = i32::try_from((x >> 23) & 0xff).unwrap_or(0);
    let man = x & 0x007f_ffff;
    if exp == 0xff {
        // Inf stays Inf; NaN keeps its top payload bits and is made quiet.
        let nan_bits = if man != 0 { 0x200 | low_u16(man >> 13) } else { 0 };
        return sign | 0x7c00 | nan_bits;
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal result: value / 2^-24 = m * 2^(e - 14).
        let m = man | 0x0080_0000;
        let shift = u32::try_from(14 - e).unwrap_or(24);
        let half = 1u32 << (shift - 1);
        let rem = m & ((1u32 << shift) - 1);
        let mut r = m >> shift;
        if rem > half || (rem == half && r & 1 == 1) {
            r += 1;
        }
        return sign | low_u16(r);
    }
    let e = u32::try_from(e).unwrap_or(0);
    let mut r = (e << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) {
        // A carry out of the mantissa correctly bumps the exponent (up to Inf).
        r += 1;
    }
    sign | low_u16(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trips_every_non_nan_value() {
        for bits in 0..=u16::MAX {
            let h = F16(bits);
            let f = h.to_f32();
            if f.is_nan() {
                assert!(F16::from_f32(f).to_f32().is_nan());
                continue;
            }
            assert_eq!(F16::from_f32(f).0, bits, "bits {bits:#06x} -> {f}");
        }
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        assert_eq!(F16::from_f32(1.0).0, 0x3c00);
        assert_eq!(F16::from_f32(-2.0).0, 0xc000);
        assert_eq!(F16::from_f32(65504.0).0, 0x7bff);
        assert_eq!(F16::from_f32(65520.0).0, 0x7c00, "halfway above max rounds to inf");
        // 1 + 2^-11 is exactly between 1 and 1 + 2^-10: ties to even (1.0).
        assert_eq!(F16::from_f32(1.0 + 2f32.powi(-11)).0, 0x3c00);
        // 1 + 3 * 2^-11 ties to the even neighbour 1 + 2^-9.
        assert_eq!(F16::from_f32(1.0 + 3.0 * 2f32.powi(-11)).0, 0x3c02);
        // Smallest subnormal and the tie below it.
        assert_eq!(F16::from_f32(2f32.powi(-24)).0, 0x0001);
        assert_eq!(F16::from_f32(2f32.powi(-25)).0, 0x0000);
        assert_eq!(F16::from_f32(1.5 * 2f32.powi(-25)).0, 0x0001);
        assert_eq!(F16::from_f32(2f32.powi(-14)).0, 0x0400);
        assert_eq!(F16::from_f32(f32::INFINITY).0, 0x7c00);
        assert!(F16::from_f32(f32::NAN).to_f32().is_nan());
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(Bf16::from_f32(1.0).0, 0x3f80);
        assert_eq!(Bf16::from_f32(f32::from_bits(0x3f80_8000)).0, 0x3f80, "tie to even");
        assert_eq!(Bf16::from_f32(f32::from_bits(0x3f81_8000)).0, 0x3f82, "tie to even");
        assert_eq!(Bf16::from_f32(f32::from_bits(0x3f80_8001)).0, 0x3f81);
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        for bits in 0..=u16::MAX {
            let f = Bf16(bits).to_f32();
            if !f.is_nan() {
                assert_eq!(Bf16::from_f32(f).0, bits);
            }
        }
    }
}
