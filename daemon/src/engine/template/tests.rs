use std::time::{Duration, Instant};

use super::*;

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage { role: role.into(), content: content.into(), tool_calls_json: None }
}

fn chat(messages: Vec<ChatMessage>) -> ChatPrompt {
    ChatPrompt { messages, template: None, tools_json: None, add_generation_prompt: true }
}

fn special() -> SpecialTokens {
    SpecialTokens { bos: "<bos>".into(), eos: "<eos>".into() }
}

fn render(source: &str, chat: &ChatPrompt) -> Result<String, TemplateError> {
    ChatTemplate::compile(source, TemplateLimits::default())?.render(chat, &special())
}

const GEMMA3_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;

#[test]
fn renders_hugging_face_template() {
    let out = render(GEMMA3_TEMPLATE, &chat(vec![msg("system", "Be brief."), msg("user", " Hi ")])).unwrap();
    assert_eq!(out, "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
}

#[test]
fn raise_exception_is_an_error_with_its_message() {
    let err = render(GEMMA3_TEMPLATE, &chat(vec![msg("assistant", "x")])).unwrap_err();
    assert!(matches!(&err, TemplateError::Render(m) if m.contains("roles must alternate")), "{err}");
}

#[test]
fn trim_and_lstrip_blocks_like_transformers() {
    let src = "{% for m in messages %}\n  {% if m.role == 'user' %}\nU:{{ m.content }}\n  {% endif %}\n{% endfor %}";
    assert_eq!(render(src, &chat(vec![msg("user", "a"), msg("user", "b")])).unwrap(), "U:a\nU:b\n");
}

#[test]
fn python_string_methods_and_namespace() {
    let src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m.content.strip().upper() }}{% if m.content.startswith(' h') %}!{% endif %}{% endfor %}{{ ns.n }}";
    assert_eq!(render(src, &chat(vec![msg("user", " hi "), msg("user", "yo")])).unwrap(), "HI!YO2");
}

#[test]
fn tojson_is_python_json_dumps() {
    let mut c = chat(vec![msg("user", "x")]);
    c.tools_json =
        Some(r#"[{"type":"function","function":{"name":"f","z":1,"a":[1,2.5,"é\n",true,null]}}]"#.into());
    let out = render("{{ tools[0] | tojson }}", &c).unwrap();
    assert_eq!(
        out,
        r#"{"type": "function", "function": {"name": "f", "z": 1, "a": [1, 2.5, "é\n", true, null]}}"#
    );
    let out = render("{{ tools[0].function.a | tojson(indent=2) }}", &c).unwrap();
    assert_eq!(out, "[\n  1,\n  2.5,\n  \"é\\n\",\n  true,\n  null\n]");
    let out = render("{{ {'b': 1, 'a': '<&>'} | tojson(sort_keys=true) }}", &c).unwrap();
    assert_eq!(out, r#"{"a": "<&>", "b": 1}"#);
}

#[test]
fn tool_calls_are_passed_to_templates() {
    let mut m = msg("assistant", "");
    m.tool_calls_json = Some(r#"[{"function":{"name":"get_weather","arguments":{"city":"Paris"}}}]"#.into());
    let out = render("{% for m in messages %}{% for c in m.tool_calls %}{{ c.function.name }}({{ c.function.arguments|tojson }}){% endfor %}{% endfor %}", &chat(vec![m])).unwrap();
    assert_eq!(out, r#"get_weather({"city": "Paris"})"#);
}

#[test]
fn strftime_formats_utc() {
    assert_eq!(python::strftime("%d %b %Y %H:%M:%S %A", 0), "01 Jan 1970 00:00:00 Thursday");
    // 2024-02-29 13:05:09 UTC
    assert_eq!(
        python::strftime("%Y-%m-%d %-d %B %j %I%p %%", 1_709_211_909),
        "2024-02-29 29 February 060 01PM %"
    );
    let today = render("{{ strftime_now('%Y') }}", &chat(vec![])).unwrap();
    assert_eq!(today.len(), 4);
}

#[test]
fn generation_tags_are_dropped() {
    let src = "{% for m in messages %}{% generation %}{{ m.content }}{%- endgeneration %}{% endfor %}";
    assert_eq!(render(src, &chat(vec![msg("assistant", "ok")])).unwrap(), "ok");
}

fn assert_fast_error(source: &str) -> TemplateError {
    let start = Instant::now();
    let result = render(source, &chat(vec![msg("user", "x")]));
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "{source}: took {took:?}");
    match result {
        Ok(out) => panic!("{source}: rendered {} bytes instead of failing", out.len()),
        Err(e) => e,
    }
}

#[test]
fn hostile_templates_error_fast() {
    // Python internals are refused outright.
    for src in [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ x|attr('__class__') }}",
        "{{ cycler.__init__.__globals__ }}",
    ] {
        let err = assert_fast_error(src);
        assert!(matches!(err, TemplateError::Syntax(_)), "{src}: {err}");
    }
    // Endless work runs out of fuel.
    for src in [
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i * j }}{% endfor %}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{{ 'x' * 1000000000 }}",
    ] {
        let err = assert_fast_error(src);
        assert!(matches!(err, TemplateError::Limit(_) | TemplateError::Render(_)), "{src}: {err}");
    }
    // Unbounded recursion hits the recursion limit.
    let err = assert_fast_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    assert!(matches!(err, TemplateError::Limit(_) | TemplateError::Render(_)), "{err}");
    // Templates cannot include, import or extend anything (minijinja is built without
    // `multi_template`), so neither files nor themselves.
    for src in [
        "{% include '/etc/passwd' %}",
        "{% include 'chat' %}",
        "{% extends 'chat' %}",
        "{% import 'chat' as x %}",
    ] {
        let err = assert_fast_error(src);
        assert!(matches!(err, TemplateError::Syntax(_)), "{src}: {err}");
    }
}

#[test]
fn oversized_source_is_refused() {
    let big = "x".repeat(TemplateLimits::default().max_source_bytes + 1);
    assert!(matches!(ChatTemplate::compile(&big, TemplateLimits::default()), Err(TemplateError::Limit(_))));
}

#[test]
fn go_legacy_template_renders_per_turn_and_cuts_the_last() {
    let src = "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>\n{{ .Response }}<|end|>\n";
    let c = chat(vec![msg("system", "S"), msg("user", "Q1"), msg("assistant", "A1"), msg("user", "Q2")]);
    let out = render(src, &c).unwrap();
    assert_eq!(
        out,
        "<|system|>\nS<|end|>\n<|user|>\nQ1<|end|>\n<|assistant|>\nA1<|end|>\n<|user|>\nQ2<|end|>\n<|assistant|>\n"
    );
}

#[test]
fn go_simple_prompt_template() {
    assert_eq!(render("{{ .Prompt }}", &chat(vec![msg("user", "The sky is")])).unwrap(), "The sky is");
}

#[test]
fn go_messages_template() {
    let src = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n";
    let out = render(src, &chat(vec![msg("system", "S"), msg("user", "Hi")])).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn go_llama3_style_template() {
    let src = r#"{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}
{{- end }}
{{- end }}"#;
    let out = render(src, &chat(vec![msg("system", "S"), msg("user", "Hi")])).unwrap();
    assert_eq!(
        out,
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn fallback_is_raw_for_one_turn_and_a_transcript_otherwise() {
    let t = ChatTemplate::fallback();
    assert!(t.is_fallback());
    assert_eq!(
        t.render(&chat(vec![msg("user", "The capital of France is")]), &special()).unwrap(),
        "The capital of France is"
    );
    assert_eq!(
        t.render(&chat(vec![msg("system", "Facts."), msg("user", "Paris is")]), &special()).unwrap(),
        "Facts.\n\nParis is"
    );
    let multi = chat(vec![msg("user", "Hi"), msg("assistant", "Hello"), msg("user", "Bye")]);
    assert_eq!(
        t.render(&multi, &special()).unwrap(),
        "User: Hi\n\nAssistant: Hello\n\nUser: Bye\n\nAssistant:"
    );
}
