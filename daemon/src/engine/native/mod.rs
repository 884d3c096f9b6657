//! The native GPU engine's adapter: serves the daemon's [`Engine`] interface on top of
//! `hyperllama-native`'s pure core ([`EngineCore`]: scheduler, paged KV blocks, salted prefix
//! cache, sampler) and a boxed device [`Executor`].
//!
//! The handle is `Send + Sync`: tokenizing (llama.cpp's vocabulary, loaded alone, as the
//! llama.cpp engine tokenizes), chat templates (`engine::template`, shared with llama.cpp) and
//! validation run on the caller's thread; one engine thread ([`worker`]) owns the core and the
//! executor (created there, so its CUDA context never changes threads) and turns tokens into
//! text with `engine::stop` (UTF-8 streaming, stop strings held back). Without an NVIDIA driver,
//! or when the device executor cannot start, [`NativeEngine::load`] fails with a clear
//! "unavailable" error.

mod vocab;
mod worker;

pub use vocab::{LlamaVocabulary, Vocabulary};

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyperllama_native::core::engine::CoreConfig;
use hyperllama_native::core::executor::{ExecError, Executor, ExecutorSpec};
use hyperllama_native::core::sampler::SamplerParams;
use hyperllama_native::core::scheduler::PreemptionMode;
use hyperllama_native::core::sequence::SeqRequest;
use tokio::sync::mpsc;

use super::template::{ChatTemplate, SpecialTokens, TemplateLimits};
use super::thread::EngineThread;
use super::{
    EmbedRequest, EmbedResponse, Engine, EngineError, EngineInfo, EventStream, GenerateRequest, OutputFormat,
    Prompt, SamplingParams,
};

/// How to load and run a model on the native engine.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeConfig {
    /// GGUF file (weights and vocabulary).
    pub model_path: PathBuf,
    /// CUDA device ordinal.
    pub device: u32,
    /// Longest sequence (prompt + generated); 0: the model's, bounded by the KV pool.
    pub context_length: u32,
    /// Most sequences per step.
    pub parallel: u32,
    /// Most tokens per step.
    pub max_step_tokens: u32,
    /// Most prompt tokens of one sequence per step (chunked prefill).
    pub prefill_chunk: u32,
    /// Fraction of device memory for weights + KV + workspaces.
    pub gpu_memory_utilization: f32,
    /// Positions per KV block.
    pub block_size: u32,
    /// Pinned host memory for swapping preempted sequences (0: recompute only).
    pub host_swap_bytes: u64,
    /// Reuse KV across requests with the same cache salt.
    pub prefix_caching: bool,
    /// Modelfile TEMPLATE, overriding the GGUF's.
    pub chat_template: Option<String>,
    /// Template sandbox limits.
    pub template_limits: TemplateLimits,
}

impl NativeConfig {
    /// Defaults for a model file.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            device: 0,
            context_length: 4096,
            parallel: 64,
            max_step_tokens: 2048,
            prefill_chunk: 512,
            gpu_memory_utilization: 0.9,
            block_size: 16,
            host_swap_bytes: 4 << 30,
            prefix_caching: true,
            chat_template: None,
            template_limits: TemplateLimits::default(),
        }
    }

    fn executor_spec(&self) -> ExecutorSpec {
        ExecutorSpec {
            model_path: self.model_path.clone(),
            device: self.device,
            gpu_memory_utilization: self.gpu_memory_utilization,
            block_size: self.block_size as usize,
            host_swap_bytes: self.host_swap_bytes,
            max_context: self.context_length as usize,
            max_step_tokens: self.max_step_tokens as usize,
            max_step_sequences: self.parallel as usize,
        }
    }

    fn core_config(&self) -> CoreConfig {
        CoreConfig {
            max_prefill_chunk: self.prefill_chunk as usize,
            preemption: if self.host_swap_bytes > 0 {
                PreemptionMode::Swap
            } else {
                PreemptionMode::Recompute
            },
            prefix_caching: self.prefix_caching,
            max_len: self.context_length as usize,
        }
    }
}

/// Live counters of the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NativeStats {
    /// Sequences in the core (waiting, running or swapped).
    pub active_sequences: usize,
    /// Steps run.
    pub steps: u64,
    /// Tokens fed to the model (prompt, recompute, decode).
    pub tokens_fed: u64,
    /// Tokens generated.
    pub tokens_generated: u64,
    /// Sequences preempted (swap or recompute).
    pub preemptions: u64,
    /// Prefix-cache block hits.
    pub cache_hits: u64,
    /// Prompt tokens reused from the prefix cache.
    pub cached_tokens: u64,
}

/// The native engine's handle.
pub struct NativeEngine {
    vocab: Arc<dyn Vocabulary>,
    /// The engine thread (owns the core and the executor); dropping it closes and joins it,
    /// so the device memory is freed before the handle is gone.
    thread: EngineThread<worker::Job>,
    stats: Arc<worker::SharedStats>,
    info: EngineInfo,
    eog: Vec<u32>,
    default_template: Result<ChatTemplate, String>,
    special: SpecialTokens,
    template_limits: TemplateLimits,
    max_len: usize,
    vocab_size: usize,
    next_id: AtomicU64,
}

impl std::fmt::Debug for NativeEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeEngine").field("info", &self.info).finish_non_exhaustive()
    }
}

/// Why the native engine cannot run on this machine, if it cannot (no NVIDIA driver).
pub fn unavailable_reason() -> Option<String> {
    if hyperllama_kernels::driver_present() {
        None
    } else {
        Some("native engine unavailable: no NVIDIA driver (libcuda) on this machine".into())
    }
}

impl NativeEngine {
    /// Loads a GGUF model on the GPU.
    pub fn load(config: NativeConfig) -> Result<Self, EngineError> {
        if let Some(reason) = unavailable_reason() {
            return Err(EngineError::Load(reason));
        }
        let vocab: Arc<dyn Vocabulary> = Arc::new(LlamaVocabulary::load(&config.model_path)?);
        let spec = config.executor_spec();
        let factory: Box<dyn FnOnce() -> Result<Box<dyn Executor>, ExecError> + Send> =
            Box::new(move || hyperllama_native::device::load_executor(&spec));
        Self::start(vocab, factory, &config)
    }

    /// Starts the engine over any executor (the device one, or a test double in unit tests).
    pub fn start(
        vocab: Arc<dyn Vocabulary>,
        factory: Box<dyn FnOnce() -> Result<Box<dyn Executor>, ExecError> + Send>,
        config: &NativeConfig,
    ) -> Result<Self, EngineError> {
        let model_template = vocab.chat_template();
        let default_template = match config.chat_template.as_deref().or(model_template.as_deref()) {
            Some(source) => ChatTemplate::compile(source, config.template_limits).map_err(|e| e.to_string()),
            None => Ok(ChatTemplate::fallback()),
        };
        let stats = Arc::new(worker::SharedStats::default());
        let (thread, ready) = {
            let vocab = Arc::clone(&vocab);
            let stats = Arc::clone(&stats);
            let core_config = config.core_config();
            EngineThread::start("native-engine", move |(commands, ready)| {
                worker::run(factory, core_config, vocab, commands, stats, ready)
            })?
        };
        let info = EngineInfo {
            engine: "native".into(),
            context_length: u32::try_from(ready.max_len).unwrap_or(u32::MAX),
            parallel: u32::try_from(ready.parallel).unwrap_or(u32::MAX),
            weights_bytes: ready.weights_bytes,
            kv_bytes: ready.kv_bytes,
            chat_template: model_template,
        };
        Ok(Self {
            special: vocab.special_tokens(),
            eog: vocab.eog_tokens(),
            vocab,
            thread,
            stats,
            info,
            default_template,
            template_limits: config.template_limits,
            max_len: ready.max_len,
            vocab_size: ready.vocab_size,
            next_id: AtomicU64::new(1),
        })
    }

    /// Live counters.
    pub fn stats(&self) -> NativeStats {
        let s = &self.stats;
        NativeStats {
            active_sequences: s.active.load(Ordering::Relaxed),
            steps: s.steps.load(Ordering::Relaxed),
            tokens_fed: s.tokens_fed.load(Ordering::Relaxed),
            tokens_generated: s.tokens_generated.load(Ordering::Relaxed),
            preemptions: s.preemptions.load(Ordering::Relaxed),
            cache_hits: s.cache_hits.load(Ordering::Relaxed),
            cached_tokens: s.cached_tokens.load(Ordering::Relaxed),
        }
    }

    fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        Ok(match prompt {
            Prompt::Text(text) => self.vocab.tokenize(text, true),
            Prompt::Chat(chat) => {
                let template = match chat.template.as_deref() {
                    Some(source) => ChatTemplate::compile(source, self.template_limits)
                        .map_err(|e| EngineError::InvalidRequest(e.to_string()))?,
                    None => self.default_template.clone().map_err(EngineError::InvalidRequest)?,
                };
                let text = template
                    .render(chat, &self.special)
                    .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
                // A template that writes the BOS text itself must not get a second BOS.
                let add_bos = self.special.bos.is_empty() || !text.starts_with(&self.special.bos);
                self.vocab.tokenize(&text, add_bos)
            }
        })
    }

    fn send(&self, job: worker::Job) -> Result<(), EngineError> {
        self.thread.send(job)
    }
}

fn sampler_params(p: &SamplingParams) -> SamplerParams {
    SamplerParams {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: p.min_p,
        typical_p: p.typical_p,
        repeat_last_n: p.repeat_last_n,
        repeat_penalty: p.repeat_penalty,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        seed: p.seed,
    }
}

impl Engine for NativeEngine {
    fn generate(&self, request: GenerateRequest) -> Result<EventStream, EngineError> {
        if request.format != OutputFormat::Text {
            return Err(EngineError::InvalidRequest(
                "the native engine does not support `format` (JSON grammars) yet; use the llama.cpp engine"
                    .into(),
            ));
        }
        let sampling = sampler_params(&request.sampling);
        sampling.validate().map_err(EngineError::InvalidRequest)?;
        let prompt = self.prompt_tokens(&request.prompt)?;
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        let max_len = match request.num_ctx {
            Some(n) if n > 0 => (n as usize).min(self.max_len),
            _ => self.max_len,
        };
        if prompt.len() >= max_len {
            return Err(EngineError::InvalidRequest(format!(
                "the prompt is {} tokens, the context is {max_len}",
                prompt.len()
            )));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(EngineError::InvalidRequest(format!(
                "token {bad} is outside the model's vocabulary"
            )));
        }
        let seq = SeqRequest {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            cache_salt: request.cache_salt,
            prompt,
            sampling,
            max_new_tokens: request.max_tokens.map(|m| m as usize),
            max_len,
            stop_tokens: self.eog.clone(),
            logprobs: request.logprobs,
        };
        let (tx, rx) = mpsc::channel(64);
        self.send(worker::Job { request: seq, stop: request.stop, tx })?;
        Ok(rx)
    }

    fn embed(
        &self,
        _request: EmbedRequest,
    ) -> Pin<Box<dyn Future<Output = Result<EmbedResponse, EngineError>> + Send + '_>> {
        Box::pin(async {
            Err(EngineError::InvalidRequest("the native engine does not compute embeddings yet".into()))
        })
    }

    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<i32>, EngineError> {
        Ok(self.vocab.tokenize(text, add_special).into_iter().map(|t| t as i32).collect())
    }

    fn info(&self) -> EngineInfo {
        self.info.clone()
    }
}

#[cfg(test)]
mod llama_tests;
#[cfg(test)]
mod tests;
