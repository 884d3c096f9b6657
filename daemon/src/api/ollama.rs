//! Ollama's inference routes — `/api/generate`, `/api/chat`, `/api/embed`, `/api/embeddings`,
//! `/api/ps`, `/api/version` — with its field names, NDJSON streaming (on unless `"stream":
//! false`), `done_reason`, timings in nanoseconds, `keep_alive` as a duration or seconds,
//! `options`, `format` ("json" or a schema), `think`, and tool calls parsed from the reply.
//! An empty prompt (or no messages) loads the model; with `keep_alive: 0` it unloads it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::{Stream, StreamExt};
use hyperllama_proto::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::error::{ApiError, OllamaError};
use super::stream::{first, json_body, ndjson, now_rfc3339, rfc3339};
use super::tools::{ToolCall, ToolSniffer};
use super::{Api, metrics_user};
use crate::control::RpcStream;
use crate::inference;
use crate::metrics::{Meter, Outcome};

/// The Ollama API version this server answers like.
pub const OLLAMA_COMPAT_VERSION: &str = "0.12.0";

type Result<T, E = OllamaError> = std::result::Result<T, E>;

/// `GET /api/version`.
pub async fn version() -> Response {
    axum::Json(json!({ "version": OLLAMA_COMPAT_VERSION })).into_response()
}

// ---------------------------------------------------------------------------------------------
// Shared with the OpenAI routes: options, keep_alive, the generation stream.

/// `keep_alive`: seconds (a number, or a string of one) or a Go-style duration ("5m", "1h30m",
/// "-1m"); negative keeps the model loaded until unloaded.
pub fn keep_alive(value: Option<&Value>) -> Result<Option<i64>, ApiError> {
    let bad = || {
        ApiError::bad_param(
            "keep_alive",
            "keep_alive must be a duration such as \"5m\" or a number of seconds",
        )
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n.as_f64().ok_or_else(bad)?;
            #[allow(clippy::cast_possible_truncation)]
            Ok(Some(if secs < 0.0 { -1 } else { secs.ceil().min(1e15) as i64 }))
        }
        Some(Value::String(s)) => {
            let s = s.trim();
            if let Ok(secs) = s.parse::<f64>() {
                return keep_alive(Some(&json!(secs)));
            }
            let (negative, body) = match s.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, s),
            };
            let duration = humantime::parse_duration(body).map_err(|_| bad())?;
            if negative {
                return Ok(Some(-1));
            }
            let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
            Ok(Some(i64::try_from(secs).unwrap_or(i64::MAX)))
        }
        Some(_) => Err(bad()),
    }
}

/// Ollama's `options` object (unknown keys are accepted and ignored, as Ollama's runners do for
/// settings that do not apply to them).
pub fn options(value: Option<&Value>) -> Result<Option<pb::Options>, ApiError> {
    let Some(Value::Object(map)) = value else {
        return match value {
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err(ApiError::bad_param("options", "options must be an object")),
        };
    };
    let mut o = pb::Options::default();
    for (key, v) in map {
        let bad = || {
            ApiError::bad_param(&format!("options.{key}"), format!("option {key} has the wrong type: {v}"))
        };
        #[allow(clippy::cast_possible_truncation)]
        let f = || v.as_f64().map(|x| x as f32).ok_or_else(bad);
        let i = || v.as_i64().and_then(|x| i32::try_from(x).ok()).ok_or_else(bad);
        match key.as_str() {
            "temperature" => o.temperature = Some(f()?),
            "top_k" => o.top_k = Some(i()?),
            "top_p" => o.top_p = Some(f()?),
            "min_p" => o.min_p = Some(f()?),
            "typical_p" => o.typical_p = Some(f()?),
            "repeat_last_n" => o.repeat_last_n = Some(i()?),
            "repeat_penalty" => o.repeat_penalty = Some(f()?),
            "presence_penalty" => o.presence_penalty = Some(f()?),
            "frequency_penalty" => o.frequency_penalty = Some(f()?),
            "seed" => o.seed = Some(v.as_i64().ok_or_else(bad)?),
            "num_predict" => o.num_predict = Some(i()?),
            "num_ctx" => o.num_ctx = Some(i()?),
            "stop" => {
                o.stop = match v {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(items) => items
                        .iter()
                        .map(|s| s.as_str().map(str::to_string).ok_or_else(bad))
                        .collect::<Result<_, _>>()?,
                    Value::Null => Vec::new(),
                    _ => return Err(bad()),
                }
            }
            other => tracing::debug!(option = other, "ignoring an option that does not apply"),
        }
    }
    Ok(Some(o))
}

/// `format`: "json", a JSON schema object, or nothing.
pub fn format(value: Option<&Value>) -> Result<String, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(String::new()),
        Some(Value::String(s)) if s == "json" => Ok("json".into()),
        Some(schema @ Value::Object(_)) => Ok(schema.to_string()),
        Some(other) => Err(ApiError::bad_param(
            "format",
            format!("format must be \"json\" or a JSON schema, not {other}"),
        )),
    }
}

/// `think`: a bool, or a level ("low", "medium", "high") meaning on.
pub fn think(value: Option<&Value>) -> Result<Option<bool>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if matches!(s.as_str(), "low" | "medium" | "high") => Ok(Some(true)),
        Some(other) => Err(ApiError::bad_param(
            "think",
            format!("think must be true, false, \"low\", \"medium\" or \"high\", not {other}"),
        )),
    }
}

/// `think`, refused for models that cannot think (as Ollama refuses it).
async fn think_checked(api: &Api, model: &str, value: Option<&Value>) -> Result<Option<bool>, ApiError> {
    let wanted = think(value)?;
    if wanted == Some(true) && !super::ollama_store::supports(api, model, "thinking").await? {
        return Err(ApiError::bad_param("think", format!("\"{model}\" does not support thinking")));
    }
    Ok(wanted)
}

/// Base64 images.
pub fn images(value: &[String]) -> Result<Vec<Vec<u8>>, ApiError> {
    value
        .iter()
        .map(|s| {
            let data = s.split_once("base64,").map_or(s.as_str(), |(_, d)| d);
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|_| ApiError::bad_param("images", "images must be base64-encoded"))
        })
        .collect()
}

/// One event of a generation, whichever RPC produced it.
#[derive(Debug, Clone)]
pub enum Event {
    /// Generated text.
    Text {
        /// The text.
        text: String,
        /// Reasoning text, for thinking models.
        thinking: String,
        /// Log-probability of `text`, when the request asked for them.
        logprob: Option<f32>,
    },
    /// The end.
    Done {
        /// "stop", "length", ...
        reason: String,
        /// Counts and timings.
        stats: pb::Stats,
    },
}

impl From<pb::GenerateResponse> for Event {
    fn from(r: pb::GenerateResponse) -> Self {
        if r.done {
            Event::Done { reason: r.done_reason, stats: r.stats.unwrap_or_default() }
        } else {
            Event::Text { text: r.response, thinking: r.thinking, logprob: r.logprob }
        }
    }
}

impl From<pb::ChatResponse> for Event {
    fn from(r: pb::ChatResponse) -> Self {
        if r.done {
            Event::Done { reason: r.done_reason, stats: r.stats.unwrap_or_default() }
        } else {
            let m = r.message.unwrap_or_default();
            Event::Text { text: m.content, thinking: m.thinking, logprob: r.logprob }
        }
    }
}

/// One log-probability entry, in the shape both Ollama (`logprobs`) and OpenAI chat
/// (`logprobs.content`) use. An entry covers one emitted piece: usually one token, several when a
/// held-back partial stop string was released at once (their log-probabilities summed).
pub fn logprob_entry(text: &str, logprob: f32) -> Value {
    json!({"token": text, "logprob": logprob, "bytes": text.as_bytes(), "top_logprobs": []})
}

/// Alternatives to the chosen tokens are not computed; asking for them is an error rather than
/// an empty list that looks like an answer.
pub fn no_top_logprobs(name: &str, value: Option<u32>) -> Result<(), ApiError> {
    match value {
        Some(n) if n > 0 => Err(ApiError::bad_param(
            name,
            format!("{name} {n} is not supported: only the chosen tokens' log-probabilities are reported"),
        )),
        _ => Ok(()),
    }
}

/// Sets `logprobs` on the merged request options.
pub fn with_logprobs(options: Option<pb::Options>, logprobs: bool) -> Option<pb::Options> {
    if !logprobs {
        return options;
    }
    Some(pb::Options { logprobs: true, ..options.unwrap_or_default() })
}

/// A started generation: its events, metered.
pub type Events = Pin<Box<dyn Stream<Item = Result<Event, ApiError>> + Send>>;

/// Waits for the first event (errors before any output become the response status), then
/// streams the rest, metering time to first token, inter-token latency and token counts.
pub async fn start<T: Into<Event> + Send + 'static>(
    stream: RpcStream<T>,
    model: &str,
    user: Option<&str>,
    started: Instant,
) -> Result<Events, ApiError> {
    let (head, rest) = first(stream).await?;
    let meter = Meter::started_at(model, user, started);
    let state = (Some(head.into()), rest, Some(meter));
    let events = futures::stream::unfold(state, |(mut head, mut rest, mut meter)| async move {
        meter.as_ref()?;
        let next = match head.take() {
            Some(event) => Ok(event),
            None => match rest.next().await {
                Some(Ok(item)) => Ok(item.into()),
                Some(Err(status)) => Err(ApiError::from(status)),
                None => {
                    // The stream ended without `done`: the daemon is stopping or the model died.
                    Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "the request ended early"))
                }
            },
        };
        match &next {
            Ok(Event::Text { .. }) => {
                if let Some(m) = meter.as_mut() {
                    m.token();
                }
            }
            Ok(Event::Done { stats, reason }) => {
                let outcome = if reason == "cancel" { Outcome::Cancelled } else { Outcome::Finished };
                if let Some(m) = meter.take() {
                    m.finish(Some(stats), outcome);
                }
            }
            Err(_) => {
                if let Some(m) = meter.take() {
                    m.finish(None, Outcome::Failed);
                }
            }
        }
        Some((next, (head, rest, meter)))
    });
    Ok(Box::pin(events))
}

/// Ollama's timing fields.
fn stats_fields(out: &mut serde_json::Map<String, Value>, stats: &pb::Stats) {
    out.insert("total_duration".into(), json!(stats.total_duration_ns));
    out.insert("load_duration".into(), json!(stats.load_duration_ns));
    out.insert("prompt_eval_count".into(), json!(stats.prompt_eval_count));
    out.insert("prompt_eval_duration".into(), json!(stats.prompt_eval_duration_ns));
    out.insert("eval_count".into(), json!(stats.eval_count));
    out.insert("eval_duration".into(), json!(stats.eval_duration_ns));
}

fn model_of(model: Option<String>, name: Option<String>) -> Result<String, ApiError> {
    model
        .filter(|m| !m.is_empty())
        .or(name.filter(|m| !m.is_empty()))
        .ok_or_else(|| ApiError::bad_param("model", "model is required"))
}

// ---------------------------------------------------------------------------------------------
// /api/generate

#[derive(Debug, Deserialize)]
struct GenerateBody {
    model: Option<String>,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    suffix: String,
    #[serde(default)]
    system: String,
    #[serde(default)]
    template: String,
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    images: Vec<String>,
    format: Option<Value>,
    options: Option<Value>,
    stream: Option<bool>,
    keep_alive: Option<Value>,
    think: Option<Value>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<u32>,
    /// Deprecated conversation state; not used (prefix caching does its job).
    #[serde(default, rename = "context")]
    _context: Option<Value>,
}

/// `POST /api/generate`.
pub async fn generate(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let started = Instant::now();
    let body: GenerateBody = json_body(body)?;
    let model = model_of(body.model, None)?;
    caller.check_model(&model)?;
    let keep_alive = keep_alive(body.keep_alive.as_ref())?;
    if body.prompt.is_empty() && body.images.is_empty() {
        let reason = load_or_unload(&api, &caller, &model, keep_alive).await?;
        return Ok(axum::Json(json!({
            "model": model, "created_at": now_rfc3339(), "response": "", "done": true, "done_reason": reason,
        }))
        .into_response());
    }
    if !body.images.is_empty() {
        images(&body.images)?;
        return Err(
            ApiError::bad_param("images", format!("{model} has no vision support; send text only")).into()
        );
    }
    let think = think_checked(&api, &model, body.think.as_ref()).await?;
    no_top_logprobs("top_logprobs", body.top_logprobs)?;
    let logprobs = body.logprobs;
    let request = pb::GenerateRequest {
        model: model.clone(),
        prompt: body.prompt,
        system: body.system,
        template: body.template,
        raw: body.raw,
        format: format(body.format.as_ref())?,
        options: with_logprobs(options(body.options.as_ref())?, logprobs),
        keep_alive_seconds: keep_alive,
        think,
        images: Vec::new(),
        suffix: body.suffix,
    };
    let guard = api.shared.lifecycle.begin().map_err(ApiError::from)?;
    let stream = inference::generate(Arc::clone(&api.shared), caller.who.clone(), guard, request);
    let user = metrics_user(&api, &caller);
    let events = start(stream, &super::model_label(&api, &model), user.as_deref(), started).await?;
    if body.stream.unwrap_or(true) {
        return Ok(ndjson(events.map(move |event| match event {
            Ok(Event::Text { text, thinking, logprob }) => {
                let mut line = generate_line(&model, text.clone(), thinking);
                if let Some(lp) = logprob {
                    line["logprobs"] = json!([logprob_entry(&text, lp)]);
                }
                line
            }
            Ok(Event::Done { reason, stats }) => {
                let done = Reply { reason, stats, ..Reply::default() };
                generate_done(&model, done, false)
            }
            Err(e) => e.stream_body(super::error::Dialect::Ollama),
        })));
    }
    let reply = collect(events).await?;
    Ok(axum::Json(generate_done(&model, reply, logprobs)).into_response())
}

fn generate_line(model: &str, text: String, thinking: String) -> Value {
    let mut out = json!({"model": model, "created_at": now_rfc3339(), "response": text, "done": false});
    if !thinking.is_empty() {
        out["thinking"] = json!(thinking);
    }
    out
}

/// The last line (or the whole non-streamed answer) of a generation.
fn generate_done(model: &str, reply: Reply, logprobs: bool) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("model".into(), json!(model));
    out.insert("created_at".into(), json!(now_rfc3339()));
    out.insert("response".into(), json!(reply.text));
    if !reply.thinking.is_empty() {
        out.insert("thinking".into(), json!(reply.thinking));
    }
    if logprobs {
        out.insert("logprobs".into(), Value::Array(reply.logprob_entries()));
    }
    out.insert("done".into(), json!(true));
    out.insert("done_reason".into(), json!(reply.reason));
    stats_fields(&mut out, &reply.stats);
    Value::Object(out)
}

/// A whole (non-streamed) reply.
#[derive(Debug, Default)]
pub struct Reply {
    /// The text.
    pub text: String,
    /// Reasoning text.
    pub thinking: String,
    /// "stop", "length", ...
    pub reason: String,
    /// Counts and timings.
    pub stats: pb::Stats,
    /// Each piece with its log-probability, when asked for.
    pub logprobs: Vec<(String, f32)>,
}

impl Reply {
    /// The pieces as [`logprob_entry`] values.
    pub fn logprob_entries(&self) -> Vec<Value> {
        self.logprobs.iter().map(|(text, lp)| logprob_entry(text, *lp)).collect()
    }
}

/// Gathers a whole reply.
pub async fn collect(mut events: Events) -> Result<Reply, ApiError> {
    let mut reply = Reply::default();
    while let Some(event) = events.next().await {
        match event? {
            Event::Text { text, thinking, logprob } => {
                if let Some(lp) = logprob {
                    reply.logprobs.push((text.clone(), lp));
                }
                reply.text.push_str(&text);
                reply.thinking.push_str(&thinking);
            }
            Event::Done { reason, stats } => return Ok(Reply { reason, stats, ..reply }),
        }
    }
    Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "the request ended early"))
}

/// An empty prompt loads the model (`done_reason: "load"`); with `keep_alive: 0` it lets the
/// model go once idle (`"unload"`), as a request with that keep_alive would.
async fn load_or_unload(
    api: &Api,
    caller: &Caller,
    model: &str,
    keep_alive: Option<i64>,
) -> Result<&'static str, ApiError> {
    let _guard = api.shared.lifecycle.begin()?;
    tracing::debug!(user = %caller.who.user, model, ?keep_alive, "load request");
    if keep_alive == Some(0) {
        let resolved = api.shared.store.resolve(model).await?;
        api.shared.residency.keep(&resolved.digest, 0);
        return Ok("unload");
    }
    let request =
        pb::LoadRequest { model: model.to_string(), keep_alive_seconds: keep_alive, ..Default::default() };
    inference::load(&api.shared, request).await?;
    Ok("load")
}

// ---------------------------------------------------------------------------------------------
// /api/chat

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    images: Vec<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    tool_calls: Option<Value>,
    #[serde(default)]
    tool_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    model: Option<String>,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    tools: Option<Value>,
    format: Option<Value>,
    options: Option<Value>,
    stream: Option<bool>,
    keep_alive: Option<Value>,
    think: Option<Value>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<u32>,
}

/// `POST /api/chat`.
pub async fn chat(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let started = Instant::now();
    let body: ChatBody = json_body(body)?;
    let model = model_of(body.model, None)?;
    caller.check_model(&model)?;
    let keep_alive = keep_alive(body.keep_alive.as_ref())?;
    if body.messages.is_empty() {
        let reason = load_or_unload(&api, &caller, &model, keep_alive).await?;
        return Ok(axum::Json(json!({
            "model": model, "created_at": now_rfc3339(),
            "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": reason,
        }))
        .into_response());
    }
    let messages = body
        .messages
        .into_iter()
        .map(|m| {
            Ok(pb::Message {
                role: m.role,
                content: m.content.unwrap_or_default(),
                images: images(&m.images)?,
                thinking: m.thinking.unwrap_or_default(),
                tool_calls_json: m
                    .tool_calls
                    .filter(|v| !v.is_null())
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                tool_name: m.tool_name.unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let tools_json = tools_json(body.tools.as_ref())?;
    let has_tools = !tools_json.is_empty();
    let think = think_checked(&api, &model, body.think.as_ref()).await?;
    no_top_logprobs("top_logprobs", body.top_logprobs)?;
    let logprobs = body.logprobs;
    let request = pb::ChatRequest {
        model: model.clone(),
        messages,
        format: format(body.format.as_ref())?,
        options: with_logprobs(options(body.options.as_ref())?, logprobs),
        keep_alive_seconds: keep_alive,
        think,
        tools_json,
    };
    let guard = api.shared.lifecycle.begin().map_err(ApiError::from)?;
    let stream = inference::chat(Arc::clone(&api.shared), caller.who.clone(), guard, request);
    let user = metrics_user(&api, &caller);
    let events = start(stream, &super::model_label(&api, &model), user.as_deref(), started).await?;
    if body.stream.unwrap_or(true) {
        let mut sniffer = ToolSniffer::new(has_tools);
        // Entries of text the tool sniffer still holds ride on the line that releases it.
        let mut pending: Vec<Value> = Vec::new();
        let lines = events.flat_map(move |event| {
            let attach = |mut line: Value, pending: &mut Vec<Value>| {
                if logprobs {
                    line["logprobs"] = Value::Array(std::mem::take(pending));
                }
                line
            };
            let out: Vec<Value> = match event {
                Ok(Event::Text { text, thinking, logprob }) => {
                    if let Some(lp) = logprob {
                        pending.push(logprob_entry(&text, lp));
                    }
                    let text = sniffer.push(&text);
                    if text.is_empty() && thinking.is_empty() {
                        Vec::new()
                    } else {
                        vec![attach(chat_line(&model, &text, &thinking, None), &mut pending)]
                    }
                }
                Ok(Event::Done { reason, stats }) => {
                    let mut out = Vec::new();
                    match sniffer.finish() {
                        Ok(calls) => out.push(attach(chat_line(&model, "", "", Some(&calls)), &mut pending)),
                        Err(held) if !held.is_empty() => {
                            out.push(attach(chat_line(&model, &held, "", None), &mut pending));
                        }
                        Err(_) => {}
                    }
                    out.push(chat_done(&model, "", "", None, reason, &stats));
                    out
                }
                Err(e) => vec![e.stream_body(super::error::Dialect::Ollama)],
            };
            futures::stream::iter(out)
        });
        return Ok(ndjson(lines));
    }
    let reply = collect(events).await?;
    let entries = reply.logprob_entries();
    let calls = if has_tools { super::tools::parse(&reply.text) } else { None };
    let text = if calls.is_some() { "" } else { reply.text.as_str() };
    let mut done = chat_done(&model, text, &reply.thinking, calls.as_deref(), reply.reason, &reply.stats);
    if logprobs {
        done["logprobs"] = Value::Array(entries);
    }
    Ok(axum::Json(done).into_response())
}

/// Tools as the template wants them (a JSON array), validated.
pub fn tools_json(tools: Option<&Value>) -> Result<String, ApiError> {
    match tools {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::Array(items)) if items.is_empty() => Ok(String::new()),
        Some(v @ Value::Array(_)) => Ok(v.to_string()),
        Some(_) => Err(ApiError::bad_param("tools", "tools must be an array")),
    }
}

fn chat_message(content: &str, thinking: &str, calls: Option<&[ToolCall]>) -> Value {
    let mut message = json!({"role": "assistant", "content": content});
    if !thinking.is_empty() {
        message["thinking"] = json!(thinking);
    }
    if let Some(calls) = calls {
        message["tool_calls"] = Value::Array(calls.iter().enumerate().map(|(i, c)| c.ollama(i)).collect());
    }
    message
}

fn chat_line(model: &str, content: &str, thinking: &str, calls: Option<&[ToolCall]>) -> Value {
    json!({"model": model, "created_at": now_rfc3339(), "message": chat_message(content, thinking, calls), "done": false})
}

fn chat_done(
    model: &str,
    content: &str,
    thinking: &str,
    calls: Option<&[ToolCall]>,
    reason: String,
    stats: &pb::Stats,
) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("model".into(), json!(model));
    out.insert("created_at".into(), json!(now_rfc3339()));
    out.insert("message".into(), chat_message(content, thinking, calls));
    out.insert("done".into(), json!(true));
    out.insert("done_reason".into(), json!(reason));
    stats_fields(&mut out, stats);
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// /api/embed, /api/embeddings

#[derive(Debug, Deserialize)]
struct EmbedBody {
    model: Option<String>,
    input: Option<Value>,
    truncate: Option<bool>,
    keep_alive: Option<Value>,
    dimensions: Option<u32>,
    #[serde(rename = "options")]
    _options: Option<Value>,
}

/// Runs an embedding as `caller`.
pub async fn run_embed(
    api: &Api,
    caller: &Caller,
    model: &str,
    input: Vec<String>,
    truncate: bool,
    keep_alive: Option<i64>,
    dimensions: u32,
) -> Result<pb::EmbedResponse, ApiError> {
    caller.check_model(model)?;
    let _guard = api.shared.lifecycle.begin()?;
    let request = pb::EmbedRequest {
        model: model.to_string(),
        input,
        truncate,
        keep_alive_seconds: keep_alive,
        dimensions,
    };
    let out = inference::embed(&api.shared, &caller.who, request).await?;
    crate::metrics::embedded(
        &super::model_label(api, model),
        metrics_user(api, caller).as_deref(),
        out.prompt_eval_count,
    );
    Ok(out)
}

/// `POST /api/embed`.
pub async fn embed(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body: EmbedBody = json_body(body)?;
    let model = model_of(body.model, None)?;
    let input = match body.input {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::bad_param("input", "input must be a string or an array of strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::bad_param("input", "input must be a string or an array of strings").into());
        }
    };
    let keep_alive = keep_alive(body.keep_alive.as_ref())?;
    if input.is_empty() {
        load_or_unload(&api, &caller, &model, keep_alive).await?;
        return Ok(axum::Json(json!({"model": model, "embeddings": []})).into_response());
    }
    let out = run_embed(
        &api,
        &caller,
        &model,
        input,
        body.truncate.unwrap_or(true),
        keep_alive,
        body.dimensions.unwrap_or(0),
    )
    .await?;
    Ok(axum::Json(json!({
        "model": model,
        "embeddings": out.embeddings.iter().map(|e| &e.values).collect::<Vec<_>>(),
        "total_duration": out.total_duration_ns,
        "load_duration": 0,
        "prompt_eval_count": out.prompt_eval_count,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct EmbeddingsBody {
    model: Option<String>,
    #[serde(default)]
    prompt: String,
    keep_alive: Option<Value>,
    #[serde(rename = "options")]
    _options: Option<Value>,
}

/// `POST /api/embeddings` (the older, single-prompt form).
pub async fn embeddings(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body: EmbeddingsBody = json_body(body)?;
    let model = model_of(body.model, None)?;
    let keep_alive = keep_alive(body.keep_alive.as_ref())?;
    if body.prompt.is_empty() {
        load_or_unload(&api, &caller, &model, keep_alive).await?;
        return Ok(axum::Json(json!({"embedding": []})).into_response());
    }
    let out = run_embed(&api, &caller, &model, vec![body.prompt], true, keep_alive, 0).await?;
    let values = out.embeddings.into_iter().next().map(|e| e.values).unwrap_or_default();
    Ok(axum::Json(json!({ "embedding": values })).into_response())
}

// ---------------------------------------------------------------------------------------------
// /api/ps

/// `GET /api/ps`.
pub async fn ps(State(api): State<Arc<Api>>, Extension(_caller): Extension<Caller>) -> Result<Response> {
    let running = inference::ps(&api.shared);
    let models: Vec<Value> = running
        .models
        .iter()
        .map(|m| {
            let expires =
                if m.expires_at == 0 { "2318-08-28T00:00:00Z".to_string() } else { rfc3339(m.expires_at) };
            json!({
                "name": m.name,
                "model": m.name,
                "size": m.size_bytes,
                "digest": m.digest.trim_start_matches("sha256:"),
                "details": {"parent_model": "", "format": "gguf", "family": "", "families": null,
                            "parameter_size": "", "quantization_level": ""},
                "expires_at": expires,
                "size_vram": m.vram_bytes,
                "context_length": m.context_length,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "models": models })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_forms() {
        assert_eq!(keep_alive(None).unwrap(), None);
        assert_eq!(keep_alive(Some(&json!(300))).unwrap(), Some(300));
        assert_eq!(keep_alive(Some(&json!(0))).unwrap(), Some(0));
        assert_eq!(keep_alive(Some(&json!(-1))).unwrap(), Some(-1));
        assert_eq!(keep_alive(Some(&json!("5m"))).unwrap(), Some(300));
        assert_eq!(keep_alive(Some(&json!("1h30m"))).unwrap(), Some(5400));
        assert_eq!(keep_alive(Some(&json!("-1m"))).unwrap(), Some(-1));
        assert_eq!(keep_alive(Some(&json!("0"))).unwrap(), Some(0));
        assert_eq!(keep_alive(Some(&json!("1.5"))).unwrap(), Some(2));
        assert!(keep_alive(Some(&json!("soon"))).is_err());
        assert!(keep_alive(Some(&json!([1]))).is_err());
    }

    #[test]
    fn options_map_and_reject_bad_types() {
        let o = options(Some(
            &json!({"temperature": 0, "num_predict": 5, "stop": ["\n"], "seed": 42, "num_gpu": 99}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!((o.temperature, o.num_predict, o.seed), (Some(0.0), Some(5), Some(42)));
        assert_eq!(o.stop, vec!["\n"]);
        let err = options(Some(&json!({"temperature": "hot"}))).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("options.temperature"));
    }

    #[test]
    fn formats_and_think() {
        assert_eq!(format(Some(&json!("json"))).unwrap(), "json");
        assert_eq!(format(Some(&json!({"type": "object"}))).unwrap(), "{\"type\":\"object\"}");
        assert!(format(Some(&json!("yaml"))).is_err());
        assert_eq!(think(Some(&json!("high"))).unwrap(), Some(true));
        assert!(think(Some(&json!("max"))).is_err());
    }
}
