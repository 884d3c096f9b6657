//! The native engine's adapter and core against llama.cpp's own greedy output, on the tiny
//! random Llama GGUF of `tests/support/tiny_model.rs`. The executor here is a **test double**
//! (not an engine): it keeps the token of every paged KV slot, rebuilds each sequence's prefix
//! from its block table and runs it through llama.cpp (one llama.cpp sequence, trimmed to the
//! common prefix), so the whole path above the device — vocabulary, scheduler, prefix cache,
//! greedy choice, detokenization, stop handling — is checked token for token.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use hyperllama_native::core::executor::{
    BlockCopy, ExecError, Executor, ExecutorLimits, KvCacheLayout, ModelShape, OutputRequest, OutputRow,
    StepBatch, StepOutput,
};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::vocab::tiny_model;
use super::*;
use crate::engine::EngineEvent;

const BLOCK: usize = 4;
const BLOCKS: usize = 256;

fn tiny_path() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        tiny_model::write_tiny_llama(&dir.path().join("tiny.gguf"), &tiny_model::TinyModelSpec::default())
            .unwrap();
        dir
    });
    dir.path().join("tiny.gguf")
}

fn model(path: &Path) -> &'static LlamaModel {
    static MODEL: OnceLock<LlamaModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let backend = crate::engine::llamacpp::backend().unwrap();
        LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).unwrap()
    })
}

fn context(model: &'static LlamaModel) -> LlamaContext<'static> {
    let backend = crate::engine::llamacpp::backend().unwrap();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(1024))
        .with_n_batch(1024)
        .with_n_threads(2)
        .with_n_threads_batch(2);
    model.new_context(backend, params).unwrap()
}

struct LlamaBackedExecutor {
    ctx: LlamaContext<'static>,
    shape: ModelShape,
    gpu: Vec<Vec<Option<u32>>>,
    host: Vec<Vec<Option<u32>>>,
    resident: Vec<u32>,
    batch: LlamaBatch<'static>,
}

impl LlamaBackedExecutor {
    fn new(model: &'static LlamaModel) -> Self {
        Self {
            ctx: context(model),
            shape: ModelShape {
                architecture: "llama".into(),
                vocab_size: usize::try_from(model.n_vocab()).unwrap(),
                max_context: 1024,
                num_layers: model.n_layer() as usize,
                num_heads: model.n_head() as usize,
                num_kv_heads: model.n_head_kv() as usize,
                head_dim: 1,
                weights_bytes: model.size(),
            },
            gpu: vec![vec![None; BLOCK]; BLOCKS],
            host: vec![vec![None; BLOCK]; 16],
            resident: Vec::new(),
            batch: LlamaBatch::new(1024, 1),
        }
    }

    fn bad(e: impl std::fmt::Display) -> ExecError {
        ExecError::Device(e.to_string())
    }
}

impl Executor for LlamaBackedExecutor {
    fn model_shape(&self) -> &ModelShape {
        &self.shape
    }
    fn kv_layout(&self) -> KvCacheLayout {
        KvCacheLayout { block_size: BLOCK, num_gpu_blocks: BLOCKS, num_host_blocks: 16, bytes_per_block: 1 }
    }
    fn limits(&self) -> ExecutorLimits {
        ExecutorLimits { max_step_tokens: 48, max_step_sequences: 16 }
    }
    fn step(&mut self, batch: &StepBatch, out: &mut StepOutput) -> Result<(), ExecError> {
        out.clear();
        for s in &batch.seqs {
            for (i, &t) in s.tokens.iter().enumerate() {
                let p = s.start_pos + i;
                self.gpu[s.block_table[p / BLOCK] as usize][p % BLOCK] = Some(t);
            }
            let end = s.start_pos + s.tokens.len();
            let full: Option<Vec<u32>> =
                (0..end).map(|p| self.gpu[s.block_table[p / BLOCK] as usize][p % BLOCK]).collect();
            let full = full.ok_or_else(|| ExecError::InvalidBatch("unwritten KV slot read".into()))?;
            if s.output == OutputRequest::None {
                continue;
            }
            let keep = self.resident.iter().zip(&full).take_while(|(a, b)| a == b).count().min(end - 1);
            self.ctx.clear_kv_cache_seq(Some(0), Some(keep as u32), None).map_err(Self::bad)?;
            self.batch.clear();
            for (p, &t) in full.iter().enumerate().skip(keep) {
                self.batch.add(LlamaToken(t as i32), p as i32, &[0], p + 1 == end).map_err(Self::bad)?;
            }
            self.ctx.decode(&mut self.batch).map_err(Self::bad)?;
            self.resident = full;
            let logits = self.ctx.get_logits_ith(self.batch.n_tokens() - 1);
            let argmax = crate::engine::sampling::argmax(logits) as u32;
            let logits_row = (s.output == OutputRequest::Logits).then(|| {
                out.logits.extend_from_slice(logits);
                out.logits.len() / self.shape.vocab_size - 1
            });
            out.rows.push(OutputRow { seq_id: s.seq_id, argmax: Some(argmax), logits_row });
        }
        Ok(())
    }
    fn copy_blocks(&mut self, copies: &[BlockCopy]) -> Result<(), ExecError> {
        for c in copies {
            self.gpu[c.dst as usize] = self.gpu[c.src as usize].clone();
        }
        Ok(())
    }
    fn swap_out(&mut self, copies: &[BlockCopy]) -> Result<(), ExecError> {
        for c in copies {
            self.host[c.dst as usize] = self.gpu[c.src as usize].clone();
        }
        Ok(())
    }
    fn swap_in(&mut self, copies: &[BlockCopy]) -> Result<(), ExecError> {
        for c in copies {
            self.gpu[c.dst as usize] = self.host[c.src as usize].clone();
        }
        Ok(())
    }
}

/// A plain single-sequence greedy loop with llama-cpp-2: llama.cpp's own greedy output.
fn reference_greedy(model: &'static LlamaModel, prompt: &str, n: usize) -> String {
    let mut ctx = context(model);
    let tokens = model.vocab().tokenize(prompt.as_bytes(), true, true);
    let mut batch = LlamaBatch::new(1024, 1);
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(t, i as i32, &[0], i + 1 == tokens.len()).unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    let mut sampler = LlamaSampler::greedy();
    let mut bytes = Vec::new();
    for pos in (tokens.len() as i32..).take(n) {
        let token = sampler.sample(&ctx, batch.n_tokens() - 1);
        sampler.accept(token);
        if model.vocab().is_eog(token) {
            break;
        }
        model.vocab().token_to_piece_into(token, &mut bytes, false, None);
        batch.clear();
        batch.add(token, pos, &[0], true).unwrap();
        ctx.decode(&mut batch).unwrap();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn engine() -> NativeEngine {
    let path = tiny_path();
    let model = model(&path);
    let vocab = Arc::new(LlamaVocabulary::load(&path).unwrap());
    let config = NativeConfig { context_length: 512, prefill_chunk: 7, ..NativeConfig::new(&path) };
    NativeEngine::start(
        vocab,
        Box::new(move || Ok(Box::new(LlamaBackedExecutor::new(model)) as Box<dyn Executor>)),
        &config,
    )
    .unwrap()
}

fn greedy(prompt: &str, n: u32, logprobs: bool) -> GenerateRequest {
    GenerateRequest {
        id: "t".into(),
        cache_salt: 1,
        prompt: Prompt::Text(prompt.into()),
        sampling: SamplingParams { temperature: 0.0, repeat_penalty: 1.0, ..Default::default() },
        stop: Vec::new(),
        max_tokens: Some(n),
        num_ctx: None,
        format: OutputFormat::Text,
        logprobs,
    }
}

fn text_of(mut rx: EventStream) -> (String, u32) {
    let mut text = String::new();
    loop {
        match rx.blocking_recv().expect("events until Done") {
            EngineEvent::Text { text: t, .. } => text.push_str(&t),
            EngineEvent::Done { stats, .. } => return (text, stats.cached_tokens),
            EngineEvent::Error(e) => panic!("{e}"),
            EngineEvent::PromptDone { .. } => {}
        }
    }
}

const PROMPTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "In the beginning there was the word, and the word was",
    "Zürich, Genève and Besançon are cities where people say café",
    "1, 2, 3, 4, 5, 6, 7, 8",
    "def main():\n    print('hello')\n",
    "Once upon a time",
];

#[test]
fn greedy_tokens_equal_llama_cpp_alone_together_and_from_the_prefix_cache() {
    let path = tiny_path();
    let model = model(&path);
    let want: Vec<String> = PROMPTS.iter().map(|p| reference_greedy(model, p, 24)).collect();
    // A random model: byte soup, sometimes an end of generation right away, but mostly text.
    assert!(want.iter().filter(|w| w.chars().count() >= 8).count() >= 4, "{want:?}");
    let e = engine();
    // One at a time, through the device argmax and through CPU sampling of the logits.
    for (p, w) in PROMPTS.iter().zip(&want) {
        assert_eq!(&text_of(e.generate(greedy(p, 24, false)).unwrap()).0, w, "{p:?}");
        let (again, cached) = text_of(e.generate(greedy(p, 24, true)).unwrap());
        assert_eq!(&again, w, "{p:?} (logits path, prefix cache)");
        assert!(cached > 0, "{p:?}: the second run reuses the first one's blocks");
    }
    // All at once: chunked prefills (7 tokens) interleaved with decodes in 48-token steps.
    let streams: Vec<_> = PROMPTS.iter().map(|p| e.generate(greedy(p, 24, false)).unwrap()).collect();
    for ((p, w), rx) in PROMPTS.iter().zip(&want).zip(streams) {
        assert_eq!(&text_of(rx).0, w, "{p:?} in a batch");
    }
}

/// The core's sampler keeps the same candidates, with the same logits, as llama.cpp's chain
/// (penalties → top-k → typical → top-p → min-p → temperature) over random logits, histories
/// and parameters. Only the final draw differs (our RNG, not mt19937).
#[test]
fn sampler_candidates_equal_llama_cpp_chain() {
    use hyperllama_native::core::rng::SplitMix64;
    use hyperllama_native::core::sampler::{Sampler, SamplerParams};
    use llama_cpp_2::token::data::LlamaTokenData;
    use llama_cpp_2::token::data_array::LlamaTokenDataArray;

    const V: usize = 300;
    let (mut narrowed, mut several) = (0, 0);
    for seed in 0..200u64 {
        let mut rng = SplitMix64::new(seed);
        let mut pick = |options: &[f32]| options[rng.below(options.len())];
        let params = SamplerParams {
            temperature: pick(&[0.3, 0.8, 1.0, 1.7]),
            top_k: pick(&[0.0, 1.0, 5.0, 40.0, 1000.0]) as i32,
            top_p: pick(&[1.0, 0.95, 0.9, 0.5]),
            min_p: pick(&[0.0, 0.05, 0.2]),
            typical_p: pick(&[1.0, 1.0, 0.9, 0.5]),
            repeat_last_n: pick(&[0.0, 8.0, 64.0]) as i32,
            repeat_penalty: pick(&[1.0, 1.1, 1.5]),
            presence_penalty: pick(&[0.0, 0.5]),
            frequency_penalty: pick(&[0.0, 0.3]),
            seed: Some(seed),
        };
        if params.top_k == 1 {
            continue; // greedy: no candidates to compare
        }
        let logits: Vec<f32> = (0..V).map(|_| (rng.next_f64() * 12.0 - 6.0) as f32).collect();
        let history: Vec<u32> = (0..20).map(|_| rng.below(V) as u32).collect();

        let mut ours = Sampler::new(params.clone(), 1024);
        ours.accept_prompt(&history);
        let got = ours.candidates(&logits);

        let mut chain = LlamaSampler::chain_simple([
            LlamaSampler::penalties(
                V as i32,
                params.repeat_last_n,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            ),
            LlamaSampler::top_k(params.top_k),
            LlamaSampler::typical(params.typical_p, 1),
            LlamaSampler::top_p(params.top_p, 1),
            LlamaSampler::min_p(params.min_p, 1),
            LlamaSampler::temp(params.temperature),
        ]);
        for &t in &history {
            chain.accept(LlamaToken(t as i32));
        }
        let mut array = LlamaTokenDataArray::from_iter(
            logits.iter().enumerate().map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
            false,
        );
        chain.apply(&mut array);
        let mut want: Vec<(u32, f32)> = array
            .data
            .iter()
            .filter(|d| d.logit() > f32::NEG_INFINITY)
            .map(|d| (d.id().0 as u32, d.logit()))
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let ids = |v: &[(u32, f32)]| v.iter().map(|c| c.0).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&want), "seed {seed}: {params:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g.1 - w.1).abs() <= 1e-4 * w.1.abs().max(1.0), "seed {seed}: {g:?} vs {w:?}");
        }
        narrowed += usize::from(got.len() < V);
        several += usize::from(got.len() > 1);
    }
    // The filters did cut, and left choices: the comparison is not vacuous.
    assert!(narrowed > 100 && several > 100, "{narrowed} {several}");
}
