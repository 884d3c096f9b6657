//! Hugging Face GGUF repositories: the file listing (`GET <endpoint>/api/models/<owner>/<repo>/
//! tree/main?recursive=true`, whose LFS entries carry each file's sha256 and size), the choice of
//! a file by quantization, and the download URL (`<endpoint>/<owner>/<repo>/resolve/main/<path>`,
//! which usually redirects to a CDN). The token (`store.hf_token` or `HF_TOKEN`) is sent to the
//! endpoint only.

use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::Http;
use super::source::HfSelector;
use crate::error::{Error, Result};
use crate::store::digest::Digest;

/// A GGUF file chosen from a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfFile {
    /// Its path in the repository.
    pub path: String,
    /// Its sha256 (from LFS).
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Where to download it.
    pub url: Url,
}

#[derive(Debug, Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize)]
struct LfsInfo {
    oid: String,
    size: u64,
}

const MAX_LISTING: usize = 16 << 20;

/// Lists `repo` at `endpoint` and picks the file `selector` names.
pub async fn resolve(http: &Http, endpoint: &str, repo: &str, selector: &HfSelector) -> Result<HfFile> {
    let base = Url::parse(endpoint.trim_end_matches('/'))
        .map_err(|_| Error::InvalidArgument(format!("store.hf_endpoint {endpoint:?} is not a URL")))?;
    let mut listing = base.clone();
    {
        let mut segments = listing
            .path_segments_mut()
            .map_err(|_| Error::InvalidArgument(format!("store.hf_endpoint {endpoint:?} is not a URL")))?;
        segments.pop_if_empty().extend(["api", "models"]).extend(repo.split('/')).extend(["tree", "main"]);
    }
    listing.set_query(Some("recursive=true"));
    let response = http.get(&listing, HeaderMap::new()).await?;
    let status = response.status();
    let body = http.small_body(response, MAX_LISTING, &listing).await?;
    if status != StatusCode::OK {
        return Err(match super::status_error(status, &listing, &format!("repository {repo}"), &body) {
            Error::NotFound(_) => Error::NotFound(format!(
                "Hugging Face repository {repo} not found (or gated: set store.hf_token)"
            )),
            other => other,
        });
    }
    let entries: Vec<TreeEntry> = serde_json::from_slice(&body).map_err(|e| {
        Error::Registry(format!("the file listing of {repo} is not what Hugging Face sends: {e}"))
    })?;
    let chosen = choose(&entries, selector, repo)?;
    let lfs = chosen.lfs.as_ref().ok_or_else(|| {
        Error::Registry(format!("{} in {repo} is not stored with LFS, so its sha256 is unknown", chosen.path))
    })?;
    let digest = Digest::parse(&format!("sha256:{}", lfs.oid)).map_err(|_| {
        Error::Registry(format!("{} in {repo} has no valid sha256 in its listing", chosen.path))
    })?;
    let mut url = base;
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|_| Error::InvalidArgument("store.hf_endpoint is not a URL".into()))?;
        segments
            .pop_if_empty()
            .extend(repo.split('/'))
            .extend(["resolve", "main"])
            .extend(chosen.path.split('/'));
    }
    let size = if lfs.size > 0 { lfs.size } else { chosen.size };
    Ok(HfFile { path: chosen.path.clone(), digest, size, url })
}

/// Whether `file`'s name carries quantization `quant` between separators ("-Q4_K_M.gguf" has
/// "Q4_K_M" but not "Q4_K").
fn has_quant(file: &str, quant: &str) -> bool {
    let name = file.rsplit('/').next().unwrap_or(file).to_ascii_uppercase();
    let quant = quant.to_ascii_uppercase();
    let stem = name.strip_suffix(".GGUF").unwrap_or(&name);
    stem.match_indices(&quant).any(|(at, _)| {
        let before = stem[..at].chars().next_back();
        let after = stem[at + quant.len()..].chars().next();
        before.is_none_or(|c| matches!(c, '-' | '.' | '_')) && after.is_none_or(|c| matches!(c, '-' | '.'))
    })
}

fn choose<'a>(entries: &'a [TreeEntry], selector: &HfSelector, repo: &str) -> Result<&'a TreeEntry> {
    let ggufs: Vec<&TreeEntry> = entries
        .iter()
        .filter(|e| e.kind == "file" && e.path.to_ascii_lowercase().ends_with(".gguf"))
        .filter(|e| !e.path.to_ascii_lowercase().contains("mmproj"))
        .collect();
    let split = |e: &TreeEntry| e.path.to_ascii_lowercase().contains("-of-0");
    let found = match selector {
        HfSelector::File(path) => {
            let hit = entries.iter().find(|e| e.kind == "file" && e.path == *path);
            return hit.ok_or_else(|| {
                Error::NotFound(format!("{path} not found in Hugging Face repository {repo}"))
            });
        }
        HfSelector::Quant(q) if q.eq_ignore_ascii_case("latest") && ggufs.len() == 1 => ggufs.clone(),
        HfSelector::Quant(q) if q.eq_ignore_ascii_case("latest") => {
            ggufs.iter().copied().filter(|e| has_quant(&e.path, "Q4_K_M")).collect()
        }
        HfSelector::Quant(q) => ggufs.iter().copied().filter(|e| has_quant(&e.path, q)).collect(),
    };
    let available = || {
        let names: Vec<&str> = ggufs.iter().map(|e| e.path.as_str()).take(20).collect();
        if names.is_empty() {
            "it has no GGUF files".to_string()
        } else {
            format!("it has {}", names.join(", "))
        }
    };
    match found.as_slice() {
        [one] if split(one) => Err(Error::InvalidArgument(format!(
            "{} in {repo} is split into several files, which is not supported yet",
            one.path
        ))),
        [one] => Ok(one),
        [] => Err(Error::NotFound(format!(
            "no GGUF file for {} in Hugging Face repository {repo}; {}",
            match selector {
                HfSelector::Quant(q) => q.as_str(),
                HfSelector::File(f) => f.as_str(),
            },
            available()
        ))),
        several if several.iter().all(|e| split(e)) => Err(Error::InvalidArgument(format!(
            "{} in {repo} is split into several files, which is not supported yet",
            several[0].path
        ))),
        _ => Err(Error::InvalidArgument(format!(
            "several GGUF files in {repo} match; name one: hf.co/{repo}/<file>.gguf ({})",
            available()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> TreeEntry {
        TreeEntry { kind: "file".into(), path: path.into(), size: 1, lfs: None }
    }

    #[test]
    fn quantization_matches_between_separators() {
        assert!(has_quant("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "q4_k_m"));
        assert!(has_quant("model.Q8_0.gguf", "Q8_0"));
        assert!(!has_quant("Llama-Q4_K_M.gguf", "Q4_K"));
        assert!(!has_quant("Llama-IQ4_XS.gguf", "Q4_XS"));
    }

    #[test]
    fn choosing_files() {
        let entries = vec![
            entry("README.md"),
            entry("m-Q4_K_M.gguf"),
            entry("m-Q8_0.gguf"),
            entry("mmproj-m-f16.gguf"),
            entry("big/m-Q6_K-00001-of-00002.gguf"),
        ];
        let q = |s: &str| HfSelector::Quant(s.into());
        assert_eq!(choose(&entries, &q("Q8_0"), "o/r").unwrap().path, "m-Q8_0.gguf");
        assert_eq!(choose(&entries, &q("latest"), "o/r").unwrap().path, "m-Q4_K_M.gguf");
        let err = choose(&entries, &q("Q2_K"), "o/r").unwrap_err().to_string();
        assert!(err.contains("m-Q8_0.gguf"), "lists what there is: {err}");
        assert!(choose(&entries, &q("Q6_K"), "o/r").unwrap_err().to_string().contains("split"));
        let f = HfSelector::File("m-Q8_0.gguf".into());
        assert_eq!(choose(&entries, &f, "o/r").unwrap().path, "m-Q8_0.gguf");
    }
}
