//! The llama.cpp engine on the real Gemma 3 270M Q4_K_M (a base model with sliding-window
//! attention and a 262k vocabulary). Skipped, with a message, when the file is absent: fetch it
//! with `scripts/lib.sh`'s `fetch_gemma` (it lands in `.cache/models/`), or point
//! `HYPERLLAMA_GEMMA_GGUF` at a copy.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Instant;

use hyperllamad::engine::llamacpp::{LlamaCppConfig, LlamaCppEngine};
use hyperllamad::engine::{
    ChatMessage, ChatPrompt, Engine, EngineEvent, EventStream, FinishReason, GenerateRequest, OutputFormat,
    Prompt, RequestStats, SamplingParams,
};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

fn gemma() -> Option<PathBuf> {
    let path = std::env::var_os("HYPERLLAMA_GEMMA_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/models/gemma-3-270m-Q4_K_M.gguf"))
    });
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("SKIPPED: Gemma 3 270M not found at {} (run scripts/lib.sh fetch_gemma)", path.display());
        None
    }
}

fn request(prompt: &str, max_tokens: u32, salt: u64) -> GenerateRequest {
    GenerateRequest {
        id: format!("gemma-{salt}"),
        cache_salt: salt,
        prompt: Prompt::Text(prompt.into()),
        sampling: SamplingParams { temperature: 0.0, repeat_penalty: 1.0, ..SamplingParams::default() },
        stop: Vec::new(),
        max_tokens: Some(max_tokens),
        num_ctx: None,
        format: OutputFormat::Text,
        logprobs: false,
    }
}

fn collect(mut rx: EventStream) -> (String, FinishReason, RequestStats) {
    let mut text = String::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            EngineEvent::Text { text: t, .. } => text.push_str(&t),
            EngineEvent::Done { reason, stats } => return (text, reason, stats),
            EngineEvent::Error(e) => panic!("{e}"),
            EngineEvent::PromptDone { .. } => {}
        }
    }
    panic!("no Done");
}

fn reference_greedy(path: &PathBuf, prompt: &str, n: usize) -> String {
    reference_steps(path, prompt, n).0
}

/// One greedy step of the plain llama.cpp loop: where its piece starts in the output (bytes) and
/// how far the chosen token's logit is ahead of the runner-up's.
struct Step {
    start: usize,
    margin: f32,
}

/// Greedy decoding in a plain single-sequence llama.cpp loop: the text, and each step's margin.
fn reference_steps(path: &PathBuf, prompt: &str, n: usize) -> (String, Vec<Step>) {
    let backend = hyperllamad::engine::llamacpp::backend().expect("backend");
    let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).expect("model");
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(2048))
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(backend, params).expect("context");
    let tokens = model.vocab().tokenize(prompt.as_bytes(), true, true);
    let mut batch = LlamaBatch::new(2048, 1);
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(t, i as i32, &[0], i + 1 == tokens.len()).unwrap();
    }
    ctx.decode(&mut batch).expect("prefill");
    let mut bytes = Vec::new();
    let mut steps = Vec::new();
    for pos in (tokens.len() as i32..).take(n) {
        let logits = ctx.get_logits_ith(batch.n_tokens() - 1);
        let (mut best, mut second) = ((0, f32::NEG_INFINITY), f32::NEG_INFINITY);
        for (i, &l) in logits.iter().enumerate() {
            if l > best.1 {
                second = best.1;
                best = (i, l);
            } else if l > second {
                second = l;
            }
        }
        let t = LlamaToken(best.0 as i32);
        if model.vocab().is_eog(t) {
            break;
        }
        steps.push(Step { start: bytes.len(), margin: best.1 - second });
        model.vocab().token_to_piece_into(t, &mut bytes, false, None);
        batch.clear();
        batch.add(t, pos, &[0], true).unwrap();
        ctx.decode(&mut batch).expect("decode");
    }
    (String::from_utf8_lossy(&bytes).into_owned(), steps)
}

const PROMPTS: &[&str] = &[
    "The capital of Italy is Rome. The capital of France is",
    "Water boils at a temperature of",
    "The three primary colors are",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The largest planet in the solar system is",
    "To make a cup of tea, first",
    "The French word for cat is",
];

#[test]
fn engine_gemma_greedy_is_coherent_and_matches_llama_cpp_in_a_batch() {
    let Some(path) = gemma() else { return };
    let mut config = LlamaCppConfig::new(&path);
    config.n_threads = 2;
    config.n_parallel = 8;
    config.n_ctx = 1024;
    let engine = LlamaCppEngine::load(config).expect("load");
    assert!(engine.info().chat_template.is_none(), "Gemma 3 270M base has no template");

    let started = Instant::now();
    let (text, _, stats) = collect(engine.generate(request(PROMPTS[0], 24, 1)).unwrap());
    eprintln!(
        "single: {:?} | {} tokens in {:.0} ms = {:.1} tok/s (wall {:?})",
        text,
        stats.generated_tokens,
        stats.eval_ns as f64 / 1e6,
        f64::from(stats.generated_tokens) / (stats.eval_ns as f64 / 1e9),
        started.elapsed()
    );
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(text, reference_greedy(&path, PROMPTS[0], 24));

    let started = Instant::now();
    let streams: Vec<_> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| engine.generate(request(p, 32, 10 + i as u64)).unwrap())
        .collect();
    let outs: Vec<_> = streams.into_iter().map(collect).collect();
    let total: u32 = outs.iter().map(|o| o.2.generated_tokens).sum();
    eprintln!(
        "8 parallel: {total} tokens in {:?} = {:.1} tok/s",
        started.elapsed(),
        f64::from(total) / started.elapsed().as_secs_f64()
    );
    // llama.cpp's quantized CPU kernels (repacked Q4_K gemm for several rows, gemv for one)
    // round differently depending on how many rows a matmul has, so a sequence decoded in a
    // batch can leave its single-sequence greedy path where two tokens are nearly tied. A plain
    // batched llama.cpp loop does the same (notes/engine.md); the exact batch-invariance check
    // runs on the F32 tiny model in engine_llamacpp.rs. Here: a batched sequence may part from
    // the plain loop's text only at a step where the loop's top two logits were within
    // NEAR_TIE; anywhere else it is a wrong result (stale KV, a mixed-up sequence, …). Measured
    // with the AVX-512 build: 7 of 8 prompts part, at margins of 0.004-0.29.
    const NEAR_TIE: f32 = 0.5;
    let mut identical = 0;
    for (p, (text, _, _)) in PROMPTS.iter().zip(&outs) {
        let (reference, steps) = reference_steps(&path, p, 32);
        if *text == reference {
            identical += 1;
            continue;
        }
        let common = text.bytes().zip(reference.bytes()).take_while(|(a, b)| a == b).count();
        let step = steps.iter().rev().find(|s| s.start <= common).expect("a first step");
        eprintln!("{p:?}: parts at byte {common}, where the top two logits were {:.3} apart", step.margin);
        assert!(
            step.margin < NEAR_TIE,
            "{p}: the batch parts from the plain loop at byte {common}, where the loop's top two \
             logits were {} apart (not a near tie): {text:?} vs {reference:?}",
            step.margin
        );
    }
    eprintln!("{identical} of {} identical to the single-sequence greedy output", PROMPTS.len());
}

#[test]
fn engine_gemma_prefix_reuse_with_sliding_window_layers() {
    let Some(path) = gemma() else { return };
    let mut config = LlamaCppConfig::new(&path);
    config.n_threads = 2;
    config.n_parallel = 2;
    config.n_ctx = 2048;
    let engine = LlamaCppEngine::load(config).expect("load");
    // Longer than Gemma 3's 512-token sliding window.
    let long: String = (0..120).map(|i| format!("Fact {i}: the sky is blue. ")).collect();
    let (a, _, sa) = collect(engine.generate(request(&long, 12, 5)).unwrap());
    assert!(sa.prompt_tokens > 600, "{sa:?}");
    let decoded = engine.stats().prompt_tokens_decoded;
    let (b, _, sb) = collect(engine.generate(request(&long, 12, 5)).unwrap());
    assert_eq!(sb.cached_tokens, sa.prompt_tokens - 1);
    assert_eq!(engine.stats().prompt_tokens_decoded - decoded, 1);
    eprintln!(
        "prompt eval {} ms cold, {} ms warm",
        sa.prompt_eval_ns / 1_000_000,
        sb.prompt_eval_ns / 1_000_000
    );
    assert_eq!(a, b);
    let (_, _, sc) = collect(engine.generate(request(&long, 12, 6)).unwrap());
    assert_eq!(sc.cached_tokens, 0, "another salt must not hit");
}

#[test]
fn engine_gemma_chat_without_template_continues_the_text() {
    let Some(path) = gemma() else { return };
    let mut config = LlamaCppConfig::new(&path);
    config.n_threads = 2;
    config.n_parallel = 1;
    config.n_ctx = 512;
    let engine = LlamaCppEngine::load(config).expect("load");
    let mut r = request("", 16, 1);
    r.prompt = Prompt::Chat(ChatPrompt {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: PROMPTS[0].into(),
            tool_calls_json: None,
        }],
        template: None,
        tools_json: None,
        add_generation_prompt: true,
    });
    let (text, _, _) = collect(engine.generate(r).unwrap());
    assert!(text.contains("Paris"), "{text:?}");
}
