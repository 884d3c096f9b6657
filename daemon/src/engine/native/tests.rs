//! The adapter above the engine interface, without a GPU: a byte-level vocabulary and a tiny
//! deterministic CPU executor written for these tests only (it is not an engine). The executor
//! keeps the token written at each paged KV slot and predicts from what it reads back through
//! the block table, so prefix sharing, copy-on-write and preemption are exercised for real.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyperllama_native::core::executor::{
    BlockCopy, ExecError, Executor, ExecutorLimits, KvCacheLayout, ModelShape, OutputRequest, OutputRow,
    StepBatch, StepOutput,
};

use super::*;
use crate::engine::{ChatMessage, ChatPrompt, EngineEvent, FinishReason};

const EOS: u32 = 256;

struct ByteVocab;

impl Vocabulary for ByteVocab {
    fn tokenize(&self, text: &str, _add_special: bool) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }
    fn piece(&self, token: u32, out: &mut Vec<u8>) {
        if let Ok(b) = u8::try_from(token) {
            out.push(b);
        }
    }
    fn eog_tokens(&self) -> Vec<u32> {
        vec![EOS]
    }
    fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens { bos: String::new(), eos: String::new() }
    }
    fn chat_template(&self) -> Option<String> {
        None
    }
    fn n_tokens(&self) -> usize {
        257
    }
}

/// The "model": after a prefix ending in '.', end of generation; otherwise the token in the
/// middle of the prefix.
fn next_token(prefix: &[u32]) -> u32 {
    if prefix.last() == Some(&u32::from(b'.')) { EOS } else { prefix[prefix.len() / 2] }
}

fn expected_text(prompt: &str, n: usize) -> String {
    let mut all: Vec<u32> = prompt.bytes().map(u32::from).collect();
    let mut out = String::new();
    for _ in 0..n {
        let t = next_token(&all);
        if t == EOS {
            break;
        }
        out.push(char::from(t as u8));
        all.push(t);
    }
    out
}

struct TinyExecutor {
    shape: ModelShape,
    layout: KvCacheLayout,
    gpu: Vec<Vec<Option<u32>>>,
    host: Vec<Vec<Option<u32>>>,
    step_delay: Duration,
    fail_at_step: Option<usize>,
    steps: usize,
}

impl TinyExecutor {
    fn new(num_gpu_blocks: usize, step_delay: Duration) -> Self {
        let block_size = 4;
        Self {
            shape: ModelShape {
                architecture: "tiny-test".into(),
                vocab_size: 257,
                max_context: 64,
                num_layers: 1,
                num_heads: 1,
                num_kv_heads: 1,
                head_dim: 1,
                weights_bytes: 1,
            },
            layout: KvCacheLayout { block_size, num_gpu_blocks, num_host_blocks: 8, bytes_per_block: 32 },
            gpu: vec![vec![None; block_size]; num_gpu_blocks],
            host: vec![vec![None; block_size]; 8],
            step_delay,
            fail_at_step: None,
            steps: 0,
        }
    }
}

impl Executor for TinyExecutor {
    fn model_shape(&self) -> &ModelShape {
        &self.shape
    }
    fn kv_layout(&self) -> KvCacheLayout {
        self.layout
    }
    fn limits(&self) -> ExecutorLimits {
        ExecutorLimits { max_step_tokens: 16, max_step_sequences: 8 }
    }
    fn step(&mut self, batch: &StepBatch, out: &mut StepOutput) -> Result<(), ExecError> {
        std::thread::sleep(self.step_delay);
        out.clear();
        self.steps += 1;
        if self.fail_at_step == Some(self.steps) {
            return Err(ExecError::Device("an illegal memory access was encountered".into()));
        }
        let bs = self.layout.block_size;
        for s in &batch.seqs {
            for (i, &t) in s.tokens.iter().enumerate() {
                let p = s.start_pos + i;
                self.gpu[s.block_table[p / bs] as usize][p % bs] = Some(t);
            }
            let end = s.start_pos + s.tokens.len();
            let prefix: Option<Vec<u32>> =
                (0..end).map(|p| self.gpu[s.block_table[p / bs] as usize][p % bs]).collect();
            let prefix = prefix.ok_or_else(|| ExecError::InvalidBatch("unwritten KV slot read".into()))?;
            let next = next_token(&prefix);
            match s.output {
                OutputRequest::None => {}
                OutputRequest::Argmax => {
                    out.rows.push(OutputRow { seq_id: s.seq_id, argmax: Some(next), logits_row: None })
                }
                OutputRequest::Logits => {
                    let row = out.logits.len() / 257;
                    let base = out.logits.len();
                    out.logits.resize(base + 257, 0.0);
                    out.logits[base + next as usize] = 30.0;
                    out.rows.push(OutputRow { seq_id: s.seq_id, argmax: None, logits_row: Some(row) });
                }
            }
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

fn engine_with(blocks: usize, delay: Duration) -> NativeEngine {
    let config = NativeConfig { context_length: 0, host_swap_bytes: 1, ..NativeConfig::new("unused.gguf") };
    NativeEngine::start(
        Arc::new(ByteVocab),
        Box::new(move || Ok(Box::new(TinyExecutor::new(blocks, delay)) as Box<dyn Executor>)),
        &config,
    )
    .unwrap()
}

fn engine() -> NativeEngine {
    engine_with(64, Duration::ZERO)
}

fn request(prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        id: "t".into(),
        cache_salt: 1,
        prompt: Prompt::Text(prompt.into()),
        sampling: SamplingParams { temperature: 0.0, repeat_penalty: 1.0, ..Default::default() },
        stop: Vec::new(),
        max_tokens: Some(max_tokens),
        num_ctx: None,
        format: OutputFormat::Text,
        logprobs: false,
    }
}

/// (text, PromptDone's cached tokens, finish reason, stats)
fn collect(mut rx: EventStream) -> (String, u32, FinishReason, crate::engine::RequestStats) {
    let mut text = String::new();
    let mut cached = u32::MAX;
    loop {
        match rx.blocking_recv().expect("a Done event") {
            EngineEvent::PromptDone { cached_tokens, .. } => cached = cached_tokens,
            EngineEvent::Text { text: t, .. } => text.push_str(&t),
            EngineEvent::Done { reason, stats } => return (text, cached, reason, stats),
            EngineEvent::Error(e) => panic!("{e}"),
        }
    }
}

#[test]
fn generates_the_model_text_with_stats() {
    let e = engine();
    let (text, cached, reason, stats) = collect(e.generate(request("hello world", 12)).unwrap());
    assert_eq!(text, expected_text("hello world", 12));
    assert_eq!((cached, reason), (0, FinishReason::Length));
    assert_eq!((stats.prompt_tokens, stats.generated_tokens, stats.cached_tokens), (11, 12, 0));
    assert!(stats.eval_ns > 0);
    let info = e.info();
    assert_eq!((info.engine.as_str(), info.context_length, info.kv_bytes), ("native", 64, 64 * 32));
}

#[test]
fn sampled_and_logprob_paths_give_the_same_text() {
    let e = engine();
    let mut r = request("sampling path", 10);
    r.logprobs = true;
    r.sampling = SamplingParams { temperature: 0.7, seed: Some(3), ..Default::default() };
    let (text, ..) = collect(e.generate(r).unwrap());
    // Logits put 30 nats on one token: any sampler picks it.
    assert_eq!(text, expected_text("sampling path", 10));
}

#[test]
fn prefix_cache_is_reused_per_salt_and_reported() {
    let e = engine();
    let prompt = "0123456789"; // two full blocks of 4
    let (first, cached, ..) = collect(e.generate(request(prompt, 3)).unwrap());
    assert_eq!(cached, 0);
    let (again, cached, _, stats) = collect(e.generate(request(prompt, 3)).unwrap());
    assert_eq!((cached, stats.cached_tokens), (8, 8));
    assert_eq!(again, first);
    let mut other = request(prompt, 3);
    other.cache_salt = 2;
    let (_, cached, ..) = collect(e.generate(other).unwrap());
    assert_eq!(cached, 0, "another user's salt never matches");
    assert!(e.stats().cache_hits >= 2);
}

#[test]
fn stop_strings_and_end_of_generation() {
    let e = engine();
    let full = expected_text("abcdefgh", 20);
    let stop = full[5..7].to_string();
    let cut = full.find(&stop).unwrap();
    let mut r = request("abcdefgh", 20);
    r.stop = vec![stop];
    let (text, _, reason, _) = collect(e.generate(r).unwrap());
    assert_eq!((text.as_str(), reason), (&full[..cut], FinishReason::Stop));
    // A prompt ending in '.' makes the model end at once: no text, nothing counted.
    let (text, _, reason, stats) = collect(e.generate(request("the end.", 20)).unwrap());
    assert_eq!((text.as_str(), reason, stats.generated_tokens), ("", FinishReason::Stop, 0));
}

#[test]
fn chat_prompts_use_the_shared_templates() {
    let e = engine();
    let chat = ChatPrompt {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "hi there".into(),
            tool_calls_json: None,
        }],
        template: Some("{% for m in messages %}<{{ m.content }}>{% endfor %}".into()),
        tools_json: None,
        add_generation_prompt: true,
    };
    let mut r = request("", 5);
    r.prompt = Prompt::Chat(chat);
    let (text, _, _, stats) = collect(e.generate(r).unwrap());
    assert_eq!(stats.prompt_tokens, 10);
    assert_eq!(text, expected_text("<hi there>", 5));
}

#[test]
fn dropping_the_receiver_cancels_within_a_step() {
    let e = engine_with(64, Duration::from_millis(5));
    let mut rx = e.generate(request("a long running request", 1000)).unwrap();
    // Wait for some text, then hang up.
    loop {
        if let Some(EngineEvent::Text { .. }) = rx.blocking_recv() {
            break;
        }
    }
    drop(rx);
    let start = Instant::now();
    while e.stats().active_sequences > 0 {
        assert!(start.elapsed() < Duration::from_secs(2), "not cancelled");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The freed blocks serve the next request.
    let (text, ..) = collect(e.generate(request("next", 4)).unwrap());
    assert_eq!(text, expected_text("next", 4));
}

#[test]
fn many_concurrent_requests_under_kv_pressure() {
    // 12 blocks of 4 = 48 positions for 8 requests of ~40 positions: preemption must happen.
    let e = engine_with(12, Duration::ZERO);
    let prompts: Vec<String> = (0..8).map(|i| format!("request number {i} says")).collect();
    let streams: Vec<_> = prompts.iter().map(|p| e.generate(request(p, 20)).unwrap()).collect();
    for (p, rx) in prompts.iter().zip(streams) {
        let (text, ..) = collect(rx);
        assert_eq!(text, expected_text(p, 20), "{p}");
    }
    assert!(e.stats().preemptions > 0);
}

#[test]
fn a_device_failure_fails_the_requests_and_stops_the_engine() {
    let config = NativeConfig::new("unused.gguf");
    let e = NativeEngine::start(
        Arc::new(ByteVocab),
        Box::new(|| {
            let mut exec = TinyExecutor::new(64, Duration::ZERO);
            exec.fail_at_step = Some(3);
            Ok(Box::new(exec) as Box<dyn Executor>)
        }),
        &config,
    )
    .unwrap();
    let mut rx = e.generate(request("doomed request", 50)).unwrap();
    let error = loop {
        match rx.blocking_recv() {
            Some(EngineEvent::Error(message)) => break message,
            Some(_) => {}
            None => panic!("no error event"),
        }
    };
    assert!(error.contains("illegal memory access"), "{error}");
    // The engine thread ended (in a runner: the process, so the supervisor restarts it).
    let start = Instant::now();
    while e.generate(request("next", 1)).is_ok() {
        assert!(start.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn refuses_what_it_cannot_do() {
    let e = engine();
    let mut r = request("x", 1);
    r.format = OutputFormat::Json;
    assert!(matches!(e.generate(r), Err(EngineError::InvalidRequest(_))));
    assert!(matches!(e.generate(request(&"y".repeat(64), 1)), Err(EngineError::InvalidRequest(_))));
    let mut r = request("x", 1);
    r.num_ctx = Some(4);
    assert!(matches!(e.generate(request("", 1)), Err(EngineError::InvalidRequest(_))));
    r.prompt = Prompt::Text("four".into());
    assert!(matches!(e.generate(r), Err(EngineError::InvalidRequest(_))));
    let mut r = request("x", 1);
    r.sampling.top_p = f32::NAN;
    assert!(matches!(e.generate(r), Err(EngineError::InvalidRequest(_))));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let embed = rt.block_on(e.embed(EmbedRequest { inputs: vec!["a".into()], truncate: false }));
    assert!(matches!(embed, Err(EngineError::InvalidRequest(_))));
    assert_eq!(e.tokenize("ab", true).unwrap(), vec![97, 98]);
}

#[test]
fn a_failing_executor_is_a_load_error() {
    let config = NativeConfig::new("unused.gguf");
    let err = NativeEngine::start(
        Arc::new(ByteVocab),
        Box::new(|| Err(ExecError::OutOfMemory("needs 16 GiB, 8 free".into()))),
        &config,
    )
    .unwrap_err();
    assert!(err.to_string().contains("out of GPU memory"), "{err}");
}

#[test]
fn without_a_driver_the_engine_says_it_is_unavailable() {
    if hyperllama_kernels::driver_present() {
        eprintln!("skipped: an NVIDIA driver is present here");
        return;
    }
    let err = NativeEngine::load(NativeConfig::new("/nonexistent.gguf")).unwrap_err();
    assert!(err.to_string().contains("native engine unavailable"), "{err}");
}
