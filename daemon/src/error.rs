//! The daemon's error type and its one mapping to gRPC status codes and to HTTP status codes.
//! Messages are single actionable lines; internal details go to the log.

use axum::http::StatusCode;
use tonic::Code;

/// gRPC metadata key carrying [`Error::http_status`] through a `tonic::Status`, so the HTTP API
/// answers errors that crossed a stream with the same status as direct ones.
pub const HTTP_STATUS_KEY: &str = "x-hyperllama-http-status";
/// gRPC metadata key carrying [`Error::retry_after`] in seconds.
pub const RETRY_AFTER_KEY: &str = "retry-after";

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
    /// The caller is over one of their limits (HTTP 429).
    #[error("too many requests: {message}; retry in {retry_after}s")]
    UserOverQuota { message: String, retry_after: u64 },
    /// Every queue is full (HTTP 503).
    #[error("hyperllamad is at capacity; retry in {retry_after}s")]
    ServiceFull { retry_after: u64 },
    /// A model cannot be loaded in the memory it may use.
    #[error("{model} does not fit: it needs {needed} but {available} is available{hint}")]
    DoesNotFit { model: String, needed: String, available: String, hint: String },
    /// A model's runner failed to start or died serving the request.
    #[error("{0}")]
    Runner(String),
    /// A model file or manifest is malformed or hostile (bad GGUF, digest mismatch).
    #[error("{0}")]
    InvalidModel(String),
    /// A registry or download failed (HTTP error, timeout, stall).
    #[error("{0}")]
    Registry(String),
    /// The store's size limit or the free space does not allow a pull or create.
    #[error("{0}")]
    StoreFull(String),
    /// A model in the store whose files are missing or damaged.
    #[error("{0}")]
    BrokenModel(String),
    /// The caller may not pull; the message says who can.
    #[error("{0}")]
    PullDenied(String),
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
            Error::ShuttingDown | Error::ServiceFull { .. } | Error::Runner(_) => Code::Unavailable,
            Error::UserOverQuota { .. } | Error::DoesNotFit { .. } => Code::ResourceExhausted,
            Error::NotFound(_) => Code::NotFound,
            Error::InvalidArgument(_) | Error::InvalidModel(_) => Code::InvalidArgument,
            Error::Registry(_) => Code::Aborted,
            Error::StoreFull(_) => Code::ResourceExhausted,
            Error::BrokenModel(_) => Code::FailedPrecondition,
            Error::PullDenied(_) => Code::PermissionDenied,
            Error::Database(_) | Error::Migrate(_) | Error::Io { .. } | Error::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Error::PermissionDenied { .. } => StatusCode::FORBIDDEN,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Error::ShuttingDown | Error::ServiceFull { .. } | Error::Runner(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::UserOverQuota { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::DoesNotFit { .. } => StatusCode::INSUFFICIENT_STORAGE,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::InvalidArgument(_) | Error::InvalidModel(_) => StatusCode::BAD_REQUEST,
            Error::Registry(_) => StatusCode::BAD_GATEWAY,
            Error::StoreFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            Error::BrokenModel(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::PullDenied(_) => StatusCode::FORBIDDEN,
            Error::Database(_) | Error::Migrate(_) | Error::Io { .. } | Error::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// Seconds after which a retry may succeed (the `Retry-After` header), for overload errors.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::UserOverQuota { retry_after, .. } | Error::ServiceFull { retry_after } => {
                Some(*retry_after)
            }
            Error::ShuttingDown => Some(5),
            _ => None,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        if error.grpc_code() == Code::Internal {
            tracing::error!(%error, "request failed");
        }
        let mut status = tonic::Status::new(error.grpc_code(), error.to_string());
        let meta = status.metadata_mut();
        meta.insert(HTTP_STATUS_KEY, error.http_status().as_u16().into());
        if let Some(secs) = error.retry_after() {
            meta.insert(RETRY_AFTER_KEY, secs.into());
        }
        status
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
    fn overload_maps_to_429_and_503_with_retry_after() {
        let over = Error::UserOverQuota { message: "x".into(), retry_after: 7 };
        assert_eq!((over.http_status(), over.retry_after()), (StatusCode::TOO_MANY_REQUESTS, Some(7)));
        let full = Error::ServiceFull { retry_after: 2 };
        assert_eq!((full.http_status(), full.retry_after()), (StatusCode::SERVICE_UNAVAILABLE, Some(2)));
        let status: tonic::Status = over.into();
        assert_eq!(status.metadata().get(HTTP_STATUS_KEY).unwrap(), "429");
        assert_eq!(status.metadata().get(RETRY_AFTER_KEY).unwrap(), "7");
        let fit = Error::DoesNotFit {
            model: "m".into(),
            needed: "1".into(),
            available: "0".into(),
            hint: String::new(),
        };
        assert_eq!(fit.http_status(), StatusCode::INSUFFICIENT_STORAGE);
    }

    #[test]
    fn shutting_down_is_unavailable() {
        assert_eq!(Error::ShuttingDown.grpc_code(), Code::Unavailable);
    }
}
