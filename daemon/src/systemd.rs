//! The contract with systemd: `sd_notify` messages (READY, STATUS, WATCHDOG, STOPPING) and sockets
//! handed over by socket activation, matched by their `FileDescriptorName=` (`control`, `http`).
//! Outside systemd every call here is a no-op.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use sd_notify::NotifyState;

/// Sends state to the service manager when `NOTIFY_SOCKET` is set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Notifier;

impl Notifier {
    fn send(self, state: &[NotifyState<'_>]) {
        if std::env::var_os("NOTIFY_SOCKET").is_some()
            && let Err(error) = sd_notify::notify(state)
        {
            tracing::warn!(%error, "sd_notify failed");
        }
    }

    /// Startup finished: sockets bound, store open.
    pub fn ready(self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A one-line status for `systemctl status`.
    pub fn status(self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// Liveness, sent from the main loop.
    pub fn watchdog(self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Shutdown began.
    pub fn stopping(self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// Configuration reload began (systemd 253+ wants the monotonic time with it).
    pub fn reloading(self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }
}

/// The watchdog period requested by systemd (`WATCHDOG_USEC` for this pid), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Sockets passed by systemd socket activation.
#[derive(Debug, Default)]
pub struct ActivatedSockets {
    /// `FileDescriptorName=control`: the gRPC control socket.
    pub control: Option<OwnedFd>,
    /// `FileDescriptorName=http`: HTTP API listeners.
    pub http: Vec<OwnedFd>,
}

/// Takes the sockets in `LISTEN_FDS` (when `LISTEN_PID` is this process). A single unnamed socket
/// is taken as the control socket, as `systemd-socket-activate` passes it.
pub fn take_activated_sockets() -> std::io::Result<ActivatedSockets> {
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()?.collect();
    let single = fds.len() == 1;
    let mut sockets = ActivatedSockets::default();
    for (raw, name) in fds {
        // SAFETY: systemd passes LISTEN_FDS descriptors starting at fd 3 that nobody else in this
        // process owns (sd_notify checked LISTEN_PID is ours and set CLOEXEC); each is adopted once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        match name.as_str() {
            "control" => sockets.control = Some(fd),
            "http" => sockets.http.push(fd),
            _ if single => sockets.control = Some(fd),
            other => tracing::warn!(fd = raw, name = other, "ignoring activated socket with unknown name"),
        }
    }
    Ok(sockets)
}
