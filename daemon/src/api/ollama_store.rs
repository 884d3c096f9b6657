//! Ollama's model-store routes — `/api/tags`, `/api/show`, `/api/pull`, `/api/push`,
//! `/api/create`, `HEAD|POST /api/blobs/{digest}`, `/api/copy`, `DELETE /api/delete` — over the
//! shared store ([`crate::store`]). Mutations need what the gRPC calls need: an administrator
//! (pulls also members of `store.pull_groups`).
//!
//! `/api/create` takes Ollama's JSON (`from`, `files` of uploaded blob digests, `template`,
//! `system`, `parameters`, `messages`, `license`, `adapters`) or a Modelfile text, turns it into
//! a Modelfile whose files are `@file:<n>`, and streams the uploaded blobs from the store into
//! [`crate::store::create`], exactly as `hyperctl create` streams files it read as the user.

use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::Api;
use super::auth::Caller;
use super::error::{ApiError, Dialect, OllamaError};
use super::stream::{json_body, ndjson, rfc3339};
use crate::error::Error;
use crate::policy::{Action, authorize};
use crate::store::create::Upload;
use crate::store::digest::Digest;
use crate::store::modelfile::{self, Instruction};
use crate::store::{self, Progress, Requester, manifest};

type Result<T, E = OllamaError> = std::result::Result<T, E>;

/// A model as listings show it.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// Its name as shown, tag included.
    pub name: String,
    /// Unix seconds.
    pub modified_at: i64,
    /// What `/api/tags` says about it.
    pub tag: Value,
}

fn requester(caller: &Caller) -> Requester {
    Requester { uid: caller.who.uid, user: caller.who.user.clone() }
}

fn admit(api: &Api, caller: &Caller, action: Action) -> Result<crate::lifecycle::WorkGuard, ApiError> {
    authorize(&caller.who, action, api.shared.authority.admin_group())?;
    Ok(api.shared.lifecycle.begin()?)
}

fn details(architecture: &str, parameter_count: u64, quantization: &str) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": architecture,
        "families": if architecture.is_empty() { Value::Null } else { json!([architecture]) },
        "parameter_size": if parameter_count == 0 { String::new() } else { manifest::parameter_size(parameter_count) },
        "quantization_level": quantization,
    })
}

/// Every model in the store (a token's allowlist filters it).
pub async fn list(api: &Api, caller: &Caller) -> Result<Vec<ModelEntry>, ApiError> {
    let store = &api.shared.store;
    Ok(store
        .list()
        .await?
        .into_iter()
        .map(|m| {
            let name = store.display(&m.name);
            let info = m.weights_layer().and_then(|l| l.info.clone()).unwrap_or_default();
            let tag = json!({
                "name": name,
                "model": name,
                "modified_at": rfc3339(m.modified_at),
                "size": m.size,
                "digest": m.manifest.hex(),
                "details": details(&info.architecture, info.parameter_count, &info.quantization),
            });
            ModelEntry { name, modified_at: m.modified_at, tag }
        })
        .filter(|m| caller.check_model(&m.name).is_ok())
        .collect())
}

/// `GET /api/tags`.
pub async fn tags(State(api): State<Arc<Api>>, Extension(caller): Extension<Caller>) -> Result<Response> {
    let models: Vec<Value> = list(&api, &caller).await?.into_iter().map(|m| m.tag).collect();
    Ok(axum::Json(json!({ "models": models })).into_response())
}

#[derive(Debug, Deserialize)]
struct NameBody {
    model: Option<String>,
    name: Option<String>,
    #[serde(default)]
    verbose: bool,
    #[serde(default)]
    insecure: bool,
    stream: Option<bool>,
}

impl NameBody {
    fn model(&self) -> Result<String, ApiError> {
        self.model
            .clone()
            .filter(|m| !m.is_empty())
            .or_else(|| self.name.clone().filter(|m| !m.is_empty()))
            .ok_or_else(|| ApiError::bad_param("model", "model is required"))
    }
}

/// `POST /api/show`.
pub async fn show(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body: NameBody = json_body(body)?;
    let model = body.model()?;
    caller.check_model(&model)?;
    let d = api.shared.store.details(&model, body.verbose).await?;
    let mut info = serde_json::Map::new();
    info.insert("general.architecture".into(), json!(d.architecture));
    info.insert("general.parameter_count".into(), json!(d.parameter_count));
    if !d.architecture.is_empty() {
        info.insert(format!("{}.context_length", d.architecture), json!(d.context_length));
        info.insert(format!("{}.embedding_length", d.architecture), json!(d.embedding_length));
    }
    for (k, v) in &d.metadata {
        info.entry(k.clone()).or_insert_with(|| serde_json::from_str(v).unwrap_or_else(|_| json!(v)));
    }
    let mut out = json!({
        "license": d.license,
        "modelfile": d.modelfile,
        "parameters": d.parameters.join("\n"),
        "template": d.template,
        "details": details(&d.architecture, d.parameter_count, &d.quantization),
        "model_info": info,
        "capabilities": d.capabilities,
        "modified_at": rfc3339(d.modified_at),
    });
    if !d.system.is_empty() {
        out["system"] = json!(d.system);
    }
    Ok(axum::Json(out).into_response())
}

/// Whether the model supports thinking (for requests with `think: true`).
pub async fn supports(api: &Api, model: &str, capability: &str) -> Result<bool, ApiError> {
    Ok(api.shared.store.details(model, false).await?.capabilities.iter().any(|c| c == capability))
}

fn progress_json(p: &Progress) -> Value {
    let mut out = json!({ "status": p.status });
    if !p.digest.is_empty() {
        out["digest"] = json!(p.digest);
    }
    if p.total > 0 {
        out["total"] = json!(p.total);
        out["completed"] = json!(p.completed);
    }
    out
}

/// Runs a pull or create on its own task: NDJSON progress, or (not streaming) the final status.
/// The task stops when the client goes away or the drain times out.
async fn progress_response<F>(
    api: &Api,
    guard: crate::lifecycle::WorkGuard,
    stream: bool,
    work: F,
) -> Result<Response>
where
    F: FnOnce(store::ProgressSink) -> futures::future::BoxFuture<'static, Result<(), Error>>,
{
    let (progress_tx, mut progress_rx) = mpsc::channel::<Progress>(64);
    let (out_tx, out_rx) = mpsc::channel::<Result<Progress, ApiError>>(64);
    let work = work(progress_tx);
    let cancelled = api.shared.lifecycle.cancelled();
    tokio::spawn(async move {
        let _guard = guard;
        let forward_tx = out_tx.clone();
        let forward = async move {
            while let Some(p) = progress_rx.recv().await {
                if forward_tx.send(Ok(p)).await.is_err() {
                    return;
                }
            }
        };
        let outcome = tokio::select! {
            (outcome, ()) = async { tokio::join!(work, forward) } => Some(outcome),
            () = cancelled.cancelled() => Some(Err(Error::ShuttingDown)),
            () = out_tx.closed() => None,
        };
        match outcome {
            Some(Err(e)) => {
                let _ = out_tx.send(Err(e.into())).await;
            }
            Some(Ok(())) => {
                let _ = out_tx.send(Ok(Progress::status("success"))).await;
            }
            None => {}
        }
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(out_rx);
    if stream {
        return Ok(ndjson(events.map(|item| match item {
            Ok(p) => progress_json(&p),
            Err(e) => e.stream_body(Dialect::Ollama),
        })));
    }
    let mut events = events;
    let mut last = None;
    while let Some(item) = events.next().await {
        last = Some(item?);
    }
    let last = last.unwrap_or_else(|| Progress::status("success"));
    Ok(axum::Json(progress_json(&last)).into_response())
}

/// `POST /api/pull`.
pub async fn pull(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body: NameBody = json_body(body)?;
    let model = body.model()?;
    may_pull(&api, &caller, &model)?;
    let guard = api.shared.lifecycle.begin().map_err(ApiError::from)?;
    let store = Arc::clone(&api.shared.store);
    let config = api.shared.config();
    let who = requester(&caller);
    let insecure = body.insecure;
    progress_response(&api, guard, body.stream.unwrap_or(true), move |progress| {
        Box::pin(
            async move { store::pull::pull(&store, &config.store, &model, insecure, &who, &progress).await },
        )
    })
    .await
}

/// Administrators, and members of `store.pull_groups`, may pull.
fn may_pull(api: &Api, caller: &Caller, model: &str) -> Result<(), ApiError> {
    if caller.who.admin {
        return Ok(());
    }
    let groups = &api.shared.config().store.pull_groups;
    if !caller.anonymous
        && groups.iter().any(|g| crate::control::store_rpc::in_group(caller.who.uid, None, g))
    {
        return Ok(());
    }
    let shown = store::name::shorten(model);
    Err(Error::PullDenied(format!(
        "permission denied: pulling models needs root or membership in `{}`{}; ask an administrator to run \
         `hyperctl pull {shown}`",
        api.shared.authority.admin_group(),
        groups.iter().map(|g| format!(" or `{g}`")).collect::<String>(),
    ))
    .into())
}

/// `POST /api/push`: there is no registry to push to.
pub async fn push(Extension(_caller): Extension<Caller>) -> Result<Response> {
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "pushing models is not supported by hyperllamad: models are pulled into this machine's shared store only",
    )
    .into())
}

#[derive(Debug, Deserialize)]
struct CreateBody {
    model: Option<String>,
    name: Option<String>,
    #[serde(default)]
    modelfile: Option<String>,
    #[serde(default, rename = "from")]
    from: Option<String>,
    #[serde(default)]
    files: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    adapters: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    license: Option<Value>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    messages: Option<Vec<Value>>,
    #[serde(default)]
    quantize: Option<String>,
    stream: Option<bool>,
}

/// A file the Modelfile refers to as `@file:<n>`: an uploaded blob.
#[derive(Debug, Clone)]
struct UploadedFile {
    name: String,
    digest: Digest,
}

/// Ollama's create JSON as Modelfile instructions plus the blobs they refer to, in order.
fn instructions(body: &CreateBody) -> Result<(Vec<Instruction>, Vec<UploadedFile>), ApiError> {
    let mut files = Vec::new();
    let mut out = Vec::new();
    let digest = |name: &str, d: &str| {
        Digest::parse(d).map_err(|e| ApiError::bad_param("files", format!("{name}: {e}")))
    };
    let gguf: Vec<(&String, &String)> = body
        .files
        .iter()
        .flatten()
        .filter(|(name, _)| name.to_ascii_lowercase().ends_with(".gguf"))
        .collect();
    let any_files = body.files.as_ref().is_some_and(|f| !f.is_empty());
    match (&body.from, gguf.as_slice()) {
        (Some(from), []) if !any_files => out.push(Instruction::From(from.clone())),
        (None, [(name, d)]) => {
            files.push(UploadedFile { name: (*name).clone(), digest: digest(name, d)? });
            out.push(Instruction::From("@file:0".into()));
        }
        (Some(_), _) => return Err(ApiError::bad_request("give either `from` or `files`, not both")),
        (None, []) if any_files => {
            return Err(ApiError::bad_param(
                "files",
                "only GGUF files are supported (safetensors directories are not)",
            ));
        }
        (None, []) => {
            return Err(ApiError::bad_request(
                "a model needs `from` (a model name) or `files` (an uploaded GGUF)",
            ));
        }
        (None, _) => {
            return Err(ApiError::bad_param(
                "files",
                "give exactly one GGUF file (split GGUF files are not supported)",
            ));
        }
    }
    for (name, d) in body.adapters.iter().flatten() {
        let index = files.len();
        files.push(UploadedFile { name: name.clone(), digest: digest(name, d)? });
        out.push(Instruction::Adapter(format!("@file:{index}")));
    }
    if let Some(t) = body.template.as_ref().filter(|t| !t.is_empty()) {
        out.push(Instruction::Template(t.clone()));
    }
    if let Some(s) = body.system.as_ref().filter(|s| !s.is_empty()) {
        out.push(Instruction::System(s.clone()));
    }
    for (key, value) in body.parameters.iter().flatten() {
        let values: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for v in values {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => v.to_string(),
                _ => {
                    return Err(ApiError::bad_param(
                        "parameters",
                        format!("parameter {key} must be a string, number or bool"),
                    ));
                }
            };
            out.push(Instruction::Parameter(key.clone(), text));
        }
    }
    for m in body.messages.iter().flatten() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = m.get("content").and_then(Value::as_str).unwrap_or_default();
        out.push(Instruction::Message(role.to_string(), content.to_string()));
    }
    match &body.license {
        None | Some(Value::Null) => {}
        Some(Value::String(l)) => out.push(Instruction::License(l.clone())),
        Some(Value::Array(items)) => {
            for l in items {
                out.push(Instruction::License(l.as_str().unwrap_or_default().to_string()));
            }
        }
        Some(_) => {
            return Err(ApiError::bad_param("license", "license must be a string or an array of strings"));
        }
    }
    Ok((out, files))
}

/// The uploaded blobs as the upload stream `create` reads (the daemon's own blob files, never a
/// path a client named).
fn uploads(
    api: &Api,
    files: Vec<UploadedFile>,
) -> Result<futures::stream::BoxStream<'static, crate::error::Result<Upload>>, ApiError> {
    let layout = api.shared.store.layout().clone();
    let mut opened = Vec::new();
    for (index, f) in files.into_iter().enumerate() {
        let path = layout.blob(&f.digest);
        let size = std::fs::metadata(&path).map(|m| m.len()).map_err(|_| {
            ApiError::bad_param(
                "files",
                format!(
                    "{}: blob {} was not uploaded (POST /api/blobs/{} first)",
                    f.name, f.digest, f.digest
                ),
            )
        })?;
        opened.push((u32::try_from(index).unwrap_or(u32::MAX), size, f.name, path));
    }
    let stream = futures::stream::iter(opened).flat_map(|(index, size, name, path)| {
        let start =
            futures::stream::once(async move { Ok(Upload::Start { index, size, display_name: name }) });
        let chunks = futures::stream::unfold(Some((path, None::<tokio::fs::File>)), |state| async move {
            let (path, file) = state?;
            let mut file = match file {
                Some(f) => f,
                None => match tokio::fs::File::open(&path).await {
                    Ok(f) => f,
                    Err(e) => return Some((Err(Error::io("open an uploaded blob")(e)), None)),
                },
            };
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Upload::Chunk(buf)), Some((path, Some(file)))))
                }
                Err(e) => Some((Err(Error::io("read an uploaded blob")(e)), None)),
            }
        });
        start.chain(chunks)
    });
    Ok(Box::pin(stream))
}

/// `POST /api/create`.
pub async fn create(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body: CreateBody = json_body(body)?;
    let model = body
        .model
        .clone()
        .filter(|m| !m.is_empty())
        .or_else(|| body.name.clone().filter(|m| !m.is_empty()))
        .ok_or_else(|| ApiError::bad_param("model", "model is required"))?;
    let guard = admit(&api, &caller, Action::Create)?;
    let (text, files) = match &body.modelfile {
        Some(text) if !text.trim().is_empty() && body.from.is_none() && body.files.is_none() => {
            // The older form: a Modelfile whose FROM names a model in the store.
            (text.clone(), Vec::new())
        }
        _ => {
            let (instructions, files) = instructions(&body)?;
            (modelfile::render(&model, &instructions), files)
        }
    };
    let store = Arc::clone(&api.shared.store);
    let prepared =
        store::create::prepare(&store, &model, &text, body.quantize.as_deref().unwrap_or("")).await?;
    let uploads = uploads(&api, files)?;
    let config = api.shared.config();
    let who = requester(&caller);
    progress_response(&api, guard, body.stream.unwrap_or(true), move |progress| {
        Box::pin(async move {
            store::create::create(&store, &config.store, prepared, uploads, &who, &progress).await
        })
    })
    .await
}

#[derive(Debug, Deserialize)]
struct CopyBody {
    source: String,
    destination: String,
}

/// `POST /api/copy`.
pub async fn copy(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body: CopyBody = json_body(body)?;
    let _guard = admit(&api, &caller, Action::Copy)?;
    api.shared.store.copy(&body.source, &body.destination, &requester(&caller)).await?;
    Ok(StatusCode::OK.into_response())
}

/// `DELETE /api/delete`.
pub async fn delete(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body: NameBody = json_body(body)?;
    let model = body.model()?;
    let _guard = admit(&api, &caller, Action::Delete)?;
    api.shared.store.delete(&model, &requester(&caller)).await?;
    Ok(StatusCode::OK.into_response())
}

fn parse_digest(text: &str) -> Result<Digest, ApiError> {
    Digest::parse(text).map_err(|e| ApiError::bad_param("digest", e.to_string()))
}

/// `HEAD /api/blobs/{digest}`: 200 when the store has the blob, else 404.
pub async fn blob_exists(
    State(api): State<Arc<Api>>,
    Extension(_caller): Extension<Caller>,
    Path(digest): Path<String>,
) -> Result<Response> {
    let digest = parse_digest(&digest)?;
    let present = std::fs::metadata(api.shared.store.layout().blob(&digest)).is_ok_and(|m| m.is_file());
    Ok(if present { StatusCode::OK } else { StatusCode::NOT_FOUND }.into_response())
}

/// `POST /api/blobs/{digest}`: streams the body into the store, verifying its sha256 before the
/// blob becomes visible. Administrators only (it is the first step of a create).
pub async fn blob_upload(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let expected = parse_digest(&digest)?;
    let _guard = admit(&api, &caller, Action::Create)?;
    let store = &api.shared.store;
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = length {
        store::pull::check_room(store, &api.shared.config().store, len, &expected.short()).await?;
    }
    if std::fs::metadata(store.layout().blob(&expected)).is_ok_and(|m| m.is_file()) {
        return Ok(StatusCode::OK.into_response());
    }
    let layout = store.layout().clone();
    let mut writer = store::blobs::BlobWriter::create(&layout)?;
    let mut hasher = Sha256::new();
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("the upload broke off: {e}")))?;
        hasher.update(&chunk);
        tokio::task::block_in_place(|| writer.write(&chunk))?;
    }
    let got = Digest::from_hasher(hasher);
    let result = tokio::task::block_in_place(|| {
        writer.finish(&layout, length, |_| {
            if got == expected {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!("the upload's digest is {got}, not {expected}")))
            }
        })
    });
    result?;
    tracing::info!(digest = %expected, user = %caller.who.user, "blob uploaded");
    Ok(StatusCode::CREATED.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> CreateBody {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn create_json_becomes_a_modelfile() {
        let d = format!("sha256:{}", "a".repeat(64));
        let (ins, files) = instructions(&body(json!({
            "model": "m", "files": {"m.gguf": d}, "system": "be brief",
            "parameters": {"temperature": 0.2, "stop": ["<end>", "User:"]},
            "messages": [{"role": "user", "content": "hi"}], "license": "MIT",
        })))
        .unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(ins[0], Instruction::From("@file:0".into()));
        assert!(ins.contains(&Instruction::Parameter("stop".into(), "<end>".into())));
        assert!(ins.contains(&Instruction::Parameter("temperature".into(), "0.2".into())));
        let text = modelfile::render("m", &ins);
        assert_eq!(modelfile::parse(&text).unwrap(), ins, "renders to a Modelfile that reads back the same");
        let (ins, files) = instructions(&body(json!({"model": "m2", "from": "m"}))).unwrap();
        assert_eq!((ins[0].clone(), files.len()), (Instruction::From("m".into()), 0));
        assert!(instructions(&body(json!({"model": "m", "files": {"x.gguf": "sha256:../../etc"}}))).is_err());
        assert!(instructions(&body(json!({"model": "m", "files": {"model.safetensors": d}}))).is_err());
    }
}
