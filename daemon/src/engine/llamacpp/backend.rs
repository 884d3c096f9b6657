//! The process-wide llama.cpp backend: initialized once (llama.cpp allows one
//! `llama_backend_init` per process), with llama.cpp's and ggml's logs routed to `tracing`
//! (target `llama_cpp_2`; filter them with `RUST_LOG`), and what its CPU code was compiled to use.

use std::ffi::CStr;
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::{LogOptions, send_logs_to_tracing};

use crate::engine::EngineError;

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// The process-wide backend, initializing it on first use (tests that drive llama-cpp-2
/// directly must use this one: llama.cpp refuses a second initialization).
pub fn get() -> Result<&'static LlamaBackend, EngineError> {
    BACKEND
        .get_or_init(|| {
            send_logs_to_tracing(LogOptions::default());
            tracing::info!(features = %cpu_features(), "llama.cpp CPU backend");
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Load(format!("llama.cpp backend: {e}")))
}

/// The vector extensions llama.cpp's CPU code was compiled for, as llama.cpp lists them
/// (`CPU : SSE3 = 1 | … | AVX2 = 1 | … | AVX512 = 1 | …`): whether this build uses AVX-512 is
/// a 5-28% difference (`.cargo/config.toml`).
pub fn cpu_features() -> String {
    static CALL: Mutex<()> = Mutex::new(());
    let _one_at_a_time = CALL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // SAFETY: llama_print_system_info fills a static std::string and returns its NUL-terminated
    // buffer, valid until the next call; `CALL` keeps calls apart and the text is copied out
    // before the lock is released. It needs no initialized backend (the registry is static).
    let text = unsafe { CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) };
    text.to_string_lossy().trim().trim_end_matches('|').trim().to_string()
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::cpu_features;

    /// The build (`.cargo/config.toml`) compiles llama.cpp for the building CPU: every AVX2 and
    /// AVX-512 extension this machine has must show up in llama.cpp's own list.
    #[test]
    fn llama_cpp_uses_the_vector_extensions_of_the_cpu_that_built_it() {
        let features = cpu_features();
        assert!(features.contains("AVX2 = 1"), "llama.cpp without AVX2: {features}");
        match option_env!("GGML_HYPERLLAMA_MARCH") {
            None => panic!("GGML_HYPERLLAMA_MARCH unset: .cargo/config.toml's [env] did not apply"),
            Some("native") => {}
            Some(other) => {
                eprintln!("SKIPPED: llama.cpp built for {other}, not for this CPU: {features}");
                return;
            }
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
        let flags: Vec<&str> = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("flags").and_then(|r| r.split_once(':')).map(|(_, f)| f))
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        for (flag, feature) in [
            ("avx512f", "AVX512"),
            ("avx512vbmi", "AVX512_VBMI"),
            ("avx512_vnni", "AVX512_VNNI"),
            ("avx512_bf16", "AVX512_BF16"),
            ("avx_vnni", "AVX_VNNI"),
        ] {
            let built = features.contains(&format!("{feature} = 1"));
            assert_eq!(flags.contains(&flag), built, "CPU flag {flag} vs llama.cpp {feature}: {features}");
        }
    }
}
