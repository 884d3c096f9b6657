//! A model registry written for the tests (axum on 127.0.0.1): the Ollama registry protocol
//! (`/v2/<ns>/<model>/manifests/<tag>`, `/v2/<ns>/<model>/blobs/<digest>`, a bearer-token
//! challenge answered at `/token`, blob redirects to a second "CDN" listener on another port,
//! Range requests), the Hugging Face layout (`/hf/api/models/<owner>/<repo>/tree/main` and
//! `/hf/<owner>/<repo>/resolve/main/<file>`), and plain files (`/files/<name>`). It misbehaves on
//! demand ([`Fault`]) and logs every request ([`Hit`]). Also here: starting a daemon pointed at it
//! and restarting one on the same directories.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::{Daemon, DaemonOptions, test_dir};

/// The token the registry hands out and then requires.
pub const TOKEN: &str = "test-registry-token";

/// A way to misbehave, for one blob (by digest) or every blob (`"*"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer Range requests with 200 and the whole blob.
    IgnoreRange,
    /// 403 with an HTML page.
    ForbiddenHtml,
    /// Send half of what was asked, then end the body cleanly.
    Truncate,
    /// Send this many bytes, then nothing (the connection stays open).
    Stall(usize),
    /// Send at about this many bytes per second.
    Throttle(usize),
    /// Send bytes that do not match the digest (same length).
    Corrupt,
    /// 500.
    ServerError,
}

/// One request the registry saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// "main" or "cdn".
    pub listener: &'static str,
    /// The request path.
    pub path: String,
    /// Its Range header.
    pub range: Option<String>,
    /// Its Authorization header.
    pub authorization: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    manifests: Mutex<HashMap<String, Vec<u8>>>,
    blobs: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    hf: Mutex<HashMap<String, Vec<(String, String)>>>,
    files: Mutex<HashMap<String, String>>,
    faults: Mutex<HashMap<String, Fault>>,
    manifest_fault: Mutex<Option<Fault>>,
    hits: Mutex<Vec<Hit>>,
    require_token: AtomicBool,
    redirect: AtomicBool,
    hf_token: Mutex<Option<String>>,
    main: Mutex<Option<SocketAddr>>,
    cdn: Mutex<Option<SocketAddr>>,
}

/// The running test registry.
#[derive(Debug)]
pub struct TestRegistry {
    /// The registry's address.
    pub addr: SocketAddr,
    /// The blob host it redirects to.
    pub cdn: SocketAddr,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl TestRegistry {
    /// Starts the registry and its CDN on two loopback ports.
    pub fn start() -> TestRegistry {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("registry runtime");
        let shared = Arc::new(Shared::default());
        let bind = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            l
        };
        let (main, cdn) = (bind(), bind());
        let (addr, cdn_addr) = (main.local_addr().unwrap(), cdn.local_addr().unwrap());
        *shared.main.lock().unwrap() = Some(addr);
        *shared.cdn.lock().unwrap() = Some(cdn_addr);
        let main_router = Router::new()
            .route("/v2/{ns}/{model}/manifests/{tag}", get(manifest))
            .route("/v2/{ns}/{model}/blobs/{digest}", get(registry_blob))
            .route("/token", get(token))
            .route("/hf/api/models/{owner}/{repo}/tree/main", get(hf_tree))
            .route("/hf/{owner}/{repo}/resolve/main/{*file}", get(hf_resolve))
            .route("/files/{name}", get(file))
            .with_state(Arc::clone(&shared));
        let cdn_router = Router::new().route("/cdn/{digest}", get(cdn_blob)).with_state(Arc::clone(&shared));
        runtime.spawn(async move {
            let l = tokio::net::TcpListener::from_std(main).unwrap();
            axum::serve(l, main_router).await.unwrap();
        });
        runtime.spawn(async move {
            let l = tokio::net::TcpListener::from_std(cdn).unwrap();
            axum::serve(l, cdn_router).await.unwrap();
        });
        TestRegistry { addr, cdn: cdn_addr, shared, _runtime: runtime }
    }

    /// The `[store]` configuration pointing a daemon at this registry (both hosts allowed over
    /// plain http), plus `extra` lines for the same section.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[store]\nregistry = \"{}\"\nhf_endpoint = \"http://{}/hf\"\ninsecure_hosts = [\"{}\", \"{}\"]\nmin_free_space = \"0\"\n{extra}\n",
            self.addr, self.addr, self.addr, self.cdn
        )
    }

    /// Adds a blob; returns its digest.
    pub fn put_blob(&self, bytes: Vec<u8>) -> String {
        let digest = sha256(&bytes);
        self.shared.blobs.lock().unwrap().insert(digest.clone(), Arc::new(bytes));
        digest
    }

    /// Publishes a model: `name` is `model:tag` or `ns/model:tag`; `layers` are (media type,
    /// bytes). A config blob is added. Returns the manifest's digest.
    pub fn publish(&self, name: &str, layers: &[(&str, Vec<u8>)]) -> String {
        let config = self.put_blob(br#"{"model_format":"gguf","model_family":"llama"}"#.to_vec());
        let config_size = self.blob(&config).len();
        let layer_json: Vec<serde_json::Value> = layers
            .iter()
            .map(|(media, bytes)| {
                let digest = self.put_blob(bytes.clone());
                serde_json::json!({"mediaType": media, "digest": digest, "size": bytes.len()})
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config, "size": config_size},
            "layers": layer_json,
        });
        self.publish_raw(name, &manifest.to_string())
    }

    /// Publishes a manifest as given (for hostile manifests). Returns its digest.
    pub fn publish_raw(&self, name: &str, body: &str) -> String {
        let key = if name.contains('/') { name.to_string() } else { format!("library/{name}") };
        let key = if key.contains(':') { key } else { format!("{key}:latest") };
        self.shared.manifests.lock().unwrap().insert(key, body.as_bytes().to_vec());
        sha256(body.as_bytes())
    }

    /// A blob's bytes.
    pub fn blob(&self, digest: &str) -> Arc<Vec<u8>> {
        Arc::clone(&self.shared.blobs.lock().unwrap()[digest])
    }

    /// Adds a GGUF to a Hugging Face repository (`owner/repo`).
    pub fn hf_publish(&self, repo: &str, path: &str, bytes: Vec<u8>) -> String {
        let digest = self.put_blob(bytes);
        self.shared
            .hf
            .lock()
            .unwrap()
            .entry(repo.to_string())
            .or_default()
            .push((path.to_string(), digest.clone()));
        digest
    }

    /// Requires `Authorization: Bearer <token>` on the Hugging Face routes.
    pub fn hf_require_token(&self, token: Option<&str>) {
        *self.shared.hf_token.lock().unwrap() = token.map(str::to_string);
    }

    /// Serves `bytes` at `/files/<name>`; returns the digest.
    pub fn serve_file(&self, name: &str, bytes: Vec<u8>) -> String {
        let digest = self.put_blob(bytes);
        self.shared.files.lock().unwrap().insert(name.to_string(), digest.clone());
        digest
    }

    /// Misbehave for `digest` (or `"*"`, every blob).
    pub fn fault(&self, digest: &str, fault: Fault) {
        self.shared.faults.lock().unwrap().insert(digest.to_string(), fault);
    }

    /// Misbehave when serving manifests.
    pub fn manifest_fault(&self, fault: Option<Fault>) {
        *self.shared.manifest_fault.lock().unwrap() = fault;
    }

    /// Behave again.
    pub fn clear_faults(&self) {
        self.shared.faults.lock().unwrap().clear();
        *self.shared.manifest_fault.lock().unwrap() = None;
    }

    /// Answer registry requests with a bearer-token challenge unless they carry the token.
    pub fn require_token(&self, on: bool) {
        self.shared.require_token.store(on, Ordering::SeqCst);
    }

    /// Redirect blob requests to the CDN listener.
    pub fn redirect_blobs(&self, on: bool) {
        self.shared.redirect.store(on, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    /// Requests that fetched bytes of `digest` (registry, CDN, Hugging Face or file routes).
    pub fn blob_gets(&self, digest: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.path.ends_with(digest) && !h.path.contains("/manifests/"))
            .collect()
    }

    /// Forgets the request log.
    pub fn clear_hits(&self) {
        self.shared.hits.lock().unwrap().clear();
    }
}

fn log(shared: &Shared, listener: &'static str, path: String, headers: &HeaderMap) {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    shared.hits.lock().unwrap().push(Hit {
        listener,
        path,
        range: text(header::RANGE),
        authorization: text(header::AUTHORIZATION),
    });
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    !shared.require_token.load(Ordering::SeqCst)
        || headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {TOKEN}"))
}

fn challenge(shared: &Shared, repo: &str) -> Response {
    let main = shared.main.lock().unwrap().unwrap();
    let value = format!(
        "Bearer realm=\"http://{main}/token\",service=\"test-registry\",scope=\"repository:{repo}:pull\""
    );
    let mut headers = HeaderMap::new();
    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_str(&value).unwrap());
    (
        StatusCode::UNAUTHORIZED,
        headers,
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
    )
        .into_response()
}

fn forbidden_html() -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    (
        StatusCode::FORBIDDEN,
        headers,
        "<html>\n<body><h1>403 Forbidden</h1><script>alert(1)</script></body>\n</html>\n",
    )
        .into_response()
}

async fn manifest(
    State(shared): State<Arc<Shared>>,
    UrlPath((ns, model, tag)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    log(&shared, "main", format!("/v2/{ns}/{model}/manifests/{tag}"), &headers);
    if !authorized(&shared, &headers) {
        return challenge(&shared, &format!("{ns}/{model}"));
    }
    match shared.manifest_fault.lock().unwrap().clone() {
        Some(Fault::ForbiddenHtml) => return forbidden_html(),
        Some(Fault::ServerError) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        _ => {}
    }
    let key = format!("{ns}/{model}:{tag}");
    match shared.manifests.lock().unwrap().get(&key) {
        Some(body) => {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json"),
            );
            (StatusCode::OK, headers, body.clone()).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
            .into_response(),
    }
}

async fn token(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    log(&shared, "main", format!("/token?scope={}", q.get("scope").cloned().unwrap_or_default()), &headers);
    if q.get("service").map(String::as_str) != Some("test-registry") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    axum::Json(serde_json::json!({ "token": TOKEN })).into_response()
}

async fn registry_blob(
    State(shared): State<Arc<Shared>>,
    UrlPath((ns, model, digest)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    log(&shared, "main", format!("/v2/{ns}/{model}/blobs/{digest}"), &headers);
    if !authorized(&shared, &headers) {
        return challenge(&shared, &format!("{ns}/{model}"));
    }
    if shared.redirect.load(Ordering::SeqCst) {
        let cdn = shared.cdn.lock().unwrap().unwrap();
        let mut out = HeaderMap::new();
        out.insert(
            header::LOCATION,
            HeaderValue::from_str(&format!("http://{cdn}/cdn/{digest}?signed=1")).unwrap(),
        );
        return (StatusCode::TEMPORARY_REDIRECT, out).into_response();
    }
    serve_blob(&shared, &digest, &headers)
}

async fn cdn_blob(
    State(shared): State<Arc<Shared>>,
    UrlPath(digest): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    log(&shared, "cdn", format!("/cdn/{digest}"), &headers);
    serve_blob(&shared, &digest, &headers)
}

async fn file(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let digest = shared.files.lock().unwrap().get(&name).cloned();
    log(&shared, "main", format!("/files/{name}#{}", digest.clone().unwrap_or_default()), &headers);
    match digest {
        Some(d) => serve_blob(&shared, &d, &headers),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn hf_authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    match shared.hf_token.lock().unwrap().as_ref() {
        None => true,
        Some(t) => {
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {t}"))
        }
    }
}

async fn hf_tree(
    State(shared): State<Arc<Shared>>,
    UrlPath((owner, repo)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    log(&shared, "main", format!("/hf/api/models/{owner}/{repo}/tree/main"), &headers);
    if !hf_authorized(&shared, &headers) {
        return (StatusCode::UNAUTHORIZED, r#"{"error":"Invalid credentials in Authorization header"}"#)
            .into_response();
    }
    let files = shared.hf.lock().unwrap().get(&format!("{owner}/{repo}")).cloned();
    let Some(files) = files else {
        return (StatusCode::NOT_FOUND, r#"{"error":"Repository not found"}"#).into_response();
    };
    let blobs = shared.blobs.lock().unwrap();
    let mut entries =
        vec![serde_json::json!({"type": "file", "path": "README.md", "size": 10, "oid": "abc"})];
    for (path, digest) in files {
        let size = blobs[&digest].len();
        entries.push(serde_json::json!({
            "type": "file", "path": path, "size": size, "oid": "0000",
            "lfs": {"oid": digest.trim_start_matches("sha256:"), "size": size, "pointerSize": 134},
        }));
    }
    axum::Json(serde_json::Value::Array(entries)).into_response()
}

async fn hf_resolve(
    State(shared): State<Arc<Shared>>,
    UrlPath((owner, repo, file)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    log(&shared, "main", format!("/hf/{owner}/{repo}/resolve/main/{file}"), &headers);
    if !hf_authorized(&shared, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let digest = shared
        .hf
        .lock()
        .unwrap()
        .get(&format!("{owner}/{repo}"))
        .and_then(|files| files.iter().find(|(p, _)| *p == file).map(|(_, d)| d.clone()));
    let Some(digest) = digest else { return StatusCode::NOT_FOUND.into_response() };
    let cdn = shared.cdn.lock().unwrap().unwrap();
    let mut out = HeaderMap::new();
    out.insert(header::LOCATION, HeaderValue::from_str(&format!("http://{cdn}/cdn/{digest}")).unwrap());
    (StatusCode::FOUND, out).into_response()
}

/// `bytes=a-b` or `bytes=a-` within `len`.
fn parse_range(headers: &HeaderMap, len: usize) -> Option<(usize, usize)> {
    let text = headers.get(header::RANGE)?.to_str().ok()?;
    let (a, b) = text.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = a.parse().ok()?;
    let end: usize = if b.is_empty() { len.checked_sub(1)? } else { b.parse().ok()? };
    (start <= end && end < len).then_some((start, end + 1))
}

fn serve_blob(shared: &Shared, digest: &str, headers: &HeaderMap) -> Response {
    let Some(data) = shared.blobs.lock().unwrap().get(digest).cloned() else {
        return (StatusCode::NOT_FOUND, r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#)
            .into_response();
    };
    let fault = {
        let faults = shared.faults.lock().unwrap();
        faults.get(digest).or_else(|| faults.get("*")).cloned()
    };
    let len = data.len();
    let range = if fault == Some(Fault::IgnoreRange) { None } else { parse_range(headers, len) };
    let (status, start, end) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
        None => (StatusCode::OK, 0, len),
    };
    let mut out = HeaderMap::new();
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        out.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)).unwrap(),
        );
    }
    let mut body = data[start..end].to_vec();
    match fault {
        Some(Fault::ForbiddenHtml) => return forbidden_html(),
        Some(Fault::ServerError) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Some(Fault::Corrupt) => {
            if let Some(b) = body.last_mut() {
                *b ^= 0xff;
            }
        }
        Some(Fault::Truncate) => {
            // No Content-Length: the body just ends early.
            body.truncate(body.len() / 2);
            let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(body)]);
            return (status, out, Body::from_stream(stream)).into_response();
        }
        Some(Fault::Stall(after)) => {
            out.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            let first = body[..after.min(body.len())].to_vec();
            let stream =
                futures::stream::iter(vec![Ok::<_, std::io::Error>(first)]).chain(futures::stream::pending());
            return (status, out, Body::from_stream(stream)).into_response();
        }
        Some(Fault::Throttle(per_second)) => {
            out.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            let chunk = (per_second / 20).max(1);
            let pieces: Vec<Vec<u8>> = body.chunks(chunk).map(<[u8]>::to_vec).collect();
            let stream = futures::stream::iter(pieces).then(|piece| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, std::io::Error>(piece)
            });
            return (status, out, Body::from_stream(stream)).into_response();
        }
        Some(Fault::IgnoreRange) | None => {}
    }
    (status, out, body).into_response()
}

/// Starts a daemon whose configuration file holds `config` (`""` for the defaults).
pub fn start_daemon(config: &str, options: &DaemonOptions) -> Daemon {
    let (dir, _hyperctl, hyperllamad) = test_dir();
    std::fs::write(dir.path().join("hyperllama.toml"), config).unwrap();
    spawn_on(dir, &hyperllamad, options)
}

fn spawn_on(dir: tempfile::TempDir, hyperllamad: &Path, options: &DaemonOptions) -> Daemon {
    let log = dir.path().join("daemon.log");
    let socket = dir.path().join("run/control.sock");
    let mut command = Daemon::command(dir.path(), hyperllamad, options);
    let child = spawn_retrying(&mut command, &log);
    Daemon::adopt(child, dir, socket, log)
}

/// Spawns with output to `log`, retrying while the binary is "busy": another test thread may be
/// forking while this test's copy of the binary is still open for writing (ETXTBSY).
fn spawn_retrying(command: &mut std::process::Command, log: &Path) -> std::process::Child {
    let mut attempts = 0;
    loop {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        command.stdout(file.try_clone().unwrap()).stderr(file).stdin(std::process::Stdio::null());
        match command.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("spawn hyperllamad: {e}"),
        }
    }
}

/// A daemon's directories while it is not running.
#[derive(Debug)]
pub struct Stopped {
    dir: tempfile::TempDir,
    hyperllamad: PathBuf,
}

impl Stopped {
    /// The test directory (state, run, log, configuration).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts a daemon on these directories again.
    pub fn start(self, options: &DaemonOptions) -> Daemon {
        spawn_on(self.dir, &self.hyperllamad, options)
    }
}

/// Stops `daemon` (SIGKILL when `kill`, else SIGTERM) and keeps its directories.
pub fn stop(mut daemon: Daemon, kill: bool) -> Stopped {
    daemon.signal(if kill { nix::sys::signal::Signal::SIGKILL } else { nix::sys::signal::Signal::SIGTERM });
    daemon.wait(Duration::from_secs(30)).expect("the daemon stops");
    let hyperllamad = daemon.hyperllamad.clone();
    let dir = std::mem::replace(&mut daemon.dir, tempfile::tempdir().unwrap());
    drop(daemon);
    Stopped { dir, hyperllamad }
}

/// Stops `daemon` (SIGKILL when `kill`) and starts a new one on the same directories.
pub fn restart(daemon: Daemon, options: &DaemonOptions, kill: bool) -> Daemon {
    stop(daemon, kill).start(options)
}

/// The blob directory of a daemon.
pub fn blobs_dir(daemon: &Daemon) -> PathBuf {
    daemon.dir.path().join("state/blobs")
}

/// Every file in the blob directory: (name, whether its sha256 matches its name).
pub fn blob_files(daemon: &Daemon) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(blobs_dir(daemon)).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        let ok = name == format!("sha256-{}", hex::encode(Sha256::digest(&bytes)));
        out.push((name, ok));
    }
    out.sort();
    out
}

/// `PRAGMA integrity_check` of a daemon's database, and the number of tags in it.
pub fn integrity_check(daemon: &Daemon) -> (String, i64) {
    let path = daemon.dir.path().join("state/hyperllama.db");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use sqlx::ConnectOptions as _;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.unwrap();
        let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await.unwrap();
        let tags: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tags").fetch_one(&mut conn).await.unwrap();
        (check, tags)
    })
}

/// Every path under `root`, for checking that nothing appeared outside the store.
pub fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}
