//! The device half of the native engine: model weights on the GPU and the forward pass over the
//! paged KV cache, built from `hyperllama-kernels`.
