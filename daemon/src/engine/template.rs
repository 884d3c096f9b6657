//! Chat templates: turning [`ChatPrompt`] messages into the prompt text a model was trained on.
//!
//! Three kinds of template are understood:
//! - **Jinja** (Hugging Face style, the `tokenizer.chat_template` GGUF key): rendered by minijinja
//!   in a sandbox. Templates are untrusted (llama-cpp-python CVE-2024-34359): minijinja has no
//!   access to Python objects (`''.__class__` is just an undefined attribute), every render runs
//!   with a fuel budget (instructions and bytes created), a recursion limit, an output cap, and a
//!   wall-clock limit (the render runs on its own thread; the caller stops waiting after
//!   [`TemplateLimits::timeout`], and fuel bounds how long that thread can still run). The
//!   environment mirrors `transformers.apply_chat_template`: `trim_blocks` and `lstrip_blocks`,
//!   `raise_exception`, `strftime_now`, Python's `json.dumps`-style `tojson`, Python string/dict/list
//!   methods (minijinja-contrib `pycompat`), `bos_token`/`eos_token`, `messages`, `tools`,
//!   `add_generation_prompt`; `{% generation %}` markers are dropped.
//! - **Go templates** (Ollama Modelfile `TEMPLATE`): translated to Jinja by [`go`], then rendered
//!   in the same sandbox. See that module for the supported subset.
//! - **No template** (base models such as Gemma 3 270M): see [`ChatTemplate::fallback`].

mod go;
mod python;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};

use super::{ChatMessage, ChatPrompt};

/// Bounds on one template render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateLimits {
    /// minijinja fuel: roughly instructions plus one unit per 64 bytes created.
    pub fuel: u64,
    /// Wall-clock limit the caller waits for a render.
    pub timeout: Duration,
    /// Largest rendered prompt, bytes.
    pub max_output_bytes: usize,
    /// Largest template source accepted, bytes.
    pub max_source_bytes: usize,
}

impl Default for TemplateLimits {
    fn default() -> Self {
        Self {
            fuel: 2_000_000,
            timeout: Duration::from_millis(500),
            max_output_bytes: 16 << 20,
            max_source_bytes: 1 << 20,
        }
    }
}

/// Template failures; all of them are the request's (or the model file's) fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template does not parse.
    #[error("chat template does not parse: {0}")]
    Syntax(String),
    /// Rendering failed (an error raised by the template, a type error, ...).
    #[error("chat template failed: {0}")]
    Render(String),
    /// Rendering ran out of fuel, time or output space.
    #[error("chat template exceeded its limits: {0}")]
    Limit(String),
    /// A Go template uses a construct the translator does not handle.
    #[error("unsupported Go template construct: {0}")]
    Unsupported(String),
}

/// Text of the special tokens templates refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning-of-sequence token text (`bos_token`).
    pub bos: String,
    /// End-of-sequence token text (`eos_token`).
    pub eos: String,
}

/// A compiled chat template, cheap to clone and share between threads.
#[derive(Clone)]
pub struct ChatTemplate {
    inner: Arc<Compiled>,
    limits: TemplateLimits,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &*self.inner {
            Compiled::Jinja(_) => "jinja",
            Compiled::GoMessages(_) => "go (messages)",
            Compiled::GoLegacy(_) => "go (system/prompt/response)",
            Compiled::Fallback => "fallback",
        };
        f.debug_struct("ChatTemplate").field("kind", &kind).finish()
    }
}

enum Compiled {
    /// Template "chat" in the environment.
    Jinja(Environment<'static>),
    /// A translated Go template that iterates over `.Messages`; template "chat".
    GoMessages(Environment<'static>),
    /// A translated Go template over `.System`/`.Prompt`/`.Response`: template "full", and "cut"
    /// (everything after `.Response` removed) for the last turn.
    GoLegacy(Environment<'static>),
    /// No template.
    Fallback,
}

impl ChatTemplate {
    /// Compiles a template, detecting whether it is Jinja or an Ollama Go template.
    pub fn compile(source: &str, limits: TemplateLimits) -> Result<Self, TemplateError> {
        if source.len() > limits.max_source_bytes {
            return Err(TemplateError::Limit(format!(
                "template is {} bytes, the limit is {}",
                source.len(),
                limits.max_source_bytes
            )));
        }
        let compiled = if go::looks_like_go_template(source) {
            let translated = go::translate(source)?;
            let mut env = sandbox_environment(limits, false);
            if translated.uses_messages {
                add_template(&mut env, "chat", translated.full)?;
                Compiled::GoMessages(env)
            } else {
                add_template(&mut env, "full", translated.full)?;
                add_template(&mut env, "cut", translated.cut)?;
                Compiled::GoLegacy(env)
            }
        } else {
            refuse_python_internals(source)?;
            let mut env = sandbox_environment(limits, true);
            add_template(&mut env, "chat", strip_generation_tags(source))?;
            Compiled::Jinja(env)
        };
        Ok(Self { inner: Arc::new(compiled), limits })
    }

    /// The template used when a model has none and the request gives none.
    ///
    /// A base model continues text, so a single user turn (with an optional system message in
    /// front, separated by a blank line) is passed through unchanged: `"The capital of France
    /// is"` is continued as written, as `ollama run` does with its default `{{ .Prompt }}`.
    /// A conversation with several turns becomes a plain transcript, `"User: ...\n\nAssistant:
    /// ...\n\n"`, ending with `"Assistant:"` when a generation prompt is asked for.
    pub fn fallback() -> Self {
        Self { inner: Arc::new(Compiled::Fallback), limits: TemplateLimits::default() }
    }

    /// Whether this is the built-in fallback.
    pub fn is_fallback(&self) -> bool {
        matches!(*self.inner, Compiled::Fallback)
    }

    /// Renders the chat (`chat.template` is ignored here: the caller picks the template).
    pub fn render(&self, chat: &ChatPrompt, special: &SpecialTokens) -> Result<String, TemplateError> {
        match &*self.inner {
            Compiled::Fallback => Ok(render_fallback(&chat.messages, chat.add_generation_prompt)),
            _ => {
                let ctx = build_context(chat, special)?;
                let inner = Arc::clone(&self.inner);
                let limits = self.limits;
                run_sandboxed(limits, move || render_compiled(&inner, &ctx, limits))
            }
        }
    }
}

/// The variables a render sees (owned, so the render can run on another thread).
struct RenderContext {
    messages: Vec<Value>,
    tools: Value,
    add_generation_prompt: bool,
    bos: String,
    eos: String,
    /// Raw messages for the Go legacy collation.
    raw: Vec<ChatMessage>,
}

fn build_context(chat: &ChatPrompt, special: &SpecialTokens) -> Result<RenderContext, TemplateError> {
    let mut messages = Vec::with_capacity(chat.messages.len());
    for m in &chat.messages {
        let mut map = BTreeMap::new();
        map.insert("role".to_owned(), Value::from(m.role.as_str()));
        map.insert("content".to_owned(), Value::from(m.content.as_str()));
        if let Some(calls) = &m.tool_calls_json {
            map.insert("tool_calls".to_owned(), parse_json(calls, "tool_calls")?);
        }
        messages.push(Value::from(map));
    }
    let tools = match &chat.tools_json {
        Some(json) => parse_json(json, "tools")?,
        None => Value::from(()),
    };
    Ok(RenderContext {
        messages,
        tools,
        add_generation_prompt: chat.add_generation_prompt,
        bos: special.bos.clone(),
        eos: special.eos.clone(),
        raw: chat.messages.clone(),
    })
}

fn parse_json(json: &str, what: &str) -> Result<Value, TemplateError> {
    serde_json::from_str::<Value>(json)
        .map_err(|e| TemplateError::Render(format!("{what} is not valid JSON: {e}")))
}

fn render_compiled(
    compiled: &Compiled,
    ctx: &RenderContext,
    limits: TemplateLimits,
) -> Result<String, TemplateError> {
    let out = match compiled {
        Compiled::Jinja(env) | Compiled::GoMessages(env) => {
            let vars = minijinja::context! {
                messages => Value::from(ctx.messages.clone()),
                tools => ctx.tools.clone(),
                add_generation_prompt => ctx.add_generation_prompt,
                bos_token => ctx.bos.as_str(),
                eos_token => ctx.eos.as_str(),
                // Ollama's names for the Go templates (translated to lower case).
                system => last_system(&ctx.raw),
                prompt => "",
                response => "",
            };
            render_named(env, "chat", vars, limits)?
        }
        Compiled::GoLegacy(env) => render_go_legacy(env, ctx, limits)?,
        Compiled::Fallback => render_fallback(&ctx.raw, ctx.add_generation_prompt),
    };
    Ok(out)
}

fn last_system(messages: &[ChatMessage]) -> String {
    messages.iter().rev().find(|m| m.role == "system").map(|m| m.content.clone()).unwrap_or_default()
}

/// Ollama's execution of templates without `.Messages`: one render per (system, prompt,
/// response) turn, the last one with the template cut after `.Response`.
fn render_go_legacy(
    env: &Environment<'static>,
    ctx: &RenderContext,
    limits: TemplateLimits,
) -> Result<String, TemplateError> {
    let mut out = String::new();
    let (mut system, mut prompt, mut response) = (String::new(), String::new(), String::new());
    let turn = |name: &str, s: &mut String, p: &mut String, r: &mut String, out: &mut String| {
        let vars = minijinja::context! { system => s.as_str(), prompt => p.as_str(), response => r.as_str() };
        let text = render_named(env, name, vars, limits)?;
        out.push_str(&text);
        if out.len() > limits.max_output_bytes {
            return Err(TemplateError::Limit("rendered prompt too large".into()));
        }
        s.clear();
        p.clear();
        r.clear();
        Ok::<(), TemplateError>(())
    };
    for m in &ctx.raw {
        match m.role.as_str() {
            "system" => {
                if !prompt.is_empty() || !response.is_empty() {
                    turn("full", &mut system, &mut prompt, &mut response, &mut out)?;
                }
                system.clone_from(&m.content);
            }
            "user" => {
                if !response.is_empty() {
                    turn("full", &mut system, &mut prompt, &mut response, &mut out)?;
                }
                prompt.clone_from(&m.content);
            }
            "assistant" => response.clone_from(&m.content),
            _ => {}
        }
    }
    turn("cut", &mut system, &mut prompt, &mut response, &mut out)?;
    Ok(out)
}

fn render_named(
    env: &Environment<'static>,
    name: &str,
    vars: Value,
    limits: TemplateLimits,
) -> Result<String, TemplateError> {
    let tmpl = env.get_template(name).map_err(|e| TemplateError::Syntax(describe(&e)))?;
    let mut buf = CappedWriter { buf: Vec::new(), cap: limits.max_output_bytes };
    tmpl.render_captured_to(vars, &mut buf).map_err(classify)?;
    String::from_utf8(buf.buf).map_err(|_| TemplateError::Render("output is not UTF-8".into()))
}

fn classify(err: Error) -> TemplateError {
    let text = describe(&err);
    match err.kind() {
        ErrorKind::OutOfFuel => TemplateError::Limit("ran out of fuel (too much work)".into()),
        ErrorKind::WriteFailure => TemplateError::Limit("rendered prompt too large".into()),
        ErrorKind::SyntaxError => TemplateError::Syntax(text),
        _ if text.contains("recursion limit") => TemplateError::Limit(text),
        _ => TemplateError::Render(text),
    }
}

fn describe(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `work` on its own thread and waits at most `limits.timeout` for it.
fn run_sandboxed<F>(limits: TemplateLimits, work: F) -> Result<String, TemplateError>
where
    F: FnOnce() -> Result<String, TemplateError> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("chat-template".into())
        // minijinja's recursion limit (500) is sized for a default main-thread stack.
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| TemplateError::Render(format!("cannot start the template thread: {e}")))?;
    match rx.recv_timeout(limits.timeout) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            Err(TemplateError::Limit(format!("took longer than {} ms", limits.timeout.as_millis())))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(TemplateError::Render("the template thread failed".into()))
        }
    }
}

fn add_template(
    env: &mut Environment<'static>,
    name: &'static str,
    source: String,
) -> Result<(), TemplateError> {
    env.add_template_owned(name, source).map_err(|e| TemplateError::Syntax(describe(&e)))
}

fn sandbox_environment(limits: TemplateLimits, hf_whitespace: bool) -> Environment<'static> {
    // `Environment::new()` carries Jinja's filters, tests and globals (range, dict, namespace,
    // ...) and no template loader: nothing outside the registered templates can be included.
    let mut env = Environment::new();
    let mut syntax = SyntaxConfig::builder();
    if hf_whitespace {
        // transformers compiles chat templates with trim_blocks and lstrip_blocks.
        syntax.trim_blocks(true).lstrip_blocks(true);
    } else {
        // Go's text/template keeps every byte of the template text.
        syntax.keep_trailing_newline(true);
    }
    if let Ok(syntax) = syntax.build() {
        env.set_syntax(syntax);
    }
    env.set_fuel(Some(limits.fuel));
    env.set_recursion_limit(200);
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", python::strftime_now);
    env.add_filter("tojson", python::tojson);
    // Ollama's Go templates call `json`; the translator maps it to this filter too.
    env.add_filter("json", python::tojson);
    env
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Refuses `__` names inside tags (`''.__class__`, `attr('__globals__')`): minijinja cannot reach
/// Python objects anyway, but such a template is an attack, not a chat format, and it should fail
/// loudly like Jinja2's sandbox does rather than render as empty text.
fn refuse_python_internals(source: &str) -> Result<(), TemplateError> {
    let mut rest = source;
    while let Some(start) = rest.find(['{']) {
        let tail = &rest[start..];
        let close = if tail.starts_with("{{") {
            "}}"
        } else if tail.starts_with("{%") {
            "%}"
        } else {
            rest = &rest[start + 1..];
            continue;
        };
        let end = tail.find(close).map_or(tail.len(), |e| e + 2);
        if tail[..end].contains("__") {
            return Err(TemplateError::Syntax(
                "templates may not use names with `__` (Python internals)".into(),
            ));
        }
        rest = &tail[end..];
    }
    Ok(())
}

/// Removes `{% generation %}` / `{% endgeneration %}` (transformers' AssistantTracker tags).
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else { break };
        let tag = &rest[start + 2..start + len];
        let word = tag.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        if word != "generation" && word != "endgeneration" {
            out.push_str(&rest[start..start + len + 2]);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

fn render_fallback(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let turns: Vec<&ChatMessage> = messages.iter().filter(|m| m.role != "system").collect();
    let single_user = turns.len() <= 1 && turns.iter().all(|m| m.role == "user");
    if single_user {
        let parts: Vec<&str> =
            messages.iter().map(|m| m.content.as_str()).filter(|c| !c.is_empty()).collect();
        return parts.join("\n\n");
    }
    let mut out = String::new();
    for m in messages {
        out.push_str(&role_label(&m.role));
        out.push_str(": ");
        out.push_str(&m.content);
        out.push_str("\n\n");
    }
    if add_generation_prompt && messages.last().is_some_and(|m| m.role != "assistant") {
        out.push_str("Assistant:");
    }
    out
}

fn role_label(role: &str) -> String {
    let mut chars = role.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests;
