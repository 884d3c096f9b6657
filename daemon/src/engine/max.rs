//! Modular MAX as a served engine: `max serve` from the configured virtualenv (or on PATH), on a
//! private loopback port with its own metrics port. Devices: `--devices gpu:0,1,...` over the
//! runner's visible GPUs with `--device-memory-utilization`, or `--devices cpu`. On CPU MAX serves
//! float32 safetensors and Llama GGUF in q4_k, q4_0, q6_k or f32 (a GGUF is passed with
//! `--weight-path` next to the folder's config.json). MAX answers 400 for a model it does not serve.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::EngineError;
use super::served::hf::FolderInfo;
use super::served::process::Launch;
use super::served::{ServerConfig, find_on_path, not_installed};

/// The `max` command.
pub fn locate(virtualenv: Option<&Path>) -> Result<PathBuf, EngineError> {
    let found = match virtualenv {
        Some(venv) => Some(venv.join("bin/max")).filter(|p| p.is_file()),
        None => find_on_path("max"),
    };
    // `max` is a common name: the Modular one lives next to the python that has the max package.
    let is_modular = |max: &Path| {
        max.parent()
            .and_then(Path::parent)
            .and_then(|venv| std::fs::read_dir(venv.join("lib")).ok())
            .is_some_and(|libs| libs.flatten().any(|l| l.path().join("site-packages/max/serve").is_dir()))
    };
    match found {
        Some(max) if is_modular(&max) => Ok(max),
        _ => Err(not_installed("max", "max[serve] (Modular MAX)", virtualenv)),
    }
}

/// Quantizations MAX's CPU kernels run for Llama GGUF.
fn cpu_gguf_ok(quantization: &str) -> bool {
    let q = quantization.to_ascii_uppercase();
    q.starts_with("Q4_K") || q == "Q4_0" || q == "Q6_K" || q == "F32"
}

/// Whether MAX can serve this folder here.
pub fn check_servable(info: &FolderInfo, gpus: u32) -> Result<(), String> {
    if gpus > 0 {
        return Ok(());
    }
    if info.gguf_file.is_some() {
        if info.model_type != "llama" {
            return Err(format!(
                "MAX on CPU serves GGUF weights only for Llama models, not {:?}",
                info.model_type
            ));
        }
        if let Some(q) = info.gguf_quantizations.iter().find(|q| !cpu_gguf_ok(q)) {
            return Err(format!("MAX on CPU serves Llama GGUF in q4_k, q4_0, q6_k or f32, not {q}"));
        }
        return Ok(());
    }
    if let Some(d) = info.safetensors_dtypes.iter().find(|d| *d != "F32") {
        return Err(format!(
            "MAX on CPU serves float32 safetensors (or Llama GGUF q4_k/q4_0/q6_k/f32), not {d}; use a GPU or another engine"
        ));
    }
    Ok(())
}

/// The command line and environment of the server.
pub fn launch(max: &Path, config: &ServerConfig, info: &FolderInfo, port: u16, metrics_port: u16) -> Launch {
    let mut args: Vec<OsString> =
        vec!["serve".into(), "--model-path".into(), config.model_dir.clone().into_os_string()];
    if let Some(gguf) = &info.gguf_file {
        args.push("--weight-path".into());
        args.push(config.model_dir.join(gguf).into_os_string());
    }
    // Without it MAX builds a sampler that ignores repetition, presence and frequency penalties
    // (Ollama's repeat_penalty is on by default); with it, greedy text matches vLLM's.
    args.push("--enable-penalties".into());
    let mut flag = |name: &str, value: String| {
        args.push(name.into());
        args.push(value.into());
    };
    flag("--served-model-name", super::served::SERVED_MODEL_NAME.into());
    flag("--host", "127.0.0.1".into());
    flag("--port", port.to_string());
    flag("--max-length", config.context_length.to_string());
    flag("--max-batch-size", config.parallel.max(1).to_string());
    if config.gpus > 0 {
        let ids: Vec<String> = (0..config.gpus).map(|g| g.to_string()).collect();
        flag("--devices", format!("gpu:{}", ids.join(",")));
        flag("--device-memory-utilization", format!("{:.3}", config.gpu_memory_utilization));
    } else {
        flag("--devices", "cpu".into());
    }
    let env = vec![
        // Each instance its own metrics port (the default 8001 collides between models).
        ("MAX_SERVE_METRICS_ENDPOINT_PORT".to_string(), OsString::from(metrics_port.to_string())),
        ("MODULAR_CACHE_DIR".to_string(), config.cache_dir.join("modular").into_os_string()),
    ];
    Launch { program: max.to_path_buf(), args, env }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(l: &Launch) -> String {
        l.args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn cpu_and_gpu_launches() {
        let config = ServerConfig::for_tests("/m");
        let info = FolderInfo::default();
        let l = launch(Path::new("/venv/bin/max"), &config, &info, 10, 11);
        let cpu = joined(&l);
        assert!(cpu.starts_with("serve --model-path /m") && cpu.contains("--devices cpu"), "{cpu}");
        assert!(
            cpu.contains("--port 10")
                && cpu.contains("--max-length 512")
                && cpu.contains("--max-batch-size 2")
        );
        assert!(l.env.contains(&("MAX_SERVE_METRICS_ENDPOINT_PORT".into(), "11".into())));
        let mut gpu_config = ServerConfig::for_tests("/m");
        gpu_config.gpus = 2;
        let gguf = FolderInfo { gguf_file: Some("w.gguf".into()), ..FolderInfo::default() };
        let gpu = joined(&launch(Path::new("max"), &gpu_config, &gguf, 10, 11));
        assert!(
            gpu.contains("--devices gpu:0,1") && gpu.contains("--device-memory-utilization 0.900"),
            "{gpu}"
        );
        assert!(gpu.contains("--weight-path /m/w.gguf"), "{gpu}");
    }

    #[test]
    fn cpu_serves_float32_and_llama_gguf_only() {
        let f32 = FolderInfo { safetensors_dtypes: ["F32".to_string()].into(), ..FolderInfo::default() };
        assert!(check_servable(&f32, 0).is_ok());
        let bf16 = FolderInfo { safetensors_dtypes: ["BF16".to_string()].into(), ..FolderInfo::default() };
        assert!(check_servable(&bf16, 0).unwrap_err().contains("not BF16"));
        assert!(check_servable(&bf16, 1).is_ok());
        let gguf = |arch: &str, q: &str| FolderInfo {
            model_type: arch.into(),
            gguf_file: Some("m.gguf".into()),
            gguf_quantizations: [q.to_string()].into(),
            ..FolderInfo::default()
        };
        assert!(check_servable(&gguf("llama", "Q4_K_M"), 0).is_ok());
        assert!(check_servable(&gguf("llama", "Q8_0"), 0).is_err());
        assert!(check_servable(&gguf("gemma3", "Q4_K_M"), 0).is_err());
    }
}
