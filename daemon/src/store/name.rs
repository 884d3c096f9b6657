//! Model names as Ollama writes them: `model`, `model:tag`, `namespace/model:tag` and
//! `host/namespace/model:tag`, with the default host (`store.registry`), namespace `library` and
//! tag `latest` filled in. Names are matched case-insensitively and shown in their shortest form.
//! Every part is validated because parts become URL path segments.

use std::fmt;

use crate::error::{Error, Result};

/// The namespace of names that give none.
pub const DEFAULT_NAMESPACE: &str = "library";
/// The tag of names that give none.
pub const DEFAULT_TAG: &str = "latest";
const MAX_PART: usize = 80;
const MAX_HOST: usize = 253;

/// A fully qualified model name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelName {
    /// Registry host, maybe with a port.
    pub host: String,
    /// Namespace (an owner).
    pub namespace: String,
    /// Model.
    pub model: String,
    /// Tag.
    pub tag: String,
}

impl ModelName {
    /// Parses `name` with `default_host` for names without a host.
    pub fn parse(name: &str, default_host: &str) -> Result<ModelName> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "invalid model name {:?}: {why} (names look like `model`, `model:tag`, `namespace/model:tag` \
                 or `host/namespace/model:tag`)",
                shorten(name)
            ))
        };
        let trimmed = name.trim();
        if trimmed.is_empty() {
            return Err(bad("it is empty"));
        }
        let (path, tag) = match trimmed.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') => (path, tag),
            _ => (trimmed, DEFAULT_TAG),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (host, namespace, model) = match parts.as_slice() {
            [model] => (default_host, DEFAULT_NAMESPACE, *model),
            [namespace, model] => (default_host, *namespace, *model),
            [host, namespace, model] => (*host, *namespace, *model),
            _ => return Err(bad("it has too many `/`")),
        };
        if !valid_host(host) {
            return Err(bad("the host is not a host name"));
        }
        if !valid_part(namespace, false) {
            return Err(bad("the namespace may hold letters, digits, `.`, `_` and `-`"));
        }
        if !valid_part(model, false) {
            return Err(bad("the model may hold letters, digits, `.`, `_` and `-`"));
        }
        if !valid_part(tag, true) {
            return Err(bad("the tag may hold letters, digits, `.`, `_` and `-`"));
        }
        Ok(ModelName { host: host.into(), namespace: namespace.into(), model: model.into(), tag: tag.into() })
    }

    /// `host/namespace/model:tag`: the key the catalog stores.
    pub fn canonical(&self) -> String {
        format!("{}/{}/{}:{}", self.host, self.namespace, self.model, self.tag)
    }

    /// The shortest form that parses back to this name under `default_host`, as Ollama shows it.
    pub fn display(&self, default_host: &str) -> String {
        if self.host.eq_ignore_ascii_case(default_host) {
            if self.namespace.eq_ignore_ascii_case(DEFAULT_NAMESPACE) {
                return format!("{}:{}", self.model, self.tag);
            }
            return format!("{}/{}:{}", self.namespace, self.model, self.tag);
        }
        self.canonical()
    }

    /// `namespace/model`, the repository in registry URLs.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.namespace, self.model)
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// A host name or IPv4 address, optionally with `:port`.
pub fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= MAX_HOST
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !label.starts_with('-')
        });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok_and(|n| n > 0));
    name_ok && port_ok
}

fn valid_part(part: &str, tag: bool) -> bool {
    let mut chars = part.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || (tag && c == '_'));
    first_ok
        && part.len() <= MAX_PART
        && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !part.contains("..")
}

/// A name cut for messages.
pub fn shorten(text: &str) -> String {
    let cut: String = text.chars().take(100).collect();
    if cut.len() < text.len() { format!("{cut}…") } else { cut }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "registry.ollama.ai";

    #[test]
    fn ollama_forms_fill_in_defaults() {
        let n = ModelName::parse("llama3.2:1b", HOST).unwrap();
        assert_eq!(n.canonical(), "registry.ollama.ai/library/llama3.2:1b");
        assert_eq!(n.display(HOST), "llama3.2:1b");
        let n = ModelName::parse("gemma3-270m", HOST).unwrap();
        assert_eq!(n.display(HOST), "gemma3-270m:latest");
        let n = ModelName::parse("ns/model:tag", HOST).unwrap();
        assert_eq!(n.display(HOST), "ns/model:tag");
        let n = ModelName::parse("127.0.0.1:5000/ns/model", HOST).unwrap();
        assert_eq!(n.host, "127.0.0.1:5000");
        assert_eq!(n.tag, "latest");
        assert_eq!(n.display(HOST), "127.0.0.1:5000/ns/model:latest");
        assert_eq!(n.display("127.0.0.1:5000"), "ns/model:latest");
        let n = ModelName::parse("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", HOST).unwrap();
        assert_eq!(n.repository(), "bartowski/Llama-3.2-1B-Instruct-GGUF");
        assert_eq!(n.tag, "Q4_K_M");
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            "../x",
            "a/../../b",
            "a/b/c/d",
            "model:../x",
            "model:",
            ":tag",
            "ns/.hidden",
            "evil host/ns/m",
            "host:99999/ns/m",
            "m%2f",
            &"m".repeat(200),
        ] {
            let err = ModelName::parse(bad, HOST).unwrap_err().to_string();
            assert!(err.starts_with("invalid model name"), "{bad:?}: {err}");
            assert!(!err.contains('\n') || bad.contains('\n'), "{err}");
        }
    }
}
