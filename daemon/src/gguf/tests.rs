//! Tests of the GGUF reader against hand-built files, the hostile variants the store must refuse,
//! and (when present) the real Gemma 3 270M file in `.cache/`.

#[path = "../../../tests/support/gguf_file.rs"]
#[allow(dead_code)]
mod gguf_file;

use gguf_file::{GgufBuilder, Meta, hostile_files};

use super::*;

#[test]
fn reads_a_small_model() {
    let bytes = GgufBuilder::tiny_llama("a").build();
    let file = parse_bytes(&bytes, &Limits::default()).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.tensors.len(), 6);
    assert_eq!(file.data_offset % 32, 0);
    let info = file.model_info().unwrap();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.context_length, 2048);
    assert_eq!(info.embedding_length, 64);
    assert_eq!(info.quantization, "F32");
    assert_eq!(info.parameter_count, 64 * 256 + 64 + 2 * (64 + 64 * 64));
    let tokens = file.get("tokenizer.ggml.tokens").unwrap();
    match tokens {
        Value::Array(a) => {
            assert_eq!(a.len, 256);
            assert_eq!(a.head.len(), 16, "only the head of a long array is kept");
        }
        other => panic!("{other:?}"),
    }
    assert!(tokens.to_string().ends_with("] (256 items)"), "{tokens}");
}

#[test]
fn every_hostile_file_is_refused_with_a_clear_error() {
    for case in hostile_files() {
        let outcome = parse_bytes(&case.bytes, &Limits::default()).and_then(|f| f.model_info());
        let err = outcome.expect_err(case.name).to_string();
        assert!(err.contains(case.expect), "{}: {err}", case.name);
        assert!(!err.contains('\n'), "{}: one line: {err}", case.name);
    }
}

#[test]
fn every_prefix_of_a_good_file_fails_cleanly() {
    let bytes = GgufBuilder::tiny_llama("prefix").build();
    for cut in (0..bytes.len()).step_by(7) {
        assert!(parse_bytes(&bytes[..cut], &Limits::default()).is_err(), "prefix of {cut} bytes");
    }
}

#[test]
fn memory_budget_is_enforced() {
    let limits = Limits { max_memory: 4096, ..Limits::default() };
    let bytes = GgufBuilder::tiny_llama("budget").meta("big", Meta::Str("x".repeat(8192))).build();
    let err = parse_bytes(&bytes, &limits).unwrap_err().to_string();
    assert!(err.contains("over the limit"), "{err}");
}

#[test]
fn duplicate_keys_and_tensors_are_refused() {
    let dup = GgufBuilder::tiny_llama("d").meta("general.name", Meta::Str("again".into())).build();
    assert!(parse_bytes(&dup, &Limits::default()).unwrap_err().to_string().contains("twice"));
    let mut builder = GgufBuilder::tiny_llama("t");
    builder.tensors[1].name = builder.tensors[0].name.clone();
    assert!(parse_bytes(&builder.build(), &Limits::default()).unwrap_err().to_string().contains("twice"));
}

#[test]
fn byte_flips_never_panic() {
    // A cheap, deterministic cousin of the fuzz target: flip bytes all over a good file.
    let bytes = GgufBuilder::tiny_llama("flip").build();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..3000 {
        let mut mutated = bytes.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = usize::try_from(state % mutated.len() as u64).unwrap();
            mutated[at] = (state >> 32) as u8;
        }
        if let Ok(file) = parse_bytes(&mutated, &Limits::default()) {
            let _ = file.model_info();
        }
    }
}

#[test]
fn reads_the_real_gemma_file_when_present() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/gemma/gemma-3-270m-Q4_K_M.gguf");
    if !path.exists() {
        eprintln!("SKIPPED: reads_the_real_gemma_file_when_present: {} is absent", path.display());
        return;
    }
    let file = read_file(&path, &Limits::default()).unwrap();
    let info = file.model_info().unwrap();
    assert_eq!(info.architecture, "gemma3");
    assert_eq!(info.quantization, "Q4_K_M");
    assert_eq!(info.context_length, 32768);
    assert!((260_000_000..280_000_000).contains(&info.parameter_count), "{}", info.parameter_count);
    match file.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => assert!(a.len > 200_000, "{}", a.len),
        other => panic!("{other:?}"),
    }
}
