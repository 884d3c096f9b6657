//! Token choice over one logits row, with the parameters and order of llama.cpp's
//! `common_sampler` chain as the llama.cpp engine uses it: repetition penalties (repeat,
//! frequency, presence over the last `repeat_last_n` tokens, prompt included), top-k, typical-p,
//! top-p, min-p, temperature, then a seeded draw. Temperature ≤ 0 (or top-k = 1) is greedy: the
//! first maximum of the penalized logits. The draw uses our own seeded generator, so seeded
//! output is reproducible here but not bit-equal to llama.cpp's (its RNG is mt19937).
//!
//! Cost: penalties O(distinct tokens in the window); the filters sort at most the candidates
//! left after top-k (a partial selection when top-k is on), O(V) otherwise.

use super::executor::TokenId;
use super::penalty::PenaltyWindow;
pub use super::penalty::{argmax, log_prob};
use super::rng::SplitMix64;

/// Sampling parameters, as Ollama's `options` name them (mirrors the daemon's `SamplingParams`).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: i32,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0 disables.
    pub min_p: f32,
    /// 1.0 disables.
    pub typical_p: f32,
    /// Window of the penalties; 0 disables, -1 means the context size.
    pub repeat_last_n: i32,
    /// 1.0 disables.
    pub repeat_penalty: f32,
    /// 0 disables.
    pub presence_penalty: f32,
    /// 0 disables.
    pub frequency_penalty: f32,
    /// Seed of the draw; `None` picks one.
    pub seed: Option<u64>,
}

impl Default for SamplerParams {
    /// Ollama's defaults.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.0,
            typical_p: 1.0,
            repeat_last_n: 64,
            repeat_penalty: 1.1,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplerParams {
    /// Greedy parameters with no penalties.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, repeat_penalty: 1.0, ..Self::default() }
    }

    /// Checks values a model cannot be asked to use.
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            ("temperature", self.temperature, self.temperature.is_finite()),
            ("top_p", self.top_p, self.top_p.is_finite() && self.top_p >= 0.0),
            ("min_p", self.min_p, self.min_p.is_finite() && (0.0..=1.0).contains(&self.min_p)),
            ("typical_p", self.typical_p, self.typical_p.is_finite() && self.typical_p >= 0.0),
            ("repeat_penalty", self.repeat_penalty, self.repeat_penalty.is_finite()),
            ("presence_penalty", self.presence_penalty, self.presence_penalty.is_finite()),
            ("frequency_penalty", self.frequency_penalty, self.frequency_penalty.is_finite()),
        ];
        match checks.iter().find(|(_, _, ok)| !ok) {
            Some((name, value, _)) => Err(format!("invalid {name}: {value}")),
            None => Ok(()),
        }
    }
}

/// One sequence's sampler: parameters, penalty window and generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplerParams,
    penalties: PenaltyWindow<TokenId>,
    rng: SplitMix64,
    scratch: Vec<f32>,
    candidates: Vec<(TokenId, f32)>,
}

impl Sampler {
    /// A sampler; `context` resolves `repeat_last_n = -1`.
    pub fn new(params: SamplerParams, context: usize) -> Self {
        let seed = params.seed.unwrap_or_else(random_seed);
        Self {
            penalties: PenaltyWindow::new(&params, context),
            params,
            rng: SplitMix64::new(seed),
            scratch: Vec::new(),
            candidates: Vec::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Whether the choice is greedy (argmax of the penalized logits).
    pub fn is_greedy(&self) -> bool {
        self.params.temperature <= 0.0 || self.params.top_k == 1
    }

    /// Whether the penalties change nothing.
    pub fn penalties_off(&self) -> bool {
        self.penalties.is_disabled()
    }

    /// Whether the raw argmax is the answer (the device may pick it, no logits needed).
    pub fn argmax_suffices(&self) -> bool {
        self.is_greedy() && self.penalties_off()
    }

    /// Records a token (prompt or generated) in the penalty window.
    pub fn accept(&mut self, token: TokenId) {
        self.penalties.accept(token);
    }

    /// Records the prompt (only its last `repeat_last_n` tokens matter).
    pub fn accept_prompt(&mut self, tokens: &[TokenId]) {
        self.penalties.accept_prompt(tokens);
    }

    /// Chooses the next token from a raw logits row.
    pub fn sample(&mut self, logits: &[f32]) -> TokenId {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(logits);
        self.apply_penalties(&mut scratch);
        let token = if self.is_greedy() { argmax(&scratch) as TokenId } else { self.draw(&scratch) };
        self.scratch = scratch;
        token
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        self.penalties.apply(logits);
    }

    /// What a non-greedy draw chooses from: penalties, top-k, typical-p, top-p and min-p
    /// applied, logits divided by the temperature; `(token, logit)`, highest first.
    pub fn candidates(&mut self, logits: &[f32]) -> Vec<(TokenId, f32)> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(logits);
        self.apply_penalties(&mut scratch);
        self.filter(&scratch);
        self.scratch = scratch;
        let temp = self.params.temperature;
        self.candidates.iter().map(|&(t, l)| (t, l / temp)).collect()
    }

    /// top-k → typical-p → top-p → min-p, into `self.candidates`, highest logit first.
    fn filter(&mut self, logits: &[f32]) {
        let p = &self.params;
        let cands = &mut self.candidates;
        cands.clear();
        cands.extend(logits.iter().enumerate().map(|(i, &l)| (i as TokenId, l)));
        let by_logit_desc = |a: &(TokenId, f32), b: &(TokenId, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && (p.top_k as usize) < cands.len() {
            let k = p.top_k as usize;
            cands.select_nth_unstable_by(k - 1, by_logit_desc);
            cands.truncate(k);
        }
        cands.sort_unstable_by(by_logit_desc);
        if p.typical_p < 1.0 {
            typical(cands, p.typical_p);
        }
        if p.top_p < 1.0 {
            top_p(cands, p.top_p);
        }
        if p.min_p > 0.0 && !cands.is_empty() {
            let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
            let floor = max + p.min_p.ln();
            let kept = cands.iter().filter(|c| c.1 >= floor).count().max(1);
            cands.sort_unstable_by(by_logit_desc);
            cands.truncate(kept);
        }
    }

    /// Filters, applies the temperature and draws.
    fn draw(&mut self, logits: &[f32]) -> TokenId {
        self.filter(logits);
        let cands = &self.candidates;
        let temp = self.params.temperature;
        let probs = softmax(cands.iter().map(|c| c.1 / temp));
        let r = self.rng.next_f64();
        let mut acc = 0.0;
        for (c, pr) in cands.iter().zip(&probs) {
            acc += pr;
            if r < acc {
                return c.0;
            }
        }
        cands.last().map_or(0, |c| c.0)
    }
}

/// Keeps the smallest prefix (by descending logit) whose probability reaches `p`; at least one.
fn top_p(cands: &mut Vec<(TokenId, f32)>, p: f32) {
    let probs = softmax(cands.iter().map(|c| c.1));
    let mut acc = 0.0;
    let mut keep = cands.len();
    for (i, pr) in probs.iter().enumerate() {
        acc += pr;
        if acc >= f64::from(p) {
            keep = i + 1;
            break;
        }
    }
    cands.truncate(keep.max(1));
}

/// Locally typical sampling (Meister et al. 2022) as llama.cpp computes it: keep the tokens
/// whose surprisal is closest to the entropy until their mass reaches `p`.
fn typical(cands: &mut Vec<(TokenId, f32)>, p: f32) {
    let probs = softmax(cands.iter().map(|c| c.1));
    let entropy: f64 = probs.iter().filter(|&&q| q > 0.0).map(|&q| -q * q.ln()).sum();
    let mut order: Vec<(f64, usize)> =
        probs.iter().enumerate().map(|(i, &q)| ((-q.ln() - entropy).abs(), i)).collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut acc = 0.0;
    let mut keep = order.len();
    for (n, &(_, i)) in order.iter().enumerate() {
        acc += probs[i];
        if acc > f64::from(p) {
            keep = n + 1;
            break;
        }
    }
    let kept: Vec<(TokenId, f32)> = order[..keep].iter().map(|&(_, i)| cands[i]).collect();
    *cands = kept;
    cands.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
}

fn softmax(values: impl Iterator<Item = f32> + Clone) -> Vec<f64> {
    let max = values.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = values.map(|v| f64::from(v - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests;
