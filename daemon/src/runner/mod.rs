//! Model runners: one child process per loaded model, speaking `hyperllama.v1.Runner` over a
//! private unix socket. `service` is the runner process itself (the hidden `hyperllamad runner`
//! subcommand), `process` is the daemon's handle on one, `convert` maps the wire to engine types.

pub mod convert;
pub mod process;
pub mod service;

use std::sync::Arc;

use crate::engine::{Engine, EngineError};

/// Loads the engine a runner was asked for.
pub fn load_engine(args: &service::RunnerArgs, threads: u32) -> Result<Arc<dyn Engine>, EngineError> {
    match args.engine.as_str() {
        "llama.cpp" => {
            use crate::engine::llamacpp::{LlamaCppConfig, LlamaCppEngine};
            let mut config = LlamaCppConfig::new(&args.model);
            config.n_ctx = args.context_length;
            config.n_parallel = args.parallel;
            config.n_threads = threads;
            Ok(Arc::new(LlamaCppEngine::load(config)?))
        }
        "native" => {
            use crate::engine::native::{NativeConfig, NativeEngine};
            let mut config = NativeConfig::new(&args.model);
            config.context_length = args.context_length;
            config.parallel = args.parallel.max(1);
            Ok(Arc::new(NativeEngine::load(config)?))
        }
        name => match crate::engine::served::ServedKind::from_name(name) {
            Some(kind) => {
                use crate::engine::served::{ServedEngine, ServerConfig};
                let config = ServerConfig::from_args(
                    kind,
                    &args.model,
                    args.context_length,
                    args.parallel,
                    &args.name,
                    &args.served,
                );
                Ok(Arc::new(ServedEngine::start(config)?))
            }
            None => Err(EngineError::Load(format!("engine `{name}` is not available in this version"))),
        },
    }
}
