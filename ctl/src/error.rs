//! hyperctl's error type and its one mapping to exit codes and one-line messages.

use std::path::PathBuf;

use tonic::Code;

/// Exit codes (also listed in `hyperctl --help`).
pub mod exit {
    /// Any other failure.
    pub const FAILURE: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// hyperllamad cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// Refused: the caller lacks the role.
    pub const DENIED: u8 = 4;
    /// The named model, user or token does not exist.
    pub const NOT_FOUND: u8 = 5;
    /// The daemon is shutting down or too busy; retry later.
    pub const UNAVAILABLE: u8 = 6;
    /// This version of hyperllamad cannot do it yet.
    pub const UNSUPPORTED: u8 = 7;
}

/// Everything a hyperctl command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No daemon at the address.
    #[error(
        "cannot reach hyperllamad at {address} — is the service running? try `systemctl status hyperllama` (or `hyperctl serve` to run one yourself)"
    )]
    Unreachable { address: String },
    /// The daemon answered with an error.
    #[error("{}", .0.message())]
    Rpc(tonic::Status),
    /// A local file could not be used.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// Bad arguments detected after parsing.
    #[error("{0}")]
    Usage(String),
    /// Local I/O (terminal, stdin).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<tonic::Status> for CtlError {
    fn from(status: tonic::Status) -> Self {
        CtlError::Rpc(status)
    }
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Unreachable { .. } => exit::UNREACHABLE,
            CtlError::Usage(_) => exit::USAGE,
            CtlError::Rpc(status) => match status.code() {
                Code::PermissionDenied | Code::Unauthenticated => exit::DENIED,
                Code::NotFound => exit::NOT_FOUND,
                Code::Unavailable | Code::ResourceExhausted => exit::UNAVAILABLE,
                Code::Unimplemented => exit::UNSUPPORTED,
                _ => exit::FAILURE,
            },
            CtlError::File { .. } | CtlError::Io(_) => exit::FAILURE,
        }
    }
}

/// Result with hyperctl's error.
pub type Result<T, E = CtlError> = std::result::Result<T, E>;
