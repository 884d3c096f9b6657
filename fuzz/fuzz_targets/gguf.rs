//! Fuzz target for the daemon's GGUF reader (`daemon/src/gguf`, compiled here from the same
//! source): any bytes must give a parsed file or an error, never a panic, an overflow, an
//! out-of-bounds read or an allocation past the reader's limits.
#![no_main]

#[allow(dead_code)]
#[path = "../../daemon/src/gguf/mod.rs"]
mod gguf;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small limits make the budget paths reachable with small inputs.
    let tight = gguf::Limits { max_memory: 64 << 10, array_head: 4, ..gguf::Limits::default() };
    for limits in [gguf::Limits::default(), tight] {
        if let Ok(file) = gguf::parse_bytes(data, &limits) {
            let _ = file.model_info();
            for entry in &file.metadata {
                let _ = entry.value.to_string();
            }
        }
    }
});
