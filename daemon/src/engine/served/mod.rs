//! Served engines: vLLM and Modular MAX run as their own OpenAI-compatible server, a child of the
//! model's runner process ([`process`]: own process group, parent-death signal, logs tagged with
//! the engine, the whole group killed on stop). The runner serves the [`Engine`] interface by
//! translating requests to the server's API ([`openai`]). Readiness is a successful warm-up
//! completion, not `/health` (both servers answer it before a bad configuration fails). When the
//! server dies the runner exits non-zero, so the daemon restarts the runner (and with it the
//! server) with its usual backoff. The two engines differ only in how they are found, started and
//! what they can serve ([`super::vllm`], [`super::max`]).

pub mod config;
pub mod hf;
pub mod metrics;
pub mod openai;
pub mod process;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

pub use config::EnginesConfig;
use hf::FolderInfo;
use process::ServerProcess;

use super::{
    EmbedRequest, EmbedResponse, Engine, EngineError, EngineEvent, EngineInfo, EventStream, FinishReason,
    GenerateRequest, RequestStats, ServerInfo,
};

/// The model name the servers are told to serve under.
pub const SERVED_MODEL_NAME: &str = "hyperllama";

/// Exit status of a runner whose engine server died (the daemon restarts it).
pub const EXIT_ENGINE_DIED: i32 = 3;

/// Which served engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedKind {
    /// vLLM.
    Vllm,
    /// Modular MAX.
    Max,
}

impl ServedKind {
    /// From an engine name ("vllm", "max").
    pub fn from_name(name: &str) -> Option<ServedKind> {
        match name {
            "vllm" => Some(ServedKind::Vllm),
            "max" => Some(ServedKind::Max),
            _ => None,
        }
    }

    /// The engine's name.
    pub fn name(self) -> &'static str {
        match self {
            ServedKind::Vllm => "vllm",
            ServedKind::Max => "max",
        }
    }

    /// The program that starts the server, or an error naming the package to install.
    pub fn locate(self, virtualenv: Option<&Path>) -> Result<PathBuf, EngineError> {
        match self {
            ServedKind::Vllm => super::vllm::locate(virtualenv),
            ServedKind::Max => super::max::locate(virtualenv),
        }
    }

    /// Whether this engine can serve the folder on this many GPUs (0 = CPU).
    pub fn check_servable(self, info: &FolderInfo, gpus: u32) -> Result<(), String> {
        match self {
            ServedKind::Vllm => super::vllm::check_servable(info, gpus),
            ServedKind::Max => super::max::check_servable(info, gpus),
        }
    }
}

/// The error for an engine that is not installed, naming the package.
pub fn not_installed(engine: &str, package: &str, virtualenv: Option<&Path>) -> EngineError {
    let place = match virtualenv {
        Some(v) => format!("the virtualenv {} (engines.{engine}.virtualenv) does not have it", v.display()),
        None => format!("`{engine}` is not on hyperllamad's PATH and engines.{engine}.virtualenv is not set"),
    };
    EngineError::Load(format!(
        "the {engine} engine is not installed: {place}; install the Python package {package} into a virtualenv \
         and set engines.{engine}.virtualenv to it"
    ))
}

/// A program on PATH.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|p| p.join(program)).find(|p| p.is_file())
}

/// Runner flags for served engines (set by the daemon from `[engines]` and the residency budget).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServedArgs {
    /// Virtualenv of the engine ("" = find it on PATH).
    #[arg(long, default_value = "")]
    pub engine_virtualenv: String,
    /// Compile caches and home of the engine.
    #[arg(long, default_value = "")]
    pub engine_cache_dir: String,
    /// Fraction of GPU memory the engine may use.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f32,
    /// KV cache bytes on CPU.
    #[arg(long, default_value_t = 1 << 30)]
    pub kv_cache_bytes: u64,
    /// Seconds the server may take to start and answer the warm-up request.
    #[arg(long, default_value_t = 900)]
    pub engine_start_timeout: u64,
}

/// How to run one served engine for one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Which engine.
    pub kind: ServedKind,
    /// The model folder.
    pub model_dir: PathBuf,
    /// Where the engine is installed (`None` = PATH).
    pub virtualenv: Option<PathBuf>,
    /// Compile caches and the engine's home.
    pub cache_dir: PathBuf,
    /// Context length per sequence.
    pub context_length: u32,
    /// Sequences served together.
    pub parallel: u32,
    /// GPUs visible to the runner (`CUDA_VISIBLE_DEVICES`); 0 = CPU.
    pub gpus: u32,
    /// Fraction of GPU memory.
    pub gpu_memory_utilization: f32,
    /// KV cache bytes on CPU.
    pub kv_cache_bytes: u64,
    /// Start and warm-up limit.
    pub start_timeout: Duration,
    /// Model name, for logs.
    pub name: String,
}

impl ServerConfig {
    /// From the runner's flags.
    pub fn from_args(
        kind: ServedKind,
        model: &Path,
        context_length: u32,
        parallel: u32,
        name: &str,
        args: &ServedArgs,
    ) -> Self {
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
        let gpus = visible.split(',').filter(|g| !g.trim().is_empty() && !g.trim().starts_with('-')).count();
        Self {
            kind,
            model_dir: model.to_path_buf(),
            virtualenv: Some(PathBuf::from(&args.engine_virtualenv)).filter(|p| !p.as_os_str().is_empty()),
            cache_dir: if args.engine_cache_dir.is_empty() {
                std::env::temp_dir().join(format!("hyperllama-{}", kind.name()))
            } else {
                PathBuf::from(&args.engine_cache_dir)
            },
            context_length,
            parallel,
            gpus: u32::try_from(gpus).unwrap_or(0),
            gpu_memory_utilization: args.gpu_memory_utilization,
            kv_cache_bytes: args.kv_cache_bytes,
            start_timeout: Duration::from_secs(args.engine_start_timeout.max(1)),
            name: name.to_string(),
        }
    }

    /// A small CPU configuration for unit tests.
    #[cfg(test)]
    pub fn for_tests(model_dir: &str) -> Self {
        Self {
            kind: ServedKind::Vllm,
            model_dir: model_dir.into(),
            virtualenv: None,
            cache_dir: "/cache".into(),
            context_length: 512,
            parallel: 2,
            gpus: 0,
            gpu_memory_utilization: 0.9,
            kv_cache_bytes: 1 << 20,
            start_timeout: Duration::from_secs(60),
            name: "t".into(),
        }
    }
}

/// Environment every served engine gets: offline, no telemetry, caches and home under the cache
/// directory (the service account may have no home).
fn common_env(config: &ServerConfig) -> Vec<(String, std::ffi::OsString)> {
    let dir = |sub: &str| config.cache_dir.join(sub).into_os_string();
    vec![
        ("HOME".into(), dir("home")),
        ("XDG_CACHE_HOME".into(), dir("xdg-cache")),
        ("HF_HOME".into(), dir("huggingface")),
        ("HF_HUB_OFFLINE".into(), "1".into()),
        ("TRANSFORMERS_OFFLINE".into(), "1".into()),
        ("HF_HUB_DISABLE_TELEMETRY".into(), "1".into()),
        ("OTEL_SDK_DISABLED".into(), "true".into()),
        ("DO_NOT_TRACK".into(), "1".into()),
        ("PYTHONUNBUFFERED".into(), "1".into()),
        ("NO_COLOR".into(), "1".into()),
    ]
}

/// An engine served by an external server.
pub struct ServedEngine {
    kind: ServedKind,
    http: reqwest::Client,
    base: String,
    server: ServerProcess,
    info: EngineInfo,
    metrics_url: String,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for ServedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedEngine").field("engine", &self.kind.name()).field("base", &self.base).finish()
    }
}

impl ServedEngine {
    /// Starts the server and waits until it completed a warm-up request. Call from a blocking
    /// thread of a tokio runtime (the runner loads engines on one).
    pub fn start(config: ServerConfig) -> Result<ServedEngine, EngineError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| EngineError::Internal("served engines need a tokio runtime".into()))?;
        let info = hf::inspect_dir(&config.model_dir).map_err(|e| EngineError::Load(e.to_string()))?;
        config.kind.check_servable(&info, config.gpus).map_err(EngineError::Load)?;
        let program = config.kind.locate(config.virtualenv.as_deref())?;
        for sub in ["home", "xdg-cache", "huggingface"] {
            let dir = config.cache_dir.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|e| EngineError::Load(format!("cannot create {}: {e}", dir.display())))?;
        }
        let port = process::free_port()?;
        let (mut launch, metrics_url) = match config.kind {
            ServedKind::Vllm => (
                super::vllm::launch(&program, &config, &info, port),
                format!("http://127.0.0.1:{port}/metrics"),
            ),
            ServedKind::Max => {
                let metrics_port = process::free_port()?;
                (
                    super::max::launch(&program, &config, &info, port, metrics_port),
                    format!("http://127.0.0.1:{metrics_port}/metrics"),
                )
            }
        };
        let mut env = common_env(&config);
        env.append(&mut launch.env);
        launch.env = env;
        let engine = config.kind.name();
        tracing::info!(engine, model = %config.name, port, "starting the engine server");
        let server = runtime.block_on(async { ServerProcess::spawn(engine, &launch) })?;
        let http = loopback_client(None).map_err(|e| EngineError::Internal(format!("HTTP client: {e}")))?;
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        runtime.block_on(warm_up(&http, &base, &server, config.start_timeout))?;
        tracing::info!(engine, model = %config.name, seconds = started.elapsed().as_secs_f32(), "engine server ready");
        let weights_bytes = weights_bytes(&config.model_dir);
        let engine_info = EngineInfo {
            engine: engine.into(),
            context_length: config.context_length,
            parallel: config.parallel.max(1),
            weights_bytes,
            kv_bytes: if config.gpus == 0 { config.kv_cache_bytes } else { 0 },
            chat_template: info.chat_template.clone(),
        };
        let this =
            ServedEngine { kind: config.kind, http, base, server, info: engine_info, metrics_url, runtime };
        this.exit_with_server();
        Ok(this)
    }

    /// When the server dies on its own, the runner exits non-zero: the daemon then restarts the
    /// runner, which starts a new server.
    fn exit_with_server(&self) {
        let mut exit = self.server.exit_watch();
        let stopping = self.server.stopping_flag();
        let engine = self.kind.name();
        let pgid = self.server.pgid();
        self.runtime.spawn(async move {
            let how = loop {
                if let Some(how) = exit.borrow().clone() {
                    break how;
                }
                if exit.changed().await.is_err() {
                    break "exited".to_string();
                }
            };
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            tracing::error!(
                engine,
                pid = pgid,
                "the engine server {how}; the runner exits so that it is restarted"
            );
            process::terminate_group(i32::try_from(pgid).unwrap_or(0), Duration::from_secs(2));
            std::process::exit(EXIT_ENGINE_DIED);
        });
    }
}

/// A plain-HTTP client for servers on loopback (never through a proxy), with an overall
/// `timeout` per request when given.
pub fn loopback_client(timeout: Option<Duration>) -> Result<reqwest::Client, reqwest::Error> {
    // reqwest is built without a default crypto provider (building any client needs one, even
    // for plain HTTP); ring is ours, as for the registries (a second install is a no-op).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder().no_proxy().connect_timeout(Duration::from_secs(5));
    match timeout {
        Some(timeout) => builder.timeout(timeout).build(),
        None => builder.build(),
    }
}

/// A POST with a JSON body.
fn post_json(http: &reqwest::Client, url: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
    http.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string())
}

/// Bytes of the folder's weight files.
fn weights_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().to_ascii_lowercase();
                    name.ends_with(".safetensors") || name.ends_with(".gguf")
                })
                // Store folders are symlinks to blobs: follow them.
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Polls until the server completes a one-token request; fails when it exits first, answers
/// with a client error, or the time runs out.
async fn warm_up(
    http: &reqwest::Client,
    base: &str,
    server: &ServerProcess,
    limit: Duration,
) -> Result<(), EngineError> {
    let engine = server.engine();
    let deadline = Instant::now() + limit;
    let body = serde_json::json!({
        "model": SERVED_MODEL_NAME, "prompt": "Hello", "max_tokens": 1, "temperature": 0.0,
    });
    loop {
        if let Some(how) = server.exited() {
            return Err(EngineError::Load(format!(
                "the {engine} server {how} while starting: {}",
                server.last_error_line()
            )));
        }
        if Instant::now() >= deadline {
            return Err(EngineError::Load(format!(
                "the {engine} server did not complete a warm-up request within {}s (engines.start_timeout); last output: {}",
                limit.as_secs(),
                server.last_error_line()
            )));
        }
        let answer = post_json(http, &format!("{base}/v1/completions"), &body)
            .timeout(Duration::from_secs(120))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => return Ok(()),
            // Still starting (vLLM's API answers before its engine is up in some versions).
            Ok(r) if r.status().is_server_error() && r.status().as_u16() == 503 => {}
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                return Err(EngineError::Load(format!(
                    "the {engine} server failed its warm-up request ({status}): {}",
                    openai::error_body_text(&text)
                )));
            }
            Err(e) if e.is_connect() => {}
            Err(e) => tracing::debug!(engine, error = %e, "warm-up request failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Engine for ServedEngine {
    fn generate(&self, request: GenerateRequest) -> Result<EventStream, EngineError> {
        let (endpoint, body) = openai::body(
            &request,
            SERVED_MODEL_NAME,
            openai::Extensions { sampling: true, chat_template: self.kind == ServedKind::Vllm },
        );
        let (tx, rx) = mpsc::channel(64);
        let url = format!("{}{}", self.base, endpoint.path());
        let task =
            Request { engine: self.kind.name(), http: self.http.clone(), url, body, tx, id: request.id };
        self.runtime.spawn(task.run());
        Ok(rx)
    }

    fn embed(
        &self,
        _request: EmbedRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<EmbedResponse, EngineError>> + Send + '_>>
    {
        let engine = self.kind.name();
        Box::pin(async move {
            Err(EngineError::InvalidRequest(format!(
                "the {engine} engine serves generation only in hyperllamad; load embedding models with llama.cpp"
            )))
        })
    }

    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<i32>, EngineError> {
        if self.kind != ServedKind::Vllm {
            return Err(EngineError::InvalidRequest(format!(
                "the {} server has no tokenize endpoint",
                self.kind.name()
            )));
        }
        // Called from async code: run the request on a thread of its own.
        let (http, url, runtime) =
            (self.http.clone(), format!("{}/tokenize", self.base), self.runtime.clone());
        let body = serde_json::json!({"model": SERVED_MODEL_NAME, "prompt": text, "add_special_tokens": add_special});
        std::thread::scope(|scope| {
            scope
                .spawn(|| runtime.block_on(tokenize(http, url, body)))
                .join()
                .map_err(|_| EngineError::Internal("tokenize thread panicked".into()))?
        })
    }

    fn info(&self) -> EngineInfo {
        self.info.clone()
    }

    fn server(&self) -> Option<ServerInfo> {
        Some(ServerInfo { pgid: self.server.pgid(), metrics_url: self.metrics_url.clone() })
    }
}

async fn tokenize(
    http: reqwest::Client,
    url: String,
    body: serde_json::Value,
) -> Result<Vec<i32>, EngineError> {
    let response =
        post_json(&http, &url, &body).send().await.map_err(|e| EngineError::Internal(e.to_string()))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| EngineError::Internal(e.to_string()))?;
    if !status.is_success() {
        return Err(EngineError::InvalidRequest(openai::error_body_text(&text)));
    }
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EngineError::Internal(e.to_string()))?;
    Ok(value
        .get("tokens")
        .and_then(|t| t.as_array())
        .map(|t| t.iter().filter_map(|n| n.as_i64().and_then(|n| i32::try_from(n).ok())).collect())
        .unwrap_or_default())
}

/// One request streamed from the server into the runner's event channel.
struct Request {
    engine: &'static str,
    http: reqwest::Client,
    url: String,
    body: serde_json::Value,
    tx: mpsc::Sender<EngineEvent>,
    id: String,
}

impl Request {
    async fn run(self) {
        let tx = self.tx.clone();
        // Dropping the receiver (the client left) drops the response here, which closes the
        // connection: both servers abort a request whose client disconnected.
        tokio::select! {
            event = self.stream() => { let _ = tx.send(event).await; }
            _ = tx.closed() => {}
        }
    }

    /// Streams the answer; returns the last event (Done or Error).
    async fn stream(&self) -> EngineEvent {
        let engine = self.engine;
        let started = Instant::now();
        let response = match post_json(&self.http, &self.url, &self.body).send().await {
            Ok(r) => r,
            Err(e) => {
                return EngineEvent::Error(format!("the {engine} server did not answer: {}", transport(&e)));
            }
        };
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return EngineEvent::Error(error_for_status(engine, status.as_u16(), &text));
        }
        let mut response = response;
        let mut sse = openai::SseLines::default();
        let (mut first, mut finish, mut usage, mut pieces) = (None::<Instant>, None, None, 0u32);
        loop {
            let bytes = match response.chunk().await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => break,
                Err(e) => {
                    return EngineEvent::Error(format!(
                        "the {engine} server broke off the answer: {}",
                        transport(&e)
                    ));
                }
            };
            for data in sse.feed(&bytes) {
                if data == "[DONE]" {
                    continue;
                }
                let chunk = match openai::parse_chunk(&data) {
                    Ok(c) => c,
                    Err(message) => return EngineEvent::Error(message),
                };
                if !chunk.text.is_empty() {
                    if first.is_none() {
                        first = Some(Instant::now());
                        let _ = self
                            .tx
                            .send(EngineEvent::PromptDone { prompt_tokens: 0, cached_tokens: 0 })
                            .await;
                    }
                    pieces += 1;
                    if self
                        .tx
                        .send(EngineEvent::Text { text: chunk.text, logprob: chunk.logprob })
                        .await
                        .is_err()
                    {
                        return EngineEvent::Done {
                            reason: FinishReason::Cancelled,
                            stats: RequestStats::default(),
                        };
                    }
                }
                finish = chunk.finish.or(finish);
                usage = chunk.usage.or(usage);
            }
        }
        let Some(reason) = finish else {
            return EngineEvent::Error(format!(
                "the {engine} server ended the answer early (request {})",
                self.id
            ));
        };
        let now = Instant::now();
        let first = first.unwrap_or(now);
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let usage = usage.unwrap_or(openai::Usage { completion_tokens: pieces, ..openai::Usage::default() });
        EngineEvent::Done {
            reason,
            stats: RequestStats {
                prompt_tokens: usage.prompt_tokens,
                cached_tokens: usage.cached_tokens,
                prompt_eval_ns: nanos(first - started),
                generated_tokens: usage.completion_tokens,
                eval_ns: nanos(now - first),
            },
        }
    }
}

/// A transport error with its innermost cause: reqwest's text alone ("error decoding response
/// body") names the step, not what happened (the connection closed mid-body, a reset, ...).
fn transport(e: &reqwest::Error) -> String {
    let cause = crate::registry::innermost_cause(e);
    if cause == e.to_string() { cause } else { format!("{e} ({cause})") }
}

/// The message for an error answer. A "model not found" (MAX: 400, vLLM: 404) means the server
/// does not serve what it was started with: say so rather than blame the request.
pub fn error_for_status(engine: &str, status: u16, body: &str) -> String {
    let message = openai::error_body_text(body);
    let lower = message.to_ascii_lowercase();
    let unknown_model = (status == 404 || status == 400)
        && lower.contains("model")
        && (lower.contains("does not exist") || lower.contains("not found") || lower.contains("unknown"));
    if unknown_model {
        return format!(
            "the {engine} server does not serve the model it was started with ({status}): {message}"
        );
    }
    format!("{engine}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_cut_off_mid_stream_says_why() {
        // A server that promises 1000 bytes, sends 5 and closes: the message names the cause,
        // not only reqwest's "error decoding response body".
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nhello").await.unwrap();
        });
        let http = loopback_client(None).unwrap();
        let mut response = http.get(format!("http://{addr}/")).send().await.unwrap();
        let error = loop {
            match response.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the body ended cleanly"),
                Err(e) => break e,
            }
        };
        let message = transport(&error);
        assert!(message.starts_with(&error.to_string()), "{message}");
        assert!(message.len() > error.to_string().len() + 3, "no cause in {message}");
    }

    #[test]
    fn unknown_model_answers_are_told_apart() {
        let vllm = error_for_status("vllm", 404, r#"{"error":{"message":"The model `x` does not exist."}}"#);
        assert!(vllm.contains("does not serve the model"), "{vllm}");
        let max = error_for_status("max", 400, r#"{"detail":"Unknown model 'x'"}"#);
        assert!(max.contains("does not serve the model"), "{max}");
        assert_eq!(
            error_for_status("max", 400, r#"{"detail":"max_tokens too large"}"#),
            "max: max_tokens too large"
        );
    }

    #[test]
    fn engine_names_round_trip() {
        for kind in [ServedKind::Vllm, ServedKind::Max] {
            assert_eq!(ServedKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ServedKind::from_name("llama.cpp"), None);
    }

    #[test]
    fn missing_engines_name_their_package() {
        let dir = tempfile::tempdir().unwrap();
        let err = ServedKind::Max.locate(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("max[serve]") && err.contains("engines.max.virtualenv"), "{err}");
        let err = ServedKind::Vllm.locate(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("install the Python package vllm"), "{err}");
    }
}
