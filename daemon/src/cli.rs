//! hyperllamad's command line. Every flag is also an environment variable (`HYPERLLAMA_*`) and
//! overrides the configuration files.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{Config, LogFormat, Mode};

/// The HyperLlama service: one shared model store, per-user OpenAI- and Ollama-compatible
/// endpoints, and a gRPC control plane for `hyperctl`.
///
/// Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad command line, 3 configuration error,
/// 4 cannot set up (directories, sockets, privileges).
#[derive(Debug, Parser)]
#[command(name = "hyperllamad", version)]
pub struct Cli {
    /// Configuration file; `conf.d/*.toml` beside it is read too. Default:
    /// /etc/hyperllama/hyperllama.toml (system mode), $XDG_CONFIG_HOME/hyperllama/hyperllama.toml
    /// (user mode).
    #[arg(long, env = "HYPERLLAMA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// System mode (under systemd) or user mode (development and tests, no root needed).
    #[arg(long, env = "HYPERLLAMA_MODE", value_enum)]
    pub mode: Option<Mode>,
    /// State directory (models, blobs, database).
    #[arg(long, env = "HYPERLLAMA_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Cache directory.
    #[arg(long, env = "HYPERLLAMA_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Runtime directory (sockets).
    #[arg(long, env = "HYPERLLAMA_RUNTIME_DIR", value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Control socket path (default: <runtime-dir>/control.sock).
    #[arg(long, env = "HYPERLLAMA_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Account to run as when started as root.
    #[arg(long, env = "HYPERLLAMA_USER", value_name = "NAME")]
    pub user: Option<String>,
    /// Group whose members administer the service.
    #[arg(long, env = "HYPERLLAMA_ADMIN_GROUP", value_name = "GROUP")]
    pub admin_group: Option<String>,
    /// How long SIGTERM waits for requests in flight, e.g. "30s".
    #[arg(long, env = "HYPERLLAMA_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Log filter, e.g. "info" or "hyperllamad=debug".
    #[arg(long, env = "HYPERLLAMA_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format.
    #[arg(long, env = "HYPERLLAMA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// HTTP API addresses, comma-separated, e.g. "127.0.0.1:11434,[::1]:11434" (http.listen).
    #[arg(long, env = "HYPERLLAMA_HTTP_LISTEN", value_delimiter = ',', value_name = "ADDRS")]
    pub http_listen: Option<Vec<String>>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Internal subcommands (started by the daemon itself).
    #[command(subcommand)]
    pub command: Option<Internal>,
}

/// Subcommands the daemon uses for its own children.
#[derive(Debug, clap::Subcommand)]
pub enum Internal {
    /// Serve one model over the runner protocol (started by hyperllamad, not by people).
    #[command(hide = true)]
    Runner(crate::runner::service::RunnerArgs),
}

impl Cli {
    /// The mode used to find the default configuration file.
    pub fn mode_hint(&self) -> Mode {
        self.mode.unwrap_or_default()
    }

    /// Applies the flags on top of the files' configuration.
    pub fn apply(&self, config: &mut Config) {
        let d = &mut config.daemon;
        if let Some(v) = self.mode {
            d.mode = v;
        }
        set(&mut d.state_dir, &self.state_dir);
        set(&mut d.cache_dir, &self.cache_dir);
        set(&mut d.runtime_dir, &self.runtime_dir);
        set(&mut config.control.socket, &self.control_socket);
        if let Some(v) = &self.user {
            d.user.clone_from(v);
        }
        if let Some(v) = &self.admin_group {
            d.admin_group.clone_from(v);
        }
        if let Some(v) = self.drain_timeout {
            d.drain_timeout = v;
        }
        if let Some(v) = &self.log_level {
            d.log_level.clone_from(v);
        }
        if let Some(v) = self.log_format {
            d.log_format = v;
        }
        if let Some(v) = &self.http_listen {
            config.http.listen.clone_from(v);
        }
    }
}

fn set(target: &mut Option<PathBuf>, flag: &Option<PathBuf>) {
    if flag.is_some() {
        target.clone_from(flag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_files() {
        let cli =
            Cli::parse_from(["hyperllamad", "--mode", "user", "--state-dir", "/s", "--drain-timeout", "2s"]);
        let mut config = Config::default();
        cli.apply(&mut config);
        assert_eq!(config.daemon.mode, Mode::User);
        assert_eq!(config.dirs().state, PathBuf::from("/s"));
        assert_eq!(config.daemon.drain_timeout, Duration::from_secs(2));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
