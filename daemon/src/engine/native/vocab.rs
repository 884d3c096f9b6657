//! The native engine's tokenizer: the same llama.cpp vocabulary the llama.cpp engine uses,
//! loaded alone (`vocab_only`: no weights, no context), so both engines tokenize, detokenize and
//! find end-of-generation tokens identically. Behind a small trait so the engine's tests can
//! run with a byte-level vocabulary and no model file.

use std::path::Path;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use crate::engine::EngineError;
use crate::engine::template::SpecialTokens;

/// What the engine needs from a tokenizer.
pub trait Vocabulary: Send + Sync {
    /// Token ids of `text`; special-token text is parsed as special tokens.
    fn tokenize(&self, text: &str, add_special: bool) -> Vec<u32>;
    /// The bytes a token renders as in generated text (control tokens render as nothing).
    fn piece(&self, token: u32, out: &mut Vec<u8>);
    /// End-of-generation tokens.
    fn eog_tokens(&self) -> Vec<u32>;
    /// BOS/EOS text for chat templates.
    fn special_tokens(&self) -> SpecialTokens;
    /// The model's own chat template, if any.
    fn chat_template(&self) -> Option<String>;
    /// Entries in the vocabulary.
    fn n_tokens(&self) -> usize;
}

/// A GGUF's vocabulary through llama.cpp.
pub struct LlamaVocabulary {
    model: LlamaModel,
}

impl LlamaVocabulary {
    /// Loads only the vocabulary of a GGUF file.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let backend = crate::engine::llamacpp::backend()?;
        if !path.is_file() {
            return Err(EngineError::Load(format!(
                "{}: the native engine reads its vocabulary from a GGUF file",
                path.display()
            )));
        }
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|e| EngineError::Load(format!("{}: vocabulary: {e}", path.display())))?;
        Ok(Self { model })
    }
}

impl Vocabulary for LlamaVocabulary {
    fn tokenize(&self, text: &str, add_special: bool) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), add_special, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect()
    }

    fn piece(&self, token: u32, out: &mut Vec<u8>) {
        let Ok(id) = i32::try_from(token) else {
            return;
        };
        self.model.vocab().token_to_piece_into(LlamaToken(id), out, false, None);
    }

    fn eog_tokens(&self) -> Vec<u32> {
        let vocab = self.model.vocab();
        (0..vocab.n_tokens()).filter(|&t| vocab.is_eog(LlamaToken(t))).map(|t| t as u32).collect()
    }

    fn special_tokens(&self) -> SpecialTokens {
        let vocab = self.model.vocab();
        let text = |t: LlamaToken| {
            if t.0 < 0 || t.0 >= vocab.n_tokens() {
                return String::new();
            }
            String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
        };
        SpecialTokens { bos: text(vocab.bos()), eos: text(vocab.eos()) }
    }

    fn chat_template(&self) -> Option<String> {
        self.model.chat_template(None).ok().and_then(|t| t.to_string().ok())
    }

    fn n_tokens(&self) -> usize {
        usize::try_from(self.model.vocab().n_tokens()).unwrap_or(0)
    }
}

#[cfg(test)]
#[path = "../../../../tests/support/tiny_model.rs"]
#[allow(dead_code)]
pub(super) mod tiny_model;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::engine::llamacpp::{LlamaCppConfig, LlamaCppEngine};

    /// The native engine's tokenizer is llama.cpp's: same ids as the llama.cpp engine, pieces
    /// that reassemble the text, the GGUF's end-of-generation token.
    #[test]
    fn tokenizes_as_the_llama_cpp_engine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        tiny_model::write_tiny_llama(&path, &tiny_model::TinyModelSpec::default()).unwrap();
        let vocab = LlamaVocabulary::load(&path).unwrap();
        let mut config = LlamaCppConfig::new(&path);
        config.n_ctx = 256;
        config.n_parallel = 1;
        config.n_threads = 1;
        let llama = LlamaCppEngine::load(config).unwrap();
        for text in ["hello world", "héllo ünïcode 🦙 <|eos|> tail", "  spaces\nand lines "] {
            for add_special in [true, false] {
                let ours: Vec<i32> =
                    vocab.tokenize(text, add_special).into_iter().map(|t| t as i32).collect();
                assert_eq!(ours, llama.tokenize(text, add_special).unwrap(), "{text:?}");
            }
        }
        let text = "héllo ünïcode 🦙 and more";
        let mut bytes = Vec::new();
        for t in vocab.tokenize(text, false) {
            vocab.piece(t, &mut bytes);
        }
        assert_eq!(String::from_utf8(bytes).unwrap(), text);
        let eos = vocab.tokenize("<|eos|>", false);
        assert_eq!(eos.len(), 1);
        assert!(vocab.eog_tokens().contains(&eos[0]));
        let mut piece = Vec::new();
        vocab.piece(eos[0], &mut piece);
        assert!(piece.is_empty(), "control tokens render as nothing");
        assert_eq!(vocab.special_tokens().eos, "<|eos|>");
        assert!(vocab.n_tokens() > 256);
        assert!(LlamaVocabulary::load(&dir.path().join("missing.gguf")).is_err());
    }
}
