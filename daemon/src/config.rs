//! The daemon's configuration: one typed schema, loaded from `hyperllama.toml` plus `conf.d/*.toml`
//! (drop-ins merged in name order, later keys win), then overridden by command-line flags and their
//! `HYPERLLAMA_*` environment variables.
//!
//! Every key, with its default, is documented in one place: `packaging/hyperllama.toml`, which a
//! test keeps equal to [`Config::default`]. Unknown keys and wrong types are rejected with the file
//! and the full key named.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the configuration files live in system mode.
pub const SYSTEM_CONFIG_FILE: &str = "/etc/hyperllama/hyperllama.toml";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Process, directories, identity and shutdown.
    pub daemon: DaemonConfig,
    /// The gRPC control socket used by `hyperctl`.
    pub control: ControlConfig,
    /// Per-user limits applied when no override was set with `hyperctl quota`.
    pub quota: QuotaConfig,
    /// Model runners: how models are loaded and kept.
    pub runners: RunnersConfig,
    /// The OpenAI- and Ollama-compatible HTTP endpoints.
    pub http: HttpConfig,
    /// The shared model store: limits, who may pull, registries.
    pub store: crate::store::StoreConfig,
    /// Served engines (vLLM, Modular MAX): where they are installed and how they run.
    pub engines: crate::engine::served::EnginesConfig,
}

/// How the daemon was started: as the machine's service, or by a user for development and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Started by systemd: `/var/lib/hyperllama`, `/var/cache/hyperllama`, `/run/hyperllama`.
    #[default]
    System,
    /// Started by a user: XDG directories, no root needed.
    User,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::System => "system",
            Mode::User => "user",
        })
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald when `JOURNAL_STREAM` is set, text on stderr otherwise.
    #[default]
    Auto,
    /// Structured fields to the journal.
    Journald,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// System or user mode; picks the default directories.
    pub mode: Mode,
    /// The account the daemon switches to when started as root.
    pub user: String,
    /// Members of this group (and root) administer the service.
    pub admin_group: String,
    /// Models, blobs and the database. Default depends on `mode`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Regenerable data (kernel caches, engine compile caches). Default depends on `mode`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Sockets. Default depends on `mode`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_dir: Option<PathBuf>,
    /// How long SIGTERM waits for in-flight requests before cancelling them.
    #[serde(with = "duration_text")]
    pub drain_timeout: Duration,
    /// `tracing` filter, e.g. `info` or `hyperllamad=debug`.
    pub log_level: String,
    /// Where and how logs are written.
    pub log_format: LogFormat,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            mode: Mode::System,
            user: "hyperllama".into(),
            admin_group: "hyperllama-admin".into(),
            state_dir: None,
            cache_dir: None,
            runtime_dir: None,
            drain_timeout: Duration::from_secs(30),
            log_level: "info".into(),
            log_format: LogFormat::Auto,
        }
    }
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// The control socket. Default: `<runtime_dir>/control.sock`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// File mode of the control socket, octal. Authorization is done by the daemon per call,
    /// so every local user may connect.
    pub socket_mode: String,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self { socket: None, socket_mode: "0666".into() }
    }
}

/// `[quota]`: defaults for every user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Requests one user may have running at once.
    pub max_concurrent_requests: u32,
    /// Requests one user may have waiting; beyond that they get 429.
    pub max_queued_requests: u32,
    /// Generated plus prompt tokens per minute per user; 0 means unlimited.
    pub tokens_per_minute: u64,
    /// Requests waiting across all users and models; beyond that everyone gets 503.
    pub service_max_queued: u32,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 4,
            max_queued_requests: 64,
            tokens_per_minute: 0,
            service_max_queued: 1024,
        }
    }
}

/// `[runners]`: residency and runner processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnersConfig {
    /// Sequences one model decodes together (continuous batching); more requests wait in the
    /// fair queue.
    pub parallel: u32,
    /// Context length per sequence unless a request asks for another (`num_ctx`).
    pub context_length: u32,
    /// CPU threads per runner; 0 = one per CPU the runner may use.
    pub threads: u32,
    /// CPUs runners are pinned to on machines without GPUs, e.g. "0-15"; "" = no pinning.
    pub cpus: String,
    /// How long a runner may take to load its model.
    #[serde(with = "duration_text")]
    pub start_timeout: Duration,
    /// How long an idle model stays loaded (requests and Modelfiles may say otherwise).
    #[serde(with = "duration_text")]
    pub keep_alive: Duration,
    /// Models loaded at once; the least recently used idle one is evicted for a new one.
    pub max_loaded_models: u32,
    /// Memory models may use on the CPU, e.g. "16GiB"; "auto" = 90% of RAM.
    pub memory_budget: String,
}

impl Default for RunnersConfig {
    fn default() -> Self {
        Self {
            parallel: 4,
            context_length: 4096,
            threads: 0,
            cpus: String::new(),
            start_timeout: Duration::from_secs(120),
            keep_alive: Duration::from_secs(300),
            max_loaded_models: 3,
            memory_budget: "auto".into(),
        }
    }
}

impl RunnersConfig {
    /// `memory_budget` in bytes; 0 means automatic.
    pub fn memory_budget_bytes(&self) -> Result<u64, ConfigError> {
        parse_bytes(&self.memory_budget).ok_or_else(|| {
            invalid("runners.memory_budget", "must be \"auto\" or a size such as \"16GiB\" or \"512MB\"")
        })
    }
}

/// `[http]`: the OpenAI- and Ollama-compatible endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// TCP addresses to listen on; a non-loopback address makes bearer tokens mandatory on it.
    pub listen: Vec<String>,
    /// Host header names accepted on TCP listeners (DNS rebinding defence); `*.suffix` matches
    /// subdomains. The listeners' own IP addresses are always accepted.
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to call the API (`scheme://host`, `scheme://host:*` for any port,
    /// or `*`); requests from any other origin get 403.
    pub cors_origins: Vec<String>,
    /// Largest request body accepted (blob uploads excepted), e.g. "32MiB".
    pub max_body: String,
    /// Label metrics with the user too (reveals who uses the service to anyone who reads /metrics).
    pub per_user_metrics: bool,
    /// Where `hyperctl endpoint` makes per-user sockets. Default: `<runtime_dir>/users`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_socket_dir: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let origins = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .flat_map(|h| [format!("http://{h}:*"), format!("https://{h}:*")])
            .collect();
        Self {
            listen: vec!["127.0.0.1:11434".into(), "[::1]:11434".into()],
            allowed_hosts: ["localhost", "*.localhost", "127.0.0.1", "::1"].map(String::from).to_vec(),
            cors_origins: origins,
            max_body: "32MiB".into(),
            per_user_metrics: false,
            user_socket_dir: None,
        }
    }
}

impl HttpConfig {
    /// `max_body` in bytes.
    pub fn max_body_bytes(&self) -> Result<usize, ConfigError> {
        parse_bytes(&self.max_body)
            .filter(|b| *b > 0)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| invalid("http.max_body", "must be a size such as \"32MiB\""))
    }

    /// `listen` parsed.
    pub fn listen_addrs(&self) -> Result<Vec<std::net::SocketAddr>, ConfigError> {
        self.listen
            .iter()
            .map(|a| {
                a.parse().map_err(|_| {
                    invalid(
                        "http.listen",
                        &format!("`{a}` is not an address such as \"127.0.0.1:11434\" or \"[::1]:11434\""),
                    )
                })
            })
            .collect()
    }
}

/// Parses "auto" (0), "123", "512MB", "16GiB", "1.5G".
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("auto") {
        return Some(0);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * scale;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (bytes.is_finite() && (0.0..1.8e19).contains(&bytes)).then_some(bytes as u64)
}

/// Errors found while reading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{path}: cannot read configuration: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A file is not valid TOML.
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A key is unknown or has the wrong type.
    #[error("{path}: key `{key}`: {message}")]
    Key { path: PathBuf, key: String, message: String },
    /// A value is syntactically fine but unusable.
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

impl Config {
    /// Reads `main` (skipped when absent and `main_required` is false) and the `conf.d/*.toml`
    /// drop-ins beside it, validating each file on its own so errors name the file.
    pub fn load(main: &Path, main_required: bool) -> Result<Self, ConfigError> {
        let mut merged = toml::Table::new();
        let mut files = Vec::new();
        if main.exists() || main_required {
            files.push(main.to_path_buf());
        }
        let dropins = main.parent().map(|dir| dir.join("conf.d")).filter(|d| d.is_dir());
        if let Some(dir) = dropins {
            let entries =
                std::fs::read_dir(&dir).map_err(|source| ConfigError::Read { path: dir.clone(), source })?;
            let mut names: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            names.sort();
            files.extend(names);
        }
        for path in files {
            let table = read_table(&path)?;
            // Validate alone so an unknown key is reported against the file that holds it.
            from_table(table.clone(), &path)?;
            merge(&mut merged, table);
        }
        let config = from_table(merged, main)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.socket_mode()?;
        self.runners.memory_budget_bytes()?;
        self.http.max_body_bytes()?;
        self.store.validate().map_err(|(key, message)| ConfigError::Invalid {
            what: format!("configuration key `{key}`"),
            message,
        })?;
        self.engines.validate().map_err(|(key, message)| ConfigError::Invalid {
            what: format!("configuration key `{key}`"),
            message,
        })?;
        self.http.listen_addrs()?;
        if self.runners.parallel == 0 || self.runners.context_length < 64 {
            return Err(invalid("runners", "parallel must be at least 1 and context_length at least 64"));
        }
        if self.daemon.user.is_empty() {
            return Err(invalid("daemon.user", "must name an account"));
        }
        if self.daemon.admin_group.is_empty() {
            return Err(invalid("daemon.admin_group", "must name a group"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.daemon.log_level)
            .map_err(|e| invalid("daemon.log_level", &e.to_string()))?;
        Ok(())
    }

    /// `control.socket_mode` as a number.
    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        let text = self.control.socket_mode.trim_start_matches("0o");
        u32::from_str_radix(text, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| invalid("control.socket_mode", "must be an octal file mode such as \"0666\""))
    }

    /// The directories and socket path this configuration resolves to.
    pub fn dirs(&self) -> Dirs {
        let defaults = Dirs::defaults(self.daemon.mode);
        let state = self.daemon.state_dir.clone().unwrap_or(defaults.state);
        let cache = self.daemon.cache_dir.clone().unwrap_or(defaults.cache);
        let runtime = self.daemon.runtime_dir.clone().unwrap_or(defaults.runtime);
        let control_socket = self.control.socket.clone().unwrap_or_else(|| runtime.join("control.sock"));
        Dirs { state, cache, runtime, control_socket }
    }

    /// Where per-user HTTP sockets are made.
    pub fn user_socket_dir(&self) -> PathBuf {
        self.http.user_socket_dir.clone().unwrap_or_else(|| self.dirs().runtime.join("users"))
    }

    /// The effective configuration as TOML, directories resolved (for `--print-config`).
    pub fn to_effective_toml(&self) -> String {
        let mut resolved = self.clone();
        let dirs = self.dirs();
        resolved.daemon.state_dir = Some(dirs.state);
        resolved.daemon.cache_dir = Some(dirs.cache);
        resolved.daemon.runtime_dir = Some(dirs.runtime);
        resolved.control.socket = Some(dirs.control_socket);
        resolved.http.user_socket_dir = Some(self.user_socket_dir());
        toml::to_string_pretty(&resolved).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Resolved directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// Models, blobs, database.
    pub state: PathBuf,
    /// Regenerable caches.
    pub cache: PathBuf,
    /// Sockets.
    pub runtime: PathBuf,
    /// The control socket.
    pub control_socket: PathBuf,
}

impl Dirs {
    /// Defaults for a mode (user mode follows the XDG base directory spec).
    pub fn defaults(mode: Mode) -> Dirs {
        match mode {
            Mode::System => Dirs {
                state: "/var/lib/hyperllama".into(),
                cache: "/var/cache/hyperllama".into(),
                runtime: "/run/hyperllama".into(),
                control_socket: "/run/hyperllama/control.sock".into(),
            },
            Mode::User => {
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/".into());
                let xdg = |var: &str, fallback: &str| {
                    std::env::var_os(var)
                        .map(PathBuf::from)
                        .filter(|p| p.is_absolute())
                        .unwrap_or_else(|| home.join(fallback))
                        .join("hyperllama")
                };
                let runtime = std::env::var_os("XDG_RUNTIME_DIR")
                    .map(PathBuf::from)
                    .filter(|p| p.is_absolute())
                    .map(|p| p.join("hyperllama"))
                    .unwrap_or_else(|| PathBuf::from(format!("/tmp/hyperllama-{}", nix::unistd::getuid())));
                Dirs {
                    state: xdg("XDG_DATA_HOME", ".local/share"),
                    cache: xdg("XDG_CACHE_HOME", ".cache"),
                    control_socket: runtime.join("control.sock"),
                    runtime,
                }
            }
        }
    }
}

/// The default configuration file for a mode.
pub fn default_config_file(mode: Mode) -> PathBuf {
    match mode {
        Mode::System => SYSTEM_CONFIG_FILE.into(),
        Mode::User => {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| {
                    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".config")
                });
            base.join("hyperllama/hyperllama.toml")
        }
    }
}

fn invalid(key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid { what: format!("configuration key `{key}`"), message: message.into() }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax { path: path.to_path_buf(), message: one_line(&e.to_string()) })
}

fn from_table(table: toml::Table, path: &Path) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(table)).map_err(|e| ConfigError::Key {
        path: path.to_path_buf(),
        key: e.path().to_string(),
        message: one_line(&e.inner().to_string()),
    })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Deep-merges `overlay` into `base`: tables merge key by key, everything else is replaced.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => merge(existing, incoming),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Durations as human text ("30s", "5m") in TOML (shared by every config section).
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("`{text}` is not a duration like \"30s\" or \"5m\": {e}"))
        })
    }
}

/// Flattens a TOML table into `section.key` paths (used by tests to check the documented example).
pub fn leaf_keys(table: &toml::Table) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
        for (k, v) in table {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(t) => walk(&path, t, out),
                other => {
                    out.insert(path, other.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", table, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../packaging/hyperllama.toml");

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn documented_example_equals_defaults() {
        let table: toml::Table = EXAMPLE.parse().unwrap();
        let parsed: Config = from_table(table, Path::new("example")).unwrap();
        assert_eq!(parsed, Config::default(), "packaging/hyperllama.toml drifted from the defaults");
    }

    #[test]
    fn every_key_is_documented_in_the_example() {
        let mut all = Config::default();
        all.daemon.state_dir = Some("/x".into());
        all.daemon.cache_dir = Some("/x".into());
        all.daemon.runtime_dir = Some("/x".into());
        all.control.socket = Some("/x".into());
        all.http.user_socket_dir = Some("/x".into());
        let table: toml::Table = toml::to_string(&all).unwrap().parse().unwrap();
        for key in leaf_keys(&table).keys() {
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                EXAMPLE.lines().any(|l| l.trim_start_matches(['#', ' ']).starts_with(&format!("{leaf} ="))),
                "key {key} is not documented in packaging/hyperllama.toml"
            );
        }
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "hyperllama.toml", "[daemon]\nuser = \"x\"\n");
        write(dir.path(), "conf.d/10-bad.toml", "[daemon]\nbogus_key = 1\n");
        let err = Config::load(&main, true).unwrap_err().to_string();
        assert!(err.contains("10-bad.toml"), "{err}");
        assert!(err.contains("daemon.bogus_key"), "{err}");
    }

    #[test]
    fn wrong_type_names_key() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "hyperllama.toml", "[quota]\nmax_queued_requests = \"many\"\n");
        let err = Config::load(&main, true).unwrap_err().to_string();
        assert!(err.contains("quota.max_queued_requests"), "{err}");
    }

    #[test]
    fn dropins_override_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "hyperllama.toml", "[daemon]\ndrain_timeout = \"10s\"\n");
        write(dir.path(), "conf.d/20-b.toml", "[daemon]\ndrain_timeout = \"3s\"\n");
        write(dir.path(), "conf.d/10-a.toml", "[daemon]\ndrain_timeout = \"7s\"\nuser = \"svc\"\n");
        let config = Config::load(&main, true).unwrap();
        assert_eq!(config.daemon.drain_timeout, Duration::from_secs(3));
        assert_eq!(config.daemon.user, "svc");
    }

    #[test]
    fn missing_optional_main_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::load(&dir.path().join("absent.toml"), false).unwrap();
        assert_eq!(config, Config::default());
        assert!(Config::load(&dir.path().join("absent.toml"), true).is_err());
    }

    #[test]
    fn bad_socket_mode_and_duration_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "a.toml", "[control]\nsocket_mode = \"999\"\n");
        assert!(Config::load(&main, true).unwrap_err().to_string().contains("socket_mode"));
        let main = write(dir.path(), "b.toml", "[daemon]\ndrain_timeout = \"soon\"\n");
        assert!(Config::load(&main, true).unwrap_err().to_string().contains("drain_timeout"));
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("auto"), Some(0));
        assert_eq!(parse_bytes("512MB"), Some(512_000_000));
        assert_eq!(parse_bytes("16GiB"), Some(16 << 30));
        assert_eq!(parse_bytes("lots"), None);
    }

    #[test]
    fn control_socket_follows_runtime_dir() {
        let mut config = Config::default();
        config.daemon.runtime_dir = Some("/tmp/rt".into());
        assert_eq!(config.dirs().control_socket, PathBuf::from("/tmp/rt/control.sock"));
        assert_eq!(Config::default().dirs().control_socket, PathBuf::from("/run/hyperllama/control.sock"));
    }
}
