//! Tool calls in generated text. Templates tell a model how to call tools; models answer in one
//! of a few shapes, which are turned into structured calls here:
//! `<tool_call>{"name":..,"arguments":{..}}</tool_call>` (Hermes, Qwen), a bare JSON object or
//! array of `{"name", "arguments"|"parameters"}` (Llama 3), and `[TOOL_CALLS][...]` (Mistral).
//!
//! While a reply might still become a tool call, its text is held back ([`ToolSniffer`]); as soon
//! as it cannot, the held text is released and the rest streams through.

use serde_json::{Value, json};

const PREFIXES: &[&str] = &["<tool_call>", "[TOOL_CALLS]", "{", "["];

/// A call: function name and its arguments object.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Function name.
    pub name: String,
    /// Arguments (a JSON object).
    pub arguments: Value,
}

impl ToolCall {
    /// Ollama's shape.
    pub fn ollama(&self, index: usize) -> Value {
        json!({"function": {"index": index, "name": self.name, "arguments": self.arguments}})
    }

    /// OpenAI's shape (arguments as a JSON string).
    pub fn openai(&self, index: usize, id: &str) -> Value {
        json!({
            "index": index,
            "id": id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments.to_string()},
        })
    }
}

/// Parses a whole reply as tool calls, if it is one.
pub fn parse(text: &str) -> Option<Vec<ToolCall>> {
    let t = text.trim();
    if t.starts_with("<tool_call>") {
        let mut calls = Vec::new();
        for part in t.split("<tool_call>").skip(1) {
            let body = part.split("</tool_call>").next()?.trim();
            calls.push(call_of(&serde_json::from_str(body).ok()?)?);
        }
        return (!calls.is_empty()).then_some(calls);
    }
    let t = t.strip_prefix("[TOOL_CALLS]").map(str::trim).unwrap_or(t);
    match serde_json::from_str::<Value>(t).ok()? {
        Value::Array(items) if !items.is_empty() => items.iter().map(call_of).collect(),
        object @ Value::Object(_) => Some(vec![call_of(&object)?]),
        _ => None,
    }
}

fn call_of(value: &Value) -> Option<ToolCall> {
    let value = value.get("function").unwrap_or(value);
    let name = value.get("name")?.as_str()?.to_string();
    let arguments = value.get("arguments").or_else(|| value.get("parameters")).cloned().unwrap_or(json!({}));
    // Some models write the arguments as a JSON string.
    let arguments = match arguments {
        Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        other => other,
    };
    Some(ToolCall { name, arguments })
}

/// Holds streamed text back while it may still be a tool call.
#[derive(Debug, Default)]
pub struct ToolSniffer {
    held: String,
    streaming: bool,
}

impl ToolSniffer {
    /// A sniffer; with `enabled` false everything streams through.
    pub fn new(enabled: bool) -> Self {
        Self { held: String::new(), streaming: !enabled }
    }

    /// Text to emit now for this chunk (possibly empty).
    pub fn push(&mut self, chunk: &str) -> String {
        if self.streaming {
            return chunk.to_string();
        }
        self.held.push_str(chunk);
        let t = self.held.trim_start();
        if t.is_empty() || PREFIXES.iter().any(|p| t.starts_with(p) || p.starts_with(t)) {
            return String::new();
        }
        self.streaming = true;
        std::mem::take(&mut self.held)
    }

    /// At the end: the calls, or the held text to release.
    pub fn finish(&mut self) -> Result<Vec<ToolCall>, String> {
        let held = std::mem::take(&mut self.held);
        if self.streaming || held.trim().is_empty() {
            return Err(held);
        }
        parse(&held).ok_or(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_models_use() {
        let hermes =
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        assert_eq!(parse(hermes).unwrap()[0].arguments["city"], "Paris");
        let llama = r#"{"name": "f", "parameters": {"x": 1}}"#;
        assert_eq!(parse(llama).unwrap()[0].name, "f");
        let mistral =
            r#"[TOOL_CALLS][{"name": "a", "arguments": "{\"y\": 2}"}, {"name": "b", "arguments": {}}]"#;
        let calls = parse(mistral).unwrap();
        assert_eq!((calls.len(), calls[0].arguments["y"].as_i64()), (2, Some(2)));
        assert!(parse("Paris is sunny.").is_none());
        assert!(parse("{\"answer\": 4}").is_none(), "JSON without a name is not a call");
    }

    #[test]
    fn sniffer_releases_plain_text_and_holds_calls() {
        let mut s = ToolSniffer::new(true);
        assert_eq!(s.push(" "), "");
        assert_eq!(s.push("Hel"), " Hel");
        assert_eq!(s.push("lo"), "lo");
        assert_eq!(s.finish(), Err(String::new()));
        let mut s = ToolSniffer::new(true);
        assert_eq!(s.push("<tool"), "");
        assert_eq!(s.push("_call>{\"name\":\"f\",\"arguments\":{}}</tool_call>"), "");
        assert_eq!(s.finish().unwrap()[0].name, "f");
        let mut off = ToolSniffer::new(false);
        assert_eq!(off.push("{"), "{");
    }
}
