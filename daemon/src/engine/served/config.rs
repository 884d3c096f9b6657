//! `[engines]`: where the served engines (vLLM, Modular MAX) are installed and how they are run.
//! Documented, with every default, in `packaging/hyperllama.toml`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::duration_text;

/// `[engines]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnginesConfig {
    /// Engine for models stored as Hugging Face folders when the load names none: "vllm" or "max".
    pub folder_default: String,
    /// How long a served engine may take to start and answer its warm-up request (MAX compiles
    /// the model on its first start).
    #[serde(with = "duration_text")]
    pub start_timeout: Duration,
    /// GPUs served engines and the native engine run on when the load names none (`hyperctl run
    /// --gpus`); empty = CPU for served engines, the GPU with the most free memory for native.
    pub gpus: Vec<u32>,
    /// Compile caches and home directory of the served engines. Default: `<cache_dir>/engines`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// vLLM.
    pub vllm: EngineInstall,
    /// Modular MAX.
    pub max: EngineInstall,
}

/// `[engines.vllm]`, `[engines.max]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineInstall {
    /// Virtualenv the engine is installed in ("" = find its command on the service's PATH).
    pub virtualenv: String,
    /// Fraction of each GPU's memory the engine may use (weights + KV cache).
    pub gpu_memory_utilization: f32,
}

impl Default for EngineInstall {
    fn default() -> Self {
        Self { virtualenv: String::new(), gpu_memory_utilization: 0.9 }
    }
}

impl Default for EnginesConfig {
    fn default() -> Self {
        Self {
            folder_default: "vllm".into(),
            start_timeout: Duration::from_secs(900),
            gpus: Vec::new(),
            cache_dir: None,
            vllm: EngineInstall::default(),
            max: EngineInstall::default(),
        }
    }
}

impl EnginesConfig {
    /// Checks values serde cannot: (key, message) of the first bad one.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if super::ServedKind::from_name(&self.folder_default).is_none() {
            return Err(("engines.folder_default".into(), "must be \"vllm\" or \"max\"".into()));
        }
        for (key, install) in [("vllm", &self.vllm), ("max", &self.max)] {
            if !(install.gpu_memory_utilization > 0.0 && install.gpu_memory_utilization <= 1.0) {
                return Err((
                    format!("engines.{key}.gpu_memory_utilization"),
                    "must be a fraction in (0, 1]".into(),
                ));
            }
        }
        Ok(())
    }

    /// The install section of an engine.
    pub fn install(&self, kind: super::ServedKind) -> &EngineInstall {
        match kind {
            super::ServedKind::Vllm => &self.vllm,
            super::ServedKind::Max => &self.max,
        }
    }
}
