//! Log output: structured fields to journald when started by systemd (`JOURNAL_STREAM`), text or
//! JSON lines on stderr otherwise.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Installs the global subscriber. Returns the format actually used.
pub fn init(format: LogFormat, filter: &str) -> LogFormat {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let format = match format {
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                registry.with(layer.with_syslog_identifier("hyperllamad".into())).init();
                return LogFormat::Journald;
            }
            Err(error) => {
                registry
                    .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::io::stderr))
                    .init();
                tracing::warn!(%error, "journald unavailable; logging to stderr");
                return LogFormat::Text;
            }
        },
        LogFormat::Json => {
            registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).init()
        }
        _ => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    format
}

/// Logging for a runner process: plain lines on stderr, which the daemon forwards to its own log
/// (timestamps and the model name are added there).
pub fn init_runner() {
    let filter = EnvFilter::try_from_env("HYPERLLAMA_RUNNER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,llama_cpp_2=warn"));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .without_time()
                .with_ansi(false)
                .with_target(false)
                .with_writer(std::io::stderr),
        )
        .init();
}
