//! Tools for checking kernels against their CPU references, shared by the tests and
//! `examples/gpu_selftest.rs`: a tiny deterministic PRNG, error statistics and the stated
//! tolerance per element type.

use crate::dtype::FloatElement;

/// SplitMix64: deterministic, seedable, good enough for test data (not for anything secret).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 24 bits of precision.
    pub fn next_f32(&mut self) -> f32 {
        let bits = u32::try_from(self.next_u64() >> 40).unwrap_or(0);
        bits as f32 / (1u32 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f32()
    }

    /// `n` values uniform in `[lo, hi)`, rounded to `T`.
    pub fn vec<T: FloatElement>(&mut self, n: usize, lo: f32, hi: f32) -> Vec<T> {
        (0..n).map(|_| T::from_f32(self.uniform(lo, hi))).collect()
    }
}

/// Pass criterion `|got - want| <= atol + rtol * |want|`, element-wise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f64,
    /// Relative part.
    pub rtol: f64,
}

impl Tolerance {
    /// The tolerance for outputs computed in f32 and rounded once to `T`: a few f32 ulps for
    /// f32; two ulps of the 16-bit format (one rounding may land on the other neighbour).
    pub fn for_element<T: FloatElement>() -> Tolerance {
        match T::SUFFIX {
            "f32" => Tolerance { atol: 1e-5, rtol: 1e-5 },
            "f16" => Tolerance { atol: 1e-4, rtol: 2e-3 },
            _ => Tolerance { atol: 1e-3, rtol: 1.6e-2 },
        }
    }
}

/// Error statistics of `got` against `want`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorStats {
    /// Largest `|got - want|`.
    pub max_abs: f64,
    /// Largest `|got - want| / max(|want|, 1e-6)`.
    pub max_rel: f64,
    /// Elements outside the tolerance (NaN counts as outside).
    pub failures: usize,
    /// Index of the first failure, if any.
    pub first_failure: Option<usize>,
    /// Elements whose bits differ.
    pub bit_mismatches: usize,
}

impl ErrorStats {
    /// True when no element is outside the tolerance.
    pub fn passed(&self) -> bool {
        self.failures == 0
    }
}

/// Compares two equally long slices under `tol`.
pub fn compare<T: FloatElement>(got: &[T], want: &[T], tol: Tolerance) -> ErrorStats {
    assert_eq!(got.len(), want.len(), "compared slices differ in length");
    let mut s = ErrorStats::default();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            s.bit_mismatches += 1;
        }
        let (g, w) = (f64::from(g.to_f32()), f64::from(w.to_f32()));
        let d = (g - w).abs();
        let ok = d <= tol.atol + tol.rtol * w.abs() || (g == w);
        if !ok || d.is_nan() {
            s.failures += 1;
            s.first_failure.get_or_insert(i);
        }
        if d.is_finite() {
            s.max_abs = s.max_abs.max(d);
            s.max_rel = s.max_rel.max(d / w.abs().max(1e-6));
        }
    }
    s
}

/// Reports a skipped test: a `SKIPPED:` line on stderr, and the same line appended to the file
/// named by `HYPERLLAMA_SKIP_LOG` so the test command can list every skip after libtest hid the
/// output of passing tests.
pub fn report_skip(message: &str) {
    let line = format!("SKIPPED: {message}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("HYPERLLAMA_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::F16;

    #[test]
    fn prng_is_deterministic_and_in_range() {
        let a: Vec<f32> = SplitMix64::new(7).vec(1000, -1.0, 1.0);
        let b: Vec<f32> = SplitMix64::new(7).vec(1000, -1.0, 1.0);
        assert_eq!(a, b);
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
        let c: Vec<f32> = SplitMix64::new(8).vec(1000, -1.0, 1.0);
        assert_ne!(a, c);
        let mean = a.iter().sum::<f32>() / 1000.0;
        assert!(mean.abs() < 0.1, "mean {mean}");
    }

    #[test]
    fn compare_counts_failures_and_bits() {
        let want = [F16::from_f32(1.0), F16::from_f32(2.0)];
        let got = [F16::from_f32(1.0), F16::from_f32(2.002)];
        let s = compare(&got, &want, Tolerance::for_element::<F16>());
        assert!(s.passed(), "{s:?}");
        assert_eq!(s.bit_mismatches, 1);
        let bad = [F16::from_f32(1.1), F16::from_f32(f32::NAN)];
        let s = compare(&bad, &want, Tolerance::for_element::<F16>());
        assert_eq!((s.failures, s.first_failure), (2, Some(0)));
    }
}
