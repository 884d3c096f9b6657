//! Embeddings: a second llama.cpp context on the same model with `embeddings = true` and the
//! model's pooling (mean when the model declares none, as for generative models; rerankers'
//! `rank` pooling is refused), created on first use by the engine thread. Each input is decoded
//! alone as sequence 0 and its pooled vector is L2-normalized.

use std::num::NonZeroU32;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;

use crate::engine::{EmbedResponse, EngineError};

/// An embeddings request as the engine thread receives it (already tokenized).
pub(crate) struct EmbedJob {
    pub inputs: Vec<Vec<LlamaToken>>,
    pub reply: oneshot::Sender<Result<EmbedResponse, EngineError>>,
}

/// The embedding context.
pub(super) struct Embedder<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    n_ctx: usize,
}

impl<'m> Embedder<'m> {
    pub(super) fn new(
        model: &'m LlamaModel,
        backend: &LlamaBackend,
        n_ctx: u32,
        n_threads: i32,
    ) -> Result<Self, EngineError> {
        let pooling = model_pooling(model)?;
        let n = NonZeroU32::new(n_ctx.max(8)).ok_or_else(|| EngineError::Internal("zero context".into()))?;
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(n))
            .with_n_batch(n.get())
            .with_n_ubatch(n.get())
            .with_n_seq_max(1)
            .with_n_threads(n_threads)
            .with_n_threads_batch(n_threads)
            .with_embeddings(true)
            .with_pooling_type(pooling);
        let ctx = model
            .new_context(backend, params)
            .map_err(|e| EngineError::Internal(format!("cannot create the embedding context: {e}")))?;
        Ok(Self { ctx, batch: LlamaBatch::new(n.get() as usize, 1), n_ctx: n.get() as usize })
    }

    pub(super) fn embed(&mut self, inputs: &[Vec<LlamaToken>]) -> Result<EmbedResponse, EngineError> {
        let mut embeddings = Vec::with_capacity(inputs.len());
        let mut prompt_tokens = 0u32;
        for tokens in inputs {
            let tokens = &tokens[..tokens.len().min(self.n_ctx)];
            self.ctx.clear_kv_cache();
            self.batch.clear();
            for (pos, &t) in tokens.iter().enumerate() {
                self.batch
                    .add(t, pos as i32, &[0], true)
                    .map_err(|e| EngineError::Internal(format!("embedding batch: {e}")))?;
            }
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| EngineError::Internal(format!("embedding decode: {e}")))?;
            let v = self
                .ctx
                .embeddings_seq_ith(0)
                .map_err(|e| EngineError::Internal(format!("no pooled embedding: {e}")))?;
            embeddings.push(normalized(v));
            prompt_tokens = prompt_tokens.saturating_add(u32::try_from(tokens.len()).unwrap_or(u32::MAX));
        }
        Ok(EmbedResponse { embeddings, prompt_tokens })
    }
}

/// The pooling the GGUF declares (`<arch>.pooling_type`), mean when it declares none.
fn model_pooling(model: &LlamaModel) -> Result<LlamaPoolingType, EngineError> {
    let arch = model.meta_val_str("general.architecture").unwrap_or_default();
    let declared =
        model.meta_val_str(&format!("{arch}.pooling_type")).ok().and_then(|v| v.trim().parse::<i32>().ok());
    Ok(match declared {
        Some(2) => LlamaPoolingType::Cls,
        Some(3) => LlamaPoolingType::Last,
        Some(4) => {
            return Err(EngineError::InvalidRequest(
                "this model is a reranker (rank pooling), not an embedding model".into(),
            ));
        }
        _ => LlamaPoolingType::Mean,
    })
}

/// L2-normalized copy (a zero vector stays zero).
pub(super) fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|x| (f64::from(*x) / norm) as f32).collect()
}
