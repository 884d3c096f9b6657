//! Connecting to hyperllamad: a unix socket path (default `/run/hyperllama/control.sock`) or an
//! `http://host:port` URL, from `--host` or `HYPERLLAMA_HOST`.

use hyper_util::rt::TokioIo;
use hyperllama_proto::v1::control_client::ControlClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{CtlError, Result};

/// The default control socket of the system service.
pub const DEFAULT_SOCKET: &str = "/run/hyperllama/control.sock";

/// A connected control client.
pub type Client = ControlClient<Channel>;

/// Connects to `address` (a path or an http(s) URL).
pub async fn connect(address: &str) -> Result<Client> {
    let unreachable = || CtlError::Unreachable { address: address.to_string() };
    let channel = if address.starts_with("http://") || address.starts_with("https://") {
        Endpoint::from_shared(address.to_string())
            .map_err(|_| CtlError::Usage(format!("`{address}` is not a valid URL")))?
            .connect()
            .await
            .map_err(|_| unreachable())?
    } else {
        let path = address.strip_prefix("unix://").unwrap_or(address).to_string();
        // The URI is required by the API but unused: the connector always dials the socket.
        Endpoint::from_static("http://hyperllamad.invalid")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            }))
            .await
            .map_err(|_| unreachable())?
    };
    Ok(ControlClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}
