//! Per-sequence token selection over llama.cpp logits.
//!
//! Order as llama.cpp's `common_sampler`: penalties, (grammar), top_k, typical_p, top_p, min_p,
//! temperature, then a seeded random draw. Penalties are ours ([`PenaltyWindow`], llama.cpp's
//! exact arithmetic) so the greedy path needs no candidate array at all: it is an argmax over
//! the (penalized copy of the) logits, identical to llama.cpp's greedy sampler. Grammars
//! (`format: json`, JSON schemas) are llama.cpp grammar samplers; under greedy decoding the
//! argmax is checked first and the whole vocabulary is filtered only when it is rejected
//! (llama.cpp's own rejection-sampling shortcut).
//!
//! All buffers live in [`Scratch`], one per engine, so sampling allocates nothing per token.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;

use crate::engine::sampling::{PenaltyWindow, argmax, is_greedy, seed32};
use crate::engine::{EngineError, SamplingParams};

/// Reusable buffers for sampling (one per engine thread).
pub(super) struct Scratch {
    logits: Vec<f32>,
    candidates: LlamaTokenDataArray,
    single: LlamaTokenDataArray,
}

impl Scratch {
    pub(super) fn new(n_vocab: usize) -> Self {
        Self {
            logits: Vec::with_capacity(n_vocab),
            candidates: LlamaTokenDataArray::new(Vec::with_capacity(n_vocab), false),
            single: LlamaTokenDataArray::new(Vec::with_capacity(1), false),
        }
    }
}

/// How one sequence picks its tokens.
pub(crate) struct SequenceSampler {
    penalties: PenaltyWindow<i32>,
    /// `None`: greedy.
    chain: Option<LlamaSampler>,
    grammar: Option<LlamaSampler>,
}

impl SequenceSampler {
    /// Builds the sampler; `prompt` primes the penalty window, as llama-server does.
    pub(crate) fn new(
        model: &LlamaModel,
        params: &SamplingParams,
        grammar: Option<&str>,
        n_ctx: u32,
        prompt: &[LlamaToken],
    ) -> Result<Self, EngineError> {
        let mut penalties = PenaltyWindow::new(params, n_ctx as usize);
        if !penalties.is_disabled() {
            let ids: Vec<i32> = prompt.iter().map(|t| t.0).collect();
            penalties.accept_prompt(&ids);
        }
        let chain = if is_greedy(params) {
            None
        } else {
            let mut stages = Vec::with_capacity(6);
            if params.top_k > 0 {
                stages.push(LlamaSampler::top_k(params.top_k));
            }
            if params.typical_p > 0.0 && params.typical_p < 1.0 {
                stages.push(LlamaSampler::typical(params.typical_p, 1));
            }
            if params.top_p > 0.0 && params.top_p < 1.0 {
                stages.push(LlamaSampler::top_p(params.top_p, 1));
            }
            if params.min_p > 0.0 {
                stages.push(LlamaSampler::min_p(params.min_p, 1));
            }
            stages.push(LlamaSampler::temp(params.temperature));
            stages.push(LlamaSampler::dist(seed32(params.seed)));
            Some(LlamaSampler::chain(stages, true))
        };
        let grammar = match grammar {
            Some(gbnf) => Some(
                LlamaSampler::grammar(model, gbnf, "root")
                    .map_err(|e| EngineError::InvalidRequest(format!("invalid grammar: {e}")))?,
            ),
            None => None,
        };
        Ok(Self { penalties, chain, grammar })
    }

    /// Picks the next token from this sequence's logits; `None` when a grammar allows nothing.
    pub(super) fn sample(&mut self, logits: &[f32], scratch: &mut Scratch) -> Option<LlamaToken> {
        let Scratch { logits: penalized, candidates, single } = scratch;
        let logits: &[f32] = if self.penalties.is_disabled() {
            logits
        } else {
            penalized.clear();
            penalized.extend_from_slice(logits);
            self.penalties.apply(penalized);
            penalized
        };
        match self.chain.as_mut() {
            None => {
                let best = argmax(logits);
                let Some(grammar) = self.grammar.as_mut() else { return Some(token(best)) };
                // Most of the time the grammar accepts the argmax: check just that token.
                reset(single, std::iter::once(LlamaTokenData::new(token(best), logits[best], 0.0)));
                single.apply_sampler(grammar);
                if single.data.first().is_some_and(|d| d.logit() > f32::NEG_INFINITY) {
                    return Some(token(best));
                }
                fill(candidates, logits);
                candidates.apply_sampler(grammar);
                let mut pick: Option<(LlamaToken, f32)> = None;
                for d in &candidates.data {
                    if d.logit() > pick.map_or(f32::NEG_INFINITY, |p| p.1) {
                        pick = Some((d.id(), d.logit()));
                    }
                }
                pick.map(|p| p.0)
            }
            Some(chain) => {
                fill(candidates, logits);
                if let Some(grammar) = self.grammar.as_mut() {
                    candidates.apply_sampler(grammar);
                    if candidates.data.iter().all(|d| d.logit() == f32::NEG_INFINITY) {
                        return None;
                    }
                }
                candidates.apply_sampler(chain);
                candidates.selected_token().or_else(|| candidates.data.first().map(LlamaTokenData::id))
            }
        }
    }

    /// Records the chosen token (penalty window, grammar state).
    pub(super) fn accept(&mut self, token: LlamaToken) {
        self.penalties.accept(token.0);
        if let Some(grammar) = self.grammar.as_mut() {
            grammar.accept(token);
        }
    }
}

fn token(index: usize) -> LlamaToken {
    LlamaToken(i32::try_from(index).unwrap_or(i32::MAX))
}

fn reset(array: &mut LlamaTokenDataArray, data: impl Iterator<Item = LlamaTokenData>) {
    array.data.clear();
    array.data.extend(data);
    array.selected = None;
    array.sorted = false;
}

fn fill(array: &mut LlamaTokenDataArray, logits: &[f32]) {
    reset(array, logits.iter().enumerate().map(|(i, &l)| LlamaTokenData::new(token(i), l, 0.0)));
}
