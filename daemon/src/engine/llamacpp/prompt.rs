//! Request intake on the caller's thread: tokenizing, validation, grammars and samplers, so
//! that a bad request fails in `generate()` and the engine thread only does model work.

use std::time::Instant;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::sampler::SequenceSampler;
use crate::engine::template::SpecialTokens;
use crate::engine::{EngineError, GenerateRequest, OutputFormat, sampling};

/// llama.cpp's `grammars/json.gbnf` (what `format: "json"` means in Ollama): a JSON object,
/// with bounded whitespace so a model cannot loop on newlines forever.
pub(super) const JSON_GRAMMAR: &str = r#"root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4})
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

ws ::= | " " | "\n" [ \t]{0,20}
"#;

/// A validated request, ready for a slot.
pub(crate) struct Admitted {
    pub id: String,
    pub cache_salt: u64,
    pub tokens: Vec<LlamaToken>,
    pub sampler: SequenceSampler,
    pub stop: Vec<String>,
    pub max_tokens: Option<u32>,
    /// Positions this sequence may use (prompt + generated).
    pub n_ctx: u32,
    pub logprobs: bool,
    /// When `generate()` was called (queue time is logged, not counted as prompt eval).
    pub received: Instant,
}

/// Tokenizes prompt text; special-token text (`<start_of_turn>`, ...) is parsed, since templates
/// and raw prompts write special tokens as text.
pub(super) fn tokenize(model: &LlamaModel, text: &str, add_special: bool) -> Vec<LlamaToken> {
    model.vocab().tokenize(text.as_bytes(), add_special, true)
}

/// Tokenizes input to embed: special tokens added as the model wants, text taken literally.
pub(super) fn tokenize_plain(model: &LlamaModel, text: &str) -> Vec<LlamaToken> {
    model.vocab().tokenize(text.as_bytes(), true, false)
}

/// The text of the BOS and EOS tokens, for templates.
pub(super) fn special_tokens(model: &LlamaModel) -> SpecialTokens {
    let vocab = model.vocab();
    let text = |t: LlamaToken| {
        if t.0 < 0 || t.0 >= vocab.n_tokens() {
            return String::new();
        }
        String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
    };
    SpecialTokens { bos: text(vocab.bos()), eos: text(vocab.eos()) }
}

/// Checks a request against the model and builds its sampler.
pub(super) fn admit(
    model: &LlamaModel,
    request: GenerateRequest,
    tokens: Vec<LlamaToken>,
    n_ctx_seq: u32,
    received: Instant,
) -> Result<Admitted, EngineError> {
    if tokens.is_empty() {
        return Err(EngineError::InvalidRequest("the prompt is empty".into()));
    }
    sampling::validate(&request.sampling).map_err(EngineError::InvalidRequest)?;
    let n_ctx = request.num_ctx.map_or(n_ctx_seq, |n| n.clamp(2, n_ctx_seq));
    if tokens.len() >= n_ctx as usize {
        return Err(EngineError::InvalidRequest(format!(
            "the prompt is {} tokens; the context is {} tokens",
            tokens.len(),
            n_ctx
        )));
    }
    let grammar = match &request.format {
        OutputFormat::Text => None,
        OutputFormat::Json => Some(JSON_GRAMMAR.to_owned()),
        OutputFormat::JsonSchema(schema) => {
            serde_json::from_str::<serde_json::Value>(schema)
                .map_err(|e| EngineError::InvalidRequest(format!("the JSON schema is not JSON: {e}")))?;
            Some(
                llama_cpp_2::json_schema_to_grammar(schema)
                    .map_err(|e| EngineError::InvalidRequest(format!("unsupported JSON schema: {e}")))?,
            )
        }
    };
    let sampler = SequenceSampler::new(model, &request.sampling, grammar.as_deref(), n_ctx, &tokens)?;
    Ok(Admitted {
        id: request.id,
        cache_salt: request.cache_salt,
        tokens,
        sampler,
        stop: request.stop,
        max_tokens: request.max_tokens,
        n_ctx,
        logprobs: request.logprobs,
        received,
    })
}
