//! The per-user HTTP endpoints: Ollama's API under `/api`, OpenAI's under `/v1`, plus `/metrics`
//! (Prometheus) and `/health`. Every request passes [`auth::guard`] (Host and Origin allowlists,
//! then identity from the kernel or a token) and runs as its caller through the same
//! [`crate::inference`] functions as the gRPC control plane; errors use each API's own shape
//! ([`error`]).
//!
//! Listeners are bound before privileges drop ([`listen::bind`]) and served by [`serve`] until
//! the drain starts; per-user unix sockets are made on request ([`user_sockets`]).

pub mod auth;
pub mod error;
pub mod listen;
mod ollama;
mod ollama_store;
mod openai;
pub mod peer;
mod stream;
mod tools;
pub mod user_sockets;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, head, post};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::error::{ApiError, Dialect};
use self::listen::{ConnInfo, CredUnixListener, Listeners, OwnedTcpListener, UnixSpec};
use crate::error::{Error, Result};
use crate::state::Shared;

/// Shared by every HTTP handler.
#[derive(Debug)]
pub struct Api {
    /// The daemon's state.
    pub shared: Arc<Shared>,
    /// Our TCP addresses (always acceptable Host values).
    pub tcp_addrs: Vec<SocketAddr>,
}

/// The running HTTP service: its listeners' tasks and how to stop them.
#[derive(Debug)]
pub struct HttpServer {
    api: Arc<Api>,
    router: Router,
    stop: CancellationToken,
    tasks: std::sync::Mutex<JoinSet<()>>,
    users: user_sockets::UserSockets,
}

/// The server, for the control plane's `Endpoint` RPC (one per process, set by [`serve`]).
static SERVER: OnceLock<Arc<HttpServer>> = OnceLock::new();

/// The HTTP server of this process, once serving.
pub fn server() -> Option<Arc<HttpServer>> {
    SERVER.get().cloned()
}

/// Builds the router over `api`.
pub fn router(api: Arc<Api>, max_body: usize) -> Router {
    let blobs = Router::new()
        .route("/api/blobs/{digest}", head(ollama_store::blob_exists).post(ollama_store::blob_upload))
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/", get(root).head(root))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama_store::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama_store::show))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/api/pull", post(ollama_store::pull))
        .route("/api/push", post(ollama_store::push))
        .route("/api/create", post(ollama_store::create))
        .route("/api/copy", post(ollama_store::copy))
        .route("/api/delete", delete(ollama_store::delete))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*id}", get(openai::model))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(max_body))
        .merge(blobs)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&api), auth::guard))
        .layer(middleware::from_fn(request_id))
        .with_state(api)
}

/// Serves `listeners` (and the per-user sockets already in the socket directory) until `stop`
/// fires. Returns once every listener has stopped accepting and its connections closed.
pub async fn serve(listeners: Listeners, shared: Arc<Shared>, stop: CancellationToken) -> Result<()> {
    let config = shared.config();
    let max_body = config.http.max_body_bytes().map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let api = Arc::new(Api { tcp_addrs: listeners.tcp_addrs(), shared: Arc::clone(&shared) });
    let server = Arc::new(HttpServer {
        router: router(Arc::clone(&api), max_body),
        api,
        stop: stop.clone(),
        tasks: std::sync::Mutex::new(JoinSet::new()),
        users: user_sockets::UserSockets::new(config.user_socket_dir(), shared.service_user.clone()),
    });
    if SERVER.set(Arc::clone(&server)).is_err() {
        return Err(Error::Internal("the HTTP server was started twice".into()));
    }
    for spec in listeners.tcp {
        if let Ok(addr) = spec.listener.local_addr() {
            tracing::info!(%addr, tokens_required = !spec.loopback, "HTTP listening");
        }
        let listener = OwnedTcpListener::new(spec)?;
        server.spawn_tcp(listener);
    }
    for spec in listeners.unix {
        server.spawn_unix(CredUnixListener::new(spec)?);
    }
    server.users.restore(&server);
    stop.cancelled().await;
    let mut tasks = std::mem::take(&mut *server.tasks.lock().unwrap_or_else(|e| e.into_inner()));
    while tasks.join_next().await.is_some() {}
    Ok(())
}

impl HttpServer {
    fn spawn_tcp(&self, listener: OwnedTcpListener) {
        let app = self.router.clone().into_make_service_with_connect_info::<ConnInfo>();
        let stop = self.stop.clone();
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(error) = served {
                tracing::error!(%error, "HTTP listener failed");
            }
        });
    }

    /// Serves a unix listener; `stop_one` stops just this one (a removed per-user socket).
    fn spawn_unix_until(&self, listener: CredUnixListener, stop_one: CancellationToken) {
        let app = self.router.clone().into_make_service_with_connect_info::<ConnInfo>();
        let stop = self.stop.clone();
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).spawn(async move {
            let signal = async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = stop_one.cancelled() => {}
                }
            };
            if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(signal).await {
                tracing::error!(%error, "HTTP unix listener failed");
            }
        });
    }

    fn spawn_unix(&self, listener: CredUnixListener) {
        self.spawn_unix_until(listener, CancellationToken::new());
    }

    /// Makes (or with `remove`, removes) the per-user socket of `uid`; returns its path.
    pub fn user_endpoint(self: &Arc<Self>, uid: u32, remove: bool) -> Result<std::path::PathBuf> {
        if self.stop.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if remove { self.users.remove(uid) } else { self.users.open(self, uid) }
    }

    pub(crate) fn serve_user_socket(&self, spec: UnixSpec, stop_one: CancellationToken) -> Result<()> {
        self.spawn_unix_until(CredUnixListener::new(spec)?, stop_one);
        Ok(())
    }

    /// The TCP addresses served.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.api.tcp_addrs
    }
}

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(0);

/// A request id for logs and the `X-Request-Id` response header: the client's when it sent a
/// sane one, else a fresh one.
async fn request_id(request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_string);
    let id = given.unwrap_or_else(|| {
        format!("req-{:x}-{:x}", std::process::id(), NEXT_REQUEST.fetch_add(1, Ordering::Relaxed))
    });
    let span = tracing::info_span!(
        "http",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        user = tracing::field::Empty,
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn root() -> &'static str {
    "Ollama is running"
}

async fn health(State(api): State<Arc<Api>>) -> Response {
    if api.shared.lifecycle.accepting() {
        (StatusCode::OK, axum::Json(serde_json::json!({"status": "ok"}))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"status": "draining"})))
            .into_response()
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let mut text = crate::metrics::global().render(&api.shared);
    // Served engines (vLLM, MAX) keep their own metrics: scraped now, labelled with the model.
    let targets: Vec<_> = api
        .shared
        .residency
        .list()
        .iter()
        .map(|m| (m.name.clone(), m.runner().health.clone()))
        .filter(|(_, health)| !health.metrics_url.is_empty())
        .map(|(model, health)| crate::engine::served::metrics::Target {
            model,
            engine: health.engine,
            url: health.metrics_url,
        })
        .collect();
    text.push_str(&crate::engine::served::metrics::scrape(&targets, std::time::Duration::from_secs(2)).await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path().to_string();
    ApiError::new(StatusCode::NOT_FOUND, format!("no route {} {path}", request.method()))
        .into_dialect(Dialect::of_path(&path))
}

/// The metrics label for a model: its name as listings show it ("gemma3" → "gemma3:latest").
pub(crate) fn model_label(api: &Api, model: &str) -> String {
    let store = &api.shared.store;
    store.parse_name(model).map_or_else(|_| model.to_string(), |n| n.display(store.default_host()))
}

/// The metrics label for a caller: the user name with per-user metrics on, else none.
pub(crate) fn metrics_user(api: &Api, caller: &auth::Caller) -> Option<String> {
    api.shared.config().http.per_user_metrics.then(|| caller.who.user.clone())
}
