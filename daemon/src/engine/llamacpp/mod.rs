//! The llama.cpp engine (llama-cpp-2), run inside a runner process.
//!
//! One dedicated thread owns the llama.cpp context (`LlamaContext` is `Send` but not `Sync`)
//! and runs vLLM's loop shape: *schedule → decode → sample → emit*. Every active sequence
//! contributes to ONE `llama_decode` batch per step (continuous batching); prompts are prefilled
//! in chunks so a long prompt delays the others by at most one chunk; new requests join and
//! cancellations (a dropped receiver) are applied between steps. Each of the `n_parallel`
//! sequences has its own KV stream (`kv_unified = false`, as `llama-server --parallel N`), and
//! the tokens resident in each stream are remembered so a request whose prompt starts with
//! them, under the same cache salt, skips that part of the prefill ([`slots`]).
//!
//! The handle ([`LlamaCppEngine`]) is `Send + Sync`: tokenizing, template rendering and request
//! validation run on the caller's thread against the shared, immutable `LlamaModel`, so the
//! engine thread only does model work.

mod backend;
pub use backend::get as backend;
mod embed;
pub mod hugepages;
mod prompt;
mod sampler;
mod sequence;
mod slots;
mod worker;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc, oneshot};

use super::template::{ChatTemplate, SpecialTokens, TemplateLimits};
use super::thread::EngineThread;
use super::{EmbedRequest, EmbedResponse, Engine, EngineError, EngineInfo, EventStream, GenerateRequest};

/// How the engine asks for huge pages for its KV cache and compute buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HugePageMode {
    /// Leave memory as the allocator made it.
    Off,
    /// After the context is created, mark its new anonymous mappings `MADV_HUGEPAGE`: pages
    /// touched later (compute buffers) fault in as huge pages, and khugepaged collapses the
    /// rest over time. See [`hugepages`].
    Advise,
    /// As `Advise`, and collapse what is already resident (the KV cache, cleared at
    /// allocation) right away with `MADV_COLLAPSE`; costs a copy of that memory at load.
    #[default]
    Collapse,
}

/// Everything [`LlamaCppEngine::load`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaCppConfig {
    /// The GGUF file.
    pub model_path: PathBuf,
    /// Context (KV cells) per sequence; clamped to the model's training context.
    pub n_ctx: u32,
    /// Sequences decoded together (slots).
    pub n_parallel: u32,
    /// CPU threads for decode and prefill; 0 = all available.
    pub n_threads: u32,
    /// Most tokens in one `llama_decode` call (prefill chunk budget when nothing else runs).
    pub n_batch: u32,
    /// Physical micro-batch size (llama.cpp `n_ubatch`).
    pub n_ubatch: u32,
    /// Most prompt tokens prefilled per step while other sequences are generating; bounds the
    /// stall a long prompt causes them.
    pub prefill_chunk: u32,
    /// Map the model file instead of reading it.
    pub use_mmap: bool,
    /// Lock the weights in RAM.
    pub use_mlock: bool,
    /// Chat template override (Modelfile TEMPLATE, Jinja or Go syntax); `None` uses the model's.
    pub chat_template: Option<String>,
    /// One KV buffer shared by all sequences instead of one stream per sequence.
    pub kv_unified: bool,
    /// Keep full-size KV for sliding-window layers (Gemma 3), so that any cached prefix can be
    /// reused; without it only prefixes ending inside the window survive.
    pub swa_full: bool,
    /// Huge pages for the context's memory.
    pub huge_pages: HugePageMode,
    /// Sandbox limits for chat templates.
    pub template_limits: TemplateLimits,
}

impl LlamaCppConfig {
    /// Defaults for a model file: 4096 tokens per sequence, 4 sequences, all threads.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            n_ctx: 4096,
            n_parallel: 4,
            n_threads: 0,
            n_batch: 512,
            n_ubatch: 512,
            prefill_chunk: 256,
            use_mmap: true,
            use_mlock: false,
            chat_template: None,
            kv_unified: false,
            swa_full: true,
            huge_pages: HugePageMode::Collapse,
            template_limits: TemplateLimits::default(),
        }
    }
}

/// Live counters of a running engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Sequences holding a slot (prefilling or generating).
    pub active_sequences: usize,
    /// Requests waiting for a free slot.
    pub waiting: usize,
    /// Decode steps run so far.
    pub steps: u64,
    /// Prompt tokens decoded so far (cached ones excluded).
    pub prompt_tokens_decoded: u64,
    /// Generated tokens decoded so far.
    pub generated_tokens_decoded: u64,
    /// Bytes of the context's memory (KV cache, compute buffers) backed by huge pages, measured
    /// from `/proc/self/smaps` when the context was created.
    pub huge_page_bytes: u64,
    /// Bytes of the context's anonymous mappings (KV cache and compute buffers).
    pub context_bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct SharedStats {
    active: AtomicUsize,
    waiting: AtomicUsize,
    steps: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    huge_page_bytes: AtomicU64,
    context_bytes: AtomicU64,
}

impl SharedStats {
    fn snapshot(&self) -> EngineStats {
        EngineStats {
            active_sequences: self.active.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            steps: self.steps.load(Ordering::Relaxed),
            prompt_tokens_decoded: self.prompt_tokens.load(Ordering::Relaxed),
            generated_tokens_decoded: self.generated_tokens.load(Ordering::Relaxed),
            huge_page_bytes: self.huge_page_bytes.load(Ordering::Relaxed),
            context_bytes: self.context_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A loaded model served by llama.cpp.
pub struct LlamaCppEngine {
    model: Arc<LlamaModel>,
    /// The engine thread (owns the context); dropping it closes and joins it, so the context
    /// is freed before the model (held by the thread's Arc) can be.
    thread: EngineThread<worker::Command>,
    stats: Arc<SharedStats>,
    info: EngineInfo,
    /// Template used when a chat request names none (or why the model's is unusable).
    default_template: Result<ChatTemplate, String>,
    /// Templates compiled from request overrides, by source.
    template_cache: Mutex<Vec<(String, ChatTemplate)>>,
    special: SpecialTokens,
    template_limits: TemplateLimits,
    /// Context per sequence actually in effect.
    n_ctx_seq: u32,
    load_duration: Duration,
}

impl std::fmt::Debug for LlamaCppEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaCppEngine").field("info", &self.info).finish_non_exhaustive()
    }
}

impl LlamaCppEngine {
    /// Loads the model, creates the context on the engine thread and starts the loop.
    pub fn load(config: LlamaCppConfig) -> Result<Self, EngineError> {
        let started = Instant::now();
        let backend = backend::get()?;
        if !config.model_path.is_file() {
            return Err(EngineError::Load(format!("{} is not a file", config.model_path.display())));
        }
        if config.n_parallel == 0 || config.n_parallel > 256 {
            return Err(EngineError::Load(format!("n_parallel must be 1..=256, not {}", config.n_parallel)));
        }
        let params =
            LlamaModelParams::default().with_use_mmap(config.use_mmap).with_use_mlock(config.use_mlock);
        let model = LlamaModel::load_from_file(backend, &config.model_path, &params)
            .map_err(|e| EngineError::Load(format!("{}: {e}", config.model_path.display())))?;
        let model = Arc::new(model);

        let model_template = model.chat_template(None).ok().and_then(|t| t.to_string().ok());
        // A template that does not compile fails chat requests, not the load: raw prompts and
        // embeddings still work.
        let default_template = match config.chat_template.as_deref().or(model_template.as_deref()) {
            Some(source) => ChatTemplate::compile(source, config.template_limits).map_err(|e| {
                tracing::warn!(model = %config.model_path.display(), "unusable chat template: {e}");
                e.to_string()
            }),
            None => Ok(ChatTemplate::fallback()),
        };
        let special = prompt::special_tokens(&model);

        let stats = Arc::new(SharedStats::default());
        let (thread, ready) = {
            let model = Arc::clone(&model);
            let stats = Arc::clone(&stats);
            let config = config.clone();
            EngineThread::start("llama-engine", move |(commands, ready)| {
                worker::run(&model, backend, &config, commands, &stats, ready)
            })?
        };
        let info = EngineInfo {
            engine: "llama.cpp".into(),
            context_length: ready.n_ctx_seq,
            parallel: config.n_parallel,
            weights_bytes: model.size(),
            kv_bytes: ready.kv_bytes,
            chat_template: model_template,
        };
        Ok(Self {
            model,
            thread,
            stats,
            info,
            default_template,
            template_cache: Mutex::new(Vec::new()),
            special,
            template_limits: config.template_limits,
            n_ctx_seq: ready.n_ctx_seq,
            load_duration: started.elapsed(),
        })
    }

    /// Live counters.
    pub fn stats(&self) -> EngineStats {
        self.stats.snapshot()
    }

    /// How long [`load`](Self::load) took.
    pub fn load_duration(&self) -> Duration {
        self.load_duration
    }

    /// Renders a chat prompt to text with the template the request would use (for debugging
    /// and for the API's `raw` views).
    pub fn render_chat(&self, chat: &super::ChatPrompt) -> Result<String, EngineError> {
        let template = self.template_for(chat.template.as_deref())?;
        template.render(chat, &self.special).map_err(|e| EngineError::InvalidRequest(e.to_string()))
    }

    fn template_for(&self, source: Option<&str>) -> Result<ChatTemplate, EngineError> {
        let Some(source) = source else {
            return self.default_template.clone().map_err(EngineError::InvalidRequest);
        };
        let mut cache = self
            .template_cache
            .lock()
            .map_err(|_| EngineError::Internal("template cache poisoned".into()))?;
        if let Some((_, t)) = cache.iter().find(|(s, _)| s == source) {
            return Ok(t.clone());
        }
        let t = ChatTemplate::compile(source, self.template_limits)
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        if cache.len() >= 16 {
            cache.remove(0);
        }
        cache.push((source.to_owned(), t.clone()));
        Ok(t)
    }

    fn send(&self, command: worker::Command) -> Result<(), EngineError> {
        self.thread.send(command)
    }
}

impl Engine for LlamaCppEngine {
    fn generate(&self, request: GenerateRequest) -> Result<EventStream, EngineError> {
        let received = Instant::now();
        let tokens = match &request.prompt {
            super::Prompt::Text(text) => prompt::tokenize(&self.model, text, true),
            super::Prompt::Chat(chat) => {
                let template = self.template_for(chat.template.as_deref())?;
                let text = template
                    .render(chat, &self.special)
                    .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
                // A template that writes the BOS text itself must not get a second BOS.
                let add_bos = self.special.bos.is_empty() || !text.starts_with(&self.special.bos);
                prompt::tokenize(&self.model, &text, add_bos)
            }
        };
        let admitted = prompt::admit(&self.model, request, tokens, self.n_ctx_seq, received)?;
        let (tx, rx) = mpsc::channel(64);
        self.send(worker::Command::Generate(Box::new(sequence::Pending { admitted, tx })))?;
        Ok(rx)
    }

    fn embed(
        &self,
        request: EmbedRequest,
    ) -> Pin<Box<dyn Future<Output = Result<EmbedResponse, EngineError>> + Send + '_>> {
        Box::pin(async move {
            let mut inputs = Vec::with_capacity(request.inputs.len());
            for text in &request.inputs {
                let mut tokens = prompt::tokenize_plain(&self.model, text);
                if tokens.len() > self.n_ctx_seq as usize {
                    if !request.truncate {
                        return Err(EngineError::InvalidRequest(format!(
                            "input is {} tokens, the context is {}",
                            tokens.len(),
                            self.n_ctx_seq
                        )));
                    }
                    tokens.truncate(self.n_ctx_seq as usize);
                }
                if tokens.is_empty() {
                    return Err(EngineError::InvalidRequest("empty input".into()));
                }
                inputs.push(tokens);
            }
            let (reply, rx) = oneshot::channel();
            self.send(worker::Command::Embed(embed::EmbedJob { inputs, reply }))?;
            rx.await.map_err(|_| EngineError::Stopped)?
        })
    }

    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<i32>, EngineError> {
        Ok(prompt::tokenize(&self.model, text, add_special).into_iter().map(|LlamaToken(t)| t).collect())
    }

    fn info(&self) -> EngineInfo {
        self.info.clone()
    }
}
