//! The runner process (`hyperllamad runner ...`): loads one model into an engine and serves it over
//! the runner protocol on a private unix socket until the daemon stops it (SIGTERM) or dies
//! (parent-death signal). It never runs as root.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use hyperllama_proto::v1 as pb;
use hyperllama_proto::v1::runner_server::{Runner, RunnerServer};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::convert;
use crate::engine::{EmbedRequest, Engine, EngineError};

/// Flags of the hidden `runner` subcommand (set by the daemon, not by people).
#[derive(Debug, Clone, clap::Args)]
pub struct RunnerArgs {
    /// The GGUF file to serve.
    #[arg(long)]
    pub model: PathBuf,
    /// Unix socket to serve on (its directory is private to the service account).
    #[arg(long)]
    pub socket: PathBuf,
    /// Engine name.
    #[arg(long, default_value = "llama.cpp")]
    pub engine: String,
    /// Context length per sequence.
    #[arg(long, default_value_t = 4096)]
    pub context_length: u32,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 4)]
    pub parallel: u32,
    /// Threads for CPU inference (0 = one per core in the CPU set).
    #[arg(long, default_value_t = 0)]
    pub threads: u32,
    /// CPUs to run on, e.g. "0-7,16".
    #[arg(long, default_value = "")]
    pub cpus: String,
    /// Model name, for logs.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Settings of served engines (vllm, max).
    #[command(flatten)]
    pub served: crate::engine::served::ServedArgs,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunnerEvent, Status>> + Send>>;

/// Serves an engine over the runner protocol.
pub struct RunnerService {
    engine: Arc<dyn Engine>,
    active: Arc<std::sync::atomic::AtomicU32>,
}

/// Counts a generation as active until dropped.
struct Active(Arc<std::sync::atomic::AtomicU32>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl std::fmt::Debug for RunnerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerService").field("engine", &self.engine.info().engine).finish()
    }
}

impl RunnerService {
    /// Wraps an engine.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self { engine, active: Arc::default() }
    }
}

fn engine_status(error: EngineError) -> Status {
    match error {
        EngineError::InvalidRequest(m) => Status::invalid_argument(m),
        EngineError::Stopped => Status::unavailable("the engine stopped"),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl Runner for RunnerService {
    async fn health(
        &self,
        _: Request<pb::RunnerHealthRequest>,
    ) -> Result<Response<pb::RunnerHealth>, Status> {
        let info = self.engine.info();
        let server = self.engine.server().unwrap_or_default();
        Ok(Response::new(pb::RunnerHealth {
            ready: true,
            engine: info.engine,
            context_length: info.context_length,
            parallel: info.parallel,
            weights_bytes: info.weights_bytes,
            kv_bytes: info.kv_bytes,
            chat_template: info.chat_template.unwrap_or_default(),
            active_sequences: self.active.load(std::sync::atomic::Ordering::SeqCst),
            pid: std::process::id(),
            engine_pgid: server.pgid,
            metrics_url: server.metrics_url,
        }))
    }

    type GenerateStream = EventStream;
    async fn generate(
        &self,
        request: Request<pb::RunnerGenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let mut events =
            self.engine.generate(convert::request_from_wire(request.into_inner())).map_err(engine_status)?;
        // When the daemon cancels the call, tonic drops this stream, which drops `events`: the
        // engine sees the closed channel and stops the sequence at its next step.
        self.active.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let active = Active(Arc::clone(&self.active));
        let stream = async_stream_from(move |tx| async move {
            let _active = active;
            while let Some(event) = events.recv().await {
                if tx.send(Ok(convert::event_to_wire(event))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn embed(
        &self,
        request: Request<pb::RunnerEmbedRequest>,
    ) -> Result<Response<pb::RunnerEmbedResponse>, Status> {
        let r = request.into_inner();
        let out = self
            .engine
            .embed(EmbedRequest { inputs: r.inputs, truncate: r.truncate })
            .await
            .map_err(engine_status)?;
        Ok(Response::new(pb::RunnerEmbedResponse {
            embeddings: out.embeddings.into_iter().map(|values| pb::RunnerEmbedding { values }).collect(),
            prompt_tokens: out.prompt_tokens,
        }))
    }

    async fn tokenize(
        &self,
        request: Request<pb::RunnerTokenizeRequest>,
    ) -> Result<Response<pb::RunnerTokenizeResponse>, Status> {
        let r = request.into_inner();
        let tokens = self.engine.tokenize(&r.text, r.add_special).map_err(engine_status)?;
        Ok(Response::new(pb::RunnerTokenizeResponse { tokens }))
    }
}

/// A stream fed by a task through a small channel; the task ends when the stream is dropped.
fn async_stream_from<F, Fut>(producer: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::RunnerEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(producer(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Parses a CPU list such as "0-3,8,10-11".
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("invalid CPU list `{text}` (expected e.g. 0-3,8)");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b > 4095 {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(cpus)
}

/// Pins this process to `cpus` (empty = leave as is). Returns the CPUs it may run on.
fn pin_cpus(cpus: &[usize]) -> Result<usize, String> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    if !cpus.is_empty() {
        let mut set = CpuSet::new();
        for cpu in cpus {
            set.set(*cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
        }
        sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("cannot pin to CPUs {cpus:?}: {e}"))?;
    }
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(|e| e.to_string())?;
    Ok((0..CpuSet::count()).filter(|c| set.is_set(*c).unwrap_or(false)).count())
}

/// Makes a panic on any thread end the runner. A runner whose engine thread died would keep
/// answering "the engine stopped" forever; exiting instead lets the daemon's supervisor report the
/// crash to in-flight requests and start a fresh runner.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!("runner panicked: {info}; exiting so the daemon restarts it");
        std::process::abort();
    }));
}

/// Runs the runner process to completion.
pub async fn run(
    args: RunnerArgs,
    load: impl FnOnce(&RunnerArgs, u32) -> Result<Arc<dyn Engine>, EngineError> + Send + 'static,
) -> Result<(), String> {
    if nix::unistd::Uid::effective().is_root() {
        return Err("model runners never run as root".into());
    }
    // Started as /proc/self/exe, it would show as "exe" in ps and the journal.
    let _ = nix::sys::prctl::set_name(c"hl-runner");
    abort_on_panic();
    // Die with the daemon, whatever killed it.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(|e| e.to_string())?;
    let cpus = parse_cpu_list(&args.cpus)?;
    let available = pin_cpus(&cpus)?;
    let threads = if args.threads == 0 { u32::try_from(available.max(1)).unwrap_or(1) } else { args.threads };
    tracing::info!(model = %args.name, engine = %args.engine, threads, cpus = %args.cpus, "loading model");
    let started = std::time::Instant::now();
    let engine = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || load(&args, threads))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    };
    tracing::info!(model = %args.name, seconds = started.elapsed().as_secs_f32(), "model loaded");
    let _ = std::fs::remove_file(&args.socket);
    let listener =
        UnixListener::bind(&args.socket).map_err(|e| format!("bind {}: {e}", args.socket.display()))?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(
            RunnerServer::new(RunnerService::new(engine)),
            UnixListenerStream::new(listener),
            async move {
                sigterm.recv().await;
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Re-runs this test binary as a child that installs the hook and panics on another thread:
    /// the child must die by SIGABRT at once instead of living on with a dead thread.
    #[test]
    fn a_panic_on_any_thread_ends_the_runner() {
        if std::env::var_os("HL_TEST_PANIC_CHILD").is_some() {
            abort_on_panic();
            let _ = std::thread::spawn(|| panic!("engine thread fault")).join();
            std::thread::sleep(std::time::Duration::from_secs(10));
            return;
        }
        let started = std::time::Instant::now();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "runner::service::tests::a_panic_on_any_thread_ends_the_runner", "--nocapture"])
            .env("HL_TEST_PANIC_CHILD", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGABRT), "child status {status:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(8));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8").unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<usize>::new());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }
}
