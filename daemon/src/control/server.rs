//! Serving the control service on its unix socket: binding (or adopting the socket-activated fd),
//! permissions, and shutdown after the drain.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::Path;
use std::sync::Arc;

use hyperllama_proto::v1::control_server::ControlServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

use super::ControlService;
use crate::error::{Error, Result};
use crate::state::Shared;

/// Binds the control socket at `path` with `mode`, refusing to steal it from a live daemon and
/// replacing a stale socket file left by a crash.
pub fn bind(path: &Path, mode: u32) -> Result<StdUnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(Error::InvalidArgument(format!(
                "{} exists and is not a socket; remove it or set control.socket",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::InvalidArgument(format!(
                "another hyperllamad is already serving on {}",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(Error::io(format!("remove stale socket {}", path.display())))?;
    }
    let listener =
        StdUnixListener::bind(path).map_err(Error::io(format!("bind control socket {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(Error::io(format!("set mode of {}", path.display())))?;
    Ok(listener)
}

/// Adopts a socket-activated control socket.
pub fn adopt(fd: OwnedFd) -> StdUnixListener {
    StdUnixListener::from(fd)
}

/// Serves until `stop` fires; the caller fires it after the lifecycle has drained.
pub async fn serve(listener: StdUnixListener, shared: Arc<Shared>, stop: CancellationToken) -> Result<()> {
    listener.set_nonblocking(true).map_err(Error::io("make the control socket non-blocking"))?;
    let listener = UnixListener::from_std(listener).map_err(Error::io("register the control socket"))?;
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(
            ControlServer::new(ControlService::new(shared)),
            UnixListenerStream::new(listener),
            stop.cancelled_owned(),
        )
        .await
        .map_err(|e| Error::Internal(format!("control server failed: {e}")))
}
