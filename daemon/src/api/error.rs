//! HTTP errors in the two wire shapes: Ollama's `{"error": "..."}` and OpenAI's
//! `{"error": {"message", "type", "param", "code"}}`. Statuses come from the daemon's one mapping
//! ([`crate::error::Error::http_status`]); a `tonic::Status` that crossed an inference stream
//! carries that status in its metadata.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{Error, HTTP_STATUS_KEY, RETRY_AFTER_KEY};

/// Which API's error shape to answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `/api/*` and everything else.
    Ollama,
    /// `/v1/*`.
    OpenAi,
}

impl Dialect {
    /// The dialect of a request path.
    pub fn of_path(path: &str) -> Dialect {
        if path == "/v1" || path.starts_with("/v1/") { Dialect::OpenAi } else { Dialect::Ollama }
    }
}

/// An error answered over HTTP.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// One actionable line.
    pub message: String,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// OpenAI's `param`, when one field is at fault.
    pub param: Option<String>,
    /// OpenAI's `code` (e.g. "model_not_found").
    pub code: Option<&'static str>,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after: None, param: None, code: None }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 400 naming the field at fault.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        Self { param: Some(param.to_string()), ..Self::bad_request(message) }
    }

    /// The response body in `dialect`.
    pub fn into_dialect(self, dialect: Dialect) -> Response {
        let body = match dialect {
            Dialect::Ollama => json!({ "error": self.message }),
            Dialect::OpenAi => json!({ "error": {
                "message": self.message,
                "type": openai_type(self.status),
                "param": self.param,
                "code": self.code.or_else(|| openai_code(self.status)),
            }}),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }

    /// The JSON object a stream carries when it fails after it started.
    pub fn stream_body(&self, dialect: Dialect) -> serde_json::Value {
        match dialect {
            Dialect::Ollama => json!({ "error": self.message }),
            Dialect::OpenAi => json!({ "error": {
                "message": self.message,
                "type": openai_type(self.status),
                "param": self.param,
                "code": self.code.or_else(|| openai_code(self.status)),
            }}),
        }
    }
}

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

fn openai_code(status: StatusCode) -> Option<&'static str> {
    match status.as_u16() {
        401 => Some("invalid_api_key"),
        429 => Some("rate_limit_exceeded"),
        _ => None,
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = error.http_status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(%error, "request failed");
        }
        let code = matches!(error, Error::NotFound(_)).then_some("model_not_found");
        ApiError { status, retry_after: error.retry_after(), message: error.to_string(), param: None, code }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let meta = status.metadata();
        let http = meta
            .get(HTTP_STATUS_KEY)
            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
            .and_then(|n| StatusCode::from_u16(n).ok())
            .unwrap_or_else(|| grpc_to_http(status.code()));
        let retry_after = meta.get(RETRY_AFTER_KEY).and_then(|v| v.to_str().ok()?.parse().ok());
        let code = (http == StatusCode::NOT_FOUND).then_some("model_not_found");
        ApiError { status: http, message: status.message().to_string(), retry_after, param: None, code }
    }
}

/// For statuses that did not come from an [`Error`] (the runner's own).
fn grpc_to_http(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::Aborted | Code::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answered in Ollama's shape (handlers under `/api`).
#[derive(Debug)]
pub struct OllamaError(pub ApiError);

/// An error answered in OpenAI's shape (handlers under `/v1`).
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl<E: Into<ApiError>> From<E> for OllamaError {
    fn from(e: E) -> Self {
        OllamaError(e.into())
    }
}

impl<E: Into<ApiError>> From<E> for OpenAiError {
    fn from(e: E) -> Self {
        OpenAiError(e.into())
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        self.0.into_dialect(Dialect::Ollama)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        self.0.into_dialect(Dialect::OpenAi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_survive_the_stream() {
        let status: tonic::Status = Error::UserOverQuota { message: "m".into(), retry_after: 3 }.into();
        let api = ApiError::from(status);
        assert_eq!((api.status, api.retry_after), (StatusCode::TOO_MANY_REQUESTS, Some(3)));
        let runner = ApiError::from(tonic::Status::invalid_argument("prompt is longer than the context"));
        assert_eq!(runner.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn shapes() {
        let e = ApiError::bad_param("messages", "empty");
        assert_eq!(e.stream_body(Dialect::Ollama), json!({"error": "empty"}));
        let openai = e.stream_body(Dialect::OpenAi);
        assert_eq!(openai["error"]["param"], "messages");
        assert_eq!(openai["error"]["type"], "invalid_request_error");
        assert_eq!(Dialect::of_path("/v1/models"), Dialect::OpenAi);
        assert_eq!(Dialect::of_path("/api/tags"), Dialect::Ollama);
    }
}
