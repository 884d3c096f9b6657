//! OpenAI's routes — `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/models`, `/v1/models/{id}` — mapped onto the same inference calls as Ollama's, the way
//! Ollama's own compatibility layer maps them (temperature and top_p default to 1). Streaming is
//! server-sent events ending with `data: [DONE]`; `stream_options.include_usage` adds a last
//! chunk with usage and empty choices. Errors use OpenAI's shape.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt;
use hyperllama_proto::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::error::{ApiError, Dialect, OpenAiError};
use super::ollama::{
    Event, Reply, collect, logprob_entry, no_top_logprobs, run_embed, start, tools_json, with_logprobs,
};
use super::stream::{Sse, json_body, sse, unix_now};
use super::tools::{ToolCall, ToolSniffer};
use super::{Api, metrics_user};
use crate::inference;

type Result<T, E = OpenAiError> = std::result::Result<T, E>;

const FINGERPRINT: &str = "fp_hyperllama";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:x}{:06x}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Sampling fields common to chat and completions.
#[derive(Debug, Default, Deserialize)]
struct Sampling {
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    stop: Option<Value>,
    seed: Option<i64>,
    n: Option<u32>,
}

impl Sampling {
    fn options(&self) -> Result<pb::Options, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_param("n", "only n = 1 is supported"));
        }
        let stop = match &self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::bad_param("stop", "stop must be a string or an array of strings")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ApiError::bad_param("stop", "stop must be a string or an array of strings"));
            }
        };
        let max = self.max_completion_tokens.or(self.max_tokens);
        if max.is_some_and(|m| m < 1) {
            return Err(ApiError::bad_param("max_tokens", "max_tokens must be at least 1"));
        }
        Ok(pb::Options {
            temperature: Some(self.temperature.unwrap_or(1.0)),
            top_p: Some(self.top_p.unwrap_or(1.0)),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            stop,
            num_predict: max.map(|m| i32::try_from(m).unwrap_or(i32::MAX)),
            ..Default::default()
        })
    }
}

fn usage(stats: &pb::Stats) -> Value {
    json!({
        "prompt_tokens": stats.prompt_eval_count,
        "completion_tokens": stats.eval_count,
        "total_tokens": stats.prompt_eval_count + stats.eval_count,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
    })
}

fn finish_reason(reason: &str, tool_calls: bool) -> &'static str {
    if tool_calls {
        return "tool_calls";
    }
    match reason {
        "length" => "length",
        _ => "stop",
    }
}

fn response_format(value: Option<&Value>) -> Result<String, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(String::new()) };
    match value.get("type").and_then(Value::as_str) {
        Some("text") => Ok(String::new()),
        Some("json_object") => Ok("json".into()),
        Some("json_schema") => {
            let schema =
                value.get("json_schema").and_then(|s| s.get("schema")).filter(|s| s.is_object()).ok_or_else(
                    || ApiError::bad_param("response_format", "json_schema.schema must be an object"),
                )?;
            Ok(schema.to_string())
        }
        _ => Err(ApiError::bad_param(
            "response_format",
            "response_format.type must be text, json_object or json_schema",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// /v1/chat/completions

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    sampling: Sampling,
    response_format: Option<Value>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    #[serde(default)]
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
}

/// Text and images of an OpenAI message's content (a string or an array of parts).
fn content(value: Option<Value>) -> Result<(String, Vec<Vec<u8>>), ApiError> {
    match value {
        None | Some(Value::Null) => Ok((String::new(), Vec::new())),
        Some(Value::String(s)) => Ok((s, Vec::new())),
        Some(Value::Array(parts)) => {
            let (mut text, mut images) = (String::new(), Vec::new());
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(part.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some("image_url") => {
                        let url = part
                            .get("image_url")
                            .and_then(|u| u.get("url").or(Some(u)))
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        let Some((_, data)) = url.strip_prefix("data:").and_then(|d| d.split_once("base64,"))
                        else {
                            return Err(ApiError::bad_param(
                                "messages",
                                "images must be data: URLs (base64); URLs are not fetched",
                            ));
                        };
                        images.push(base64::engine::general_purpose::STANDARD.decode(data).map_err(
                            |_| ApiError::bad_param("messages", "image data is not valid base64"),
                        )?);
                    }
                    other => {
                        return Err(ApiError::bad_param(
                            "messages",
                            format!("content part type {other:?} is not supported"),
                        ));
                    }
                }
            }
            Ok((text, images))
        }
        Some(_) => Err(ApiError::bad_param("messages", "content must be a string or an array of parts")),
    }
}

/// OpenAI tool calls (arguments as a JSON string) in Ollama's form (an object).
fn ollama_tool_calls(calls: &[Value]) -> (String, Vec<(String, String)>) {
    let mut names = Vec::new();
    let converted: Vec<Value> = calls
        .iter()
        .map(|c| {
            let f = c.get("function").cloned().unwrap_or_default();
            let name = f.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            if let Some(id) = c.get("id").and_then(Value::as_str) {
                names.push((id.to_string(), name.clone()));
            }
            let args = match f.get("arguments") {
                Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
                Some(v) => v.clone(),
                None => json!({}),
            };
            json!({"function": {"name": name, "arguments": args}})
        })
        .collect();
    (Value::Array(converted).to_string(), names)
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let started = Instant::now();
    let body: ChatBody = json_body(body)?;
    caller.check_model(&body.model)?;
    if body.messages.is_empty() {
        return Err(ApiError::bad_param("messages", "messages must not be empty").into());
    }
    let mut tool_names: Vec<(String, String)> = Vec::new();
    let mut messages = Vec::new();
    for m in body.messages {
        let (text, images) = content(m.content)?;
        let (calls_json, names) = m.tool_calls.as_deref().map(ollama_tool_calls).unwrap_or_default();
        tool_names.extend(names);
        let tool_name = m
            .tool_call_id
            .and_then(|id| tool_names.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone()))
            .unwrap_or_default();
        let role = if m.role == "developer" { "system".to_string() } else { m.role };
        messages.push(pb::Message {
            role,
            content: text,
            images,
            thinking: m.reasoning.unwrap_or_default(),
            tool_calls_json: calls_json,
            tool_name,
        });
    }
    let tools = if body.tool_choice.as_ref().and_then(Value::as_str) == Some("none") {
        None
    } else {
        body.tools.as_ref()
    };
    let tools_json = tools_json(tools)?;
    let has_tools = !tools_json.is_empty();
    let logprobs = body.logprobs == Some(true);
    no_top_logprobs("top_logprobs", body.top_logprobs)?;
    let request = pb::ChatRequest {
        model: body.model.clone(),
        messages,
        format: response_format(body.response_format.as_ref())?,
        options: with_logprobs(Some(body.sampling.options()?), logprobs),
        keep_alive_seconds: None,
        think: None,
        tools_json,
    };
    let guard = api.shared.lifecycle.begin().map_err(ApiError::from)?;
    let stream = inference::chat(Arc::clone(&api.shared), caller.who.clone(), guard, request);
    let user = metrics_user(&api, &caller);
    let events = start(stream, &super::model_label(&api, &body.model), user.as_deref(), started).await?;
    let (id, created, model) = (new_id("chatcmpl"), unix_now(), body.model);
    if body.stream {
        let include_usage = body.stream_options.is_some_and(|o| o.include_usage);
        let mut sniffer = ToolSniffer::new(has_tools);
        // Entries of text the tool sniffer still holds ride on the chunk that releases it.
        let mut pending: Vec<Value> = Vec::new();
        let chunk = move |delta: Value, finish: Option<&str>, entries: &mut Vec<Value>| {
            let lp = if logprobs && finish.is_none() {
                json!({"content": std::mem::take(entries)})
            } else {
                Value::Null
            };
            let mut c = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": lp}],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let mut ended = false;
        let events = events.flat_map(move |event| {
            let mut out = Vec::new();
            if ended {
                return futures::stream::iter(out);
            }
            match event {
                Ok(Event::Text { text, thinking, logprob }) => {
                    if let Some(lp) = logprob {
                        pending.push(logprob_entry(&text, lp));
                    }
                    let text = sniffer.push(&text);
                    if !text.is_empty() || !thinking.is_empty() {
                        let mut delta = json!({"role": "assistant", "content": text});
                        if !thinking.is_empty() {
                            delta["reasoning"] = json!(thinking);
                        }
                        out.push(Sse::Data(chunk(delta, None, &mut pending)));
                    }
                }
                Ok(Event::Done { reason, stats }) => {
                    ended = true;
                    let calls = match sniffer.finish() {
                        Ok(calls) => {
                            let call_id = new_id("call");
                            let values: Vec<Value> = calls
                                .iter()
                                .enumerate()
                                .map(|(i, c)| c.openai(i, &format!("{call_id}_{i}")))
                                .collect();
                            out.push(Sse::Data(chunk(
                                json!({"role": "assistant", "tool_calls": values}),
                                None,
                                &mut pending,
                            )));
                            true
                        }
                        Err(held) => {
                            if !held.is_empty() {
                                out.push(Sse::Data(chunk(
                                    json!({"role": "assistant", "content": held}),
                                    None,
                                    &mut pending,
                                )));
                            }
                            false
                        }
                    };
                    out.push(Sse::Data(chunk(json!({}), Some(finish_reason(&reason, calls)), &mut pending)));
                    if include_usage {
                        let mut last = chunk(json!({}), None, &mut Vec::new());
                        last["choices"] = json!([]);
                        last["usage"] = usage(&stats);
                        out.push(Sse::Data(last));
                    }
                    out.push(Sse::Done);
                }
                Err(e) => {
                    ended = true;
                    out.push(Sse::Data(e.stream_body(Dialect::OpenAi)));
                }
            }
            futures::stream::iter(out)
        });
        return Ok(sse(events));
    }
    let reply = collect(events).await?;
    let entries = reply.logprob_entries();
    let Reply { text, thinking, reason, stats, .. } = reply;
    let calls: Option<Vec<ToolCall>> = if has_tools { super::tools::parse(&text) } else { None };
    let mut message =
        json!({"role": "assistant", "content": if calls.is_some() { Value::Null } else { json!(text) }});
    if !thinking.is_empty() {
        message["reasoning"] = json!(thinking);
    }
    let lp = if logprobs { json!({"content": entries}) } else { Value::Null };
    if let Some(calls) = &calls {
        let call_id = new_id("call");
        message["tool_calls"] = Value::Array(
            calls.iter().enumerate().map(|(i, c)| c.openai(i, &format!("{call_id}_{i}"))).collect(),
        );
    }
    Ok(axum::Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(&reason, calls.is_some()), "logprobs": lp}],
        "usage": usage(&stats),
    }))
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// /v1/completions

#[derive(Debug, Deserialize)]
struct CompletionBody {
    model: String,
    prompt: Value,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(default)]
    echo: bool,
    /// Legacy: the number of alternatives per position; 0 reports the chosen tokens only.
    logprobs: Option<u32>,
}

/// The legacy completions `logprobs` object for some pieces of text starting at `offset`.
fn completion_logprobs(entries: &[(String, f32)], mut offset: usize) -> Value {
    let mut tokens = Vec::with_capacity(entries.len());
    let mut values = Vec::with_capacity(entries.len());
    let mut offsets = Vec::with_capacity(entries.len());
    for (text, lp) in entries {
        tokens.push(json!(text));
        values.push(json!(lp));
        offsets.push(json!(offset));
        offset += text.chars().count();
    }
    json!({"tokens": tokens, "token_logprobs": values, "top_logprobs": null, "text_offset": offsets})
}

/// `POST /v1/completions`.
pub async fn completions(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let started = Instant::now();
    let body: CompletionBody = json_body(body)?;
    caller.check_model(&body.model)?;
    let prompt = match body.prompt {
        Value::String(s) => s,
        Value::Array(items) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or("").to_string()
        }
        _ => {
            return Err(
                ApiError::bad_param("prompt", "prompt must be a string (one prompt per request)").into()
            );
        }
    };
    if body.logprobs.is_some_and(|n| n > 0) {
        no_top_logprobs("logprobs", body.logprobs)?;
    }
    let logprobs = body.logprobs.is_some();
    if logprobs && body.echo {
        return Err(ApiError::bad_param(
            "logprobs",
            "logprobs with echo is not supported: prompt tokens' log-probabilities are not computed",
        )
        .into());
    }
    let request = pb::GenerateRequest {
        model: body.model.clone(),
        prompt: prompt.clone(),
        options: with_logprobs(Some(body.sampling.options()?), logprobs),
        suffix: body.suffix.unwrap_or_default(),
        ..Default::default()
    };
    let guard = api.shared.lifecycle.begin().map_err(ApiError::from)?;
    let stream = inference::generate(Arc::clone(&api.shared), caller.who.clone(), guard, request);
    let user = metrics_user(&api, &caller);
    let events = start(stream, &super::model_label(&api, &body.model), user.as_deref(), started).await?;
    let (id, created, model) = (new_id("cmpl"), unix_now(), body.model);
    let echo = if body.echo { prompt } else { String::new() };
    if body.stream {
        let include_usage = body.stream_options.is_some_and(|o| o.include_usage);
        let chunk = move |text: &str, finish: Option<&str>, lp: Value| {
            let mut c = json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let mut echo = Some(echo).filter(|e| !e.is_empty());
        let mut ended = false;
        let mut offset = 0;
        let events = events.flat_map(move |event| {
            let mut out = Vec::new();
            if ended {
                return futures::stream::iter(out);
            }
            if let Some(e) = echo.take() {
                out.push(Sse::Data(chunk(&e, None, Value::Null)));
            }
            match event {
                Ok(Event::Text { text, logprob, .. }) => {
                    let lp = match logprob {
                        Some(lp) if logprobs => completion_logprobs(&[(text.clone(), lp)], offset),
                        _ => Value::Null,
                    };
                    offset += text.chars().count();
                    out.push(Sse::Data(chunk(&text, None, lp)));
                }
                Ok(Event::Done { reason, stats }) => {
                    ended = true;
                    out.push(Sse::Data(chunk("", Some(finish_reason(&reason, false)), Value::Null)));
                    if include_usage {
                        let mut last = chunk("", None, Value::Null);
                        last["choices"] = json!([]);
                        last["usage"] = usage(&stats);
                        out.push(Sse::Data(last));
                    }
                    out.push(Sse::Done);
                }
                Err(e) => {
                    ended = true;
                    out.push(Sse::Data(e.stream_body(Dialect::OpenAi)));
                }
            }
            futures::stream::iter(out)
        });
        return Ok(sse(events));
    }
    let reply = collect(events).await?;
    let lp = if logprobs { completion_logprobs(&reply.logprobs, 0) } else { Value::Null };
    let (text, reason, stats) = (reply.text, reply.reason, reply.stats);
    Ok(axum::Json(json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"text": format!("{echo}{text}"), "index": 0, "logprobs": lp, "finish_reason": finish_reason(&reason, false)}],
        "usage": usage(&stats),
    }))
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// /v1/embeddings

#[derive(Debug, Deserialize)]
struct EmbeddingsBody {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u32>,
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body: EmbeddingsBody = json_body(body)?;
    let bad = || {
        ApiError::bad_param(
            "input",
            "input must be a string or an array of strings (token arrays are not supported)",
        )
    };
    let input: Vec<String> = match body.input {
        Value::String(s) => vec![s],
        Value::Array(items) if !items.is_empty() => items
            .into_iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        _ => return Err(bad().into()),
    };
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return Err(
                ApiError::bad_param("encoding_format", "encoding_format must be float or base64").into()
            );
        }
    };
    let out = run_embed(&api, &caller, &body.model, input, true, None, body.dimensions.unwrap_or(0)).await?;
    let data: Vec<Value> = out
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = e.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e.values)
            };
            json!({"object": "embedding", "embedding": embedding, "index": index})
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": out.prompt_eval_count, "total_tokens": out.prompt_eval_count},
    }))
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// /v1/models

fn model_object(m: &super::ollama_store::ModelEntry) -> Value {
    let owner =
        m.name.rsplit_once('/').map_or("library", |(ns, _)| ns.rsplit('/').next().unwrap_or("library"));
    json!({"id": m.name, "object": "model", "created": m.modified_at, "owned_by": owner})
}

/// `GET /v1/models`.
pub async fn models(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Result<Response> {
    let models = super::ollama_store::list(&api, &caller).await?;
    Ok(axum::Json(json!({"object": "list", "data": models.iter().map(model_object).collect::<Vec<_>>()}))
        .into_response())
}

/// `GET /v1/models/{id}`.
pub async fn model(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response> {
    let models = super::ollama_store::list(&api, &caller).await?;
    let wanted = if id.rsplit('/').next().is_some_and(|l| l.contains(':')) {
        id.clone()
    } else {
        format!("{id}:latest")
    };
    match models.iter().find(|m| m.name == id || m.name == wanted) {
        Some(m) => Ok(axum::Json(model_object(m)).into_response()),
        None => Err(OpenAiError(ApiError {
            code: Some("model_not_found"),
            ..ApiError::new(StatusCode::NOT_FOUND, format!("model '{id}' not found"))
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_defaults_follow_ollama() {
        let s = Sampling { max_tokens: Some(5), stop: Some(json!("\n")), ..Default::default() };
        let o = s.options().unwrap();
        assert_eq!((o.temperature, o.top_p, o.num_predict), (Some(1.0), Some(1.0), Some(5)));
        assert_eq!(o.stop, vec!["\n"]);
        assert!(Sampling { n: Some(2), ..Default::default() }.options().is_err());
        let both = Sampling { max_tokens: Some(5), max_completion_tokens: Some(7), ..Default::default() };
        assert_eq!(both.options().unwrap().num_predict, Some(7));
    }

    #[test]
    fn response_formats() {
        assert_eq!(response_format(Some(&json!({"type": "json_object"}))).unwrap(), "json");
        let schema =
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}});
        assert_eq!(response_format(Some(&schema)).unwrap(), "{\"type\":\"object\"}");
        assert!(response_format(Some(&json!({"type": "yaml"}))).is_err());
    }

    #[test]
    fn content_parts_and_tool_calls() {
        let (text, images) =
            content(Some(json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]))).unwrap();
        assert_eq!((text.as_str(), images.len()), ("ab", 0));
        let (_, images) =
            content(Some(json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])))
                .unwrap();
        assert_eq!(images, vec![vec![0, 0, 0]]);
        assert!(
            content(Some(json!([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]))).is_err()
        );
        let (calls, names) = ollama_tool_calls(&[
            json!({"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}),
        ]);
        assert_eq!(names, vec![("c1".to_string(), "f".to_string())]);
        assert_eq!(serde_json::from_str::<Value>(&calls).unwrap()[0]["function"]["arguments"]["a"], 1);
    }
}
