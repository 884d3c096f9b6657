//! Conversions between the runner protocol and the engine interface, in both directions, so the
//! daemon speaks engine types and the wire speaks protobuf.

use hyperllama_proto::v1 as pb;

use crate::engine::{
    ChatMessage, ChatPrompt, EngineEvent, FinishReason, GenerateRequest, OutputFormat, Prompt, RequestStats,
    SamplingParams,
};

/// Engine request → wire.
pub fn request_to_wire(r: &GenerateRequest) -> pb::RunnerGenerateRequest {
    let prompt = match &r.prompt {
        Prompt::Text(text) => pb::runner_generate_request::Prompt::Text(text.clone()),
        Prompt::Chat(chat) => pb::runner_generate_request::Prompt::Chat(pb::RunnerChat {
            messages: chat
                .messages
                .iter()
                .map(|m| pb::RunnerChatMessage {
                    role: m.role.clone(),
                    content: m.content.clone(),
                    tool_calls_json: m.tool_calls_json.clone().unwrap_or_default(),
                })
                .collect(),
            template: chat.template.clone().unwrap_or_default(),
            tools_json: chat.tools_json.clone().unwrap_or_default(),
            add_generation_prompt: chat.add_generation_prompt,
        }),
    };
    let s = &r.sampling;
    pb::RunnerGenerateRequest {
        id: r.id.clone(),
        cache_salt: r.cache_salt,
        prompt: Some(prompt),
        sampling: Some(pb::RunnerSampling {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            typical_p: s.typical_p,
            repeat_last_n: s.repeat_last_n,
            repeat_penalty: s.repeat_penalty,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            seed: s.seed,
        }),
        stop: r.stop.clone(),
        max_tokens: r.max_tokens,
        num_ctx: r.num_ctx,
        format: match &r.format {
            OutputFormat::Text => String::new(),
            OutputFormat::Json => "json".into(),
            OutputFormat::JsonSchema(schema) => schema.clone(),
        },
        logprobs: r.logprobs,
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Wire → engine request.
pub fn request_from_wire(r: pb::RunnerGenerateRequest) -> GenerateRequest {
    let prompt = match r.prompt {
        Some(pb::runner_generate_request::Prompt::Chat(chat)) => Prompt::Chat(ChatPrompt {
            messages: chat
                .messages
                .into_iter()
                .map(|m| ChatMessage {
                    role: m.role,
                    content: m.content,
                    tool_calls_json: non_empty(&m.tool_calls_json),
                })
                .collect(),
            template: non_empty(&chat.template),
            tools_json: non_empty(&chat.tools_json),
            add_generation_prompt: chat.add_generation_prompt,
        }),
        Some(pb::runner_generate_request::Prompt::Text(text)) => Prompt::Text(text),
        None => Prompt::Text(String::new()),
    };
    let sampling = r
        .sampling
        .map(|s| SamplingParams {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            typical_p: s.typical_p,
            repeat_last_n: s.repeat_last_n,
            repeat_penalty: s.repeat_penalty,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            seed: s.seed,
        })
        .unwrap_or_default();
    let format = match r.format.as_str() {
        "" => OutputFormat::Text,
        "json" => OutputFormat::Json,
        schema => OutputFormat::JsonSchema(schema.to_string()),
    };
    GenerateRequest {
        id: r.id,
        cache_salt: r.cache_salt,
        prompt,
        sampling,
        stop: r.stop,
        max_tokens: r.max_tokens,
        num_ctx: r.num_ctx,
        format,
        logprobs: r.logprobs,
    }
}

fn stats_to_wire(s: &RequestStats) -> pb::RunnerStats {
    pb::RunnerStats {
        prompt_tokens: s.prompt_tokens,
        cached_tokens: s.cached_tokens,
        prompt_eval_ns: s.prompt_eval_ns,
        generated_tokens: s.generated_tokens,
        eval_ns: s.eval_ns,
    }
}

/// Engine event → wire.
pub fn event_to_wire(e: EngineEvent) -> pb::RunnerEvent {
    use pb::runner_event::Event;
    let event = match e {
        EngineEvent::PromptDone { prompt_tokens, cached_tokens } => {
            Event::PromptDone(pb::RunnerPromptDone { prompt_tokens, cached_tokens })
        }
        EngineEvent::Text { text, logprob } => Event::Text(pb::RunnerText { text, logprob }),
        EngineEvent::Done { reason, stats } => {
            Event::Done(pb::RunnerDone { reason: reason.to_string(), stats: Some(stats_to_wire(&stats)) })
        }
        EngineEvent::Error(message) => Event::Error(message),
    };
    pb::RunnerEvent { event: Some(event) }
}

/// Wire → engine event (`None` for an empty message).
pub fn event_from_wire(e: pb::RunnerEvent) -> Option<EngineEvent> {
    use pb::runner_event::Event;
    Some(match e.event? {
        Event::PromptDone(p) => {
            EngineEvent::PromptDone { prompt_tokens: p.prompt_tokens, cached_tokens: p.cached_tokens }
        }
        Event::Text(t) => EngineEvent::Text { text: t.text, logprob: t.logprob },
        Event::Done(d) => {
            let s = d.stats.unwrap_or_default();
            EngineEvent::Done {
                reason: match d.reason.as_str() {
                    "length" => FinishReason::Length,
                    "cancel" => FinishReason::Cancelled,
                    _ => FinishReason::Stop,
                },
                stats: RequestStats {
                    prompt_tokens: s.prompt_tokens,
                    cached_tokens: s.cached_tokens,
                    prompt_eval_ns: s.prompt_eval_ns,
                    generated_tokens: s.generated_tokens,
                    eval_ns: s.eval_ns,
                },
            }
        }
        Event::Error(message) => EngineEvent::Error(message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let request = GenerateRequest {
            id: "r1".into(),
            cache_salt: 42,
            prompt: Prompt::Chat(ChatPrompt {
                messages: vec![ChatMessage {
                    role: "user".into(),
                    content: "hi".into(),
                    tool_calls_json: None,
                }],
                template: Some("{{ x }}".into()),
                tools_json: None,
                add_generation_prompt: true,
            }),
            sampling: SamplingParams { temperature: 0.0, seed: Some(7), ..Default::default() },
            stop: vec!["\n".into()],
            max_tokens: Some(5),
            num_ctx: None,
            format: OutputFormat::JsonSchema("{\"type\":\"object\"}".into()),
            logprobs: true,
        };
        let back = request_from_wire(request_to_wire(&request));
        assert_eq!(back.prompt, request.prompt);
        assert_eq!(back.sampling, request.sampling);
        assert_eq!(back.format, request.format);
        assert_eq!((back.max_tokens, back.cache_salt, back.stop), (Some(5), 42, request.stop));
    }

    #[test]
    fn events_round_trip() {
        let events = [
            EngineEvent::PromptDone { prompt_tokens: 9, cached_tokens: 4 },
            EngineEvent::Text { text: "é".into(), logprob: Some(-0.5) },
            EngineEvent::Done {
                reason: FinishReason::Length,
                stats: RequestStats { prompt_tokens: 9, generated_tokens: 3, ..Default::default() },
            },
            EngineEvent::Error("boom".into()),
        ];
        for e in events {
            assert_eq!(event_from_wire(event_to_wire(e.clone())), Some(e));
        }
    }
}
