//! The daemon's error type and its one mapping to gRPC status codes (the HTTP mapping joins it when
//! the HTTP API lands). Messages are single actionable lines; internal details go to the log.

use tonic::Code;

/// Everything a daemon operation can fail with, as a caller should see it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller lacks the role for this action.
    #[error(
        "permission denied: {action} needs root or membership in the group `{group}` \
         (an administrator can run `usermod -aG {group} <user>`)"
    )]
    PermissionDenied { action: &'static str, group: String },
    /// The caller could not be identified (no peer credentials).
    #[error("cannot identify the caller: {0}")]
    Unauthenticated(String),
    /// A feature that this version of hyperllamad does not have yet.
    #[error("{0} is not available in this version of hyperllamad")]
    NotImplemented(&'static str),
    /// The daemon is draining for shutdown.
    #[error("hyperllamad is shutting down and accepts no new work; retry once it has restarted")]
    ShuttingDown,
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A database migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// A bug or an unexpected state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// The gRPC code for this error.
    pub fn grpc_code(&self) -> Code {
        match self {
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::NotImplemented(_) => Code::Unimplemented,
            Error::ShuttingDown => Code::Unavailable,
            Error::NotFound(_) => Code::NotFound,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Database(_) | Error::Migrate(_) | Error::Io { .. } | Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        if error.grpc_code() == Code::Internal {
            tracing::error!(%error, "request failed");
        }
        tonic::Status::new(error.grpc_code(), error.to_string())
    }
}

/// Result with the daemon's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_names_the_group_and_maps_to_grpc() {
        let status: tonic::Status =
            Error::PermissionDenied { action: "deleting models", group: "hyperllama-admin".into() }.into();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status.message().contains("`hyperllama-admin`"));
        assert!(!status.message().contains('\n'));
    }

    #[test]
    fn shutting_down_is_unavailable() {
        assert_eq!(Error::ShuttingDown.grpc_code(), Code::Unavailable);
    }
}
