//! hyperctl's command line: Ollama's commands and flags, plus HyperLlama's administration.

use clap::{Args, Parser, Subcommand};

use crate::client::DEFAULT_SOCKET;

/// Control HyperLlama: run and manage models served by hyperllamad.
#[derive(Debug, Parser)]
#[command(
    name = "hyperctl",
    version,
    after_help = "Exit codes: 0 success, 1 failure, 2 bad usage, 3 hyperllamad unreachable, \
                  4 permission denied, 5 not found, 6 service unavailable (shutting down or busy), \
                  7 not supported by this version of hyperllamad."
)]
pub struct Cli {
    /// hyperllamad's control socket path, or an http://host:port URL.
    #[arg(long, global = true, env = "HYPERLLAMA_HOST", default_value = DEFAULT_SOCKET)]
    pub host: String,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run hyperllamad in the foreground in user mode (for development; the system service is
    /// managed by systemd).
    Serve(ServeArgs),
    /// Create a model from a Modelfile.
    Create(CreateArgs),
    /// Show information for a model.
    Show(ShowArgs),
    /// Run a model: answer PROMPT, or chat interactively.
    Run(RunArgs),
    /// Stop (unload) a running model.
    Stop {
        /// Model name.
        model: String,
    },
    /// Pull a model from a registry.
    Pull(PullArgs),
    /// Push a model to a registry (not supported: the store is local to this machine).
    Push(PullArgs),
    /// List models in the store.
    #[command(alias = "ls")]
    List,
    /// List running models.
    Ps,
    /// Copy a model.
    Cp {
        /// Existing model.
        source: String,
        /// New name.
        destination: String,
    },
    /// Remove models.
    Rm {
        /// Models to remove.
        #[arg(required = true)]
        models: Vec<String>,
    },
    /// Show the daemon's state: version, engines, GPUs, huge pages, loaded models.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List GPUs and their memory.
    Gpus,
    /// Manage bearer tokens for non-local HTTP access.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show or set per-user limits.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Show usage per user (admins see everyone, others themselves).
    Users,
    /// Make (or remove) your own HTTP endpoint socket and print how to use it.
    Endpoint {
        /// Remove your endpoint socket.
        #[arg(long)]
        remove: bool,
    },
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Extra arguments passed to hyperllamad (see `hyperllamad --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the new model.
    pub model: String,
    /// Modelfile path.
    #[arg(short, long, default_value = "Modelfile")]
    pub file: std::path::PathBuf,
    /// Quantize the model to this level (e.g. q4_K_M).
    #[arg(short, long)]
    pub quantize: Option<String>,
}

/// `show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Model name.
    pub model: String,
    /// Show the license.
    #[arg(long)]
    pub license: bool,
    /// Show a Modelfile that recreates the model.
    #[arg(long)]
    pub modelfile: bool,
    /// Show the parameters.
    #[arg(long)]
    pub parameters: bool,
    /// Show the system prompt.
    #[arg(long)]
    pub system: bool,
    /// Show the template.
    #[arg(long)]
    pub template: bool,
    /// Show detailed metadata.
    #[arg(short, long)]
    pub verbose: bool,
}

/// `run`.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Model name.
    pub model: String,
    /// Prompt; without it (and with no piped input) an interactive session starts.
    pub prompt: Vec<String>,
    /// How long to keep the model loaded, e.g. "5m", "1h", "-1" (forever), "0" (unload now).
    #[arg(long, allow_hyphen_values = true)]
    pub keepalive: Option<String>,
    /// Show timings and token counts.
    #[arg(long)]
    pub verbose: bool,
    /// Response format ("json").
    #[arg(long)]
    pub format: Option<String>,
    /// Don't wrap long lines.
    #[arg(long)]
    pub nowordwrap: bool,
    /// Enable thinking for models that support it.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub think: Option<String>,
    /// Hide the thinking output.
    #[arg(long)]
    pub hidethinking: bool,
    /// Use an insecure registry when the model must be pulled.
    #[arg(long)]
    pub insecure: bool,
    /// Pin the model to these GPUs (admins), e.g. "0,1".
    #[arg(long, value_delimiter = ',')]
    pub gpus: Vec<u32>,
    /// Engine to run the model with: llama.cpp, native, vllm, max.
    #[arg(long)]
    pub engine: Option<String>,
}

/// `pull` and `push`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Model name.
    pub model: String,
    /// Allow plain http and unverified TLS.
    #[arg(long)]
    pub insecure: bool,
}

/// `token`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// A name to recognise it by.
        #[arg(long, default_value = "")]
        name: String,
        /// Expire after this long, e.g. "30d".
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
        /// Restrict the token to these models.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Create it for another user (admins).
        #[arg(long, default_value = "")]
        user: String,
    },
    /// List tokens (admins: everyone's unless --user).
    List {
        /// Only this user's tokens.
        #[arg(long, default_value = "")]
        user: String,
    },
    /// Revoke a token by id.
    Revoke {
        /// Token id from `hyperctl token list`.
        id: String,
    },
}

/// `quota`.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Show a user's limits (default: yours).
    Show {
        /// User name or uid.
        #[arg(default_value = "")]
        user: String,
    },
    /// Set a user's limits (admins).
    Set {
        /// User name or uid.
        user: String,
        /// Requests running at once.
        #[arg(long)]
        concurrent: Option<u32>,
        /// Requests waiting.
        #[arg(long)]
        queued: Option<u32>,
        /// Tokens per minute (0 = unlimited).
        #[arg(long)]
        tokens_per_minute: Option<u64>,
    },
    /// Drop a user's override (admins).
    Reset {
        /// User name or uid.
        user: String,
    },
}
