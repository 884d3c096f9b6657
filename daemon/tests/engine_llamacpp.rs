//! The llama.cpp engine against real llama.cpp, on tiny random Llama models written by
//! `tests/support/tiny_model.rs`: greedy output equals a plain llama-cpp-2 decode loop (alone
//! and inside a batch of 9), prefix reuse and its salting, cancellation during generation and
//! during prefill, stop strings, constrained output, sampling, embeddings, chat templates.

#[path = "../../tests/support/tiny_model.rs"]
#[allow(dead_code)]
mod tiny_model;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hyperllamad::engine::llamacpp::{LlamaCppConfig, LlamaCppEngine};
use hyperllamad::engine::{
    ChatMessage, ChatPrompt, EmbedRequest, Engine, EngineError, EngineEvent, EventStream, FinishReason,
    GenerateRequest, OutputFormat, Prompt, RequestStats, SamplingParams,
};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use tiny_model::TinyModelSpec;

fn model_file(name: &str, spec: &TinyModelSpec) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let path = dir.path().join(format!("{name}.gguf"));
    if !path.exists() {
        let tmp = dir.path().join(format!("{name}.partial"));
        tiny_model::write_tiny_llama(&tmp, spec).expect("write model");
        std::fs::rename(&tmp, &path).expect("rename");
    }
    path
}

fn tiny() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| model_file("tiny", &TinyModelSpec::default())).clone()
}

fn config(path: &Path) -> LlamaCppConfig {
    let mut c = LlamaCppConfig::new(path);
    c.n_ctx = 1024;
    c.n_parallel = 4;
    c.n_threads = 2;
    c
}

fn greedy() -> SamplingParams {
    SamplingParams { temperature: 0.0, repeat_penalty: 1.0, ..SamplingParams::default() }
}

fn request(prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        id: "test".into(),
        cache_salt: 1,
        prompt: Prompt::Text(prompt.into()),
        sampling: greedy(),
        stop: Vec::new(),
        max_tokens: Some(max_tokens),
        num_ctx: None,
        format: OutputFormat::Text,
        logprobs: false,
    }
}

struct Outcome {
    text: String,
    events: Vec<EngineEvent>,
    reason: FinishReason,
    stats: RequestStats,
    prompt_done: Option<(u32, u32)>,
}

fn collect(mut rx: EventStream) -> Outcome {
    let mut text = String::new();
    let mut events = Vec::new();
    let mut prompt_done = None;
    while let Some(ev) = rx.blocking_recv() {
        events.push(ev.clone());
        match ev {
            EngineEvent::PromptDone { prompt_tokens, cached_tokens } => {
                prompt_done = Some((prompt_tokens, cached_tokens))
            }
            EngineEvent::Text { text: t, .. } => {
                assert!(prompt_done.is_some(), "text before PromptDone");
                text.push_str(&t);
            }
            EngineEvent::Done { reason, stats } => {
                return Outcome { text, events, reason, stats, prompt_done };
            }
            EngineEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("stream ended without Done: {events:?}");
}

fn run(engine: &LlamaCppEngine, req: GenerateRequest) -> Outcome {
    collect(engine.generate(req).expect("generate"))
}

/// A plain single-sequence greedy loop with llama-cpp-2: llama.cpp's own greedy output.
fn reference_greedy(path: &Path, prompt: &str, n: usize) -> String {
    let backend = hyperllamad::engine::llamacpp::backend().expect("backend");
    let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).expect("model");
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(1024))
        .with_n_batch(1024)
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(backend, params).expect("context");
    let tokens = model.vocab().tokenize(prompt.as_bytes(), true, true);
    let mut batch = LlamaBatch::new(1024, 1);
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(t, i as i32, &[0], i + 1 == tokens.len()).unwrap();
    }
    ctx.decode(&mut batch).expect("decode prompt");
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
        ctx.decode(&mut batch).expect("decode");
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

const PROMPTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "In the beginning there was the word, and the word was",
    "Zürich, Genève and Besançon are cities where people say café",
    "1, 2, 3, 4, 5, 6, 7, 8",
    "def main():\n    print('hello')\n",
    "She sells sea shells on the sea shore",
    "To be or not to be, that is the question",
    "Once upon a time",
    "The answer is",
];

#[test]
fn engine_greedy_matches_llama_cpp_alone_and_in_a_batch_of_nine() {
    let path = tiny();
    let n = 48;
    let target = PROMPTS[1];
    let expected = reference_greedy(&path, target, n);
    assert!(!expected.is_empty());

    let engine = LlamaCppEngine::load(config(&path)).expect("load");
    let alone = run(&engine, request(target, n as u32));
    assert_eq!(alone.text, expected, "alone");
    drop(engine);

    let mut c = config(&path);
    c.n_parallel = 9;
    // Small prefill chunks so prompts interleave with other sequences' decode steps.
    c.prefill_chunk = 7;
    let engine = LlamaCppEngine::load(c).expect("load");
    let mut streams = Vec::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        let mut r = request(p, n as u32 + i as u32);
        r.cache_salt = i as u64 + 100;
        streams.push(engine.generate(r).expect("generate"));
    }
    let outcomes: Vec<Outcome> = streams.into_iter().map(collect).collect();
    let expected_in_batch = reference_greedy(&path, target, n + 1);
    assert!(expected_in_batch.starts_with(&expected));
    assert_eq!(outcomes[1].text, expected_in_batch, "inside a batch of nine");
    for (i, (p, o)) in PROMPTS.iter().zip(&outcomes).enumerate() {
        assert_eq!(o.text, reference_greedy(&path, p, n + i), "{p}");
    }
    assert_eq!(engine.stats().active_sequences, 0);
}

#[test]
fn engine_prefix_reuse_is_per_salt_and_exact() {
    let path = tiny();
    let engine = LlamaCppEngine::load(config(&path)).expect("load");
    let long: String = (0..24).map(|i| format!("sentence number {i} is here. ")).collect();
    let before = engine.stats().prompt_tokens_decoded;
    let first = run(&engine, request(&long, 16));
    let n_prompt = first.stats.prompt_tokens;
    assert!(n_prompt > 200, "{n_prompt}");
    assert_eq!(first.stats.cached_tokens, 0);
    assert_eq!(first.prompt_done, Some((n_prompt, 0)));
    let mid = engine.stats().prompt_tokens_decoded;
    assert_eq!(mid - before, u64::from(n_prompt));

    let second = run(&engine, request(&long, 16));
    assert_eq!(second.stats.cached_tokens, n_prompt - 1);
    assert_eq!(engine.stats().prompt_tokens_decoded - mid, 1, "only the last prompt token is decoded again");
    assert_eq!(second.text, first.text, "reused KV gives the same output");

    // Another user (salt) gets no hit, even on an identical prompt.
    let mut other = request(&long, 16);
    other.cache_salt = 2;
    let third = run(&engine, other);
    assert_eq!(third.stats.cached_tokens, 0);
    assert_eq!(third.text, first.text);

    // A longer prompt extending the cached one reuses the common part.
    let longer = format!("{long} and then some more words");
    let fourth = run(&engine, request(&longer, 8));
    assert!(fourth.stats.cached_tokens >= n_prompt - 1, "{:?}", fourth.stats);
    let expected = reference_greedy(&path, &longer, 8);
    assert_eq!(fourth.text, expected);
}

#[test]
fn engine_prefix_is_copied_from_a_busy_sequence() {
    let path = tiny();
    let engine = LlamaCppEngine::load(config(&path)).expect("load");
    let system: String = (0..40).map(|i| format!("rule {i}: be nice. ")).collect();
    // A long generation keeps the first sequence busy while the second arrives.
    let mut a = request(&format!("{system}Question A"), 400);
    a.cache_salt = 9;
    let rx_a = engine.generate(a).unwrap();
    let start = Instant::now();
    while engine.stats().generated_tokens_decoded == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut b = request(&format!("{system}Question B"), 8);
    b.cache_salt = 9;
    let out_b = run(&engine, b);
    assert!(out_b.stats.cached_tokens > 100, "{:?}", out_b.stats);
    assert_eq!(out_b.text, reference_greedy(&path, &format!("{system}Question B"), 8));
    drop(rx_a);
}

fn wait_idle(engine: &LlamaCppEngine) -> u64 {
    let start = Instant::now();
    while engine.stats().active_sequences > 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "slot not freed: {:?}", engine.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    engine.stats().steps
}

#[test]
fn engine_dropping_the_receiver_frees_the_slot_during_generation() {
    let engine = LlamaCppEngine::load(config(&tiny())).expect("load");
    let mut rx = engine.generate(request("Once upon a time", 100_000)).unwrap();
    // Read a few tokens, then hang up.
    let mut texts = 0;
    while texts < 5 {
        if let Some(EngineEvent::Text { .. }) = rx.blocking_recv() {
            texts += 1;
        }
    }
    let steps_at_drop = engine.stats().steps;
    drop(rx);
    let steps_when_free = wait_idle(&engine);
    assert!(steps_when_free <= steps_at_drop + 2, "took {} steps", steps_when_free - steps_at_drop);
    // The engine keeps serving.
    assert!(!run(&engine, request("Hello", 4)).events.is_empty());
}

#[test]
fn engine_dropping_the_receiver_frees_the_slot_during_prefill() {
    let mut c = config(&tiny());
    c.n_ctx = 4096;
    c.n_batch = 16;
    c.prefill_chunk = 16;
    let engine = LlamaCppEngine::load(c).expect("load");
    let long: String = (0..700).map(|i| format!("w{i} ")).collect();
    let rx = engine.generate(request(&long, 4)).unwrap();
    let n_prompt = engine.tokenize(&long, true).unwrap().len() as u64;
    let start = Instant::now();
    while engine.stats().prompt_tokens_decoded == 0 {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::yield_now();
    }
    drop(rx);
    let steps_at_drop = engine.stats().steps;
    let steps_when_free = wait_idle(&engine);
    let decoded = engine.stats().prompt_tokens_decoded;
    assert!(decoded < n_prompt, "prefill ran to the end ({decoded} of {n_prompt}) although the client left");
    assert!(steps_when_free <= steps_at_drop + 2, "took {} steps", steps_when_free - steps_at_drop);
}

#[test]
fn engine_queued_requests_wait_for_a_slot_and_cancel_while_waiting() {
    let mut c = config(&tiny());
    c.n_parallel = 1;
    let engine = LlamaCppEngine::load(c).expect("load");
    let rx1 = engine.generate(request("first", 50_000)).unwrap();
    let rx2 = engine.generate(request("second", 4)).unwrap();
    let start = Instant::now();
    while engine.stats().waiting != 1 {
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", engine.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(rx2);
    drop(rx1);
    wait_idle(&engine);
    assert_eq!(engine.stats().waiting, 0);
}

#[test]
fn engine_stop_strings_are_never_emitted() {
    let path = tiny();
    let engine = LlamaCppEngine::load(config(&path)).expect("load");
    let full = run(&engine, request(PROMPTS[0], 60)).text;
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 20, "{full:?}");
    // A stop string taken from the middle of the greedy output, spanning several tokens.
    let stop: String = chars[12..17].iter().collect();
    let cut = full.find(&stop).unwrap();
    let mut r = request(PROMPTS[0], 60);
    r.stop = vec!["never-appears-xyz".into(), stop.clone()];
    let out = run(&engine, r);
    assert_eq!(out.reason, FinishReason::Stop);
    assert_eq!(out.text, full[..cut]);
    for ev in &out.events {
        if let EngineEvent::Text { text, .. } = ev {
            assert!(!text.contains(&stop));
        }
    }
    // A stop string that never matches changes nothing.
    let mut r = request(PROMPTS[0], 60);
    r.stop = vec!["\u{1F600}never".into()];
    assert_eq!(run(&engine, r).text, full);
}

#[test]
fn engine_output_is_lossless_utf8_and_counts_tokens() {
    let path = tiny();
    let engine = LlamaCppEngine::load(config(&path)).expect("load");
    for p in PROMPTS {
        let out = run(&engine, request(p, 40));
        assert_eq!(out.text, reference_greedy(&path, p, 40), "{p}");
        let s = out.stats;
        assert!(s.generated_tokens <= 40);
        assert!(s.prompt_tokens > 0 && s.eval_ns > 0 && s.prompt_eval_ns > 0, "{s:?}");
        if out.reason == FinishReason::Length {
            assert_eq!(s.generated_tokens, 40);
        }
    }
}

#[test]
fn engine_json_format_and_schema_constrain_output() {
    let engine = LlamaCppEngine::load(config(&tiny())).expect("load");
    let mut r = request("Give me JSON:", 120);
    r.format = OutputFormat::Json;
    let out = run(&engine, r);
    assert!(out.text.trim_start().starts_with('{'), "{:?}", out.text);
    if out.reason == FinishReason::Stop {
        serde_json::from_str::<serde_json::Value>(&out.text).expect("valid JSON");
    }
    let mut r = request("Give me JSON:", 120);
    r.format = OutputFormat::JsonSchema(r#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"],"additionalProperties":false}"#.into());
    let out = run(&engine, r);
    let compact: String = out.text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(compact.starts_with("{\"n\":"), "{:?}", out.text);
    if out.reason == FinishReason::Stop {
        let v: serde_json::Value = serde_json::from_str(&out.text).expect("valid JSON");
        assert!(v["n"].is_i64(), "{v}");
    }
    let mut bad = request("x", 4);
    bad.format = OutputFormat::JsonSchema("{not json".into());
    assert!(matches!(engine.generate(bad), Err(EngineError::InvalidRequest(_))));
}

#[test]
fn engine_seeded_sampling_is_reproducible_and_penalties_apply() {
    let engine = LlamaCppEngine::load(config(&tiny())).expect("load");
    let sampled = |seed: u64| {
        let mut r = request(PROMPTS[7], 40);
        r.sampling = SamplingParams { seed: Some(seed), temperature: 1.0, ..SamplingParams::default() };
        run(&engine, r).text
    };
    assert_eq!(sampled(7), sampled(7));
    let texts: std::collections::HashSet<String> = (0..6).map(sampled).collect();
    assert!(texts.len() > 1, "different seeds all gave the same text");

    let mut r = request(PROMPTS[7], 40);
    r.sampling = SamplingParams {
        temperature: 0.0,
        repeat_penalty: 5.0,
        repeat_last_n: 64,
        ..SamplingParams::default()
    };
    let penalized = run(&engine, r).text;
    assert_ne!(penalized, run(&engine, request(PROMPTS[7], 40)).text);

    let mut r = request(PROMPTS[7], 8);
    r.sampling.temperature = f32::NAN;
    assert!(matches!(engine.generate(r), Err(EngineError::InvalidRequest(_))));
    let mut r = request(PROMPTS[7], 8);
    r.logprobs = true;
    let out = run(&engine, r);
    for ev in out.events {
        if let EngineEvent::Text { logprob, .. } = ev {
            assert!(logprob.is_some_and(|l| l <= 0.0));
        }
    }
}

#[test]
fn engine_prompts_longer_than_the_context_are_refused() {
    let mut c = config(&tiny());
    c.n_ctx = 64;
    let engine = LlamaCppEngine::load(c).expect("load");
    let long: String = (0..200).map(|i| format!("x{i} ")).collect();
    assert!(matches!(engine.generate(request(&long, 4)), Err(EngineError::InvalidRequest(_))));
    // Generation stops at the context size (or earlier at an end-of-sequence token).
    for p in PROMPTS {
        let out = run(&engine, request(p, 10_000));
        assert!(out.stats.prompt_tokens + out.stats.generated_tokens <= 64, "{:?}", out.stats);
        if out.reason == FinishReason::Length {
            assert!(out.stats.prompt_tokens + out.stats.generated_tokens >= 62, "{:?}", out.stats);
        }
    }
}

#[test]
fn engine_embeddings_are_normalized_and_deterministic() {
    let engine = LlamaCppEngine::load(config(&tiny())).expect("load");
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let req = EmbedRequest {
        inputs: vec!["hello world".into(), "goodbye".into(), "hello world".into()],
        truncate: false,
    };
    let resp = rt.block_on(engine.embed(req)).expect("embed");
    assert_eq!(resp.embeddings.len(), 3);
    for v in &resp.embeddings {
        assert_eq!(v.len(), 64);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
    }
    assert_eq!(resp.embeddings[0], resp.embeddings[2]);
    assert_ne!(resp.embeddings[0], resp.embeddings[1]);
    assert!(resp.prompt_tokens > 0);
    // Generation still works after the embedding context was created.
    assert!(!run(&engine, request("Hello", 4)).events.is_empty());
}

fn chat(messages: &[(&str, &str)], template: Option<&str>) -> Prompt {
    Prompt::Chat(ChatPrompt {
        messages: messages
            .iter()
            .map(|(r, c)| ChatMessage { role: (*r).into(), content: (*c).into(), tool_calls_json: None })
            .collect(),
        template: template.map(str::to_owned),
        tools_json: None,
        add_generation_prompt: true,
    })
}

#[test]
fn engine_chat_templates_from_gguf_override_and_fallback() {
    let spec = TinyModelSpec {
        chat_template: Some("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}".into()),
        ..TinyModelSpec::default()
    };
    let path = model_file("templated", &spec);
    let engine = LlamaCppEngine::load(config(&path)).expect("load");
    assert!(engine.info().chat_template.is_some());
    let Prompt::Chat(c) = chat(&[("user", "hi")], None) else { unreachable!() };
    assert_eq!(engine.render_chat(&c).unwrap(), "<|user|>hi\n<|assistant|>");
    let mut r = request("", 8);
    r.prompt = chat(&[("user", "hi")], None);
    let out = run(&engine, r);
    // BOS + the rendered text.
    assert_eq!(
        out.stats.prompt_tokens as usize,
        engine.tokenize("<|user|>hi\n<|assistant|>", true).unwrap().len()
    );

    // A Modelfile TEMPLATE in Go syntax.
    let Prompt::Chat(c) = chat(
        &[("system", "S"), ("user", "hi")],
        Some("{{ if .System }}[{{ .System }}]{{ end }}Q: {{ .Prompt }}\nA: {{ .Response }}"),
    ) else {
        unreachable!()
    };
    assert_eq!(engine.render_chat(&c).unwrap(), "[S]Q: hi\nA: ");

    // Hostile overrides fail fast as invalid requests.
    for hostile in [
        "{{ ''.__class__ }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    ] {
        let mut r = request("", 8);
        r.prompt = chat(&[("user", "hi")], Some(hostile));
        let start = Instant::now();
        assert!(matches!(engine.generate(r), Err(EngineError::InvalidRequest(_))), "{hostile}");
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    // No template in the model: a single turn is passed through as text.
    let plain = LlamaCppEngine::load(config(&tiny())).expect("load");
    assert!(plain.info().chat_template.is_none());
    let Prompt::Chat(c) = chat(&[("user", "The sky is")], None) else { unreachable!() };
    assert_eq!(plain.render_chat(&c).unwrap(), "The sky is");
    let mut r = request("", 8);
    r.prompt = chat(&[("user", "The sky is")], None);
    assert_eq!(run(&plain, r).text, run(&plain, request("The sky is", 8)).text);
}

#[test]
fn engine_hostile_template_in_the_model_file_only_fails_chat() {
    let spec = TinyModelSpec {
        chat_template: Some("{{ ''.__class__.__mro__ }}".into()),
        ..TinyModelSpec::default()
    };
    let engine = LlamaCppEngine::load(config(&model_file("hostile", &spec))).expect("load");
    let mut r = request("", 4);
    r.prompt = chat(&[("user", "hi")], None);
    assert!(matches!(engine.generate(r), Err(EngineError::InvalidRequest(_))));
    assert!(!run(&engine, request("raw prompts still work", 4)).events.is_empty());
}

#[test]
fn engine_f16_weights_load_and_info_is_reported() {
    let spec = TinyModelSpec { f16: true, seed: 7, ..TinyModelSpec::default() };
    let path = model_file("f16", &spec);
    let engine = LlamaCppEngine::load(config(&path)).expect("load");
    let info = engine.info();
    assert_eq!(info.engine, "llama.cpp");
    assert_eq!(info.parallel, 4);
    assert_eq!(info.context_length, 1024);
    assert!(info.weights_bytes > 0 && info.kv_bytes > 0, "{info:?}");
    assert_eq!(run(&engine, request(PROMPTS[2], 24)).text, reference_greedy(&path, PROMPTS[2], 24));
}

#[test]
fn engine_missing_model_is_a_load_error() {
    assert!(matches!(
        LlamaCppEngine::load(LlamaCppConfig::new("/nonexistent/model.gguf")),
        Err(EngineError::Load(_))
    ));
}

#[test]
fn engine_unified_kv_cache_batches_and_reuses_prefixes() {
    let path = tiny();
    let mut c = config(&path);
    c.kv_unified = true;
    c.prefill_chunk = 5;
    let engine = LlamaCppEngine::load(c).expect("load");
    let streams: Vec<_> = PROMPTS[..4].iter().map(|p| engine.generate(request(p, 20)).unwrap()).collect();
    for (p, rx) in PROMPTS[..4].iter().zip(streams) {
        assert_eq!(collect(rx).text, reference_greedy(&path, p, 20), "{p}");
    }
    let long: String = (0..20).map(|i| format!("line {i} of the shared preamble. ")).collect();
    let first = run(&engine, request(&format!("{long}first"), 8));
    let second = run(&engine, request(&format!("{long}second"), 8));
    assert!(second.stats.cached_tokens > 100, "{:?}", second.stats);
    assert_eq!(second.text, reference_greedy(&path, &format!("{long}second"), 8));
    assert_eq!(first.text, reference_greedy(&path, &format!("{long}first"), 8));
}

#[test]
fn engine_shared_prefix_arriving_together_is_prefilled_once() {
    let path = tiny();
    let mut c = config(&path);
    c.n_batch = 64;
    c.prefill_chunk = 64;
    let engine = LlamaCppEngine::load(c).expect("load");
    let system: String = (0..30).map(|i| format!("shared rule {i}. ")).collect();
    let prompts: Vec<String> = (0..4).map(|i| format!("{system}user question {i}?")).collect();
    let before = engine.stats().prompt_tokens_decoded;
    let streams: Vec<_> = prompts.iter().map(|p| engine.generate(request(p, 6)).unwrap()).collect();
    let outs: Vec<Outcome> = streams.into_iter().map(collect).collect();
    let decoded = engine.stats().prompt_tokens_decoded - before;
    let total: u32 = outs.iter().map(|o| o.stats.prompt_tokens).sum();
    let cached: u32 = outs.iter().map(|o| o.stats.cached_tokens).sum();
    assert!(cached > total / 2, "cached {cached} of {total}");
    assert_eq!(decoded, u64::from(total - cached));
    for (p, o) in prompts.iter().zip(&outs) {
        assert_eq!(o.text, reference_greedy(&path, p, 6), "{p}");
    }
}
