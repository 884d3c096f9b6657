//! What `hyperctl show` prints about a model: the GGUF's facts (architecture, parameters,
//! context and embedding length, quantization), the Modelfile's layers, a Modelfile that
//! recreates the model, its capabilities, and (verbose) the GGUF metadata.

use std::collections::BTreeMap;

use super::catalog::{self, ModelRow};
use super::manifest;
use super::modelfile::{self, Instruction};
use super::{Store, not_found};
use crate::error::{Error, Result};
use crate::gguf;

/// A model as `show` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelDetails {
    /// The name as shown.
    pub name: String,
    /// The manifest digest.
    pub digest: String,
    /// When the name was last pointed at it.
    pub modified_at: i64,
    /// `general.architecture`.
    pub architecture: String,
    /// Parameter count.
    pub parameter_count: u64,
    /// Context length.
    pub context_length: u64,
    /// Embedding length.
    pub embedding_length: u64,
    /// Quantization.
    pub quantization: String,
    /// TEMPLATE.
    pub template: String,
    /// SYSTEM.
    pub system: String,
    /// PARAMETER lines as "name value".
    pub parameters: Vec<String>,
    /// LICENSE texts joined.
    pub license: String,
    /// A Modelfile that recreates the model.
    pub modelfile: String,
    /// "completion", "embedding", "tools", "insert", "vision".
    pub capabilities: Vec<String>,
    /// GGUF metadata (verbose only).
    pub metadata: BTreeMap<String, String>,
    /// Whether a blob is missing.
    pub broken: bool,
}

/// Architectures that embed rather than generate.
const EMBEDDING_ARCHITECTURES: [&str; 5] =
    ["bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder"];

impl Store {
    /// Describes a model for `show`.
    pub async fn details(&self, name: &str, verbose: bool) -> Result<ModelDetails> {
        let parsed = self.parse_name(name)?;
        let shown = parsed.display(self.default_host());
        let row = catalog::find(self.db(), &parsed.canonical()).await?.ok_or_else(|| not_found(&shown))?;
        let info = row.weights_layer().and_then(|l| l.info.clone()).unwrap_or_default();
        let mut d = ModelDetails {
            name: shown.clone(),
            digest: row.manifest.to_string(),
            modified_at: row.modified_at,
            architecture: info.architecture.clone(),
            parameter_count: info.parameter_count,
            context_length: info.context_length,
            embedding_length: info.embedding_length,
            quantization: info.quantization.clone(),
            broken: row.broken(),
            ..ModelDetails::default()
        };
        if d.broken {
            d.modelfile = format!("# '{shown}' is broken: a file is missing; pull it again or remove it\n");
            return Ok(d);
        }
        let mut instructions = vec![Instruction::From(shown.clone())];
        let mut licenses = Vec::new();
        for layer in row.layers.iter().filter(|l| l.position >= 0) {
            let text = || self.read_blob(&layer.digest).map(|b| String::from_utf8_lossy(&b).into_owned());
            match layer.media_type.as_str() {
                manifest::TEMPLATE => {
                    d.template = text()?;
                    instructions.push(Instruction::Template(d.template.clone()));
                }
                manifest::SYSTEM => {
                    d.system = text()?;
                    instructions.push(Instruction::System(d.system.clone()));
                }
                manifest::PARAMS => {
                    for (k, v) in manifest::parse_params(&self.read_blob(&layer.digest)?)? {
                        d.parameters.push(format!("{k:<20} {}", show_value(&v)));
                        instructions.push(Instruction::Parameter(k, v));
                    }
                }
                manifest::MESSAGES => {
                    let messages: Vec<manifest::Message> =
                        serde_json::from_slice(&self.read_blob(&layer.digest)?).map_err(|e| {
                            Error::InvalidModel(format!("the messages of '{shown}' are not valid JSON: {e}"))
                        })?;
                    instructions
                        .extend(messages.into_iter().map(|m| Instruction::Message(m.role, m.content)));
                }
                manifest::LICENSE => {
                    let license = text()?;
                    instructions.push(Instruction::License(license.clone()));
                    licenses.push(license);
                }
                _ => {}
            }
        }
        d.license = licenses.join("\n\n");
        d.modelfile = modelfile::render(&shown, &instructions);
        let chat_template = if verbose || d.template.is_empty() {
            self.gguf_metadata(&row, &mut d.metadata, verbose).await?
        } else {
            None
        };
        d.capabilities = capabilities(&row, &d.architecture, &d.template, chat_template.as_deref());
        Ok(d)
    }

    /// Reads the model file's metadata (into `out` when `verbose`); returns its chat template.
    async fn gguf_metadata(
        &self,
        row: &ModelRow,
        out: &mut BTreeMap<String, String>,
        verbose: bool,
    ) -> Result<Option<String>> {
        let Some(model) = row.model_layer() else { return Ok(None) };
        let path = self.layout().blob(&model.digest);
        let limits = self.gguf_limits().clone();
        let file = tokio::task::spawn_blocking(move || gguf::read_file(&path, &limits))
            .await
            .map_err(|e| Error::Internal(format!("GGUF task: {e}")))?
            .map_err(|e| Error::InvalidModel(format!("the model file is not readable: {e}")))?;
        if verbose {
            for entry in &file.metadata {
                out.insert(entry.key.clone(), entry.value.to_string());
            }
        }
        Ok(match file.get("tokenizer.chat_template") {
            Some(gguf::Value::String(t)) => Some(t.clone()),
            _ => None,
        })
    }
}

fn show_value(v: &str) -> String {
    if v.contains(char::is_whitespace) || v.is_empty() { format!("{v:?}") } else { v.to_string() }
}

/// What a model can do, from its architecture, template and layers.
fn capabilities(
    row: &ModelRow,
    architecture: &str,
    template: &str,
    chat_template: Option<&str>,
) -> Vec<String> {
    let mut caps = Vec::new();
    if EMBEDDING_ARCHITECTURES.contains(&architecture) {
        caps.push("embedding".to_string());
    } else {
        caps.push("completion".to_string());
    }
    let chat = chat_template.unwrap_or("");
    if template.contains(".Tools") || chat.contains("tools") {
        caps.push("tools".into());
    }
    if template.contains(".Suffix") || chat.contains("fim_") {
        caps.push("insert".into());
    }
    if row.layers.iter().any(|l| l.media_type == manifest::PROJECTOR) {
        caps.push("vision".into());
    }
    caps
}
