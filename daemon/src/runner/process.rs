//! The daemon's side of a runner: spawns `hyperllamad runner` for one model (pinned to its GPUs
//! and CPUs, with none of the daemon's systemd environment), forwards its output to the log tagged
//! with the model, waits until it answers, notices when it exits, and stops it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use hyperllama_proto::v1 as pb;
use hyperllama_proto::v1::runner_client::RunnerClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, Result};

/// Everything needed to start a runner for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerSpec {
    /// Model name, for logs and messages.
    pub name: String,
    /// The GGUF blob.
    pub model_path: PathBuf,
    /// Engine name.
    pub engine: String,
    /// Context length per sequence.
    pub context_length: u32,
    /// Sequences decoded together.
    pub parallel: u32,
    /// CPU threads (0 = one per CPU in the set).
    pub threads: u32,
    /// CPU list, e.g. "0-7" ("" = no pinning).
    pub cpus: String,
    /// GPUs the runner may see (CUDA_VISIBLE_DEVICES); empty hides every GPU.
    pub gpus: Vec<u32>,
    /// Where the runner serves (inside a directory only the service account can enter).
    pub socket: PathBuf,
    /// Further runner flags for the engine (served engines: where installed, cache, memory).
    pub engine_args: Vec<String>,
    /// Where GPU engines keep NVRTC-compiled kernels (`<cache_dir>/kernels`, the service user's);
    /// `None` leaves the kernels crate's default (`$HOME/.cache`), for tests.
    pub kernel_cache: Option<PathBuf>,
}

/// How a runner ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// "exited with status 3", "exited (signal 11)".
    pub description: String,
}

/// A started runner.
#[derive(Debug)]
pub struct RunnerProcess {
    /// Its pid.
    pub pid: u32,
    /// What it reported when it became ready.
    pub health: pb::RunnerHealth,
    client: RunnerClient<Channel>,
    exit: watch::Receiver<Option<ExitInfo>>,
    last_output: Arc<Mutex<VecDeque<String>>>,
}

const KEPT_LINES: usize = 12;

fn describe(status: std::io::Result<std::process::ExitStatus>) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    let description = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("exited (signal {signal})"),
            _ => "exited".to_string(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    };
    ExitInfo { description }
}

async fn connect(socket: PathBuf) -> std::result::Result<RunnerClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_static("http://runner.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await?;
    Ok(RunnerClient::new(channel).max_decoding_message_size(256 * 1024 * 1024))
}

impl RunnerProcess {
    /// Starts a runner and waits until it answers, at most `timeout`.
    pub async fn start(spec: &RunnerSpec, timeout: Duration) -> Result<RunnerProcess> {
        let _ = std::fs::remove_file(&spec.socket);
        let huge_pages = crate::engine::llamacpp::hugepages::runner_env();
        let mut command = Command::new("/proc/self/exe");
        command
            .arg("runner")
            .arg("--model")
            .arg(&spec.model_path)
            .arg("--socket")
            .arg(&spec.socket)
            .args(["--engine", &spec.engine, "--name", &spec.name, "--cpus", &spec.cpus])
            .args(["--context-length", &spec.context_length.to_string()])
            .args(["--parallel", &spec.parallel.to_string(), "--threads", &spec.threads.to_string()])
            .args(&spec.engine_args)
            .env("CUDA_VISIBLE_DEVICES", spec.gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
            .env("HYPERLLAMA_LOG_FORMAT", "text")
            .envs(spec.kernel_cache.iter().map(|dir| ("HYPERLLAMA_KERNEL_CACHE", dir.as_os_str())))
            // malloc backs the runner's heap (and so llama.cpp's KV buffers) with huge pages:
            // reserved pages when the host has a pool, transparent huge pages otherwise.
            .env(huge_pages.0, huge_pages.1)
            // The daemon's conversation with systemd is its own.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // The runner's parent-death signal is tied to the forking thread (crate::spawn).
        let mut child = crate::spawn::from_lasting_thread(command)
            .map_err(|e| Error::Runner(format!("cannot start a runner for {}: {e}", spec.name)))?;
        let pid = child.id().unwrap_or(0);
        let last_output = Arc::new(Mutex::new(VecDeque::with_capacity(KEPT_LINES)));
        forward_output(&mut child, &spec.name, pid, &last_output);
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exit_tx.send(Some(describe(status)));
        });
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(info) = exit.borrow().clone() {
                let output =
                    last_output.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect::<Vec<_>>();
                return Err(Error::Runner(format!(
                    "model runner for {} {} while loading: {}",
                    spec.name,
                    info.description,
                    output.last().map(String::as_str).unwrap_or("no output")
                )));
            }
            if spec.socket.exists()
                && let Ok(mut client) = connect(spec.socket.clone()).await
                && let Ok(health) = client.health(pb::RunnerHealthRequest {}).await
            {
                let health = health.into_inner();
                tracing::info!(model = %spec.name, pid, engine = %health.engine, "runner ready");
                return Ok(RunnerProcess { pid, health, client, exit, last_output });
            }
            if Instant::now() >= deadline {
                terminate(pid);
                return Err(Error::Runner(format!(
                    "model runner for {} did not become ready within {}s",
                    spec.name,
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client for this runner (cheap to clone).
    pub fn client(&self) -> RunnerClient<Channel> {
        self.client.clone()
    }

    /// How it ended, once it has.
    pub fn exited(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }

    /// Waits until it ends.
    pub async fn wait_exit(&self) -> ExitInfo {
        let mut exit = self.exit.clone();
        loop {
            if let Some(info) = exit.borrow().clone() {
                return info;
            }
            if exit.changed().await.is_err() {
                return ExitInfo { description: "exited".into() };
            }
        }
    }

    /// Its last lines of output.
    pub fn last_output(&self) -> Vec<String> {
        self.last_output.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Stops it: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        terminate(self.pid);
        if tokio::time::timeout(grace, self.wait_exit()).await.is_err() {
            if let Ok(pid) = i32::try_from(self.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            self.wait_exit().await;
        }
    }
}

fn terminate(pid: u32) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
}

/// Splits a runner log line into its level and message; lines without a level are INFO.
fn split_level(line: &str) -> (tracing::Level, &str) {
    let trimmed = line.trim_start();
    let (word, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
    match word.parse::<tracing::Level>() {
        Ok(level) => (level, rest.trim_start()),
        Err(_) => (tracing::Level::INFO, line),
    }
}

/// Sends the runner's stdout and stderr to the daemon's log, tagged with the model, keeping the
/// last lines for error messages.
fn forward_output(child: &mut Child, name: &str, pid: u32, last: &Arc<Mutex<VecDeque<String>>>) {
    let streams: [Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>; 2] = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ];
    for stream in streams.into_iter().flatten() {
        let (name, last) = (name.to_string(), Arc::clone(last));
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim().is_empty() {
                    continue;
                }
                // The runner logs "LEVEL message" lines; keep their level in the daemon's log.
                let (level, message) = split_level(&line);
                match level {
                    tracing::Level::ERROR => {
                        tracing::error!(target: "hyperllamad::runner", model = %name, pid, "{message}")
                    }
                    tracing::Level::WARN => {
                        tracing::warn!(target: "hyperllamad::runner", model = %name, pid, "{message}")
                    }
                    tracing::Level::INFO => {
                        tracing::info!(target: "hyperllamad::runner", model = %name, pid, "{message}")
                    }
                    tracing::Level::DEBUG => {
                        tracing::debug!(target: "hyperllamad::runner", model = %name, pid, "{message}")
                    }
                    _ => tracing::trace!(target: "hyperllamad::runner", model = %name, pid, "{message}"),
                }
                let mut kept = last.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == KEPT_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_log_levels_are_kept() {
        assert_eq!(split_level("  WARN kv cache is small"), (tracing::Level::WARN, "kv cache is small"));
        assert_eq!(split_level("DEBUG advise"), (tracing::Level::DEBUG, "advise"));
        assert_eq!(
            split_level("llama_model_loader: loaded"),
            (tracing::Level::INFO, "llama_model_loader: loaded")
        );
    }
}
