//! Request bodies and streamed responses: JSON bodies parsed with errors in the API's shape,
//! NDJSON (Ollama) and server-sent events (OpenAI, ending with `data: [DONE]`), and waiting for
//! the first event of an inference stream so that errors before any output (unknown model,
//! quota, prompt too long) get a real status code instead of a 200 with an error inside.

use std::convert::Infallible;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::control::RpcStream;

/// Parses a JSON request body (any content type, as Ollama does).
pub fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "request body too large (see http.max_body)")
        } else {
            ApiError::new(status, rejection.body_text())
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("missing request body"));
    }
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::bad_param(&path, format!("invalid value for `{path}`: {inner}"))
        }
    })
}

/// Waits for the first event: an error before any output becomes the response's status.
pub async fn first<T>(mut stream: RpcStream<T>) -> Result<(T, RpcStream<T>), ApiError> {
    match stream.next().await {
        Some(Ok(item)) => Ok((item, stream)),
        Some(Err(status)) => Err(status.into()),
        None => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the model ended the request without an answer",
        )),
    }
}

/// A response streaming one JSON object per line.
pub fn ndjson(lines: impl Stream<Item = serde_json::Value> + Send + 'static) -> Response {
    let body = lines.map(|value| {
        let mut line = serde_json::to_vec(&value).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response()
}

/// One server-sent event.
#[derive(Debug)]
pub enum Sse {
    /// `data: <json>`.
    Data(serde_json::Value),
    /// `data: [DONE]`.
    Done,
}

/// A response streaming server-sent events.
pub fn sse(events: impl Stream<Item = Sse> + Send + 'static) -> Response {
    let body = events.map(|event| {
        let text = match event {
            Sse::Data(value) => format!("data: {}\n\n", serde_json::to_string(&value).unwrap_or_default()),
            Sse::Done => "data: [DONE]\n\n".to_string(),
        };
        Ok::<_, Infallible>(Bytes::from(text))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(body),
    )
        .into_response()
}

/// Now, as Ollama writes times (RFC 3339 with nanoseconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// Unix seconds as RFC 3339.
pub fn rfc3339(unix_seconds: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix_seconds).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    crate::db::now()
}
