//! Test harness for the end-to-end tests: starts the real `hyperllamad` in user mode on temporary
//! directories, runs the real `hyperctl` against it (as root or as throwaway users made with
//! `useradd`), and cleans everything up. Tests that need root say they were skipped otherwise.

pub mod gguf_file;
pub mod registry;

pub mod tiny_model;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Name of the service account tests run the daemon as when they run as root.
pub const SERVICE_USER: &str = "hyperllama-test";

/// The release binaries next to the test executable (`target/release/deps/<test>` → `target/release`).
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.is_file(), "{} not built; run `cargo build --release` first", path.display());
    path
}

/// The real Gemma 3 270M Q4_K_M file: `HYPERLLAMA_TEST_GEMMA` (the test command fetches it and
/// sets it), else the test command's cache.
pub fn gemma_model() -> Option<PathBuf> {
    let from_env = std::env::var_os("HYPERLLAMA_TEST_GEMMA").map(PathBuf::from);
    let cached = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/gemma-3-270m-Q4_K_M.gguf");
    from_env.into_iter().chain([cached]).find(|p| p.is_file())
}

/// Whether the tests run as root (and so may create users).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Reports a skipped test on stderr and in `HYPERLLAMA_SKIP_LOG` (which the test command lists at
/// the end, since libtest hides the output of passing tests).
pub fn skip(test: &str, reason: &str) {
    hyperllama_kernels::check::report_skip(&format!("{test}: {reason}"));
}

fn run_quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure the service account for tests exists (root only).
pub fn ensure_service_user() {
    if is_root() && nix::unistd::User::from_name(SERVICE_USER).ok().flatten().is_none() {
        let made = run_quiet(
            "useradd",
            &["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
        );
        assert!(
            made || nix::unistd::User::from_name(SERVICE_USER).ok().flatten().is_some(),
            "useradd {SERVICE_USER} failed"
        );
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id() % 100_000, COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// A throwaway group, deleted on drop.
#[derive(Debug)]
pub struct TestGroup {
    /// Group name.
    pub name: String,
}

impl TestGroup {
    /// Creates a group (root only).
    pub fn create() -> TestGroup {
        let name = unique("hltg");
        assert!(run_quiet("groupadd", &[&name]), "groupadd {name} failed");
        TestGroup { name }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        run_quiet("groupdel", &[&self.name]);
    }
}

/// A throwaway login, deleted on drop.
#[derive(Debug)]
pub struct TestUser {
    /// Login name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl TestUser {
    /// Creates a user (root only), optionally in supplementary `groups`.
    pub fn create(groups: &[&str]) -> TestUser {
        let name = unique("hltu");
        let mut args = vec!["--no-create-home", "--shell", "/usr/sbin/nologin"];
        let joined = groups.join(",");
        if !groups.is_empty() {
            args.extend(["--groups", joined.as_str()]);
        }
        args.push(&name);
        assert!(run_quiet("useradd", &args), "useradd {name} failed");
        let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
        TestUser { name, uid: user.uid.as_raw(), gid: user.gid.as_raw() }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        run_quiet("userdel", &[&self.name]);
    }
}

/// Options for [`Daemon::start`].
#[derive(Debug, Default, Clone)]
pub struct DaemonOptions {
    /// Extra hyperllamad flags.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Admin group (default: one that does not exist, so only root administers).
    pub admin_group: Option<String>,
    /// Extra configuration (TOML), written to `conf.d/50-test.toml`.
    pub config: String,
}

/// A running hyperllamad on temporary directories.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    /// Root of the temporary directories (world-searchable so other users reach the socket).
    pub dir: tempfile::TempDir,
    /// The control socket.
    pub socket: PathBuf,
    /// `hyperctl` copied where every test user can execute it.
    pub hyperctl: PathBuf,
    /// `hyperllamad` copied likewise.
    pub hyperllamad: PathBuf,
    log: PathBuf,
}

/// A fresh world-searchable temporary directory holding copies of the binaries.
pub fn test_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::Builder::new().prefix("hyperllama-e2e-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut copies = ["hyperctl", "hyperllamad"].into_iter().map(|name| {
        let target = bin.join(name);
        install_executable(&built_binary(name), &target);
        target
    });
    let hyperctl = copies.next().unwrap();
    let hyperllamad = copies.next().unwrap();
    std::fs::write(dir.path().join("hyperllama.toml"), "").unwrap();
    (dir, hyperctl, hyperllamad)
}

/// Copies an executable with mode 0755 in a child process (`install`). Copying it here would hold
/// a write descriptor on the copy that any child another test thread forks meanwhile inherits until
/// its exec, and executing the copy then fails with ETXTBSY ("Text file busy").
fn install_executable(from: &Path, to: &Path) {
    let status = Command::new("install").arg("-m").arg("0755").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "install {} {}: {status}", from.display(), to.display());
}

impl Daemon {
    /// The base command line for a user-mode daemon under `dir`.
    pub fn command(dir: &Path, hyperllamad: &Path, options: &DaemonOptions) -> Command {
        ensure_service_user();
        let mut command = Command::new(hyperllamad);
        command
            .args(["--mode", "user", "--log-format", "text", "--log-level", "info,hyperllamad=debug"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .arg("--runtime-dir")
            .arg(dir.join("run"))
            .arg("--config")
            .arg(dir.join("hyperllama.toml"))
            .args(["--user", SERVICE_USER])
            .args([
                "--admin-group",
                options.admin_group.as_deref().unwrap_or("hyperllama-test-no-such-group"),
            ])
            .args(&options.args)
            // Ephemeral HTTP ports: tests run side by side, and a real Ollama may hold 11434.
            .args(if options.args.iter().any(|a| a == "--http-listen") {
                &[][..]
            } else {
                &["--http-listen", "127.0.0.1:0,[::1]:0"][..]
            })
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("JOURNAL_STREAM")
            .envs(options.env.iter().cloned());
        command
    }

    /// Starts a daemon and waits until its control socket answers.
    pub fn start(options: DaemonOptions) -> Daemon {
        let (dir, hyperctl, hyperllamad) = test_dir();
        if !options.config.is_empty() {
            std::fs::create_dir_all(dir.path().join("conf.d")).unwrap();
            std::fs::write(dir.path().join("conf.d/50-test.toml"), &options.config).unwrap();
        }
        let log = dir.path().join("daemon.log");
        let mut command = Self::command(dir.path(), &hyperllamad, &options);
        let child = spawn_logged(&mut command, &log);
        let socket = dir.path().join("run/control.sock");
        let daemon = Daemon { child: Some(child), dir, socket, hyperctl, hyperllamad, log };
        daemon.wait_ready();
        daemon
    }

    /// Adopts an already spawned daemon serving on `socket`.
    pub fn adopt(child: Child, dir: tempfile::TempDir, socket: PathBuf, log: PathBuf) -> Daemon {
        let bin = dir.path().join("bin");
        let daemon = Daemon {
            child: Some(child),
            hyperctl: bin.join("hyperctl"),
            hyperllamad: bin.join("hyperllamad"),
            dir,
            socket,
            log,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.ctl(&["status"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("hyperllamad did not become ready; log:\n{}", self.log());
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Runs `hyperctl ARGS` as the test process's user.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut command = self.ctl_command(args);
        retry_busy(|| command.output()).unwrap()
    }

    /// `hyperctl ARGS` as a command, for callers that need to adjust it.
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.hyperctl);
        command.arg("--host").arg(&self.socket).args(args).env_remove("HYPERLLAMA_HOST").stdin(Stdio::null());
        command
    }

    /// Runs `hyperctl ARGS` as `user`.
    pub fn ctl_as(&self, user: &TestUser, args: &[&str]) -> Output {
        let mut command = self.ctl_command(args);
        command.uid(user.uid).gid(user.gid).env("HOME", "/");
        // std drops root's supplementary groups when it switches uid; the daemon looks group
        // membership up in the group database, as it does for real logins.
        retry_busy(|| command.output()).unwrap()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Waits for the daemon to exit (up to `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The HTTP API's TCP addresses, from the daemon's log ("HTTP listening addr=...").
    pub fn http_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.log()
            .lines()
            .filter(|l| l.contains("HTTP listening"))
            .filter_map(|l| l.split("addr=").nth(1)?.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// The first IPv4 HTTP address.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(addr) = self.http_addrs().into_iter().find(std::net::SocketAddr::is_ipv4) {
                return addr;
            }
            assert!(Instant::now() < deadline, "no HTTP listener in the log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Imports `gguf` as `name` with `hyperctl create` (as the test's own user), with extra
    /// Modelfile lines; panics with the output when it fails.
    pub fn create_model(&self, name: &str, gguf: &Path, extra: &str) {
        let modelfile = self.dir.path().join(format!("{name}.Modelfile"));
        std::fs::write(&modelfile, format!("FROM {}\n{extra}\n", gguf.display())).unwrap();
        let out = self.ctl(&["create", name, "-f", modelfile.to_str().unwrap()]);
        assert!(out.status.success(), "create {name}: {}", text(&out));
    }

    /// Writes a tiny random Llama model into the test directory and returns its path.
    pub fn tiny_model(&self, spec: &tiny_model::TinyModelSpec, file: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        tiny_model::write_tiny_llama(&path, spec).unwrap();
        path
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `command` with stdout and stderr appended to `log`.
pub fn spawn_logged(command: &mut Command, log: &Path) -> Child {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    command.stdout(file.try_clone().unwrap()).stderr(file).stdin(Stdio::null());
    retry_busy(|| command.spawn()).expect("spawn hyperllamad")
}

/// Retries an exec that failed with ETXTBSY: a freshly copied binary is briefly "busy" while
/// another test thread's fork still holds the copy's write descriptor (until that child execs).
pub fn retry_busy<T>(mut run: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut attempts = 0;
    loop {
        match run() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// stdout and stderr of an output, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
