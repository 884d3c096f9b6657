//! The HTTP listeners: TCP addresses from `http.listen` (bound before privileges drop) or
//! socket-activated `http` sockets, and per-user unix sockets. Each accepted connection carries a
//! [`ConnInfo`] saying what the kernel knows about its peer; identity is decided from it in
//! [`super::auth`].

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use super::peer;
use crate::error::{Error, Result};

/// What is known about a connection's peer.
#[derive(Debug, Clone)]
pub enum ConnInfo {
    /// A TCP connection.
    Tcp {
        /// Our address.
        local: SocketAddr,
        /// The client's.
        peer: SocketAddr,
        /// The uid owning the client's socket (loopback only; `None` = unknown).
        owner: Option<u32>,
        /// The listener is not on loopback: every request needs a bearer token.
        tokens_required: bool,
    },
    /// A unix socket connection.
    Unix {
        /// SO_PEERCRED uid, gid, pid.
        cred: Option<(u32, u32, Option<i32>)>,
        /// For a per-user socket, the only uid allowed on it.
        owner: Option<u32>,
    },
}

/// A bound TCP listener, before the runtime starts.
#[derive(Debug)]
pub struct TcpSpec {
    /// The socket.
    pub listener: std::net::TcpListener,
    /// Whether it is on a loopback address.
    pub loopback: bool,
}

/// A bound unix listener, before the runtime starts.
#[derive(Debug)]
pub struct UnixSpec {
    /// The socket.
    pub listener: std::os::unix::net::UnixListener,
    /// The uid it is reserved for, if it is a per-user socket.
    pub owner: Option<u32>,
}

/// Every HTTP listener the daemon serves at start.
#[derive(Debug, Default)]
pub struct Listeners {
    /// TCP.
    pub tcp: Vec<TcpSpec>,
    /// Unix (socket-activated).
    pub unix: Vec<UnixSpec>,
}

impl Listeners {
    /// The local addresses of the TCP listeners.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp.iter().filter_map(|t| t.listener.local_addr().ok()).collect()
    }
}

/// Binds `addrs`, or adopts socket-activated descriptors when systemd passed any (then `addrs` is
/// not bound: the socket unit owns the addresses). An unavailable loopback address (no IPv6) is
/// skipped with a warning; anything else that cannot be bound is an error naming the key.
pub fn bind(addrs: &[SocketAddr], activated: Vec<OwnedFd>) -> Result<Listeners> {
    let mut listeners = Listeners::default();
    if !activated.is_empty() {
        for fd in activated {
            adopt(fd, &mut listeners)?;
        }
        return Ok(listeners);
    }
    for addr in addrs {
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => {
                listeners.tcp.push(TcpSpec { listener, loopback: peer::is_loopback(addr.ip()) });
            }
            Err(e)
                if peer::is_loopback(addr.ip())
                    && matches!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)) =>
            {
                tracing::warn!(%addr, error = %e, "loopback address not available; not listening on it");
            }
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "cannot listen on {addr} (http.listen): {e}{}",
                    if e.kind() == std::io::ErrorKind::AddrInUse {
                        "; another server (Ollama?) uses it: stop it or change http.listen"
                    } else {
                        ""
                    }
                )));
            }
        }
    }
    Ok(listeners)
}

fn adopt(fd: OwnedFd, listeners: &mut Listeners) -> Result<()> {
    use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getsockname};
    let local: SockaddrStorage = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))
        .map_err(|e| Error::Internal(format!("getsockname: {e}")))?;
    match local.family() {
        Some(AddressFamily::Unix) => {
            listeners
                .unix
                .push(UnixSpec { listener: std::os::unix::net::UnixListener::from(fd), owner: None });
        }
        Some(AddressFamily::Inet | AddressFamily::Inet6) => {
            let listener = std::net::TcpListener::from(fd);
            let addr = listener.local_addr().map_err(Error::io("read an activated socket's address"))?;
            listeners.tcp.push(TcpSpec { listener, loopback: peer::is_loopback(addr.ip()) });
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "activated http socket has unsupported family {other:?}"
            )));
        }
    }
    Ok(())
}

/// A TCP listener whose connections carry their owner.
#[derive(Debug)]
pub struct OwnedTcpListener {
    inner: TcpListener,
    tokens_required: bool,
}

impl OwnedTcpListener {
    /// Registers a bound listener with the runtime.
    pub fn new(spec: TcpSpec) -> Result<Self> {
        spec.listener.set_nonblocking(true).map_err(Error::io("make an HTTP socket non-blocking"))?;
        let inner = TcpListener::from_std(spec.listener).map_err(Error::io("register an HTTP socket"))?;
        Ok(Self { inner, tokens_required: !spec.loopback })
    }
}

impl Listener for OwnedTcpListener {
    type Io = TcpStream;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer_addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_error(error).await;
                    continue;
                }
            };
            let Ok(local) = stream.local_addr() else { continue };
            let _ = stream.set_nodelay(true);
            // Only a loopback peer is on this machine, where the kernel can name its owner.
            let owner = if peer::is_loopback(peer_addr.ip()) {
                tokio::task::spawn_blocking(move || peer::tcp_owner(local, peer_addr)).await.ok().flatten()
            } else {
                None
            };
            let info = ConnInfo::Tcp { local, peer: peer_addr, owner, tokens_required: self.tokens_required };
            return (stream, info);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        let local = self.inner.local_addr()?;
        Ok(ConnInfo::Tcp { local, peer: local, owner: None, tokens_required: self.tokens_required })
    }
}

/// A unix listener whose connections carry SO_PEERCRED.
#[derive(Debug)]
pub struct CredUnixListener {
    inner: UnixListener,
    owner: Option<u32>,
}

impl CredUnixListener {
    /// Registers a bound listener with the runtime.
    pub fn new(spec: UnixSpec) -> Result<Self> {
        spec.listener.set_nonblocking(true).map_err(Error::io("make an HTTP socket non-blocking"))?;
        let inner = UnixListener::from_std(spec.listener).map_err(Error::io("register an HTTP socket"))?;
        Ok(Self { inner, owner: spec.owner })
    }
}

impl Listener for CredUnixListener {
    type Io = UnixStream;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, _)) => {
                    let cred = stream.peer_cred().ok().map(|c| (c.uid(), c.gid(), c.pid()));
                    return (stream, ConnInfo::Unix { cred, owner: self.owner });
                }
                Err(error) => accept_error(error).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(ConnInfo::Unix { cred: None, owner: self.owner })
    }
}

async fn accept_error(error: std::io::Error) {
    // Out of descriptors and the like: back off instead of spinning.
    tracing::warn!(%error, "accepting an HTTP connection failed");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

impl Connected<IncomingStream<'_, OwnedTcpListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, OwnedTcpListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl Connected<IncomingStream<'_, CredUnixListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, CredUnixListener>) -> Self {
        stream.remote_addr().clone()
    }
}
