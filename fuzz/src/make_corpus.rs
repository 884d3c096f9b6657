//! Writes the fuzz target's seed corpus: the well-formed test model and every hostile variant
//! from `tests/support/gguf_file.rs`. Usage: `cargo run --bin make_corpus -- corpus/gguf`.

#[allow(dead_code)]
#[path = "../../tests/support/gguf_file.rs"]
mod gguf_file;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus/gguf".into());
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    let mut files = vec![("good".to_string(), gguf_file::GgufBuilder::tiny_llama("seed").build())];
    files.extend(gguf_file::hostile_files().into_iter().map(|h| (h.name.replace(' ', "-"), h.bytes)));
    for (name, bytes) in &files {
        std::fs::write(format!("{dir}/{name}.gguf"), bytes).expect("write a seed");
    }
    println!("wrote {} seeds to {dir}", files.len());
}
