//! The engine-facing interface every runner serves through: submit a request, receive a stream of
//! [`EngineEvent`]s, cancel by dropping the receiver. Engines own their threads; FFI handles live
//! on one thread and are freed in `Drop`. API handlers and the runner protocol never see
//! llama.cpp, CUDA or vLLM directly.

pub mod llamacpp;
pub mod max;
pub mod native;
pub(crate) mod outbox;
pub mod sampling;
pub mod served;
pub mod stop;
pub mod template;
pub mod thread;
pub mod vllm;

use std::fmt;

use tokio::sync::mpsc;

/// Sampling parameters, as Ollama's `options` name them, with Ollama's defaults: one type for
/// every engine (the native core's).
pub use hyperllama_native::core::sampler::SamplerParams as SamplingParams;

/// Constrained output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputFormat {
    /// Free text.
    Text,
    /// Any JSON value (`format: "json"`).
    Json,
    /// JSON matching this schema (JSON text).
    JsonSchema(String),
}

/// The prompt of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text given to the tokenizer as is (templates already applied, or `raw`).
    Text(String),
    /// Chat messages rendered with the model's template by the engine.
    Chat(ChatPrompt),
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// "system", "user", "assistant", "tool".
    pub role: String,
    /// Its text.
    pub content: String,
    /// Tool calls made by an assistant message (JSON array), if any.
    pub tool_calls_json: Option<String>,
}

/// A chat to render with a template.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatPrompt {
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Template override (Modelfile TEMPLATE, Jinja); `None` uses the model's own.
    pub template: Option<String>,
    /// Tool definitions (JSON array), passed to the template.
    pub tools_json: Option<String>,
    /// Add the assistant turn opener.
    pub add_generation_prompt: bool,
}

/// A generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Unique per request, for logs.
    pub id: String,
    /// Partition of the prefix cache: requests only reuse KV computed for the same salt (the
    /// user's uid, or a shared salt an admin set for a model's system prompt).
    pub cache_salt: u64,
    /// What to complete.
    pub prompt: Prompt,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Stop strings; a partial match is held back, never emitted.
    pub stop: Vec<String>,
    /// Maximum tokens to generate; `None` means until the context is full.
    pub max_tokens: Option<u32>,
    /// Context size wanted for this sequence (`num_ctx`); the engine may clamp it.
    pub num_ctx: Option<u32>,
    /// Output constraint.
    pub format: OutputFormat,
    /// Report the log-probability of each generated token.
    pub logprobs: bool,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
    /// The receiver was dropped or the request was cancelled.
    Cancelled,
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancel",
        })
    }
}

/// Timings and counts of one request, as Ollama reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// Prompt tokens, including cached ones.
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV was reused from the prefix cache.
    pub cached_tokens: u32,
    /// Time spent on prompt evaluation, ns.
    pub prompt_eval_ns: u64,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// Time spent generating, ns.
    pub eval_ns: u64,
}

/// What an engine streams back for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// Prompt evaluation finished (time to first token is measured here).
    PromptDone {
        /// Prompt tokens.
        prompt_tokens: u32,
        /// Of which reused from the prefix cache.
        cached_tokens: u32,
    },
    /// Generated text (may hold several tokens when a partial stop string was released).
    Text {
        /// The text.
        text: String,
        /// Log-probability of the token(s), when asked for.
        logprob: Option<f32>,
    },
    /// The request finished; the last event.
    Done {
        /// Why.
        reason: FinishReason,
        /// Counts and timings.
        stats: RequestStats,
    },
    /// The request failed; the last event.
    Error(String),
}

/// An embeddings request.
#[derive(Debug, Clone)]
pub struct EmbedRequest {
    /// Texts to embed.
    pub inputs: Vec<String>,
    /// Truncate inputs longer than the context instead of failing.
    pub truncate: bool,
}

/// Embeddings, one per input, normalized as the model's pooling defines.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedResponse {
    /// Vectors.
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens read.
    pub prompt_tokens: u32,
}

/// Memory and capacity of a loaded model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineInfo {
    /// "llama.cpp", "native", ...
    pub engine: String,
    /// Context per sequence.
    pub context_length: u32,
    /// Sequences decoded together.
    pub parallel: u32,
    /// Bytes of weights.
    pub weights_bytes: u64,
    /// Bytes of KV cache.
    pub kv_bytes: u64,
    /// The model's own chat template, if any.
    pub chat_template: Option<String>,
}

/// The external server behind a served engine (vLLM, MAX).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// Its process group.
    pub pgid: u32,
    /// Its Prometheus endpoint on loopback.
    pub metrics_url: String,
}

/// Engine errors.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model could not be loaded.
    #[error("cannot load model: {0}")]
    Load(String),
    /// The request is invalid for this model (prompt longer than the context, bad schema, ...).
    #[error("{0}")]
    InvalidRequest(String),
    /// The engine's thread is gone.
    #[error("the engine stopped")]
    Stopped,
    /// Anything else.
    #[error("engine error: {0}")]
    Internal(String),
}

/// The stream of events of one request; dropping it cancels the request within one step.
pub type EventStream = mpsc::Receiver<EngineEvent>;

/// An inference engine serving one loaded model.
pub trait Engine: Send + Sync {
    /// Starts a generation. Validation errors come back here; everything later as events.
    fn generate(&self, request: GenerateRequest) -> Result<EventStream, EngineError>;
    /// Computes embeddings (blocking the caller's task until done).
    fn embed(
        &self,
        request: EmbedRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<EmbedResponse, EngineError>> + Send + '_>>;
    /// Tokenizes text with the model's vocabulary (for counting and context checks).
    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<i32>, EngineError>;
    /// What is loaded.
    fn info(&self) -> EngineInfo;
    /// The external server process, for engines that run one.
    fn server(&self) -> Option<ServerInfo> {
        None
    }
}
