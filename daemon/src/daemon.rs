//! The daemon's life: set-up that may need root (directories, sockets), dropping privileges, then
//! the async main loop — serve, keep systemd informed and fed from the loop, reload on SIGHUP,
//! drain on SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::admission::GlobalQueue;
use crate::cli::Cli;
use crate::config::{Config, Dirs};
use crate::control;
use crate::error::{Error, Result};
use crate::lifecycle::DrainOutcome;
use crate::privileges::{self, ServiceAccount};
use crate::residency::Residency;
use crate::state::{Shared, SharedParts};
use crate::systemd::{self, Notifier};

/// What the privileged set-up produced.
#[derive(Debug)]
pub struct Prepared {
    /// Configuration in force.
    pub config: Config,
    /// Where to load it from again on SIGHUP.
    pub config_file: std::path::PathBuf,
    /// The control socket, bound or adopted.
    pub control: StdUnixListener,
    /// Whether systemd owns the socket file (then it is not removed at exit).
    pub control_activated: bool,
    /// The account the daemon now runs as.
    pub account: ServiceAccount,
    /// Capabilities kept.
    pub capabilities: Vec<String>,
    /// The HTTP API's listeners, bound or adopted.
    pub http: crate::api::listen::Listeners,
}

fn make_dir(path: &Path, mode: u32, account: &ServiceAccount) -> Result<()> {
    let fresh = !path.exists();
    std::fs::create_dir_all(path).map_err(Error::io(format!("create {}", path.display())))?;
    if fresh {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(Error::io(format!("set mode of {}", path.display())))?;
    }
    privileges::hand_over(path, account).map_err(|e| Error::Internal(e.to_string()))
}

/// Creates directories, binds or adopts the control socket and drops privileges. Runs before any
/// thread exists.
pub fn prepare(config: Config, config_file: std::path::PathBuf) -> Result<Prepared> {
    let account =
        privileges::service_account(&config.daemon.user).map_err(|e| Error::Internal(e.to_string()))?;
    let Dirs { state, cache, runtime, control_socket } = config.dirs();
    // State holds the database and (later) models: readable by the service only. The runtime
    // directory must be searchable by every user to reach the socket.
    make_dir(&state, 0o750, &account)?;
    make_dir(&cache, 0o750, &account)?;
    make_dir(&runtime, 0o755, &account)?;
    let activated = systemd::take_activated_sockets().map_err(Error::io("read socket-activation fds"))?;
    let http_addrs = config.http.listen_addrs().map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let http = crate::api::listen::bind(&http_addrs, activated.http)?;
    make_dir(&config.user_socket_dir(), 0o755, &account)?;
    let (control, control_activated) = match activated.control {
        Some(fd) => (control::adopt_listener(fd), true),
        None => {
            if let Some(parent) = control_socket.parent() {
                make_dir(parent, 0o755, &account)?;
            }
            let listener = control::bind_listener(
                &control_socket,
                config.socket_mode().map_err(|e| Error::InvalidArgument(e.to_string()))?,
            )?;
            privileges::hand_over(&control_socket, &account).map_err(|e| Error::Internal(e.to_string()))?;
            (listener, false)
        }
    };
    let capabilities = privileges::drop_privileges(&account).map_err(|e| Error::Internal(e.to_string()))?;
    tracing::info!(user = %account.name, uid = account.uid.as_raw(), capabilities = ?capabilities, "running as service account");
    Ok(Prepared { config, config_file, control, control_activated, account, capabilities, http })
}

/// The async part: serves until SIGTERM/SIGINT and a drain. Returns once everything stopped.
pub async fn run(prepared: Prepared, cli: Arc<Cli>) -> Result<()> {
    let notifier = Notifier;
    let db = crate::db::open(&prepared.config.dirs().state).await?;
    // The store is reconciled with its files before the daemon says it is ready.
    let store =
        crate::store::Store::open(&prepared.config.dirs().state, db.clone(), &prepared.config.store).await?;
    let dirs = prepared.config.dirs();
    let residency = Residency::new(
        prepared.config.runners.clone(),
        dirs.runtime.join("runners"),
        GlobalQueue::new(usize::try_from(prepared.config.quota.service_max_queued).unwrap_or(usize::MAX)),
    )?;
    residency.set_engines(prepared.config.engines.clone(), dirs.cache.join("engines"));
    residency.set_kernel_cache(dirs.cache.join("kernels"));
    let shared = Shared::new(SharedParts {
        config: prepared.config,
        db,
        capabilities: prepared.capabilities,
        service_user: prepared.account.name.clone(),
        residency: Arc::clone(&residency),
        store,
    });
    let reaper = {
        let residency = Arc::clone(&residency);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                residency.reap().await;
            }
        })
    };
    let stop_server = CancellationToken::new();
    let server = tokio::spawn(control::serve(prepared.control, Arc::clone(&shared), stop_server.clone()));
    let stop_http = CancellationToken::new();
    let http = tokio::spawn(crate::api::serve(prepared.http, Arc::clone(&shared), stop_http.clone()));
    tracing::info!(socket = %dirs.control_socket.display(), state = %dirs.state.display(), "hyperllamad ready");
    notifier.ready(&status_line(&shared));

    let mut sigterm = signal(SignalKind::terminate()).map_err(Error::io("install SIGTERM handler"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::io("install SIGINT handler"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(Error::io("install SIGHUP handler"))?;
    // The main loop ticks at half the watchdog period (or every few seconds for STATUS=); a hung
    // runtime stops the ticks and systemd restarts us.
    let period = systemd::watchdog_interval().map(|w| w / 2).unwrap_or(Duration::from_secs(5));
    let watchdog = systemd::watchdog_interval().is_some();
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(100)));
    let reason = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => reload(&shared, &prepared.config_file, &cli, notifier),
            _ = tick.tick() => {
                if watchdog { notifier.watchdog(); }
                notifier.status(&status_line(&shared));
            }
        }
        if server.is_finished() {
            break "control server stopped";
        }
        if http.is_finished() {
            break "HTTP server stopped";
        }
    };
    // New HTTP connections are refused from now on; requests in flight go on until the drain ends.
    stop_http.cancel();
    let timeout = shared.config().daemon.drain_timeout;
    tracing::info!(reason, in_flight = shared.lifecycle.in_flight(), ?timeout, "draining");
    notifier.stopping(&format!("draining {} request(s)", shared.lifecycle.in_flight()));
    // Keep feeding the watchdog while we drain, so a long drain is not mistaken for a hang.
    let drain = shared.lifecycle.drain(timeout);
    tokio::pin!(drain);
    let outcome = loop {
        tokio::select! {
            outcome = &mut drain => break outcome,
            _ = tick.tick() => if watchdog { notifier.watchdog(); },
        }
    };
    match outcome {
        DrainOutcome::Finished => tracing::info!("all requests finished"),
        DrainOutcome::Cancelled(n) => {
            tracing::warn!(cancelled = n, "drain timeout passed; cancelled requests")
        }
    }
    reaper.abort();
    shared.residency.unload_all().await;
    stop_server.cancel();
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(error))) => tracing::error!(%error, "control server failed"),
        Ok(Err(error)) => tracing::error!(%error, "control server panicked"),
        Err(_) => tracing::warn!("control server did not stop in 5s"),
        Ok(Ok(Ok(()))) => {}
    }
    match tokio::time::timeout(Duration::from_secs(5), http).await {
        Ok(Ok(Err(error))) => tracing::error!(%error, "HTTP server failed"),
        Ok(Err(error)) => tracing::error!(%error, "HTTP server panicked"),
        Err(_) => tracing::warn!("HTTP server did not stop in 5s"),
        Ok(Ok(Ok(()))) => {}
    }
    if !prepared.control_activated {
        let _ = std::fs::remove_file(&dirs.control_socket);
    }
    shared.db.close().await;
    tracing::info!("stopped");
    Ok(())
}

fn status_line(shared: &Shared) -> String {
    let state = if shared.lifecycle.accepting() { "serving" } else { "draining" };
    format!(
        "{state}; {} model(s) loaded; {} request(s) in flight",
        shared.residency.list().len(),
        shared.lifecycle.in_flight()
    )
}

/// SIGHUP: re-reads the configuration. Settings fixed at start (directories, sockets, account,
/// admin group) keep their old value with a warning; everything else takes effect.
fn reload(shared: &Shared, config_file: &Path, cli: &Cli, notifier: Notifier) {
    notifier.reloading();
    let loaded = Config::load(config_file, cli.config.is_some()).map(|mut c| {
        cli.apply(&mut c);
        c
    });
    match loaded {
        Ok(mut new) => {
            let old = shared.config();
            if new.dirs() != old.dirs()
                || new.daemon.user != old.daemon.user
                || new.daemon.admin_group != old.daemon.admin_group
            {
                tracing::warn!(
                    "directories, sockets, daemon.user and daemon.admin_group change only on restart"
                );
                new.daemon.state_dir = old.daemon.state_dir.clone();
                new.daemon.cache_dir = old.daemon.cache_dir.clone();
                new.daemon.runtime_dir = old.daemon.runtime_dir.clone();
                new.daemon.mode = old.daemon.mode;
                new.control.socket = old.control.socket.clone();
                new.daemon.user = old.daemon.user.clone();
                new.daemon.admin_group = old.daemon.admin_group.clone();
            }
            shared.residency.set_config(new.runners.clone());
            let cache = new.dirs().cache.join("engines");
            shared.residency.set_engines(new.engines.clone(), cache);
            shared.set_config(new);
            tracing::info!("configuration reloaded");
        }
        Err(error) => tracing::error!(%error, "configuration reload failed; keeping the old configuration"),
    }
    notifier.ready(&status_line(shared));
}
