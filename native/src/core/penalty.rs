//! The repetition/frequency/presence penalty window with llama.cpp's exact semantics
//! (`llama_sampler_penalties`), greedy argmax with llama.cpp's tie rule (first maximum wins) and
//! the log-probability of a chosen token: shared by the native sampler and the llama.cpp engine.
//!
//! The window is a ring of the last `repeat_last_n` accepted tokens plus a count per distinct
//! token, so `accept` is O(1) and `apply` is O(distinct tokens in the window).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use super::executor::TokenId;
use super::sampler::SamplerParams;

/// Repetition penalties over the last `n` accepted tokens (prompt tokens included, as
/// llama-server does).
#[derive(Debug, Clone)]
pub struct PenaltyWindow<T = TokenId> {
    last_n: usize,
    repeat: f32,
    frequency: f32,
    presence: f32,
    recent: VecDeque<T>,
    counts: HashMap<T, u32>,
}

impl<T: Copy + Eq + Hash + Into<i64>> PenaltyWindow<T> {
    /// A window for these parameters; `n_ctx` resolves `repeat_last_n = -1`.
    pub fn new(params: &SamplerParams, n_ctx: usize) -> Self {
        let last_n = match params.repeat_last_n {
            n if n < 0 => n_ctx,
            n => n as usize,
        };
        // llama.cpp requires a positive repeat penalty; treat anything else as "off".
        let repeat = if params.repeat_penalty > 0.0 && params.repeat_penalty.is_finite() {
            params.repeat_penalty
        } else {
            1.0
        };
        Self {
            last_n,
            repeat,
            frequency: finite_or_zero(params.frequency_penalty),
            presence: finite_or_zero(params.presence_penalty),
            recent: VecDeque::with_capacity(last_n.min(4096)),
            counts: HashMap::new(),
        }
    }

    /// Whether applying the window changes nothing.
    pub fn is_disabled(&self) -> bool {
        self.last_n == 0 || (self.repeat == 1.0 && self.frequency == 0.0 && self.presence == 0.0)
    }

    /// Records a token (prompt or generated).
    pub fn accept(&mut self, token: T) {
        if self.is_disabled() {
            return;
        }
        *self.counts.entry(token).or_insert(0) += 1;
        if self.recent.len() >= self.last_n
            && let Some(old) = self.recent.pop_front()
            && let Some(c) = self.counts.get_mut(&old)
        {
            *c -= 1;
            if *c == 0 {
                self.counts.remove(&old);
            }
        }
        self.recent.push_back(token);
    }

    /// Records the tail of a prompt (only the last `n` tokens can matter).
    pub fn accept_prompt(&mut self, tokens: &[T]) {
        if self.is_disabled() {
            return;
        }
        let start = tokens.len().saturating_sub(self.last_n);
        for &t in &tokens[start..] {
            self.accept(t);
        }
    }

    /// Applies the penalties to `logits` (indexed by token id).
    pub fn apply(&self, logits: &mut [f32]) {
        if self.is_disabled() {
            return;
        }
        for (&token, &count) in &self.counts {
            if let Some(l) = usize::try_from(token.into()).ok().and_then(|i| logits.get_mut(i)) {
                *l = self.penalize(*l, count);
            }
        }
    }

    /// The penalized value of one logit whose token occurred `count` (> 0) times.
    fn penalize(&self, logit: f32, count: u32) -> f32 {
        let l = if logit <= 0.0 { logit * self.repeat } else { logit / self.repeat };
        l - count as f32 * self.frequency - self.presence
    }
}

fn finite_or_zero(x: f32) -> f32 {
    if x.is_finite() { x } else { 0.0 }
}

/// Index of the largest value; the first one on ties (llama.cpp's greedy sampler).
///
/// Eight independent lanes (element `i` goes to lane `i % 8`) let the compiler vectorize the
/// scan over a 262k-entry vocabulary; each lane keeps its first maximum, and the lanes are
/// merged preferring the smaller index, which is the global first maximum.
pub fn argmax(values: &[f32]) -> usize {
    const LANES: usize = 8;
    let mut best = [f32::NEG_INFINITY; LANES];
    let mut index = [0u32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        for lane in 0..LANES {
            if chunk[lane] > best[lane] {
                best[lane] = chunk[lane];
                index[lane] = (c * LANES + lane) as u32;
            }
        }
    }
    let mut best_i = usize::MAX;
    let mut best_v = f32::NEG_INFINITY;
    for lane in 0..LANES {
        let i = index[lane] as usize;
        if best[lane] > best_v || (best[lane] == best_v && best[lane] > f32::NEG_INFINITY && i < best_i) {
            best_v = best[lane];
            best_i = i;
        }
    }
    let base = values.len() - tail.len();
    for (j, &v) in tail.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best_i = base + j;
        }
    }
    if best_i == usize::MAX { 0 } else { best_i }
}

/// `log softmax(logits)[index]`, computed stably.
pub fn log_prob(logits: &[f32], index: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let chosen = logits.get(index).copied().unwrap_or(f32::NEG_INFINITY);
    (f64::from(chosen - max) - sum.ln()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(last_n: i32, repeat: f32, freq: f32, presence: f32) -> SamplerParams {
        SamplerParams {
            repeat_last_n: last_n,
            repeat_penalty: repeat,
            frequency_penalty: freq,
            presence_penalty: presence,
            ..SamplerParams::default()
        }
    }

    #[test]
    fn window_slides_and_counts() {
        let mut w = PenaltyWindow::<i32>::new(&params(3, 2.0, 0.0, 0.0), 100);
        for t in [1, 1, 2, 3] {
            w.accept(t);
        }
        // Window is [1, 2, 3]: token 1 was seen once within it.
        assert_eq!(w.counts.get(&1), Some(&1));
        let mut logits = vec![1.0, 4.0, -2.0, 6.0, 5.0];
        w.apply(&mut logits);
        assert_eq!(logits, vec![1.0, 2.0, -4.0, 3.0, 5.0]);
    }

    #[test]
    fn frequency_and_presence_like_llama_cpp() {
        let mut w = PenaltyWindow::<i32>::new(&params(64, 1.0, 0.5, 0.25), 100);
        w.accept_prompt(&[0, 0, 2]);
        let mut logits = vec![1.0, 1.0, 1.0];
        w.apply(&mut logits);
        assert_eq!(logits, vec![1.0 - 2.0 * 0.5 - 0.25, 1.0, 1.0 - 0.5 - 0.25]);
    }

    #[test]
    fn disabled_windows_do_nothing() {
        for p in [params(0, 1.5, 0.0, 0.0), params(64, 1.0, 0.0, 0.0), params(64, 0.0, 0.0, 0.0)] {
            let mut w = PenaltyWindow::<u32>::new(&p, 100);
            w.accept(0);
            assert!(w.is_disabled());
            let mut logits = vec![3.0];
            w.apply(&mut logits);
            assert_eq!(logits, vec![3.0]);
        }
        // -1 means the context size.
        assert_eq!(PenaltyWindow::<u32>::new(&params(-1, 1.1, 0.0, 0.0), 77).last_n, 77);
    }

    fn argmax_reference(values: &[f32]) -> usize {
        let mut best = 0;
        for (i, &v) in values.iter().enumerate() {
            if v > values[best] {
                best = i;
            }
        }
        best
    }

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[]), 0);
        // Ties across lanes and in the tail, many lengths, a few distinct values.
        let mut x: u32 = 1;
        for len in 1..200 {
            let v: Vec<f32> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    ((x >> 16) % 5) as f32
                })
                .collect();
            assert_eq!(argmax(&v), argmax_reference(&v), "{v:?}");
        }
        let mut v = vec![f32::NEG_INFINITY; 20];
        v[13] = f32::NEG_INFINITY;
        assert_eq!(argmax(&v), 0);
    }

    #[test]
    fn log_prob_matches_softmax() {
        let lp = log_prob(&[0.0, 0.0], 0);
        assert!((lp - 0.5f32.ln()).abs() < 1e-6);
        let lp = log_prob(&[1000.0, 0.0], 0);
        assert!(lp.abs() < 1e-6);
    }
}
