//! Inference and residency operations shared by the gRPC control plane and the HTTP APIs
//! (generate, chat, embed, load, unload, ps): resolve the model in the store, have residency load it, wait for a fair slot as the calling user, stream the runner's
//! events back, and record the user's usage. Every request runs as the user who sent it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyperllama_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Status;

use crate::accounts;
use crate::admission::UserLimits;
use crate::control::RpcStream;
use crate::engine::{
    ChatMessage, ChatPrompt, EngineEvent, GenerateRequest, OutputFormat, Prompt, RequestStats, SamplingParams,
};
use crate::error::{Error, Result};
use crate::identity::PeerIdentity;
use crate::lifecycle::WorkGuard;
use crate::residency::{LoadRequest, Loaded, Residency};
use crate::runner::convert;
use crate::state::Shared;
use crate::store::ResolvedModel;

/// Request options after Modelfile PARAMETERs and the request's own options are merged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// num_predict (negative = unlimited).
    pub max_tokens: Option<u32>,
    /// num_ctx.
    pub num_ctx: Option<u32>,
    /// Report each piece's log-probability.
    pub logprobs: bool,
}

/// Modelfile PARAMETERs first, then the request's options on top (Ollama's precedence).
pub fn merge_options(parameters: &[(String, String)], options: Option<&pb::Options>) -> Result<Merged> {
    let mut m = Merged::default();
    let mut num_predict: Option<i32> = None;
    for (key, value) in parameters {
        let bad = || Error::InvalidArgument(format!("the model's PARAMETER {key} {value} is not valid"));
        let f = || value.parse::<f32>().map_err(|_| bad());
        let i = || value.parse::<i32>().map_err(|_| bad());
        let s = &mut m.sampling;
        match key.as_str() {
            "temperature" => s.temperature = f()?,
            "top_k" => s.top_k = i()?,
            "top_p" => s.top_p = f()?,
            "min_p" => s.min_p = f()?,
            "typical_p" => s.typical_p = f()?,
            "repeat_last_n" => s.repeat_last_n = i()?,
            "repeat_penalty" => s.repeat_penalty = f()?,
            "presence_penalty" => s.presence_penalty = f()?,
            "frequency_penalty" => s.frequency_penalty = f()?,
            "seed" => s.seed = Some(value.parse::<i64>().map_err(|_| bad())?.unsigned_abs()),
            "stop" => m.stop.push(value.clone()),
            "num_predict" => num_predict = Some(i()?),
            "num_ctx" => m.num_ctx = u32::try_from(i()?).ok(),
            // Accepted by Ollama for other engines; nothing to do for ours.
            _ => tracing::debug!(key, "ignoring Modelfile parameter"),
        }
    }
    if let Some(o) = options {
        let s = &mut m.sampling;
        // Each option the request sets replaces the Modelfile's value.
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = o.$field { s.$field = v; } )* };
        }
        take!(
            temperature,
            top_k,
            top_p,
            min_p,
            typical_p,
            repeat_last_n,
            repeat_penalty,
            presence_penalty,
            frequency_penalty
        );
        if let Some(v) = o.seed {
            s.seed = Some(v.unsigned_abs());
        }
        if !o.stop.is_empty() {
            m.stop.clone_from(&o.stop);
        }
        if let Some(v) = o.num_predict {
            num_predict = Some(v);
        }
        if let Some(v) = o.num_ctx {
            m.num_ctx = u32::try_from(v).ok().filter(|n| *n > 0);
        }
        m.logprobs = o.logprobs;
    }
    m.max_tokens = num_predict.and_then(|n| u32::try_from(n).ok());
    Ok(m)
}

fn format_of(text: &str) -> OutputFormat {
    match text.trim() {
        "" => OutputFormat::Text,
        "json" | "\"json\"" => OutputFormat::Json,
        schema => OutputFormat::JsonSchema(schema.to_string()),
    }
}

/// Builds the engine request once the model is resolved and its runner is known.
type BuildRequest = Box<dyn FnOnce(&ResolvedModel, &pb::RunnerHealth) -> Result<GenerateRequest> + Send>;

/// What a request asks of a loaded model, before it is turned into an engine request.
struct Job {
    who: PeerIdentity,
    model: String,
    keep_alive: Option<i64>,
    build: BuildRequest,
}

/// The model loaded and a slot granted: what a request holds while it runs.
struct Running {
    loaded: Arc<Loaded>,
    request: GenerateRequest,
    load_ns: u64,
    _permit: crate::admission::Permit,
    _use: crate::residency::UseGuard,
}

fn load_request(resolved: &ResolvedModel, keep_alive: Option<i64>) -> LoadRequest {
    LoadRequest {
        name: resolved.name.clone(),
        digest: resolved.digest.clone(),
        model_path: resolved.model_path.clone(),
        size_bytes: resolved.size_bytes,
        gpus: Vec::new(),
        engine: String::new(),
        context_length: 0,
        keep_alive,
        kv_bytes_per_token: 0,
        folder: resolved.folder.clone(),
    }
}

async fn limits(shared: &Shared, uid: u32) -> Result<UserLimits> {
    let q = accounts::quota(&shared.db, &shared.config().quota, uid).await?;
    Ok(UserLimits {
        max_concurrent: q.max_concurrent_requests,
        max_queued: q.max_queued_requests,
        tokens_per_minute: q.tokens_per_minute,
    })
}

/// Resolves, loads, waits for a slot and builds the engine request.
async fn prepare(shared: &Shared, job: Job) -> Result<Running> {
    let resolved = shared.store.resolve(&job.model).await?;
    let started = Instant::now();
    let loaded = shared.residency.acquire(&load_request(&resolved, job.keep_alive)).await?;
    let load_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let keep_alive = job.keep_alive.unwrap_or_else(|| shared.residency.default_keep_alive());
    let use_guard = loaded.use_guard(keep_alive);
    let permit = loaded.queue.admit(job.who.uid, limits(shared, job.who.uid).await?).await?;
    let health = loaded.runner().health.clone();
    let request = (job.build)(&resolved, &health)?;
    Ok(Running { loaded, request, load_ns, _permit: permit, _use: use_guard })
}

/// Streams one request's engine events, mapped by `emit`, until done; records usage.
async fn drive<T: Send + 'static>(
    shared: Arc<Shared>,
    job: Job,
    tx: mpsc::Sender<Result<T, Status>>,
    emit: impl Fn(Out) -> T + Send + 'static,
    _guard: WorkGuard,
) {
    let uid = job.who.uid;
    let started = Instant::now();
    let cancel = shared.lifecycle.cancelled();
    let running = tokio::select! {
        r = prepare(&shared, job) => r,
        _ = tx.closed() => return,
        _ = cancel.cancelled() => Err(Error::ShuttingDown),
    };
    let running = match running {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Err(e.into())).await;
            return;
        }
    };
    let runner = running.loaded.runner();
    let call = runner.client().generate(convert::request_to_wire(&running.request)).await;
    let mut stream = match call {
        Ok(s) => s.into_inner(),
        Err(status) => {
            let _ = tx.send(Err(runner_status(&running.loaded, &runner, status).await)).await;
            return;
        }
    };
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = tx.closed() => break,
            _ = cancel.cancelled() => {
                let _ = tx.send(Err(Error::ShuttingDown.into())).await;
                break;
            }
        };
        let event = match next {
            None => {
                let status = Status::unavailable("the runner ended the stream early");
                let _ = tx.send(Err(runner_status(&running.loaded, &runner, status).await)).await;
                break;
            }
            Some(Err(status)) => {
                let _ = tx.send(Err(runner_status(&running.loaded, &runner, status).await)).await;
                break;
            }
            Some(Ok(e)) => convert::event_from_wire(e),
        };
        match event {
            None | Some(EngineEvent::PromptDone { .. }) => {}
            Some(EngineEvent::Text { text, logprob }) => {
                if tx.send(Ok(emit(Out::Text(text, logprob)))).await.is_err() {
                    break;
                }
            }
            Some(EngineEvent::Done { reason, stats: s }) => {
                // Account before the final event leaves: a client that reads its usage right
                // after its answer must find this request counted.
                account(&shared, uid, &s).await;
                let total_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let final_stats = pb::Stats {
                    total_duration_ns: total_ns,
                    load_duration_ns: running.load_ns,
                    prompt_eval_count: s.prompt_tokens,
                    prompt_eval_duration_ns: s.prompt_eval_ns,
                    eval_count: s.generated_tokens,
                    eval_duration_ns: s.eval_ns,
                    cached_tokens: s.cached_tokens,
                };
                let _ = tx.send(Ok(emit(Out::Done { reason: reason.to_string(), stats: final_stats }))).await;
                return;
            }
            Some(EngineEvent::Error(message)) => {
                let _ = tx.send(Err(Status::invalid_argument(message))).await;
                break;
            }
        }
    }
    // Broken off before the engine's totals: the request still counts.
    account(&shared, uid, &RequestStats::default()).await;
}

/// Charges one finished (or broken-off) request's tokens to its user: the fair-share queue and
/// the usage table.
async fn account(shared: &Shared, uid: u32, stats: &RequestStats) {
    let spent = u64::from(stats.prompt_tokens) + u64::from(stats.generated_tokens);
    shared.residency.global_queue().charge(uid, spent);
    if let Err(error) =
        accounts::record_usage(&shared.db, uid, stats.prompt_tokens, stats.generated_tokens).await
    {
        tracing::warn!(%error, uid, "cannot record usage");
    }
}

/// Maps a failed runner call: when the runner died under the request, say so (and that it was
/// restarted); otherwise pass the runner's own status on.
async fn runner_status(
    loaded: &Loaded,
    runner: &crate::runner::process::RunnerProcess,
    status: Status,
) -> Status {
    let transport =
        matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal);
    if transport && tokio::time::timeout(Duration::from_millis(500), runner.wait_exit()).await.is_ok() {
        return Residency::crash_error(loaded, runner).into();
    }
    status
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn request_id(kind: &str) -> String {
    format!("{kind}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// What `drive` hands to the RPC-specific mapping.
enum Out {
    /// A piece of text and, when asked for, its log-probability.
    Text(String, Option<f32>),
    Done {
        reason: String,
        stats: pb::Stats,
    },
}

fn spawn_stream<T: Send + 'static>(
    shared: Arc<Shared>,
    job: Job,
    guard: WorkGuard,
    emit: impl Fn(Out) -> T + Send + 'static,
) -> RpcStream<T> {
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(drive(shared, job, tx, emit, guard));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The engine request for a prompt, with the caller's cache salt and the merged options.
fn engine_request(kind: &str, uid: u32, prompt: Prompt, merged: Merged, format: &str) -> GenerateRequest {
    GenerateRequest {
        id: request_id(kind),
        cache_salt: u64::from(uid),
        prompt,
        sampling: merged.sampling,
        stop: merged.stop,
        max_tokens: merged.max_tokens,
        num_ctx: merged.num_ctx,
        format: format_of(format),
        logprobs: merged.logprobs,
    }
}

/// The system prompt and template a request ends up with.
fn chat_prompt(
    resolved: &ResolvedModel,
    health: &pb::RunnerHealth,
    template_override: &str,
    mut messages: Vec<ChatMessage>,
    tools_json: &str,
) -> Option<ChatPrompt> {
    let template = [template_override, resolved.template.as_deref().unwrap_or("")]
        .into_iter()
        .find(|t| !t.is_empty())
        .map(str::to_string);
    if template.is_none() && health.chat_template.is_empty() {
        return None;
    }
    if !messages.iter().any(|m| m.role == "system")
        && let Some(system) = resolved.system.as_ref().filter(|s| !s.is_empty())
    {
        messages
            .insert(0, ChatMessage { role: "system".into(), content: system.clone(), tool_calls_json: None });
    }
    let history = resolved.messages.iter().map(|(role, content)| ChatMessage {
        role: role.clone(),
        content: content.clone(),
        tool_calls_json: None,
    });
    let at = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    let mut all: Vec<ChatMessage> = messages[..at].to_vec();
    all.extend(history);
    all.extend(messages[at..].iter().cloned());
    Some(ChatPrompt {
        messages: all,
        template,
        tools_json: (!tools_json.is_empty()).then(|| tools_json.to_string()),
        add_generation_prompt: true,
    })
}

/// Generate.
pub fn generate(
    shared: Arc<Shared>,
    who: PeerIdentity,
    guard: WorkGuard,
    req: pb::GenerateRequest,
) -> RpcStream<pb::GenerateResponse> {
    let model = req.model.clone();
    let keep_alive = req.keep_alive_seconds;
    let uid = who.uid;
    let build =
        Box::new(move |resolved: &ResolvedModel, health: &pb::RunnerHealth| -> Result<GenerateRequest> {
            let merged = merge_options(&resolved.parameters, req.options.as_ref())?;
            if !req.images.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{} has no vision support; send text only",
                    resolved.name
                )));
            }
            let system = if req.system.is_empty() {
                resolved.system.clone().unwrap_or_default()
            } else {
                req.system.clone()
            };
            let prompt = if req.raw {
                Prompt::Text(req.prompt.clone())
            } else {
                let mut messages = Vec::new();
                if !req.system.is_empty() {
                    messages.push(ChatMessage {
                        role: "system".into(),
                        content: req.system.clone(),
                        tool_calls_json: None,
                    });
                }
                messages.push(ChatMessage {
                    role: "user".into(),
                    content: req.prompt.clone(),
                    tool_calls_json: None,
                });
                match chat_prompt(resolved, health, &req.template, messages, "") {
                    Some(chat) => Prompt::Chat(chat),
                    // A base model with no template continues the text it is given.
                    None if system.is_empty() => Prompt::Text(req.prompt.clone()),
                    None => Prompt::Text(format!("{system}\n\n{}", req.prompt)),
                }
            };
            Ok(engine_request("gen", uid, prompt, merged, &req.format))
        });
    let job = Job { who, model, keep_alive, build };
    spawn_stream(shared, job, guard, |out| match out {
        Out::Text(response, logprob) => pb::GenerateResponse { response, logprob, ..Default::default() },
        Out::Done { reason, stats } => {
            pb::GenerateResponse { done: true, done_reason: reason, stats: Some(stats), ..Default::default() }
        }
    })
}

/// Chat.
pub fn chat(
    shared: Arc<Shared>,
    who: PeerIdentity,
    guard: WorkGuard,
    req: pb::ChatRequest,
) -> RpcStream<pb::ChatResponse> {
    let model = req.model.clone();
    let keep_alive = req.keep_alive_seconds;
    let uid = who.uid;
    let build =
        Box::new(move |resolved: &ResolvedModel, health: &pb::RunnerHealth| -> Result<GenerateRequest> {
            let merged = merge_options(&resolved.parameters, req.options.as_ref())?;
            if req.messages.iter().any(|m| !m.images.is_empty()) {
                return Err(Error::InvalidArgument(format!(
                    "{} has no vision support; send text only",
                    resolved.name
                )));
            }
            let messages: Vec<ChatMessage> = req
                .messages
                .iter()
                .map(|m| ChatMessage {
                    role: m.role.clone(),
                    content: m.content.clone(),
                    tool_calls_json: (!m.tool_calls_json.is_empty()).then(|| m.tool_calls_json.clone()),
                })
                .collect();
            let prompt = match chat_prompt(resolved, health, "", messages.clone(), &req.tools_json) {
                Some(chat) => Prompt::Chat(chat),
                // No template anywhere: the engine's documented fallback renders a plain transcript.
                None => Prompt::Chat(ChatPrompt {
                    messages,
                    template: None,
                    tools_json: None,
                    add_generation_prompt: true,
                }),
            };
            Ok(engine_request("chat", uid, prompt, merged, &req.format))
        });
    let job = Job { who, model, keep_alive, build };
    spawn_stream(shared, job, guard, |out| match out {
        Out::Text(content, logprob) => pb::ChatResponse {
            message: Some(pb::Message { role: "assistant".into(), content, ..Default::default() }),
            logprob,
            ..Default::default()
        },
        Out::Done { reason, stats } => pb::ChatResponse {
            message: Some(pb::Message { role: "assistant".into(), ..Default::default() }),
            done: true,
            done_reason: reason,
            stats: Some(stats),
            logprob: None,
        },
    })
}

/// Embed.
pub async fn embed(shared: &Shared, who: &PeerIdentity, req: pb::EmbedRequest) -> Result<pb::EmbedResponse> {
    let started = Instant::now();
    let resolved = shared.store.resolve(&req.model).await?;
    let loaded = shared.residency.acquire(&load_request(&resolved, req.keep_alive_seconds)).await?;
    let _use =
        loaded.use_guard(req.keep_alive_seconds.unwrap_or_else(|| shared.residency.default_keep_alive()));
    let _permit = loaded.queue.admit(who.uid, limits(shared, who.uid).await?).await?;
    let runner = loaded.runner();
    let call =
        runner.client().embed(pb::RunnerEmbedRequest { inputs: req.input, truncate: req.truncate }).await;
    let out = match call {
        Ok(response) => response.into_inner(),
        Err(s) => return Err(Error::Runner(runner_status(&loaded, &runner, s).await.message().to_string())),
    };
    accounts::record_usage(&shared.db, who.uid, out.prompt_tokens, 0).await?;
    let dims = usize::try_from(req.dimensions).unwrap_or(0);
    Ok(pb::EmbedResponse {
        embeddings: out
            .embeddings
            .into_iter()
            .map(|e| {
                let mut values = e.values;
                if dims > 0 && dims < values.len() {
                    values.truncate(dims);
                    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
                    values.iter_mut().for_each(|v| *v /= norm);
                }
                pb::Embedding { values }
            })
            .collect(),
        prompt_eval_count: out.prompt_tokens,
        total_duration_ns: u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
    })
}

/// Load (admins): load and pin as asked.
pub async fn load(shared: &Shared, req: pb::LoadRequest) -> Result<pb::LoadResponse> {
    let resolved = shared.store.resolve(&req.model).await?;
    let mut request = load_request(&resolved, req.keep_alive_seconds);
    request.gpus = req.gpus;
    request.engine = req.engine;
    request.context_length = req.context_length;
    let loaded = shared.residency.acquire(&request).await?;
    if let Some(secs) = req.keep_alive_seconds {
        shared.residency.keep(&loaded.digest, secs);
    }
    Ok(pb::LoadResponse { model: Some(loaded.describe()) })
}

/// Unload (admins).
pub async fn unload(shared: &Shared, req: pb::UnloadRequest) -> Result<pb::UnloadResponse> {
    let resolved = shared.store.resolve(&req.model).await?;
    if !shared.residency.unload(&resolved.digest).await {
        return Err(Error::NotFound(format!("model '{}' is not loaded", req.model)));
    }
    Ok(pb::UnloadResponse {})
}

/// Ps.
pub fn ps(shared: &Shared) -> pb::PsResponse {
    pb::PsResponse { models: shared.residency.list().iter().map(|m| m.describe()).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_options_override_modelfile_parameters() {
        let params = vec![
            ("temperature".to_string(), "0.2".to_string()),
            ("stop".to_string(), "<end>".to_string()),
            ("stop".to_string(), "\n\n".to_string()),
            ("num_predict".to_string(), "48".to_string()),
        ];
        let merged = merge_options(&params, None).unwrap();
        assert_eq!(merged.sampling.temperature, 0.2);
        assert_eq!(merged.stop, vec!["<end>", "\n\n"]);
        assert_eq!(merged.max_tokens, Some(48));
        let options = pb::Options {
            temperature: Some(0.0),
            num_predict: Some(-1),
            seed: Some(3),
            ..Default::default()
        };
        let merged = merge_options(&params, Some(&options)).unwrap();
        assert_eq!(merged.sampling.temperature, 0.0);
        assert_eq!(merged.max_tokens, None, "negative num_predict is unlimited");
        assert_eq!(merged.sampling.seed, Some(3));
        assert!(merge_options(&[("top_k".into(), "many".into())], None).is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(format_of(""), OutputFormat::Text);
        assert_eq!(format_of("json"), OutputFormat::Json);
        assert!(matches!(format_of("{\"type\":\"object\"}"), OutputFormat::JsonSchema(_)));
    }
}
