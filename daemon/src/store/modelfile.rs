//! Modelfiles, as Ollama reads and writes them: `FROM`, `ADAPTER`, `PARAMETER name value`,
//! `TEMPLATE`, `SYSTEM`, `LICENSE`, `MESSAGE role text`; keywords in any case, `#` comments,
//! values bare (to the end of the line), in `"quotes"` (with `\"` and `\\`) or in `"""triple
//! quotes"""` spanning lines. [`render`] writes one that [`parse`] reads back unchanged.

use std::fmt::Write as _;

use crate::error::{Error, Result};

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// The base: a model in the store or `@file:<n>`, a file the client streamed.
    From(String),
    /// A LoRA adapter, `@file:<n>`.
    Adapter(String),
    /// `PARAMETER name value`.
    Parameter(String, String),
    /// The prompt template.
    Template(String),
    /// The system prompt.
    System(String),
    /// A license text.
    License(String),
    /// `MESSAGE role text`.
    Message(String, String),
}

/// Longest Modelfile accepted.
pub const MAX_MODELFILE_BYTES: usize = 4 << 20;
const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Parses a Modelfile. Errors name the line.
pub fn parse(text: &str) -> Result<Vec<Instruction>> {
    if text.len() > MAX_MODELFILE_BYTES {
        return Err(Error::InvalidArgument("the Modelfile is larger than 4 MiB".into()));
    }
    let mut out = Vec::new();
    let mut rest = text;
    let mut line_no = 1usize;
    while !rest.is_empty() {
        let line_end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let line = &rest[..line_end];
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            rest = &rest[line_end..];
            line_no += 1;
            continue;
        }
        let start_line = line_no;
        let bad = |why: String| Error::InvalidArgument(format!("Modelfile line {start_line}: {why}"));
        let body = rest.trim_start();
        let keyword_len = body.find(char::is_whitespace).unwrap_or(body.len());
        let keyword = body[..keyword_len].to_ascii_uppercase();
        let after = body[keyword_len..].trim_start_matches([' ', '\t']);
        let (args, remaining) = match keyword.as_str() {
            "PARAMETER" | "MESSAGE" => {
                let name_len = after.find(char::is_whitespace).unwrap_or(after.len());
                let name = &after[..name_len];
                if name.is_empty() {
                    return Err(bad(format!("{keyword} needs a name and a value")));
                }
                let (value, remaining) =
                    value(after[name_len..].trim_start_matches([' ', '\t'])).map_err(bad)?;
                (vec![name.to_string(), value], remaining)
            }
            "FROM" | "ADAPTER" | "TEMPLATE" | "SYSTEM" | "LICENSE" => {
                let (value, remaining) = value(after).map_err(bad)?;
                (vec![value], remaining)
            }
            _ => {
                return Err(bad(format!("unknown instruction {:?}", super::name::shorten(&keyword))));
            }
        };
        let consumed = &rest[..rest.len() - remaining.len()];
        line_no += consumed.matches('\n').count();
        rest = remaining;
        let mut args = args.into_iter();
        let mut arg = || args.next().unwrap_or_default();
        out.push(match keyword.as_str() {
            "FROM" => Instruction::From(nonempty(arg(), "FROM", &bad)?),
            "ADAPTER" => Instruction::Adapter(nonempty(arg(), "ADAPTER", &bad)?),
            "TEMPLATE" => Instruction::Template(arg()),
            "SYSTEM" => Instruction::System(arg()),
            "LICENSE" => Instruction::License(arg()),
            "PARAMETER" => {
                Instruction::Parameter(arg().to_ascii_lowercase(), nonempty(arg(), "PARAMETER", &bad)?)
            }
            _ => {
                let role = arg().to_ascii_lowercase();
                if !ROLES.contains(&role.as_str()) {
                    return Err(bad(format!(
                        "MESSAGE role {:?} is not one of system, user, assistant, tool",
                        super::name::shorten(&role)
                    )));
                }
                Instruction::Message(role, arg())
            }
        });
    }
    if !out.iter().any(|i| matches!(i, Instruction::From(_))) {
        return Err(Error::InvalidArgument("the Modelfile has no FROM line".into()));
    }
    Ok(out)
}

/// Bare values are trimmed, so only a missing value is empty; quoted blanks (a `stop` of "\n\n")
/// are values.
fn nonempty(value: String, keyword: &str, bad: &impl Fn(String) -> Error) -> Result<String> {
    if value.is_empty() { Err(bad(format!("{keyword} needs a value"))) } else { Ok(value) }
}

/// Reads one value at the start of `text`; returns it and what follows its line.
fn value(text: &str) -> std::result::Result<(String, &str), String> {
    if let Some(body) = text.strip_prefix("\"\"\"") {
        let end = body.find("\"\"\"").ok_or("a \"\"\" block is not closed")?;
        let after = &body[end + 3..];
        return Ok((body[..end].to_string(), end_of_line(after)?));
    }
    if let Some(body) = text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, '"')) => value.push('"'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => {
                        value.push('\\');
                        value.push(other);
                    }
                    None => return Err("a quoted value is not closed".into()),
                },
                '"' => return Ok((value, end_of_line(&body[i + 1..])?)),
                other => value.push(other),
            }
        }
        return Err("a quoted value is not closed".into());
    }
    let end = text.find('\n').unwrap_or(text.len());
    let rest = if end < text.len() { &text[end + 1..] } else { "" };
    Ok((text[..end].trim_end().to_string(), rest))
}

/// After a quoted value only blanks may follow on its line.
fn end_of_line(text: &str) -> std::result::Result<&str, String> {
    let end = text.find('\n').unwrap_or(text.len());
    if !text[..end].trim().is_empty() {
        return Err(format!(
            "unexpected text after a quoted value: {:?}",
            super::name::shorten(text[..end].trim())
        ));
    }
    Ok(if end < text.len() { &text[end + 1..] } else { "" })
}

/// Quotes a value so [`parse`] reads it back exactly.
fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && !value.contains(['\n', '"', '\\'])
        && value.trim() == value
        && !value.starts_with('#');
    if plain {
        return value.to_string();
    }
    if !value.contains("\"\"\"") && !value.ends_with('"') {
        return format!("\"\"\"{value}\"\"\"");
    }
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// Writes a Modelfile for `instructions`, headed by a comment naming the model.
pub fn render(model: &str, instructions: &[Instruction]) -> String {
    let mut out = format!(
        "# Modelfile generated by \"hyperctl show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {model}\n\n"
    );
    for i in instructions {
        let _ = match i {
            Instruction::From(v) => writeln!(out, "FROM {v}"),
            Instruction::Adapter(v) => writeln!(out, "ADAPTER {v}"),
            Instruction::Template(v) => writeln!(out, "TEMPLATE {}", quote(v)),
            Instruction::System(v) => writeln!(out, "SYSTEM {}", quote(v)),
            Instruction::License(v) => writeln!(out, "LICENSE {}", quote(v)),
            Instruction::Parameter(k, v) => writeln!(out, "PARAMETER {k} {}", quote(v)),
            Instruction::Message(r, v) => writeln!(out, "MESSAGE {r} {}", quote(v)),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Instruction::*;

    #[test]
    fn reads_ollama_modelfiles() {
        let text = "# comment\nfrom @file:0\nPARAMETER temperature 0.7\nPARAMETER stop \"<|end|>\"\n\
                    TEMPLATE \"\"\"{{ .System }}\n{{ .Prompt }}\"\"\"\nSYSTEM You are \"terse\".\n\
                    MESSAGE user Hi\nMESSAGE assistant \"\"\"Hello\nthere\"\"\"\nLICENSE \"\"\"MIT\"\"\"\n";
        let parsed = parse(text).unwrap();
        assert_eq!(
            parsed,
            vec![
                From("@file:0".into()),
                Parameter("temperature".into(), "0.7".into()),
                Parameter("stop".into(), "<|end|>".into()),
                Template("{{ .System }}\n{{ .Prompt }}".into()),
                System("You are \"terse\".".into()),
                Message("user".into(), "Hi".into()),
                Message("assistant".into(), "Hello\nthere".into()),
                License("MIT".into()),
            ]
        );
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("FROM x\n\nBOGUS y\n").unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("unknown instruction"), "{err}");
        let err = parse("FROM x\nSYSTEM \"\"\"never closed\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("not closed"), "{err}");
        assert!(parse("SYSTEM hi\n").unwrap_err().to_string().contains("no FROM"));
        assert!(parse("FROM x\nMESSAGE wizard hi\n").unwrap_err().to_string().contains("role"));
        let err = parse("FROM x\nTEMPLATE \"\"\"a\nb\"\"\"\nPARAMETER\n").unwrap_err().to_string();
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn render_round_trips_awkward_values() {
        let instructions = vec![
            From("gemma3:270m".into()),
            Template("{{ if .System }}\"\"\"{{ end }}".into()),
            System("ends with a quote\"".into()),
            Parameter("stop".into(), "<end>".into()),
            Parameter("stop".into(), " spaced ".into()),
            Parameter("stop".into(), "\n\n".into()),
            Message("user".into(), "back\\slash and \"quotes\"\nnewline".into()),
            License("# not a comment".into()),
        ];
        let text = render("gemma3:270m", &instructions);
        assert_eq!(parse(&text).unwrap(), instructions, "{text}");
    }
}
