//! Translation of Ollama Modelfile `TEMPLATE`s (Go `text/template`) into Jinja, so that one
//! sandboxed engine renders both.
//!
//! Supported subset (what Ollama's own model library uses):
//! - text; `{{ .Field }}` prints with `.System`, `.Prompt`, `.Response`, `.Messages`, `.Tools`
//!   and message fields (`.Role`, `.Content`, `.ToolCalls`, `.Function.Name`, ...; Go's
//!   CamelCase names become snake_case keys), `$` for the root, `$var`;
//! - `if` / `else if` / `else` / `end`, `range EXPR`, `range $v := EXPR`,
//!   `range $i, $v := EXPR`, `with EXPR`, `$x := EXPR`, `$x = EXPR`, comments;
//! - functions `eq ne lt le gt ge and or not len index slice json print currentDate`, parentheses,
//!   and pipelines into them (`.X | json`);
//! - trim markers `{{-` and `-}}`.
//!
//! Anything else (`define`, `template`, `block`, `printf`, method calls, ...) is rejected with
//! [`TemplateError::Unsupported`] when the template is compiled, never at request time.
//!
//! Templates without `.Messages` are rendered once per (system, prompt, response) turn, as
//! Ollama does, and the last turn uses a "cut" version in which everything printed after
//! `.Response` is dropped (so the prompt ends where the model's answer begins).

use super::TemplateError;

/// A translated template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    /// The whole template, as Jinja.
    pub full: String,
    /// The template with everything printed after the first `.Response` removed.
    pub cut: String,
    /// Whether the template iterates over `.Messages` (rendered once, not per turn).
    pub uses_messages: bool,
}

/// Heuristic: Go templates use `{{ .Field }}`, `{{ if`, `{{ range`, `{{ end }}` and never
/// Jinja's `{%`.
pub fn looks_like_go_template(source: &str) -> bool {
    if source.contains("{%") {
        return false;
    }
    let mut rest = source;
    while let Some(at) = rest.find("{{") {
        let inner = rest[at + 2..].trim_start_matches('-').trim_start();
        if inner.starts_with('.')
            || inner.starts_with('$')
            || inner.starts_with("/*")
            || ["if ", "range ", "end", "else", "with "].iter().any(|k| inner.starts_with(k))
        {
            return true;
        }
        rest = &rest[at + 2..];
    }
    false
}

/// Translates a Go template into Jinja.
pub fn translate(source: &str) -> Result<Translated, TemplateError> {
    let mut tr = Translator::default();
    let mut rest = source;
    while let Some(open) = rest.find("{{") {
        tr.text(&rest[..open]);
        let after = &rest[open + 2..];
        let close = find_action_end(after).ok_or_else(|| unsupported("unterminated {{ action"))?;
        tr.action(&after[..close])?;
        rest = &after[close + 2..];
    }
    tr.text(rest);
    if !tr.blocks.is_empty() {
        return Err(unsupported("missing {{ end }}"));
    }
    Ok(Translated { full: tr.full, cut: tr.cut, uses_messages: tr.uses_messages })
}

fn unsupported(what: impl Into<String>) -> TemplateError {
    TemplateError::Unsupported(what.into())
}

/// Index of the `}}` closing an action, skipping quoted strings.
fn find_action_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' && q == b'"' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None if b == b'"' || b == b'`' => quote = Some(b),
            None if b == b'}' && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            None => {}
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    If,
    Range,
    With,
}

#[derive(Debug)]
struct Block {
    kind: BlockKind,
    /// Opened after the cut point: dropped entirely from the cut version.
    skipped_in_cut: bool,
    /// The Jinja name `.` had before this block.
    outer_dot: Option<String>,
}

#[derive(Default)]
struct Translator {
    full: String,
    cut: String,
    /// Once `.Response` was printed, the cut version takes no more output.
    cut_done: bool,
    /// Blocks opened after the cut point that are still open (their content is dropped).
    cut_skip_depth: usize,
    blocks: Vec<Block>,
    /// The Jinja expression `.` stands for; `None` at the root.
    dot: Option<String>,
    counter: usize,
    uses_messages: bool,
}

impl Translator {
    fn text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let escaped = if text.contains("{{") || text.contains("{%") || text.contains("{#") {
            format!("{{% raw %}}{text}{{% endraw %}}")
        } else {
            text.to_owned()
        };
        self.full.push_str(&escaped);
        if !self.cut_done {
            self.cut.push_str(&escaped);
        }
    }

    /// Emits Jinja for both versions. `structural` output (block openers/closers) still goes to
    /// the cut version after the cut point when it closes a block opened before it.
    fn emit(&mut self, jinja: &str, to_cut: bool) {
        self.full.push_str(jinja);
        if to_cut {
            self.cut.push_str(jinja);
        }
    }

    fn action(&mut self, raw: &str) -> Result<(), TemplateError> {
        let trim_left = raw.starts_with('-') && raw[1..].starts_with(char::is_whitespace);
        let trim_right = raw.ends_with('-') && raw[..raw.len() - 1].ends_with(char::is_whitespace);
        let inner = raw.strip_prefix('-').filter(|_| trim_left).unwrap_or(raw);
        let inner = if trim_right { &inner[..inner.len() - 1] } else { inner };
        let inner = inner.trim();
        let (l, r) = (if trim_left { "-" } else { "" }, if trim_right { "-" } else { "" });

        if inner.starts_with("/*") {
            // A comment; it still trims whitespace.
            let s = format!("{{#{l} #{r}}}");
            let to_cut = !self.cut_done;
            self.emit(&s, to_cut);
            return Ok(());
        }
        let tokens = lex(inner)?;
        let Some(first) = tokens.first() else { return Err(unsupported("empty action")) };
        match first {
            Tok::Ident(k) if k == "if" => self.open_if(&tokens[1..], l, r),
            Tok::Ident(k) if k == "with" => self.open_with(&tokens[1..], l, r),
            Tok::Ident(k) if k == "range" => self.open_range(&tokens[1..], l, r),
            Tok::Ident(k) if k == "else" => self.else_branch(&tokens[1..], l, r),
            Tok::Ident(k) if k == "end" => self.end(l, r),
            Tok::Ident(k) if ["define", "template", "block", "break", "continue"].contains(&k.as_str()) => {
                Err(unsupported(format!("{{{{ {k} }}}}")))
            }
            Tok::Var(name) if matches!(tokens.get(1), Some(Tok::Assign | Tok::Declare)) => {
                let value = self.expr(&tokens[2..])?;
                let s = format!("{{%{l} set v_{name} = {value} {r}%}}");
                // Assignments print nothing; they stay unless their block was cut away.
                let to_cut = self.cut_skip_depth == 0;
                self.emit(&s, to_cut);
                Ok(())
            }
            _ => {
                let refs_response = tokens
                    .iter()
                    .any(|t| matches!(t, Tok::Field(path) if path.iter().any(|p| p == "Response")));
                let value = self.expr(&tokens)?;
                let s = format!("{{{{{l} {value} {r}}}}}");
                let to_cut = !self.cut_done;
                self.emit(&s, to_cut);
                if refs_response && !self.cut_done && self.cut_skip_depth == 0 {
                    self.cut_done = true;
                }
                Ok(())
            }
        }
    }

    fn push_block(&mut self, kind: BlockKind, new_dot: Option<String>) -> bool {
        let skipped_in_cut = self.cut_done;
        if skipped_in_cut {
            self.cut_skip_depth += 1;
        }
        let outer_dot = match new_dot {
            Some(d) => self.dot.replace(d),
            None => self.dot.clone(),
        };
        self.blocks.push(Block { kind, skipped_in_cut, outer_dot });
        !skipped_in_cut
    }

    fn open_if(&mut self, cond: &[Tok], l: &str, r: &str) -> Result<(), TemplateError> {
        let cond = self.expr(cond)?;
        let to_cut = self.push_block(BlockKind::If, None);
        self.emit(&format!("{{%{l} if {cond} {r}%}}"), to_cut);
        Ok(())
    }

    fn open_with(&mut self, value: &[Tok], l: &str, r: &str) -> Result<(), TemplateError> {
        let value = self.expr(value)?;
        self.counter += 1;
        let name = format!("with_{}", self.counter);
        let s = format!("{{%{l} set {name} = {value} %}}{{% if {name} {r}%}}");
        let to_cut = self.push_block(BlockKind::With, Some(name));
        self.emit(&s, to_cut);
        Ok(())
    }

    fn open_range(&mut self, rest: &[Tok], l: &str, r: &str) -> Result<(), TemplateError> {
        // `range $i, $v := X`, `range $v := X` or `range X`.
        let (index_var, elem_var, expr_tokens) = match rest {
            [Tok::Var(i), Tok::Comma, Tok::Var(v), Tok::Declare, tail @ ..] => {
                (Some(i.clone()), Some(v.clone()), tail)
            }
            [Tok::Var(v), Tok::Declare, tail @ ..] => (None, Some(v.clone()), tail),
            _ => (None, None, rest),
        };
        let iterable = self.expr(expr_tokens)?;
        self.counter += 1;
        let elem = match &elem_var {
            Some(v) if v != "_" => format!("v_{v}"),
            _ => format!("item_{}", self.counter),
        };
        let mut s = format!("{{%{l} for {elem} in {iterable} %}}");
        if let Some(i) = index_var.filter(|i| i != "_") {
            s.push_str(&format!("{{% set v_{i} = loop.index0 %}}"));
        }
        // The trailing trim marker belongs to the last tag.
        if r == "-" {
            s.truncate(s.len() - 2);
            s.push_str("-%}");
        }
        let to_cut = self.push_block(BlockKind::Range, Some(elem));
        self.emit(&s, to_cut);
        Ok(())
    }

    fn else_branch(&mut self, rest: &[Tok], l: &str, r: &str) -> Result<(), TemplateError> {
        let Some(block) = self.blocks.last() else { return Err(unsupported("{{ else }} outside a block")) };
        let to_cut = !block.skipped_in_cut;
        let s = match (block.kind, rest.first()) {
            (BlockKind::If, Some(Tok::Ident(k))) if k == "if" => {
                let cond = self.expr(&rest[1..])?;
                format!("{{%{l} elif {cond} {r}%}}")
            }
            (_, None) => format!("{{%{l} else {r}%}}"),
            _ => return Err(unsupported("this form of {{ else ... }}")),
        };
        if let Some(block) = self.blocks.last()
            && block.kind != BlockKind::If
        {
            // Inside `else` of range/with, `.` is the outer dot again.
            self.dot.clone_from(&block.outer_dot);
        }
        self.emit(&s, to_cut);
        Ok(())
    }

    fn end(&mut self, l: &str, r: &str) -> Result<(), TemplateError> {
        let block = self.blocks.pop().ok_or_else(|| unsupported("{{ end }} without a block"))?;
        self.dot = block.outer_dot;
        let keyword = match block.kind {
            BlockKind::If | BlockKind::With => "endif",
            BlockKind::Range => "endfor",
        };
        if block.skipped_in_cut {
            self.cut_skip_depth -= 1;
        }
        self.emit(&format!("{{%{l} {keyword} {r}%}}"), !block.skipped_in_cut);
        Ok(())
    }

    /// Translates an expression: a pipeline of commands, each a function call or a term.
    fn expr(&mut self, tokens: &[Tok]) -> Result<String, TemplateError> {
        let mut stages = tokens.split(|t| matches!(t, Tok::Pipe));
        let first = stages.next().ok_or_else(|| unsupported("empty expression"))?;
        let mut value = self.command(first, None)?;
        for stage in stages {
            value = self.command(stage, Some(value))?;
        }
        Ok(value)
    }

    /// One command; `piped` is the previous pipeline stage, passed as the last argument.
    fn command(&mut self, tokens: &[Tok], piped: Option<String>) -> Result<String, TemplateError> {
        let Some(first) = tokens.first() else { return Err(unsupported("empty command")) };
        if let Tok::Ident(name) = first
            && !matches!(name.as_str(), "true" | "false" | "nil")
        {
            let mut args = self.terms(&tokens[1..])?;
            args.extend(piped);
            return call(name, &args);
        }
        if piped.is_some() {
            return Err(unsupported("piping into a value"));
        }
        let terms = self.terms(tokens)?;
        match terms.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(unsupported("several values without a function")),
        }
    }

    fn terms(&mut self, tokens: &[Tok]) -> Result<Vec<String>, TemplateError> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                Tok::Open => {
                    let close = matching_paren(tokens, i)?;
                    out.push(format!("({})", self.expr(&tokens[i + 1..close])?));
                    i = close + 1;
                    continue;
                }
                Tok::Field(path) => out.push(self.field(None, path)),
                Tok::RootField(path) => out.push(self.field(Some(""), path)),
                Tok::Var(name) if name.is_empty() => out.push(self.field(Some(""), &[])),
                Tok::Var(name) => out.push(format!("v_{name}")),
                Tok::VarField(name, path) => {
                    let base = format!("v_{name}");
                    out.push(self.field(Some(&base), path));
                }
                Tok::Dot => out.push(self.dot.clone().ok_or_else(|| unsupported("`.` at the top level"))?),
                Tok::Str(s) => out.push(jinja_string(s)),
                Tok::Number(n) => out.push(n.clone()),
                Tok::Ident(k) if k == "true" || k == "false" => out.push(k.clone()),
                Tok::Ident(k) if k == "nil" => out.push("none".into()),
                Tok::Ident(k) => return Err(unsupported(format!("function `{k}` used as a value"))),
                other => return Err(unsupported(format!("unexpected {other:?}"))),
            }
            i += 1;
        }
        Ok(out)
    }

    /// `.A.B` relative to `base` (`None`: the current dot; `Some("")`: the root).
    fn field(&mut self, base: Option<&str>, path: &[String]) -> String {
        let at_root = match base {
            Some(b) => b.is_empty(),
            None => self.dot.is_none(),
        };
        if at_root && path.first().is_some_and(|p| p == "Messages") {
            self.uses_messages = true;
        }
        let mut out = match base {
            Some(b) if !b.is_empty() => b.to_owned(),
            Some(_) => String::new(),
            None => self.dot.clone().unwrap_or_default(),
        };
        for part in path {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&snake_case(part));
        }
        if out.is_empty() { "none".into() } else { out }
    }
}

fn matching_paren(tokens: &[Tok], open: usize) -> Result<usize, TemplateError> {
    let mut depth = 0;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => {}
        }
    }
    Err(unsupported("unbalanced parentheses"))
}

fn call(name: &str, args: &[String]) -> Result<String, TemplateError> {
    let need = |n: usize| {
        if args.len() == n { Ok(()) } else { Err(unsupported(format!("`{name}` takes {n} arguments"))) }
    };
    Ok(match name {
        "eq" if args.len() >= 2 => {
            let alts: Vec<String> = args[1..].iter().map(|b| format!("{} == {b}", args[0])).collect();
            format!("({})", alts.join(" or "))
        }
        "ne" | "lt" | "le" | "gt" | "ge" => {
            need(2)?;
            let op = match name {
                "ne" => "!=",
                "lt" => "<",
                "le" => "<=",
                "gt" => ">",
                _ => ">=",
            };
            format!("({} {op} {})", args[0], args[1])
        }
        "and" | "or" if !args.is_empty() => format!("({})", args.join(&format!(" {name} "))),
        "not" => {
            need(1)?;
            format!("(not {})", args[0])
        }
        "len" => {
            need(1)?;
            format!("({}|length)", args[0])
        }
        "index" if args.len() >= 2 => {
            let mut s = args[0].clone();
            for key in &args[1..] {
                s = format!("{s}[{key}]");
            }
            s
        }
        "slice" if (2..=3).contains(&args.len()) => match args.get(2) {
            Some(end) => format!("{}[{}:{end}]", args[0], args[1]),
            None => format!("{}[{}:]", args[0], args[1]),
        },
        "json" => {
            need(1)?;
            format!("({}|json)", args[0])
        }
        "print" => format!("({})", if args.is_empty() { "''".to_owned() } else { args.join(" ~ ") }),
        "currentDate" => {
            need(0)?;
            "strftime_now('%Y-%m-%d')".to_owned()
        }
        other => return Err(unsupported(format!("function `{other}`"))),
    })
}

fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev_lower = i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if i > 0 && (prev_lower || (next_lower && chars[i - 1].is_uppercase())) {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn jinja_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// `.A.B`
    Field(Vec<String>),
    /// `$.A.B`
    RootField(Vec<String>),
    /// `$name` (`$` alone is the empty name).
    Var(String),
    /// `$name.A.B`
    VarField(String, Vec<String>),
    /// `.` alone.
    Dot,
    Ident(String),
    Str(String),
    Number(String),
    Open,
    Close,
    Pipe,
    Comma,
    Declare,
    Assign,
}

fn lex(s: &str) -> Result<Vec<Tok>, TemplateError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident_char = |c: char| c.is_alphanumeric() || c == '_';
    let read_path = |i: &mut usize| -> Vec<String> {
        let mut path = Vec::new();
        while *i < chars.len() && chars[*i] == '.' {
            let start = *i + 1;
            let mut j = start;
            while j < chars.len() && ident_char(chars[j]) {
                j += 1;
            }
            if j == start {
                break;
            }
            path.push(chars[start..j].iter().collect());
            *i = j;
        }
        path
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            '|' => {
                out.push(Tok::Pipe);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            ':' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::Declare);
                i += 2;
            }
            '=' => {
                out.push(Tok::Assign);
                i += 1;
            }
            '.' => {
                let path = read_path(&mut i);
                if path.is_empty() {
                    out.push(Tok::Dot);
                    i += 1;
                } else {
                    out.push(Tok::Field(path));
                }
            }
            '$' => {
                let start = i + 1;
                let mut j = start;
                while j < chars.len() && ident_char(chars[j]) {
                    j += 1;
                }
                let name: String = chars[start..j].iter().collect();
                i = j;
                let path = read_path(&mut i);
                out.push(match (name.is_empty(), path.is_empty()) {
                    (true, false) => Tok::RootField(path),
                    (_, true) => Tok::Var(name),
                    (false, false) => Tok::VarField(name, path),
                });
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&c) = chars.get(i) else { return Err(unsupported("unterminated string")) };
                    i += 1;
                    match c {
                        '"' => break,
                        '\\' => {
                            let e = chars.get(i).copied().ok_or_else(|| unsupported("bad escape"))?;
                            i += 1;
                            s.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                other => other,
                            });
                        }
                        c => s.push(c),
                    }
                }
                out.push(Tok::Str(s));
            }
            '`' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| c == '`')
                    .ok_or_else(|| unsupported("unterminated raw string"))?;
                out.push(Tok::Str(chars[i + 1..i + 1 + end].iter().collect()));
                i += end + 2;
            }
            c if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                out.push(Tok::Number(chars[start..i].iter().collect()));
            }
            c if ident_char(c) => {
                let start = i;
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                if chars.get(i) == Some(&'.') {
                    return Err(unsupported(format!("method or field access on `{name}`")));
                }
                out.push(Tok::Ident(name));
            }
            other => return Err(unsupported(format!("character `{other}`"))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_go_templates() {
        assert!(looks_like_go_template("{{ .System }} {{ .Prompt }}"));
        assert!(looks_like_go_template("{{- if .System }}x{{ end }}"));
        assert!(!looks_like_go_template("{% for m in messages %}{{ m.content }}{% endfor %}"));
        assert!(!looks_like_go_template("{{ bos_token }}{{ messages[0].content }}"));
    }

    #[test]
    fn translates_legacy_template() {
        let t = translate("{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>{{ .Response }}<|end|>").unwrap();
        assert!(!t.uses_messages);
        assert_eq!(
            t.full,
            "{% if system %}<|system|>{{ system }}{% endif %}<|user|>{{ prompt }}<|assistant|>{{ response }}<|end|>"
        );
        assert_eq!(
            t.cut,
            "{% if system %}<|system|>{{ system }}{% endif %}<|user|>{{ prompt }}<|assistant|>{{ response }}"
        );
    }

    #[test]
    fn translates_messages_template() {
        let src = "{{- range $i, $m := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n<|{{ .Role }}|>{{ .Content }}{{ if $last }}<|end|>{{ end }}{{ end }}";
        let t = translate(src).unwrap();
        assert!(t.uses_messages);
        assert!(t.full.contains("{%- for v_m in messages %}{% set v_i = loop.index0 %}"), "{}", t.full);
        assert!(t.full.contains("set v_last = ((((messages[v_i:])|length)) == 1) -%}"), "{}", t.full);
        assert!(t.full.contains("{{ v_m.role }}"), "{}", t.full);
    }

    #[test]
    fn snake_cases_fields() {
        assert_eq!(snake_case("ToolCalls"), "tool_calls");
        assert_eq!(snake_case("Role"), "role");
        assert_eq!(snake_case("ID"), "id");
    }

    #[test]
    fn rejects_unsupported_constructs() {
        for src in [
            "{{ define \"x\" }}{{ end }}",
            "{{ template \"x\" }}",
            "{{ printf \"%s\" .Prompt }}",
            "{{ if .System }}",
        ] {
            assert!(matches!(translate(src), Err(TemplateError::Unsupported(_))), "{src}");
        }
    }

    #[test]
    fn text_with_jinja_markers_is_raw() {
        let t = translate("{% literally {{ .Prompt }}").unwrap();
        assert_eq!(t.full, "{% raw %}{% literally {% endraw %}{{ prompt }}");
    }
}
