//! Engine-independent sampling pieces. The penalty window, argmax and log-probability live in the
//! native engine's pure core (`hyperllama_native::core::penalty`) and are re-exported here for the
//! llama.cpp engine; this module adds what only llama.cpp needs (its 32-bit seeds) and
//! validation of [`SamplingParams`].

use super::SamplingParams;
pub use hyperllama_native::core::penalty::{PenaltyWindow, argmax, log_prob};

/// Whether these parameters select greedy decoding.
pub fn is_greedy(params: &SamplingParams) -> bool {
    params.temperature <= 0.0 || params.top_k == 1
}

/// Checks the parameters a model cannot be asked to use (NaN, negative probabilities, ...).
pub fn validate(params: &SamplingParams) -> Result<(), String> {
    params.validate()
}

/// The 32-bit seed llama.cpp's samplers take; `u32::MAX` means "random" there, so it is avoided.
pub fn seed32(seed: Option<u64>) -> u32 {
    let s = match seed {
        Some(s) => s,
        None => {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            );
            h.finish()
        }
    };
    let folded = (s ^ (s >> 32)) as u32;
    if folded == u32::MAX { u32::MAX - 1 } else { folded }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_seeds() {
        assert!(validate(&SamplingParams::default()).is_ok());
        assert!(validate(&SamplingParams { temperature: f32::NAN, ..SamplingParams::default() }).is_err());
        assert!(validate(&SamplingParams { min_p: 2.0, ..SamplingParams::default() }).is_err());
        assert_eq!(seed32(Some(42)), 42);
        assert_ne!(seed32(Some(u64::from(u32::MAX))), u32::MAX);
    }
}
