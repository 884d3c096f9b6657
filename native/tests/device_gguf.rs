//! CPU tests of the device half that need no GPU: the GGUF reader and Llama config on a tiny
//! model written by the shared test writer, and `load_executor` reporting "unavailable" (not
//! panicking) where there is no CUDA driver.

#[path = "../../tests/support/tiny_model.rs"]
#[allow(dead_code)]
mod tiny_model;

use hyperllama_kernels::{WeightType, dequantize_row};
use hyperllama_native::core::executor::{ExecError, ExecutorSpec};
use hyperllama_native::device::gguf::GgufFile;
use hyperllama_native::device::model::LlamaConfig;

fn spec() -> tiny_model::TinyModelSpec {
    tiny_model::TinyModelSpec {
        n_embd: 256,
        n_head: 4,
        n_head_kv: 2,
        n_ff: 512,
        f16: true,
        ..Default::default()
    }
}

#[test]
fn reads_tiny_llama_metadata_tensors_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_model::write_tiny_llama(&path, &spec()).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.str("general.architecture"), Some("llama"));
    let cfg = LlamaConfig::from_gguf(&f).unwrap();
    assert_eq!(
        (cfg.hidden, cfg.layers, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.ffn),
        (256, 2, 4, 2, 64, 512)
    );
    assert!(cfg.vocab > 256 && !cfg.rope_neox);
    let (info, bytes) = f.read("blk.0.attn_q.weight").unwrap();
    assert_eq!(info.dims, vec![256, 256]);
    assert_eq!(WeightType::from_ggml_type(info.ggml_type), Some(WeightType::F16));
    let values = dequantize_row(WeightType::F16, &bytes, 256 * 256);
    assert!(values.iter().all(|v| v.is_finite()) && values.iter().any(|v| *v != 0.0));
    let (_, norm) = f.read("output_norm.weight").unwrap();
    assert_eq!(dequantize_row(WeightType::F32, &norm, 256), vec![1.0; 256]);
    assert_eq!(f.order.len(), f.tensors.len());
}

#[test]
fn rejects_truncated_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny_model::write_tiny_llama(&path, &spec()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(GgufFile::open(&cut).is_err(), "tensors past the end must be refused");
    let other = dir.path().join("other.bin");
    std::fs::write(&other, b"not a gguf file at all, just bytes").unwrap();
    assert!(GgufFile::open(&other).is_err());
}

#[test]
fn load_executor_without_a_driver_is_unavailable() {
    if hyperllama_kernels::driver_present() {
        hyperllama_kernels::check::report_skip(
            "a CUDA driver is present (this test covers machines without one)",
        );
        return;
    }
    let spec = ExecutorSpec { model_path: "/nonexistent.gguf".into(), ..Default::default() };
    match hyperllama_native::device::load_executor(&spec) {
        Err(ExecError::Unavailable(m)) => assert!(m.contains("no CUDA driver"), "{m}"),
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("loaded without a driver"),
    }
}
