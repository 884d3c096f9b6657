//! The external server process of a served engine: started in its own process group with a
//! parent-death signal, its output forwarded line by line into the log tagged with the engine,
//! its exit observed, and the whole group (the server and every worker it forked) terminated when
//! the handle is shut down or dropped.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::engine::EngineError;

/// How to start one server: program, arguments and environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The program (a virtualenv's python or max).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Variables set on top of the runner's environment.
    pub env: Vec<(String, OsString)>,
}

/// Lines of output kept for error messages.
const KEPT_LINES: usize = 20;

/// A running server; dropping it kills its process group.
#[derive(Debug)]
pub struct ServerProcess {
    engine: &'static str,
    pgid: i32,
    exit: watch::Receiver<Option<String>>,
    last_output: Arc<Mutex<VecDeque<String>>>,
    stopping: Arc<AtomicBool>,
}

impl ServerProcess {
    /// Starts the server. Must be called inside a tokio runtime.
    pub fn spawn(engine: &'static str, launch: &Launch) -> Result<ServerProcess, EngineError> {
        let mut command = Command::new(&launch.program);
        command
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so stopping it reaches the workers it forks (vLLM's engine core,
            // MAX's model worker) and a signal meant for the runner does not reach them.
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (prctl, getppid, _exit); it touches no locks or allocations.
        unsafe {
            command.pre_exec(move || {
                // The server dies with the runner however the runner ends (even SIGKILL).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The runner may have died between fork and prctl.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = crate::spawn::from_lasting_thread(command).map_err(|e| {
            EngineError::Load(format!("cannot start {engine} ({}): {e}", launch.program.display()))
        })?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let last_output = Arc::new(Mutex::new(VecDeque::with_capacity(KEPT_LINES)));
        forward_output(&mut child, engine, &last_output);
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            let text = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (s.code(), s.signal()) {
                        (Some(code), _) => format!("exited with status {code}"),
                        (None, Some(signal)) => format!("was killed by signal {signal}"),
                        _ => "exited".into(),
                    }
                }
                Err(e) => format!("could not be waited for: {e}"),
            };
            let _ = exit_tx.send(Some(text));
        });
        tracing::info!(engine, pid, program = %launch.program.display(), "engine server started");
        Ok(ServerProcess { engine, pgid: pid, exit, last_output, stopping: Arc::default() })
    }

    /// The process group (the server's pid).
    pub fn pgid(&self) -> u32 {
        u32::try_from(self.pgid).unwrap_or(0)
    }

    /// How the server ended, once it has.
    pub fn exited(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// A receiver of the exit description (None while running).
    pub fn exit_watch(&self) -> watch::Receiver<Option<String>> {
        self.exit.clone()
    }

    /// Set once the server is being stopped on purpose (its exit is then no failure).
    pub fn stopping_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stopping)
    }

    /// Waits until the server ends; returns how.
    pub async fn wait_exit(&self) -> String {
        let mut exit = self.exit.clone();
        loop {
            if let Some(text) = exit.borrow().clone() {
                return text;
            }
            if exit.changed().await.is_err() {
                return "exited".into();
            }
        }
    }

    /// The last lines the server printed.
    pub fn last_output(&self) -> Vec<String> {
        self.last_output.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// The most telling recent line (an error if there is one).
    pub fn last_error_line(&self) -> String {
        let lines = self.last_output();
        lines
            .iter()
            .rev()
            .find(|l| l.contains("Error") || l.contains("error") || l.contains("ERROR"))
            .or(lines.last())
            .cloned()
            .unwrap_or_else(|| "no output".into())
    }

    /// Terminates the whole group: SIGTERM, then SIGKILL after `grace`.
    pub fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        terminate_group(self.pgid, grace);
    }

    /// The engine's name.
    pub fn engine(&self) -> &'static str {
        self.engine
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        terminate_group(self.pgid, Duration::from_secs(5));
    }
}

/// Whether any process of group `pgid` is alive (zombies of reaped children do not count once
/// reaped; the group's leader is reaped by the wait task).
fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok()
}

/// SIGTERM to the group, SIGKILL to what is left after `grace`.
pub fn terminate_group(pgid: i32, grace: Duration) {
    if pgid <= 1 || !group_alive(pgid) {
        return;
    }
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !group_alive(pgid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

/// Sends the server's stdout and stderr to the log (tagged `engine=...`), keeping the last lines.
fn forward_output(child: &mut Child, engine: &'static str, last: &Arc<Mutex<VecDeque<String>>>) {
    let streams: [Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>; 2] = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ];
    for stream in streams.into_iter().flatten() {
        let last = Arc::clone(last);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = line.trim_end();
                if line.is_empty() {
                    continue;
                }
                if line.contains("ERROR") || line.contains("Traceback") {
                    tracing::warn!(engine, "{line}");
                } else {
                    tracing::info!(engine, "{line}");
                }
                let mut kept = last.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == KEPT_LINES {
                    kept.pop_front();
                }
                kept.push_back(line.to_string());
            }
        });
    }
}

/// A free TCP port on loopback (bound and released; the server binds it a moment later).
pub fn free_port() -> Result<u16, EngineError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| EngineError::Load(format!("cannot find a free loopback port: {e}")))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| EngineError::Load(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_kills_the_whole_group() {
        // A shell that forks a long sleep into the same group; dropping the handle kills both.
        let launch = Launch {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "sleep 300 & echo started; wait".into()],
            env: Vec::new(),
        };
        let server = ServerProcess::spawn("test", &launch).unwrap();
        let pgid = server.pgid;
        let started = Instant::now();
        while server.last_output().is_empty() && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(server.last_output(), vec!["started".to_string()]);
        assert!(group_alive(pgid));
        drop(server);
        // The leader may linger as a zombie until its wait task reaps it; the sleep must be gone.
        let started = Instant::now();
        while group_alive(pgid) && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!group_alive(pgid), "process group {pgid} survived");
    }

    /// Regression: the server was forked on the loading thread, and its parent-death signal
    /// killed it when that (tokio blocking-pool) thread ended 10 s after the load.
    #[test]
    fn the_server_outlives_the_thread_that_started_it() {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let handle = runtime.handle().clone();
        let launch = Launch { program: "/bin/sleep".into(), args: vec!["30".into()], env: Vec::new() };
        let server =
            std::thread::spawn(move || handle.block_on(async { ServerProcess::spawn("test", &launch) }))
                .join()
                .unwrap()
                .unwrap();
        // The starting thread has ended; a parent-death signal would have fired by now.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(server.exited(), None, "the server died with the thread that started it");
        assert!(group_alive(server.pgid));
        runtime.block_on(async { drop(server) });
    }

    #[tokio::test]
    async fn exit_is_reported() {
        let launch =
            Launch { program: "/bin/sh".into(), args: vec!["-c".into(), "exit 7".into()], env: Vec::new() };
        let server = ServerProcess::spawn("test", &launch).unwrap();
        assert_eq!(server.wait_exit().await, "exited with status 7");
    }
}
