//! Engine requests in the OpenAI API that vLLM and MAX serve, and their answers back: chats go
//! to `/v1/chat/completions` with the messages passed through (the server applies the model's
//! template), text prompts to `/v1/completions`; both stream (SSE) with usage in the last chunk.

use serde_json::{Value, json};

use crate::engine::{FinishReason, GenerateRequest, OutputFormat, Prompt};

/// Which endpoint a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

impl Endpoint {
    /// The URL path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }
}

/// What the flavour of server accepts beyond the OpenAI fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extensions {
    /// `top_k`, `min_p`, `repetition_penalty` (vLLM's sampling extensions).
    pub sampling: bool,
    /// `chat_template` per request.
    pub chat_template: bool,
}

/// The JSON body of an engine request.
pub fn body(request: &GenerateRequest, model: &str, ext: Extensions) -> (Endpoint, Value) {
    let s = &request.sampling;
    let mut body = json!({
        "model": model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": s.temperature,
        "top_p": s.top_p,
    });
    let endpoint = match &request.prompt {
        Prompt::Text(text) => {
            body["prompt"] = json!(text);
            if request.logprobs {
                body["logprobs"] = json!(0);
            }
            Endpoint::Completions
        }
        Prompt::Chat(chat) => {
            let messages: Vec<Value> = chat
                .messages
                .iter()
                .map(|m| {
                    let mut message = json!({"role": m.role, "content": m.content});
                    if let Some(calls) =
                        m.tool_calls_json.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok())
                    {
                        message["tool_calls"] = calls;
                    }
                    message
                })
                .collect();
            body["messages"] = json!(messages);
            if request.logprobs {
                body["logprobs"] = json!(true);
            }
            if let Some(tools) =
                chat.tools_json.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok())
            {
                body["tools"] = tools;
            }
            if !chat.add_generation_prompt {
                body["add_generation_prompt"] = json!(false);
                body["continue_final_message"] = json!(true);
            }
            if ext.chat_template
                && let Some(template) = &chat.template
            {
                body["chat_template"] = json!(template);
            }
            Endpoint::Chat
        }
    };
    if let Some(max) = request.max_tokens {
        body["max_tokens"] = json!(max);
    }
    if !request.stop.is_empty() {
        body["stop"] = json!(request.stop);
    }
    if let Some(seed) = s.seed {
        // Both servers take a signed 64-bit seed.
        body["seed"] = json!(seed & (i64::MAX as u64));
    }
    if s.presence_penalty != 0.0 {
        body["presence_penalty"] = json!(s.presence_penalty);
    }
    if s.frequency_penalty != 0.0 {
        body["frequency_penalty"] = json!(s.frequency_penalty);
    }
    if ext.sampling {
        if s.top_k > 0 {
            body["top_k"] = json!(s.top_k);
        }
        if s.min_p > 0.0 {
            body["min_p"] = json!(s.min_p);
        }
        if s.repeat_penalty != 1.0 && s.repeat_penalty > 0.0 {
            body["repetition_penalty"] = json!(s.repeat_penalty);
        }
    }
    match &request.format {
        OutputFormat::Text => {}
        OutputFormat::Json => body["response_format"] = json!({"type": "json_object"}),
        OutputFormat::JsonSchema(schema) => {
            let schema = serde_json::from_str::<Value>(schema).unwrap_or(Value::Null);
            body["response_format"] =
                json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}});
        }
    }
    (endpoint, body)
}

/// Token counts of a finished request, as the server's `usage` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// Prompt tokens served from the server's prefix cache.
    pub cached_tokens: u32,
}

/// One parsed stream chunk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    /// New text.
    pub text: String,
    /// Its log-probability (the sum over its tokens), when asked for and reported.
    pub logprob: Option<f32>,
    /// Set on the choice's last chunk.
    pub finish: Option<FinishReason>,
    /// Set on the usage chunk.
    pub usage: Option<Usage>,
}

/// Parses the JSON of one `data:` line.
pub fn parse_chunk(data: &str) -> Result<Chunk, String> {
    let value: Value =
        serde_json::from_str(data).map_err(|e| format!("bad stream chunk from the engine: {e}"))?;
    if let Some(error) = value.get("error") {
        return Err(error_text(error));
    }
    let mut chunk = Chunk::default();
    if let Some(choice) = value.get("choices").and_then(|c| c.as_array()).and_then(|c| c.first()) {
        let text = choice
            .get("delta")
            .and_then(|d| d.get("content"))
            .or_else(|| choice.get("text"))
            .and_then(|t| t.as_str())
            .unwrap_or_default();
        chunk.text = text.to_string();
        // Chat: logprobs.content[].logprob; completions: logprobs.token_logprobs[].
        let logprobs = choice.get("logprobs").filter(|l| !l.is_null());
        let values: Option<Vec<f64>> = logprobs.and_then(|l| {
            if let Some(content) = l.get("content").and_then(Value::as_array) {
                Some(content.iter().filter_map(|e| e.get("logprob").and_then(Value::as_f64)).collect())
            } else {
                l.get("token_logprobs")
                    .and_then(Value::as_array)
                    .map(|v| v.iter().filter_map(Value::as_f64).collect())
            }
        });
        chunk.logprob = values.filter(|v| !v.is_empty()).map(|v| v.iter().sum::<f64>() as f32);
        chunk.finish = match choice.get("finish_reason").and_then(|f| f.as_str()) {
            None => None,
            Some("length") => Some(FinishReason::Length),
            Some(_) => Some(FinishReason::Stop),
        };
    }
    if let Some(usage) = value.get("usage").filter(|u| !u.is_null()) {
        let count =
            |v: Option<&Value>| v.and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        chunk.usage = Some(Usage {
            prompt_tokens: count(usage.get("prompt_tokens")),
            completion_tokens: count(usage.get("completion_tokens")),
            cached_tokens: count(usage.get("prompt_tokens_details").and_then(|d| d.get("cached_tokens"))),
        });
    }
    Ok(chunk)
}

/// The message of an OpenAI-style error object (`{"message": ...}` or a string).
fn error_text(error: &Value) -> String {
    error
        .get("message")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .or_else(|| error.as_str().map(str::to_string))
        .unwrap_or_else(|| error.to_string())
}

/// The message of an error response body (`{"error": {...}}`, `{"detail": ...}`, or text).
pub fn error_body_text(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(value) => value
            .get("error")
            .map(error_text)
            .or_else(|| {
                value.get("detail").map(|d| d.as_str().map(str::to_string).unwrap_or_else(|| d.to_string()))
            })
            .or_else(|| value.get("message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| body.trim().to_string()),
        Err(_) => body.trim().chars().take(500).collect(),
    }
}

/// Splits an SSE byte stream into `data:` payloads. Keeps a partial line between calls.
#[derive(Debug, Default)]
pub struct SseLines {
    buffer: Vec<u8>,
}

impl SseLines {
    /// Feeds bytes; returns the complete `data:` payloads they finished.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=at).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(data) = line.strip_prefix("data:") {
                out.push(data.trim_start().to_string());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ChatMessage, ChatPrompt, SamplingParams};

    fn request(prompt: Prompt) -> GenerateRequest {
        GenerateRequest {
            id: "t".into(),
            cache_salt: 1,
            prompt,
            sampling: SamplingParams { temperature: 0.0, seed: Some(7), ..SamplingParams::default() },
            stop: vec!["\n\n".into()],
            max_tokens: Some(16),
            num_ctx: None,
            format: OutputFormat::Json,
            logprobs: false,
        }
    }

    #[test]
    fn chats_pass_messages_and_text_goes_to_completions() {
        let chat = ChatPrompt {
            messages: vec![ChatMessage { role: "user".into(), content: "hi".into(), tool_calls_json: None }],
            template: Some("{{ x }}".into()),
            tools_json: None,
            add_generation_prompt: true,
        };
        let all = Extensions { sampling: true, chat_template: true };
        let (endpoint, body) = body(&request(Prompt::Chat(chat.clone())), "m", all);
        assert_eq!(endpoint, Endpoint::Chat);
        assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(body["max_tokens"], 16);
        assert_eq!(body["stop"], json!(["\n\n"]));
        assert_eq!(body["seed"], 7);
        assert_eq!(body["top_k"], 40);
        assert_eq!(body["repetition_penalty"], json!(1.1f32));
        assert_eq!(body["chat_template"], "{{ x }}");
        assert_eq!(body["response_format"]["type"], "json_object");
        assert_eq!(body["stream_options"]["include_usage"], true);
        let none = Extensions { sampling: false, chat_template: false };
        let (_, plain) = super::body(&request(Prompt::Chat(chat)), "m", none);
        assert!(plain.get("top_k").is_none() && plain.get("chat_template").is_none());
        let (endpoint, body) = super::body(&request(Prompt::Text("abc".into())), "m", none);
        assert_eq!(endpoint, Endpoint::Completions);
        assert_eq!(body["prompt"], "abc");
    }

    #[test]
    fn chunks_and_usage_parse() {
        let c = parse_chunk(r#"{"choices":[{"delta":{"content":"He"},"finish_reason":null}]}"#).unwrap();
        assert_eq!(c.text, "He");
        assert_eq!(c.finish, None);
        let c = parse_chunk(r#"{"choices":[{"text":"x","finish_reason":"length"}]}"#).unwrap();
        assert_eq!((c.text.as_str(), c.finish), ("x", Some(FinishReason::Length)));
        let c = parse_chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":2}}}"#,
        )
        .unwrap();
        assert_eq!(c.usage, Some(Usage { prompt_tokens: 5, completion_tokens: 3, cached_tokens: 2 }));
        assert_eq!(parse_chunk(r#"{"error":{"message":"boom"}}"#).unwrap_err(), "boom");
    }

    #[test]
    fn logprobs_are_asked_for_and_read_back() {
        let mut r = request(Prompt::Text("x".into()));
        r.logprobs = true;
        let ext = Extensions { sampling: true, chat_template: true };
        assert_eq!(body(&r, "m", ext).1["logprobs"], 0);
        let chat =
            ChatPrompt { messages: vec![], template: None, tools_json: None, add_generation_prompt: true };
        r.prompt = Prompt::Chat(chat);
        assert_eq!(body(&r, "m", ext).1["logprobs"], true);
        let c = parse_chunk(
            r#"{"choices":[{"delta":{"content":"ab"},"logprobs":{"content":[{"token":"a","logprob":-0.5},{"token":"b","logprob":-0.25}]}}]}"#,
        )
        .unwrap();
        assert_eq!(c.logprob, Some(-0.75));
        let c =
            parse_chunk(r#"{"choices":[{"text":"a","logprobs":{"tokens":["a"],"token_logprobs":[-1.5]}}]}"#)
                .unwrap();
        assert_eq!(c.logprob, Some(-1.5));
        let c = parse_chunk(r#"{"choices":[{"text":"a","logprobs":null}]}"#).unwrap();
        assert_eq!(c.logprob, None);
    }

    #[test]
    fn sse_lines_survive_split_reads() {
        let mut sse = SseLines::default();
        assert!(sse.feed(b"data: {\"a\"").is_empty());
        assert_eq!(
            sse.feed(b":1}\r\n\r\ndata: [DONE]\n"),
            vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]
        );
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_body_text(r#"{"error":{"message":"The model `x` does not exist."}}"#),
            "The model `x` does not exist."
        );
        assert_eq!(error_body_text(r#"{"detail":"bad"}"#), "bad");
        assert_eq!(error_body_text("plain"), "plain");
    }
}
