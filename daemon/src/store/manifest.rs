//! The model manifest: a Docker v2 image manifest whose layers carry Ollama's media types
//! (`application/vnd.ollama.image.model`, `.template`, `.system`, `.params`, ...), the model
//! config blob beside it, and the small JSON layers (parameters, messages). A model's id is the
//! sha256 of its manifest's bytes, as in Ollama.

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use crate::error::{Error, Result};

/// Media type of a Docker v2 manifest.
pub const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of the model config blob.
pub const CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The GGUF weights.
pub const MODEL: &str = "application/vnd.ollama.image.model";
/// A LoRA adapter (GGUF).
pub const ADAPTER: &str = "application/vnd.ollama.image.adapter";
/// A multimodal projector (GGUF).
pub const PROJECTOR: &str = "application/vnd.ollama.image.projector";
/// The prompt template (text).
pub const TEMPLATE: &str = "application/vnd.ollama.image.template";
/// The system prompt (text).
pub const SYSTEM: &str = "application/vnd.ollama.image.system";
/// Parameters (JSON object).
pub const PARAMS: &str = "application/vnd.ollama.image.params";
/// A license (text); a model may have several.
pub const LICENSE: &str = "application/vnd.ollama.image.license";
/// Example messages (JSON array).
pub const MESSAGES: &str = "application/vnd.ollama.image.messages";
/// The index of a model stored as a Hugging Face folder ([`FolderIndex`] JSON): served engines
/// (vLLM, MAX) read it as a directory.
pub const FOLDER: &str = "application/vnd.hyperllama.model.folder.v1+json";
/// One file of such a folder (its name is in the index).
pub const FOLDER_FILE: &str = "application/vnd.hyperllama.model.folder.file";

/// Largest manifest accepted from a registry.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Most layers a manifest may list.
const MAX_LAYERS: usize = 512;

/// One layer (or the config) of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    /// What the blob holds.
    pub media_type: String,
    /// The blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// The files of a folder model: their names and blobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderIndex {
    /// In name order.
    pub files: Vec<FolderEntry>,
}

/// One file of a folder model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderEntry {
    /// Its name in the folder (one path component).
    pub name: String,
    /// Its blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

/// A Docker v2 manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST_V2`].
    pub media_type: String,
    /// The model config blob.
    pub config: Layer,
    /// The layers in order.
    pub layers: Vec<Layer>,
}

impl Manifest {
    /// A manifest over `config` and `layers`.
    pub fn new(config: Layer, layers: Vec<Layer>) -> Self {
        Self { schema_version: 2, media_type: MANIFEST_V2.into(), config, layers }
    }

    /// Parses and checks a manifest received from a registry; `source` names it in errors.
    pub fn parse(bytes: &[u8], source: &str) -> Result<Manifest> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(Error::InvalidModel(format!("the manifest of {source} is larger than 4 MiB")));
        }
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidModel(format!("the manifest of {source} is invalid: {e}")))?;
        if manifest.schema_version != 2 {
            return Err(Error::InvalidModel(format!(
                "the manifest of {source} has schema version {}, not 2",
                manifest.schema_version
            )));
        }
        if manifest.layers.len() > MAX_LAYERS {
            return Err(Error::InvalidModel(format!(
                "the manifest of {source} lists more than {MAX_LAYERS} layers"
            )));
        }
        let models = manifest.layers.iter().filter(|l| l.media_type == MODEL).count();
        if models != 1 {
            return Err(Error::InvalidModel(format!(
                "the manifest of {source} has {models} model layers; exactly one is supported"
            )));
        }
        for layer in manifest.all_layers() {
            if !is_known_media_type(&layer.media_type) {
                return Err(Error::InvalidModel(format!(
                    "the manifest of {source} has a layer of unsupported type {:?}",
                    super::name::shorten(&layer.media_type)
                )));
            }
        }
        Ok(manifest)
    }

    /// The config and the layers.
    pub fn all_layers(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    /// Total bytes of the config and layers (each blob counted once).
    pub fn total_size(&self) -> u64 {
        let mut seen = std::collections::HashSet::new();
        self.all_layers().filter(|l| seen.insert(l.digest)).fold(0u64, |s, l| s.saturating_add(l.size))
    }

    /// The serialized bytes (the model id is their sha256).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn is_known_media_type(media_type: &str) -> bool {
    [CONFIG, MODEL, ADAPTER, PROJECTOR, TEMPLATE, SYSTEM, PARAMS, LICENSE, MESSAGES].contains(&media_type)
        || media_type.starts_with("application/vnd.ollama.image.")
}

/// The model config blob, as Ollama writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ModelConfig {
    /// "gguf".
    pub model_format: String,
    /// The architecture ("llama").
    pub model_family: String,
    /// Architectures of the model and its projectors.
    pub model_families: Vec<String>,
    /// Parameter count as text ("268.10M").
    pub model_type: String,
    /// Quantization ("Q4_K_M").
    pub file_type: String,
    /// Platform fields Docker tools expect.
    pub architecture: String,
    /// Platform fields Docker tools expect.
    pub os: String,
    /// The layers as a root file system.
    pub rootfs: RootFs,
}

/// `rootfs` of the model config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RootFs {
    /// "layers".
    #[serde(rename = "type")]
    pub kind: String,
    /// The layers' digests.
    pub diff_ids: Vec<Digest>,
}

impl ModelConfig {
    /// The config for a model of `info` with `layers`.
    pub fn new(info: &crate::gguf::ModelInfo, layers: &[Layer]) -> Self {
        Self {
            model_format: "gguf".into(),
            model_family: info.architecture.clone(),
            model_families: vec![info.architecture.clone()],
            model_type: parameter_size(info.parameter_count),
            file_type: info.quantization.clone(),
            architecture: "amd64".into(),
            os: "linux".into(),
            rootfs: RootFs { kind: "layers".into(), diff_ids: layers.iter().map(|l| l.digest).collect() },
        }
    }
}

/// A parameter count as Ollama shows it: "268.10M", "8.03B".
pub fn parameter_size(count: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let f = count as f64;
    match count {
        0 => String::new(),
        1..=999_999 => format!("{:.2}K", f / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}M", f / 1e6),
        _ => format!("{:.2}B", f / 1e9),
    }
}

/// A Modelfile PARAMETER's value as the params layer stores it: numbers and booleans typed by
/// the parameter's kind, `stop` as a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamKind {
    Int,
    Float,
    Bool,
    List,
}

fn param_kind(name: &str) -> Option<ParamKind> {
    Some(match name {
        "num_ctx" | "num_predict" | "num_keep" | "num_batch" | "num_gpu" | "main_gpu" | "num_thread"
        | "top_k" | "seed" | "repeat_last_n" | "mirostat" => ParamKind::Int,
        "temperature" | "top_p" | "min_p" | "typical_p" | "repeat_penalty" | "presence_penalty"
        | "frequency_penalty" | "mirostat_tau" | "mirostat_eta" => ParamKind::Float,
        "use_mmap" | "penalize_newline" => ParamKind::Bool,
        "stop" => ParamKind::List,
        _ => return None,
    })
}

/// Builds the params layer's JSON from PARAMETER lines (in order; later lines of a scalar
/// parameter win, `stop` accumulates), refusing unknown names and ill-typed values.
pub fn params_json(params: &[(String, String)]) -> Result<Vec<u8>> {
    let mut out: Vec<(String, serde_json::Value)> = Vec::new();
    for (name, value) in params {
        let kind = param_kind(name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown parameter {:?} in the Modelfile",
                super::name::shorten(name)
            ))
        })?;
        let bad = |expected: &str| {
            Error::InvalidArgument(format!(
                "invalid value {:?} for parameter `{name}`: expected {expected}",
                super::name::shorten(value)
            ))
        };
        let json = match kind {
            ParamKind::Int => {
                serde_json::Value::from(value.trim().parse::<i64>().map_err(|_| bad("an integer"))?)
            }
            ParamKind::Float => {
                let f = value
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| bad("a number"))?;
                serde_json::Number::from_f64(f)
                    .map(serde_json::Value::Number)
                    .ok_or_else(|| bad("a number"))?
            }
            ParamKind::Bool => {
                serde_json::Value::from(value.trim().parse::<bool>().map_err(|_| bad("true or false"))?)
            }
            ParamKind::List => {
                if let Some((_, serde_json::Value::Array(list))) = out.iter_mut().find(|(k, _)| k == name) {
                    list.push(value.clone().into());
                    continue;
                }
                serde_json::Value::Array(vec![value.clone().into()])
            }
        };
        match out.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = json,
            None => out.push((name.clone(), json)),
        }
    }
    // Written by hand to keep the Modelfile's order (serde_json's map would sort the keys).
    let mut text = String::from("{");
    for (i, (k, v)) in out.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&serde_json::Value::from(k.as_str()).to_string());
        text.push(':');
        text.push_str(&v.to_string());
    }
    text.push('}');
    Ok(text.into_bytes())
}

/// Reads a params layer into `(name, value)` pairs in file order, one pair per `stop` entry.
pub fn parse_params(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let ordered: OrderedObject = serde_json::from_slice(bytes)
        .map_err(|e| Error::InvalidModel(format!("the model's parameters are not a JSON object: {e}")))?;
    let mut out = Vec::new();
    for (k, v) in ordered.0 {
        match v {
            serde_json::Value::Array(items) => {
                out.extend(items.into_iter().map(|item| (k.clone(), scalar_text(item))));
            }
            other => out.push((k, scalar_text(other))),
        }
    }
    Ok(out)
}

fn scalar_text(v: serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// A JSON object read with its keys in file order.
struct OrderedObject(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OrderedObject, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    out.push((k, v));
                }
                Ok(OrderedObject(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// One example message of the messages layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// "system", "user", "assistant" or "tool".
    pub role: String,
    /// Its text.
    pub content: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn params_keep_order_types_and_repeated_stops() {
        let input =
            pairs(&[("temperature", "0.7"), ("stop", "<end>"), ("num_ctx", "4096"), ("stop", "User:")]);
        let json = params_json(&input).unwrap();
        assert_eq!(
            String::from_utf8(json.clone()).unwrap(),
            r#"{"temperature":0.7,"stop":["<end>","User:"],"num_ctx":4096}"#
        );
        assert_eq!(
            parse_params(&json).unwrap(),
            pairs(&[("temperature", "0.7"), ("stop", "<end>"), ("stop", "User:"), ("num_ctx", "4096")])
        );
    }

    #[test]
    fn bad_params_are_refused_by_name() {
        let err = params_json(&pairs(&[("temprature", "1")])).unwrap_err().to_string();
        assert!(err.contains("unknown parameter"), "{err}");
        let err = params_json(&pairs(&[("num_ctx", "big")])).unwrap_err().to_string();
        assert!(err.contains("`num_ctx`") && err.contains("integer"), "{err}");
    }

    #[test]
    fn evil_manifests_are_refused() {
        let evil = r#"{"schemaVersion":2,"mediaType":"x","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:../../x","size":1},"layers":[]}"#;
        let err = Manifest::parse(evil.as_bytes(), "m").unwrap_err().to_string();
        assert!(err.contains("invalid digest"), "{err}");
        let d = Digest::of(b"x");
        let layer = |mt: &str| Layer { media_type: mt.into(), digest: d, size: 1 };
        let two_models = Manifest::new(layer(CONFIG), vec![layer(MODEL), layer(MODEL)]);
        assert!(Manifest::parse(&two_models.to_bytes(), "m").is_err());
        let weird = Manifest::new(layer(CONFIG), vec![layer(MODEL), layer("application/x-pickle")]);
        assert!(
            Manifest::parse(&weird.to_bytes(), "m").unwrap_err().to_string().contains("unsupported type")
        );
        let ok = Manifest::new(layer(CONFIG), vec![layer(MODEL)]);
        assert_eq!(Manifest::parse(&ok.to_bytes(), "m").unwrap(), ok);
    }

    #[test]
    fn parameter_sizes_read_like_ollama() {
        assert_eq!(parameter_size(268_098_176), "268.10M");
        assert_eq!(parameter_size(8_030_261_248), "8.03B");
    }
}
