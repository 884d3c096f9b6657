//! Creating a model from a Modelfile. The client (hyperctl) reads every local file the Modelfile
//! names with its user's own rights and streams it; FROM and ADAPTER arrive as `@file:<n>`, and
//! the daemon never opens a path a client names. Each file is written to staging while it is
//! hashed, checked as GGUF, fsynced and renamed into the blob store. FROM may instead name a
//! model in the store, whose layers the new model starts from. Template, system prompt,
//! parameters, messages and licenses become small blobs; the model is registered in one
//! transaction.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{Stream, StreamExt};

use super::blobs::BlobWriter;
use super::catalog::{self, BlobInfo, NewModel};
use super::config::StoreConfig;
use super::digest::Digest;
use super::manifest::{self, Layer, Manifest, ModelConfig};
use super::modelfile::{self, Instruction};
use super::name::{ModelName, shorten};
use super::pull::check_room;
use super::{Pins, Progress, ProgressSink, Requester, Store, not_found};
use crate::engine::served::hf;
use crate::error::{Error, Result};
use crate::gguf::{self, ModelInfo};

/// One item of an upload stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upload {
    /// A file begins: its index in the Modelfile's `@file:<n>` references and its size.
    Start {
        /// `n` of `@file:<n>`.
        index: u32,
        /// Bytes that follow.
        size: u64,
        /// The file's name, for messages only.
        display_name: String,
    },
    /// The next bytes of the current file.
    Chunk(Vec<u8>),
}

/// Where FROM points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Base {
    /// A streamed file.
    File(u32),
    /// A streamed Hugging Face folder: files `first..=last`, each named by its FileStart.
    Folder(u32, u32),
    /// A model in the store (canonical name, as shown).
    Model(String, String),
}

/// A checked create request, before any file is received.
#[derive(Debug)]
pub struct Prepared {
    name: ModelName,
    base: Base,
    instructions: Vec<Instruction>,
    files: BTreeSet<u32>,
}

impl Prepared {
    /// The model's name as shown.
    pub fn name(&self) -> &ModelName {
        &self.name
    }
}

fn file_index(value: &str) -> Option<u32> {
    value.strip_prefix("@file:")?.parse().ok()
}

/// `@folder:<first>-<last>`: the files of a folder hyperctl streams.
fn folder_range(value: &str) -> Option<(u32, u32)> {
    let (first, last) = value.strip_prefix("@folder:")?.split_once('-')?;
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last && (last - first) < u32::try_from(hf::MAX_FILES).unwrap_or(u32::MAX))
        .then_some((first, last))
}

/// Whether a FROM value is a file path rather than a model name.
fn looks_like_path(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    value.starts_with(['/', '.', '~'])
        || [".gguf", ".safetensors", ".bin"].iter().any(|ext| lower.ends_with(ext))
}

/// Checks the header of a create: the name, the quantization, the Modelfile and what it refers to.
pub async fn prepare(store: &Store, model: &str, modelfile_text: &str, quantize: &str) -> Result<Prepared> {
    if !quantize.trim().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "quantization is not supported yet (asked for {:?}): create the model from an already quantized GGUF \
             file (llama.cpp's llama-quantize makes one) and leave out -q",
            shorten(quantize)
        )));
    }
    let name = store.parse_name(model)?;
    let instructions = modelfile::parse(modelfile_text)?;
    let mut base = None;
    let mut files = BTreeSet::new();
    for i in &instructions {
        match i {
            Instruction::From(value) => {
                if base.is_some() {
                    return Err(Error::InvalidArgument("the Modelfile has more than one FROM line".into()));
                }
                base = Some(match (file_index(value), folder_range(value)) {
                    (Some(n), _) => {
                        files.insert(n);
                        Base::File(n)
                    }
                    (None, Some((first, last))) => {
                        files.extend(first..=last);
                        Base::Folder(first, last)
                    }
                    _ if looks_like_path(value) => {
                        return Err(Error::InvalidArgument(format!(
                            "FROM {:?}: hyperllamad never opens files by path; run `hyperctl create`, which reads \
                             the file as you and sends it",
                            shorten(value)
                        )));
                    }
                    _ => {
                        let from = store.parse_name(value)?;
                        let shown = from.display(store.default_host());
                        if catalog::find(store.db(), &from.canonical()).await?.is_none() {
                            return Err(Error::NotFound(format!(
                                "FROM '{shown}': model not found; pull it first with `hyperctl pull {shown}`"
                            )));
                        }
                        Base::Model(from.canonical(), shown)
                    }
                });
            }
            Instruction::Adapter(value) => match file_index(value) {
                Some(n) => {
                    files.insert(n);
                }
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "ADAPTER {:?}: name a local GGUF adapter file; hyperctl sends it",
                        shorten(value)
                    )));
                }
            },
            _ => {}
        }
    }
    let base = base.ok_or_else(|| Error::InvalidArgument("the Modelfile has no FROM line".into()))?;
    if files.iter().enumerate().any(|(i, n)| u32::try_from(i).ok() != Some(*n)) {
        return Err(Error::InvalidArgument(
            "the Modelfile's @file references must be numbered 0, 1, 2, ...".into(),
        ));
    }
    Ok(Prepared { name, base, instructions, files })
}

/// A received file that is now a blob.
#[derive(Debug, Clone)]
struct Received {
    digest: Digest,
    size: u64,
    info: ModelInfo,
    /// Its name in a folder (folder files only).
    name: Option<String>,
}

impl Prepared {
    fn in_folder(&self, index: u32) -> bool {
        matches!(self.base, Base::Folder(first, last) if (first..=last).contains(&index))
    }
}

/// Checks one file of a folder by what its name says it is.
fn check_folder_file(path: &std::path::Path, name: &str, limits: &gguf::Limits) -> Result<()> {
    let invalid = |e: hf::FolderError| Error::InvalidModel(e.to_string());
    match hf::file_kind(name).map_err(invalid)? {
        hf::FileKind::Json => hf::read_json(path, name).map(drop).map_err(invalid),
        hf::FileKind::Safetensors => hf::safetensors_dtypes(path, name).map(drop).map_err(invalid),
        hf::FileKind::Gguf => gguf::read_file(path, limits)
            .and_then(|f| f.model_info())
            .map(drop)
            .map_err(|e| Error::InvalidModel(format!("{name}: {e}"))),
        hf::FileKind::Data => Ok(()),
    }
}

/// Receives the files, builds and registers the model.
pub async fn create<S>(
    store: &Arc<Store>,
    config: &StoreConfig,
    prepared: Prepared,
    uploads: S,
    who: &Requester,
    progress: &ProgressSink,
) -> Result<()>
where
    S: Stream<Item = Result<Upload>> + Unpin,
{
    let shown = prepared.name.display(store.default_host());
    let mut pins = store.pins();
    let received = receive(store, config, &prepared, uploads, &shown, &mut pins, progress).await?;
    let outcome = build(store, &prepared, &received, &shown, who, &mut pins, progress).await;
    if let Err(e) = &outcome {
        let _ = catalog::record(
            store.db(),
            "create",
            &prepared.name.canonical(),
            who.uid,
            &who.user,
            None,
            &e.to_string(),
        )
        .await;
        let digests: Vec<Digest> = received.iter().map(|r| r.digest).collect();
        drop(pins);
        store.discard_unregistered(&digests).await;
    }
    outcome
}

async fn send(progress: &ProgressSink, p: Progress) {
    let _ = progress.send(p).await;
}

/// Receives every file the Modelfile references, in order, each checked as GGUF.
async fn receive<S>(
    store: &Arc<Store>,
    config: &StoreConfig,
    prepared: &Prepared,
    mut uploads: S,
    shown: &str,
    pins: &mut Pins<'_>,
    progress: &ProgressSink,
) -> Result<Vec<Received>>
where
    S: Stream<Item = Result<Upload>> + Unpin,
{
    let mut received = Vec::new();
    let mut next = uploads.next().await.transpose()?;
    for expected in &prepared.files {
        let (size, display) = match next.take() {
            Some(Upload::Start { index, size, display_name }) if index == *expected => (size, display_name),
            Some(Upload::Start { index, .. }) => {
                return Err(Error::InvalidArgument(format!(
                    "expected file {expected} but file {index} was sent"
                )));
            }
            Some(Upload::Chunk(_)) => {
                return Err(Error::InvalidArgument("file data arrived before its FileStart".into()));
            }
            None => {
                return Err(Error::InvalidArgument(format!(
                    "the Modelfile references @file:{expected} but the client sent no such file"
                )));
            }
        };
        let display = shorten(&display);
        check_room(store, config, size, shown).await?;
        let mut writer = BlobWriter::create(store.layout())?;
        let mut last_sent = 0u64;
        send(
            progress,
            Progress { status: "transferring model data".into(), total: size, ..Progress::default() },
        )
        .await;
        loop {
            let bytes = match uploads.next().await.transpose()? {
                Some(Upload::Chunk(bytes)) => bytes,
                other => {
                    next = other;
                    break;
                }
            };
            if writer.written() + bytes.len() as u64 > size {
                return Err(Error::InvalidArgument(format!(
                    "{display}: more than the announced {size} bytes arrived"
                )));
            }
            writer = tokio::task::spawn_blocking(move || writer.write(&bytes).map(|()| writer))
                .await
                .map_err(|e| Error::Internal(format!("upload task: {e}")))??;
            let done = writer.written();
            if done - last_sent >= (16 << 20) || done == size {
                last_sent = done;
                let status = "transferring model data".to_string();
                send(progress, Progress { status, total: size, completed: done, ..Progress::default() })
                    .await;
            }
        }
        if writer.written() != size {
            return Err(Error::InvalidArgument(format!(
                "{display}: the client stopped after {} of {size} bytes",
                writer.written()
            )));
        }
        let layout = store.layout().clone();
        let limits = store.gguf_limits().clone();
        if prepared.in_folder(*expected) {
            if received.iter().any(|r: &Received| r.name.as_deref() == Some(display.as_str())) {
                return Err(Error::InvalidArgument(format!("the folder sends {display:?} twice")));
            }
            send(progress, Progress::status(format!("checking {display}"))).await;
            let name = display.clone();
            let (digest, size) = tokio::task::spawn_blocking(move || {
                writer.finish(&layout, Some(size), |path| check_folder_file(path, &name, &limits))
            })
            .await
            .map_err(|e| Error::Internal(format!("upload task: {e}")))??;
            pins.add(digest);
            let info = ModelInfo {
                architecture: String::new(),
                parameter_count: 0,
                context_length: 0,
                embedding_length: 0,
                quantization: String::new(),
                kind: None,
            };
            received.push(Received { digest, size, info, name: Some(display) });
            continue;
        }
        send(progress, Progress::status("parsing GGUF")).await;
        let display_for_check = display.clone();
        let (digest, size, info) = tokio::task::spawn_blocking(move || {
            let mut info = None;
            let (digest, size) = writer.finish(&layout, Some(size), |path| {
                let parsed = gguf::read_file(path, &limits).and_then(|f| f.model_info()).map_err(|e| {
                    let hint = if matches!(e, gguf::GgufError::NotGguf) {
                        "; only GGUF files can be imported (convert safetensors with llama.cpp's convert_hf_to_gguf.py)"
                    } else {
                        ""
                    };
                    Error::InvalidModel(format!("{display_for_check}: {e}{hint}"))
                })?;
                info = Some(parsed);
                Ok(())
            })?;
            Ok::<_, Error>((digest, size, info))
        })
        .await
        .map_err(|e| Error::Internal(format!("upload task: {e}")))??;
        let info = info.ok_or_else(|| Error::Internal("GGUF check did not run".into()))?;
        pins.add(digest);
        received.push(Received { digest, size, info, name: None });
    }
    if let Some(extra) = next {
        return Err(Error::InvalidArgument(match extra {
            Upload::Start { index, .. } => {
                format!("file {index} was sent but the Modelfile does not reference it")
            }
            Upload::Chunk(_) => "more data arrived than the files announced".into(),
        }));
    }
    if uploads.next().await.is_some() {
        return Err(Error::InvalidArgument("more data arrived than the files announced".into()));
    }
    Ok(received)
}

/// The layers of the new model, starting from the base's when FROM names a model.
async fn build(
    store: &Arc<Store>,
    prepared: &Prepared,
    received: &[Received],
    shown: &str,
    who: &Requester,
    pins: &mut Pins<'_>,
    progress: &ProgressSink,
) -> Result<()> {
    let layout = store.layout();
    let mut layers: Vec<Layer> = Vec::new();
    let mut infos: Vec<(Digest, BlobInfo)> =
        received.iter().map(|r| (r.digest, BlobInfo::from(&r.info))).collect();
    let mut base_params = Vec::new();
    let model_info: ModelInfo;
    match &prepared.base {
        Base::File(n) => {
            let r = received.get(*n as usize).ok_or_else(|| Error::Internal("FROM file missing".into()))?;
            if r.info.kind.as_deref() == Some("adapter") {
                return Err(Error::InvalidModel(
                    "FROM names a LoRA adapter; use it with ADAPTER on top of a model".into(),
                ));
            }
            layers.push(Layer { media_type: manifest::MODEL.into(), digest: r.digest, size: r.size });
            model_info = r.info.clone();
        }
        Base::Folder(first, last) => {
            let files: Vec<&Received> =
                received.iter().skip(*first as usize).take((*last - *first + 1) as usize).collect();
            let mut entries: Vec<manifest::FolderEntry> = files
                .iter()
                .map(|r| manifest::FolderEntry {
                    name: r.name.clone().unwrap_or_default(),
                    digest: r.digest,
                    size: r.size,
                })
                .collect();
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let paths: Vec<(String, std::path::PathBuf)> =
                entries.iter().map(|e| (e.name.clone(), layout.blob(&e.digest))).collect();
            let folder = tokio::task::spawn_blocking(move || {
                hf::inspect(paths.iter().map(|(n, p)| (n.as_str(), p.as_path())))
            })
            .await
            .map_err(|e| Error::Internal(format!("folder check: {e}")))?
            .map_err(|e| Error::InvalidModel(e.to_string()))?;
            model_info = ModelInfo {
                architecture: if folder.model_type.is_empty() {
                    folder.architecture.clone()
                } else {
                    folder.model_type.clone()
                },
                parameter_count: folder.parameter_count,
                context_length: folder.context_length,
                embedding_length: folder.embedding_length,
                quantization: folder.quantization(),
                kind: None,
            };
            let index = serde_json::to_vec(&manifest::FolderIndex { files: entries.clone() })
                .map_err(|e| Error::Internal(format!("folder index: {e}")))?;
            pins.add(Digest::of(&index));
            let index_digest = layout.write_small(&index)?;
            infos.retain(|(d, _)| !entries.iter().any(|e| e.digest == *d));
            infos.push((index_digest, BlobInfo::from(&model_info)));
            layers.push(Layer {
                media_type: manifest::FOLDER.into(),
                digest: index_digest,
                size: index.len() as u64,
            });
            for e in &entries {
                layers.push(Layer {
                    media_type: manifest::FOLDER_FILE.into(),
                    digest: e.digest,
                    size: e.size,
                });
            }
        }
        Base::Model(canonical, base_shown) => {
            let row = catalog::find(store.db(), canonical).await?.ok_or_else(|| not_found(base_shown))?;
            if row.broken() {
                return Err(Error::BrokenModel(format!(
                    "FROM '{base_shown}' is broken: pull it again first"
                )));
            }
            for l in row.layers.iter().filter(|l| l.position >= 0) {
                pins.add(l.digest);
                if l.media_type == manifest::PARAMS {
                    base_params = manifest::parse_params(&store.read_blob(&l.digest)?)?;
                }
                if let Some(info) = &l.info {
                    infos.push((l.digest, info.clone()));
                }
                layers.push(Layer { media_type: l.media_type.clone(), digest: l.digest, size: l.size });
            }
            let info = row.weights_layer().and_then(|l| l.info.clone()).unwrap_or_default();
            model_info = ModelInfo {
                architecture: info.architecture,
                parameter_count: info.parameter_count,
                context_length: info.context_length,
                embedding_length: info.embedding_length,
                quantization: info.quantization,
                kind: None,
            };
        }
    }
    let mut new_params: Vec<(String, String)> = Vec::new();
    let mut messages: Vec<manifest::Message> = Vec::new();
    let mut licenses: Vec<String> = Vec::new();
    // A layer replaces the base's of its kind in place, so recreating a model from its own
    // Modelfile gives the same manifest (and id).
    let text = |layers: &mut Vec<Layer>, media: &str, value: &str, pins: &mut Pins<'_>| -> Result<()> {
        let bytes = value.as_bytes();
        pins.add(Digest::of(bytes));
        let digest = layout.write_small(bytes)?;
        let layer = Layer { media_type: media.into(), digest, size: bytes.len() as u64 };
        match layers.iter().position(|l| l.media_type == media) {
            Some(at) => layers[at] = layer,
            None => layers.push(layer),
        }
        Ok(())
    };
    for i in &prepared.instructions {
        match i {
            Instruction::From(_) => {}
            Instruction::Adapter(value) => {
                let n = file_index(value).unwrap_or(u32::MAX) as usize;
                let r = received.get(n).ok_or_else(|| Error::Internal("ADAPTER file missing".into()))?;
                layers.push(Layer { media_type: manifest::ADAPTER.into(), digest: r.digest, size: r.size });
            }
            Instruction::Template(t) => text(&mut layers, manifest::TEMPLATE, t, pins)?,
            Instruction::System(s) => text(&mut layers, manifest::SYSTEM, s, pins)?,
            Instruction::Parameter(k, v) => new_params.push((k.clone(), v.clone())),
            Instruction::Message(role, content) => {
                messages.push(manifest::Message { role: role.clone(), content: content.clone() })
            }
            Instruction::License(l) => licenses.push(l.clone()),
        }
    }
    if !new_params.is_empty() {
        let mut merged: Vec<(String, String)> =
            base_params.into_iter().filter(|(k, _)| !new_params.iter().any(|(n, _)| n == k)).collect();
        merged.extend(new_params);
        let json = manifest::params_json(&merged)?;
        text(&mut layers, manifest::PARAMS, &String::from_utf8_lossy(&json), pins)?;
    }
    if !messages.is_empty() {
        let json = serde_json::to_string(&messages).map_err(|e| Error::Internal(format!("messages: {e}")))?;
        text(&mut layers, manifest::MESSAGES, &json, pins)?;
    }
    if !licenses.is_empty() {
        let at = layers.iter().position(|l| l.media_type == manifest::LICENSE).unwrap_or(layers.len());
        layers.retain(|l| l.media_type != manifest::LICENSE);
        let mut new = Vec::new();
        for l in &licenses {
            let bytes = l.as_bytes();
            pins.add(Digest::of(bytes));
            let digest = layout.write_small(bytes)?;
            new.push(Layer { media_type: manifest::LICENSE.into(), digest, size: bytes.len() as u64 });
        }
        let at = at.min(layers.len());
        layers.splice(at..at, new);
    }
    for l in &layers {
        let known = catalog::has_blob_row(store.db(), &l.digest).await?;
        let verb = if known { "using existing layer" } else { "creating new layer" };
        send(progress, Progress::status(format!("{verb} {}", l.digest))).await;
    }
    let config_bytes = serde_json::to_vec(&ModelConfig::new(&model_info, &layers))
        .map_err(|e| Error::Internal(format!("model config: {e}")))?;
    pins.add(Digest::of(&config_bytes));
    let config_digest = layout.write_small(&config_bytes)?;
    let manifest = Manifest::new(
        Layer { media_type: manifest::CONFIG.into(), digest: config_digest, size: config_bytes.len() as u64 },
        layers,
    );
    let bytes = manifest.to_bytes();
    send(progress, Progress::status("writing manifest")).await;
    let canonical = prepared.name.canonical();
    let freed = catalog::register(
        store.db(),
        &NewModel {
            name: &canonical,
            manifest: &manifest,
            manifest_bytes: &bytes,
            infos: &infos,
            source: "create",
            uid: who.uid,
            user: &who.user,
            action: "create",
        },
    )
    .await?;
    store.remove_files(&freed);
    send(progress, Progress::status("success")).await;
    tracing::info!(model = %prepared.name, by = %who.user, id = %Digest::of(&bytes).short(), "created '{shown}'");
    Ok(())
}
