//! Hugging Face model folders (config.json, tokenizer files, `*.safetensors`, or a GGUF next to a
//! config.json): which files such a folder may hold, and what it is (architecture, weight dtypes,
//! context, chat template), read with bounded parsers. The store checks folders with this on
//! create; engines check on load whether they can serve one.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

/// Largest JSON file of a folder read into memory (config, tokenizer).
pub const MAX_JSON_BYTES: u64 = 64 << 20;
/// Largest safetensors header (the JSON before the tensor data).
pub const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;
/// Most files in one folder.
pub const MAX_FILES: usize = 512;

/// Folder errors.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// A file name the store does not accept.
    #[error("{0}")]
    BadName(String),
    /// A file that is not what its name says.
    #[error("{name}: {message}")]
    BadFile {
        /// The file.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Something the folder must have is missing.
    #[error("{0}")]
    Incomplete(String),
}

/// Kinds of files a model folder may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// JSON (config, tokenizer, index, generation config).
    Json,
    /// safetensors weights.
    Safetensors,
    /// GGUF weights (MAX's `--weight-path`).
    Gguf,
    /// Other plain data: tokenizer.model (sentencepiece), merges.txt, vocab.txt, *.jinja, README.
    Data,
}

/// Checks a file name of a folder: one path component, no hidden files, and only formats that
/// cannot carry code (no pickles: `.bin`, `.pt`, `.pth`, `.pkl`; no `.py`).
pub fn file_kind(name: &str) -> Result<FileKind, FolderError> {
    let bad = |why: &str| FolderError::BadName(format!("{name:?}: {why}"));
    if name.is_empty() || name.len() > 255 || name.contains(['/', '\\', '\0']) || name.starts_with('.') {
        return Err(bad("not a plain file name"));
    }
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "json" => Ok(FileKind::Json),
        "safetensors" => Ok(FileKind::Safetensors),
        "gguf" => Ok(FileKind::Gguf),
        // Tokenizer data, templates, and LICENSE/README-like text.
        "" | "model" | "txt" | "jinja" | "md" | "tiktoken" => Ok(FileKind::Data),
        "bin" | "pt" | "pth" | "pkl" | "ckpt" | "py" => Err(bad(
            "pickle and code files can run code when loaded; only safetensors and GGUF weights are accepted",
        )),
        _ => Err(bad("not a model file (json, safetensors, gguf, tokenizer.model, txt, jinja)")),
    }
}

/// Reads a JSON file of a folder, bounded.
pub fn read_json(path: &Path, name: &str) -> Result<serde_json::Value, FolderError> {
    let bad = |message: String| FolderError::BadFile { name: name.into(), message };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON_BYTES + 1).read_to_end(&mut bytes).map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(bad(format!("larger than {MAX_JSON_BYTES} bytes")));
    }
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("not valid JSON: {e}")))
}

/// The tensors' dtypes and element count of a safetensors file, after checking that the header is
/// bounded and every tensor lies inside the file.
pub fn safetensors_dtypes(path: &Path, name: &str) -> Result<(BTreeSet<String>, u64), FolderError> {
    let bad = |message: String| FolderError::BadFile { name: name.into(), message };
    let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let file_len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| bad("shorter than a safetensors header".into()))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_SAFETENSORS_HEADER || 8 + header_len > file_len {
        return Err(bad(format!("safetensors header of {header_len} bytes does not fit the file")));
    }
    let mut header = vec![0u8; usize::try_from(header_len).map_err(|e| bad(e.to_string()))?];
    file.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("safetensors header is not JSON: {e}")))?;
    let data_len = file_len - 8 - header_len;
    let mut dtypes = BTreeSet::new();
    let mut elements = 0u64;
    for (tensor, value) in &header {
        if tensor == "__metadata__" {
            continue;
        }
        let dtype =
            value.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad(format!("{tensor}: no dtype")))?;
        let offsets = value
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| bad(format!("{tensor}: bad data_offsets")))?;
        if offsets.0 > offsets.1 || offsets.1 > data_len {
            return Err(bad(format!("{tensor}: data_offsets {offsets:?} lie outside the file")));
        }
        let shape = value
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad(format!("{tensor}: no shape")))?;
        let count = shape.iter().try_fold(1u64, |n, d| d.as_u64().and_then(|d| n.checked_mul(d)));
        elements = elements.saturating_add(count.ok_or_else(|| bad(format!("{tensor}: bad shape")))?);
        dtypes.insert(dtype.to_string());
    }
    Ok((dtypes, elements))
}

/// What a folder holds, as far as choosing an engine goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderInfo {
    /// `architectures[0]` of config.json, e.g. "LlamaForCausalLM".
    pub architecture: String,
    /// `model_type`, e.g. "llama".
    pub model_type: String,
    /// Dtypes of the safetensors tensors ("F32", "BF16", ...).
    pub safetensors_dtypes: BTreeSet<String>,
    /// Quantizations of the GGUF files ("Q4_K_M", "F32", ...).
    pub gguf_quantizations: BTreeSet<String>,
    /// Name of the first GGUF file, if any.
    pub gguf_file: Option<String>,
    /// Sum of tensor elements of the safetensors files.
    pub parameter_count: u64,
    /// `max_position_embeddings`.
    pub context_length: u64,
    /// `hidden_size`.
    pub embedding_length: u64,
    /// The tokenizer's chat template (tokenizer_config.json or chat_template.jinja).
    pub chat_template: Option<String>,
    /// KV cache bytes one token of context costs (keys and values of every layer, in the
    /// weights' element size); 0 when config.json does not tell.
    pub kv_bytes_per_token: u64,
}

impl FolderInfo {
    /// A short description of the weights ("F32", "BF16", "Q4_K_M").
    pub fn quantization(&self) -> String {
        let all: Vec<&str> =
            self.safetensors_dtypes.iter().chain(&self.gguf_quantizations).map(String::as_str).collect();
        all.join("+")
    }
}

/// Inspects a folder given as (file name, path of its content) pairs.
pub fn inspect<'a>(files: impl IntoIterator<Item = (&'a str, &'a Path)>) -> Result<FolderInfo, FolderError> {
    let mut info = FolderInfo::default();
    let mut config = None;
    let mut count = 0usize;
    for (name, path) in files {
        count += 1;
        if count > MAX_FILES {
            return Err(FolderError::Incomplete(format!("a model folder holds at most {MAX_FILES} files")));
        }
        match file_kind(name)? {
            FileKind::Json => {
                let value = read_json(path, name)?;
                if name == "config.json" {
                    config = Some(value);
                } else if name == "tokenizer_config.json" {
                    info.chat_template = info.chat_template.take().or_else(|| template_of(&value));
                }
            }
            FileKind::Safetensors => {
                let (dtypes, elements) = safetensors_dtypes(path, name)?;
                info.safetensors_dtypes.extend(dtypes);
                info.parameter_count = info.parameter_count.saturating_add(elements);
            }
            FileKind::Gguf => {
                let gguf = crate::gguf::read_file(path, &crate::gguf::Limits::default())
                    .and_then(|f| f.model_info())
                    .map_err(|e| FolderError::BadFile { name: name.into(), message: e.to_string() })?;
                info.gguf_quantizations.insert(gguf.quantization);
                info.gguf_file.get_or_insert_with(|| name.to_string());
                if info.parameter_count == 0 {
                    info.parameter_count = gguf.parameter_count;
                }
            }
            FileKind::Data => {
                if name == "chat_template.jinja" {
                    let text = std::fs::read(path)
                        .map_err(|e| FolderError::BadFile { name: name.into(), message: e.to_string() })?;
                    info.chat_template = Some(String::from_utf8_lossy(&text).into_owned());
                }
            }
        }
    }
    let config = config.ok_or_else(|| {
        FolderError::Incomplete("a model folder needs a config.json (Hugging Face layout)".into())
    })?;
    if info.safetensors_dtypes.is_empty() && info.gguf_quantizations.is_empty() {
        return Err(FolderError::Incomplete("the folder holds no weights (*.safetensors or *.gguf)".into()));
    }
    let text = |key: &str| config.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    info.architecture = config
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|a| a.as_str())
        .unwrap_or_default()
        .to_string();
    info.model_type = text("model_type");
    let number = |key: &str| config.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
    info.context_length = number("max_position_embeddings");
    info.embedding_length = number("hidden_size");
    let heads = number("num_attention_heads").max(1);
    let kv_heads = match number("num_key_value_heads") {
        0 => heads,
        n => n,
    };
    let head_dim = match number("head_dim") {
        0 => info.embedding_length / heads,
        n => n,
    };
    let element = if info.safetensors_dtypes.iter().all(|d| d == "F32") { 4 } else { 2 };
    info.kv_bytes_per_token = number("num_hidden_layers") * kv_heads * head_dim * 2 * element;
    Ok(info)
}

/// Inspects a folder on disk (the runner's view of a stored folder).
pub fn inspect_dir(dir: &Path) -> Result<FolderInfo, FolderError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| FolderError::Incomplete(format!("cannot read {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries.flatten() {
        files.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
    }
    files.sort();
    inspect(files.iter().map(|(n, p)| (n.as_str(), p.as_path())))
}

fn template_of(tokenizer_config: &serde_json::Value) -> Option<String> {
    match tokenizer_config.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        // A list of named templates: the "default" one.
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safetensors(dtype: &str, shape: &[u64], data: usize) -> Vec<u8> {
        let bytes = data as u64;
        let header = serde_json::json!({"w": {"dtype": dtype, "shape": shape, "data_offsets": [0, bytes]}})
            .to_string();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header.as_bytes());
        out.extend(vec![0u8; data]);
        out
    }

    #[test]
    fn names_that_could_run_code_or_escape_are_refused() {
        for name in ["pytorch_model.bin", "x.pt", "modeling.py", "../config.json", "a/b.json", ".hidden", ""]
        {
            assert!(file_kind(name).is_err(), "{name} accepted");
        }
        assert_eq!(file_kind("model-00001-of-00002.safetensors").unwrap(), FileKind::Safetensors);
        assert_eq!(file_kind("tokenizer.model").unwrap(), FileKind::Data);
    }

    #[test]
    fn folder_is_described() {
        let dir = tempfile::tempdir().unwrap();
        let config = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","max_position_embeddings":512,"hidden_size":128}"#;
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"chat_template":"{{ x }}"}"#).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), safetensors("F32", &[2, 4], 32)).unwrap();
        let info = inspect_dir(dir.path()).unwrap();
        assert_eq!(info.architecture, "LlamaForCausalLM");
        assert_eq!(info.context_length, 512);
        assert_eq!(info.parameter_count, 8);
        assert_eq!(info.quantization(), "F32");
        assert_eq!(info.chat_template.as_deref(), Some("{{ x }}"));
        // No layer count in this config.json: unknown KV size.
        assert_eq!(info.kv_bytes_per_token, 0);
    }

    #[test]
    fn tensors_outside_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = safetensors("F32", &[2, 4], 32);
        bytes.truncate(bytes.len() - 1);
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let err = safetensors_dtypes(&path, "m.safetensors").unwrap_err().to_string();
        assert!(err.contains("outside the file"), "{err}");
        std::fs::write(&path, u64::MAX.to_le_bytes()).unwrap();
        assert!(safetensors_dtypes(&path, "m.safetensors").is_err());
    }

    #[test]
    fn a_folder_without_config_or_weights_is_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors"), safetensors("F32", &[1], 4)).unwrap();
        assert!(inspect_dir(dir.path()).unwrap_err().to_string().contains("config.json"));
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert!(inspect_dir(dir.path()).unwrap_err().to_string().contains("no weights"));
    }
}
