//! What a `pull` names: a model in an Ollama-protocol registry (`llama3.2:1b`,
//! `host/ns/model:tag`), a Hugging Face GGUF (`hf.co/owner/repo:Q4_K_M`,
//! `hf.co/owner/repo/file.gguf`), or a plain URL of a `.gguf` file with its digest
//! (`https://host/path/model.gguf@sha256:<hex>`).

use reqwest::Url;

use crate::error::{Error, Result};
use crate::store::digest::Digest;
use crate::store::name::{ModelName, shorten};

/// Host names that mean Hugging Face.
pub const HF_HOSTS: [&str; 2] = ["hf.co", "huggingface.co"];

/// Which file of a Hugging Face repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HfSelector {
    /// The GGUF whose name carries this quantization ("Q4_K_M"); `latest` picks Q4_K_M or the
    /// only GGUF.
    Quant(String),
    /// A file by its path in the repository.
    File(String),
}

/// A pull target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullSource {
    /// An Ollama-protocol registry.
    Registry(ModelName),
    /// A Hugging Face repository.
    HuggingFace {
        /// The name it is stored under (`hf.co/owner/repo:tag`).
        name: ModelName,
        /// `owner/repo`.
        repo: String,
        /// Which file.
        selector: HfSelector,
    },
    /// A plain URL with the expected digest.
    Url {
        /// The name it is stored under.
        name: ModelName,
        /// Where the file is.
        url: Url,
        /// Its sha256.
        digest: Digest,
    },
}

impl PullSource {
    /// Parses a pull target; `default_host` is `store.registry`.
    pub fn parse(text: &str, default_host: &str) -> Result<PullSource> {
        let text = text.trim();
        if text.starts_with("https://") || text.starts_with("http://") {
            return parse_url(text, default_host);
        }
        let mut parts = text.splitn(3, '/');
        let first = parts.next().unwrap_or_default();
        if HF_HOSTS.iter().any(|h| first.eq_ignore_ascii_case(h)) {
            let owner = parts.next().unwrap_or_default();
            let rest = parts.next().unwrap_or_default();
            return parse_hf(owner, rest, default_host, text);
        }
        Ok(PullSource::Registry(ModelName::parse(text, default_host)?))
    }

    /// The name the model is stored under.
    pub fn name(&self) -> &ModelName {
        match self {
            PullSource::Registry(n)
            | PullSource::HuggingFace { name: n, .. }
            | PullSource::Url { name: n, .. } => n,
        }
    }
}

fn parse_hf(owner: &str, rest: &str, default_host: &str, text: &str) -> Result<PullSource> {
    let bad = || {
        Error::InvalidArgument(format!(
            "invalid Hugging Face name {:?}: use hf.co/<owner>/<repo>:<quant> or hf.co/<owner>/<repo>/<file>.gguf",
            shorten(text)
        ))
    };
    let (repo, selector) = match rest.split_once('/') {
        Some((repo, file)) => {
            let lower = file.to_ascii_lowercase();
            if !lower.ends_with(".gguf")
                || file.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..")
                || !file.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
            {
                return Err(bad());
            }
            (repo, HfSelector::File(file.to_string()))
        }
        None => match rest.rsplit_once(':') {
            Some((repo, quant)) => (repo, HfSelector::Quant(quant.to_string())),
            None => (rest, HfSelector::Quant("latest".into())),
        },
    };
    let tag = match &selector {
        HfSelector::Quant(q) => q.clone(),
        HfSelector::File(f) => tag_from_file(f),
    };
    let name = ModelName::parse(&format!("hf.co/{owner}/{repo}:{tag}"), default_host).map_err(|_| bad())?;
    Ok(PullSource::HuggingFace { repo: name.repository(), name, selector })
}

/// A tag from a file name: its stem, with characters a tag may not hold replaced.
fn tag_from_file(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.get(..file.len().saturating_sub(5)).unwrap_or(file);
    let mut tag: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .take(80)
        .collect();
    while tag.contains("..") {
        tag = tag.replace("..", ".");
    }
    if tag.is_empty() || !tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        tag.insert(0, '_');
    }
    tag
}

fn parse_url(text: &str, default_host: &str) -> Result<PullSource> {
    let (url_text, digest_text) =
        text.rsplit_once('@').filter(|(_, d)| d.starts_with("sha256:")).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "a URL pull needs the file's digest: {}@sha256:<64 hex digits>",
                shorten(text)
            ))
        })?;
    let digest = Digest::parse(digest_text).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let url = Url::parse(url_text)
        .map_err(|e| Error::InvalidArgument(format!("invalid URL {:?}: {e}", shorten(url_text))))?;
    let file = url.path_segments().and_then(|mut s| s.next_back()).unwrap_or_default().to_string();
    if !file.to_ascii_lowercase().ends_with(".gguf") || url.host_str().is_none() {
        return Err(Error::InvalidArgument(format!(
            "a URL pull must name a .gguf file, not {:?}",
            shorten(url_text)
        )));
    }
    let model = tag_from_file(&file).to_ascii_lowercase();
    let model = model.trim_start_matches('_');
    let name = ModelName::parse(&format!("{model}:latest"), default_host)
        .map_err(|_| Error::InvalidArgument(format!("cannot make a model name from {:?}", shorten(&file))))?;
    Ok(PullSource::Url { name, url, digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "registry.ollama.ai";
    const HEX: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

    #[test]
    fn registry_names() {
        match PullSource::parse("llama3.2:1b", HOST).unwrap() {
            PullSource::Registry(n) => assert_eq!(n.canonical(), "registry.ollama.ai/library/llama3.2:1b"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hugging_face_names() {
        match PullSource::parse("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", HOST).unwrap() {
            PullSource::HuggingFace { name, repo, selector } => {
                assert_eq!(repo, "bartowski/Llama-3.2-1B-Instruct-GGUF");
                assert_eq!(selector, HfSelector::Quant("Q4_K_M".into()));
                assert_eq!(name.display(HOST), "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M");
            }
            other => panic!("{other:?}"),
        }
        match PullSource::parse("huggingface.co/o/r/sub/model-Q8_0.gguf", HOST).unwrap() {
            PullSource::HuggingFace { name, selector, .. } => {
                assert_eq!(selector, HfSelector::File("sub/model-Q8_0.gguf".into()));
                assert_eq!(name.tag, "model-Q8_0");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            PullSource::parse("hf.co/o/r", HOST).unwrap(),
            PullSource::HuggingFace { selector: HfSelector::Quant(q), .. } if q == "latest"
        ));
        for bad in ["hf.co/o/r/../x.gguf", "hf.co/o/r/x.bin", "hf.co/o", "hf.co//r"] {
            assert!(PullSource::parse(bad, HOST).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_need_a_digest() {
        let ok = PullSource::parse(&format!("https://example.com/m/Tiny-Model.Q4.gguf@sha256:{HEX}"), HOST)
            .unwrap();
        match ok {
            PullSource::Url { name, url, digest } => {
                assert_eq!(name.display(HOST), "tiny-model.q4:latest");
                assert_eq!(url.as_str(), "https://example.com/m/Tiny-Model.Q4.gguf");
                assert_eq!(digest.hex(), HEX);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            PullSource::parse("https://example.com/m.gguf", HOST).unwrap_err().to_string().contains("digest")
        );
        assert!(PullSource::parse("https://example.com/m.gguf@sha256:../../x", HOST).is_err());
        assert!(PullSource::parse(&format!("https://example.com/m.bin@sha256:{HEX}"), HOST).is_err());
    }
}
