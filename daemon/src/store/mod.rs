//! The shared model store: one copy of each model for every user, owned by the service.
//!
//! Blobs are content-addressed files (`<state>/blobs/sha256-<hex>`, named only through
//! [`digest::Digest`]) that appear only complete and verified ([`blobs`]); the catalog (which
//! manifests use which blobs, which names point at which manifest, who pulled what) is in SQLite
//! ([`catalog`]). Models come from registries ([`pull`], over [`crate::registry`]) or from a
//! Modelfile and files a client streams ([`create`]); the daemon never opens a path a client
//! names. Blobs are reference counted: one goes when no model refers to it. At start the catalog
//! and the files are reconciled ([`reconcile`]).
//!
//! Concurrency: catalog changes are single transactions; a pull or create *pins* the blobs it is
//! about to register so a concurrent `rm` cannot delete their files in between; a blob is
//! downloaded once however many pulls want it ([`downloads`]).

pub mod blobs;
pub mod catalog;
pub mod config;
pub mod create;
pub mod details;
pub mod digest;
pub mod downloads;
pub mod manifest;
pub mod modelfile;
pub mod name;
pub mod pull;
pub mod reconcile;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sqlx::SqlitePool;

pub use config::StoreConfig;
use digest::Digest;
use name::ModelName;

use crate::error::{Error, Result};

/// Largest text layer (template, system, license, parameters, messages) read into memory.
pub const MAX_TEXT_LAYER: u64 = 16 << 20;

/// What a runner needs to load and prompt a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The name as Ollama displays it ("gemma3:270m", "hf.co/o/r:Q4_K_M").
    pub name: String,
    /// The manifest digest, `sha256:<64 hex>` (the model's id).
    pub digest: String,
    /// The GGUF blob.
    pub model_path: PathBuf,
    /// Total size of the model's layers.
    pub size_bytes: u64,
    /// The TEMPLATE layer.
    pub template: Option<String>,
    /// The SYSTEM layer.
    pub system: Option<String>,
    /// PARAMETER lines in order (`stop` may repeat).
    pub parameters: Vec<(String, String)>,
    /// MESSAGE lines: role, content.
    pub messages: Vec<(String, String)>,
    /// ADAPTER blobs.
    pub adapters: Vec<PathBuf>,
    /// LICENSE texts.
    pub license: Vec<String>,
    /// `general.architecture` of the GGUF.
    pub architecture: String,
    /// `<arch>.context_length` of the GGUF.
    pub context_length: u64,
    /// The files of a model stored as a Hugging Face folder (name, blob), in name order; empty
    /// for a GGUF model.
    pub folder: Vec<(String, PathBuf)>,
}

/// Progress of a pull or create, as Ollama streams it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// "pulling manifest", "pulling <id>", "verifying sha256 digest", "success", ...
    pub status: String,
    /// The layer's digest, for per-layer progress.
    pub digest: String,
    /// Bytes in all.
    pub total: u64,
    /// Bytes done.
    pub completed: u64,
}

impl Progress {
    /// A status line without numbers.
    pub fn status(text: impl Into<String>) -> Self {
        Self { status: text.into(), ..Self::default() }
    }
}

/// Where progress goes; a closed channel means the client left.
pub type ProgressSink = tokio::sync::mpsc::Sender<Progress>;

/// Who asks, for the event log and ownership columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// Their uid.
    pub uid: u32,
    /// Their name.
    pub user: String,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    db: SqlitePool,
    layout: blobs::Layout,
    default_host: String,
    pins: Mutex<HashMap<Digest, usize>>,
    downloads: Arc<downloads::Downloads>,
    gguf_limits: crate::gguf::Limits,
}

/// Blobs held against removal while a pull or create registers them.
#[derive(Debug)]
pub struct Pins<'a> {
    store: &'a Store,
    digests: Vec<Digest>,
}

impl Pins<'_> {
    /// Pins one more blob.
    pub fn add(&mut self, digest: Digest) {
        *self.store.pins.lock().unwrap_or_else(|e| e.into_inner()).entry(digest).or_default() += 1;
        self.digests.push(digest);
    }
}

impl Drop for Pins<'_> {
    fn drop(&mut self) {
        let mut pins = self.store.pins.lock().unwrap_or_else(|e| e.into_inner());
        for d in &self.digests {
            if let Some(n) = pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(d);
                }
            }
        }
    }
}

impl Store {
    /// Opens the store under `state_dir` (the database is already open and migrated) and
    /// reconciles the catalog with the files.
    pub async fn open(state_dir: &Path, db: SqlitePool, config: &StoreConfig) -> Result<Arc<Store>> {
        let layout = blobs::Layout::new(state_dir);
        layout.create_dirs()?;
        let store = Arc::new(Store {
            db,
            layout,
            default_host: config.registry.clone(),
            pins: Mutex::new(HashMap::new()),
            downloads: Arc::new(downloads::Downloads::default()),
            gguf_limits: crate::gguf::Limits::default(),
        });
        let report = reconcile::reconcile(&store, config.keep_orphans).await?;
        tracing::info!(
            blobs = report.blobs,
            missing = report.missing,
            orphans_removed = report.orphans_removed,
            orphans_kept = report.orphans_kept,
            staging_removed = report.staging_removed,
            broken_models = report.broken_models,
            "model store opened"
        );
        Ok(store)
    }

    /// The database.
    pub fn db(&self) -> &SqlitePool {
        &self.db
    }

    /// The file layout.
    pub fn layout(&self) -> &blobs::Layout {
        &self.layout
    }

    /// The registry host for names without one.
    pub fn default_host(&self) -> &str {
        &self.default_host
    }

    /// Parses a model name under the store's default registry.
    pub fn parse_name(&self, name: &str) -> Result<ModelName> {
        ModelName::parse(name, &self.default_host)
    }

    /// The shortest display form of a canonical name.
    pub fn display(&self, canonical: &str) -> String {
        ModelName::parse(canonical, &self.default_host)
            .map(|n| n.display(&self.default_host))
            .unwrap_or_else(|_| canonical.to_string())
    }

    /// Starts a set of pins.
    pub fn pins(&self) -> Pins<'_> {
        Pins { store: self, digests: Vec::new() }
    }

    /// Removes the files of blobs the catalog no longer has, except those a pull or create has
    /// pinned (checked and removed under the pin lock, so a pin taken later sees the file gone).
    pub fn remove_files(&self, freed: &[(Digest, u64)]) -> u64 {
        if freed.is_empty() {
            return 0;
        }
        let pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = 0;
        for (digest, size) in freed {
            if pins.contains_key(digest) {
                continue;
            }
            match std::fs::remove_file(self.layout.blob(digest)) {
                Ok(()) => bytes += size,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(%digest, error = %e, "cannot remove a freed blob"),
            }
        }
        drop(pins);
        if let Err(e) = blobs::sync_dir(self.layout.blobs_dir()) {
            tracing::warn!(error = %e, "cannot sync the blob directory");
        }
        bytes
    }

    /// Removes blob files that a failed pull or create fetched but never registered.
    pub async fn discard_unregistered(&self, digests: &[Digest]) {
        for digest in digests {
            if catalog::has_blob_row(&self.db, digest).await.unwrap_or(true) {
                continue;
            }
            let pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
            if !pins.contains_key(digest) {
                let _ = std::fs::remove_file(self.layout.blob(digest));
            }
        }
    }

    /// Resolves a model name to what a runner needs. A missing model is `NotFound` with the
    /// command that would pull it; a model with a missing blob is `BrokenModel`.
    pub async fn resolve(&self, name: &str) -> Result<ResolvedModel> {
        let parsed = self.parse_name(name)?;
        let shown = parsed.display(&self.default_host);
        let row = catalog::find(&self.db, &parsed.canonical()).await?.ok_or_else(|| not_found(&shown))?;
        let broken = |what: &str| {
            Error::BrokenModel(format!(
                "model '{shown}' is broken: {what}; pull it again or remove it with `hyperctl rm {shown}`"
            ))
        };
        let model = row.weights_layer().ok_or_else(|| broken("it has no model layer"))?;
        let model_path = self.layout.blob(&model.digest);
        for layer in &row.layers {
            if !self.layout.has_blob(&layer.digest, layer.size) {
                return Err(broken(&format!("its file {} is missing or damaged", layer.digest)));
            }
        }
        let folder = match row.folder_layer() {
            Some(index) => {
                let index: manifest::FolderIndex = serde_json::from_slice(&self.read_blob(&index.digest)?)
                    .map_err(|e| broken(&format!("its folder index is not valid ({e})")))?;
                let mut files = Vec::with_capacity(index.files.len());
                for entry in index.files {
                    // Only files of this manifest, under names the store accepted.
                    let listed = row
                        .layers
                        .iter()
                        .any(|l| l.digest == entry.digest && l.media_type == manifest::FOLDER_FILE);
                    if !listed || crate::engine::served::hf::file_kind(&entry.name).is_err() {
                        return Err(broken(&format!("its folder index names {:?} wrongly", entry.name)));
                    }
                    files.push((entry.name, self.layout.blob(&entry.digest)));
                }
                files
            }
            None => Vec::new(),
        };
        let info = model.info.clone().unwrap_or_default();
        let text = |media: &str| self.text_layer(&row, media);
        let parameters = match self.layer_bytes(&row, manifest::PARAMS)? {
            Some(bytes) => manifest::parse_params(&bytes)?,
            None => Vec::new(),
        };
        let messages = match self.layer_bytes(&row, manifest::MESSAGES)? {
            Some(bytes) => serde_json::from_slice::<Vec<manifest::Message>>(&bytes)
                .map_err(|e| broken(&format!("its messages are not valid JSON ({e})")))?
                .into_iter()
                .map(|m| (m.role, m.content))
                .collect(),
            None => Vec::new(),
        };
        let license = row
            .layers
            .iter()
            .filter(|l| l.media_type == manifest::LICENSE)
            .map(|l| self.read_text(&l.digest))
            .collect::<Result<Vec<_>>>()?;
        Ok(ResolvedModel {
            name: shown,
            digest: row.manifest.to_string(),
            model_path,
            size_bytes: row.size,
            template: text(manifest::TEMPLATE)?,
            system: text(manifest::SYSTEM)?,
            parameters,
            messages,
            adapters: row
                .layers
                .iter()
                .filter(|l| l.media_type == manifest::ADAPTER)
                .map(|l| self.layout.blob(&l.digest))
                .collect(),
            license,
            architecture: info.architecture,
            context_length: info.context_length,
            folder,
        })
    }

    fn layer_bytes(&self, row: &catalog::ModelRow, media_type: &str) -> Result<Option<Vec<u8>>> {
        match row.layers.iter().find(|l| l.media_type == media_type) {
            Some(l) => self.read_blob(&l.digest).map(Some),
            None => Ok(None),
        }
    }

    fn text_layer(&self, row: &catalog::ModelRow, media_type: &str) -> Result<Option<String>> {
        Ok(self.layer_bytes(row, media_type)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    fn read_text(&self, digest: &Digest) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.read_blob(digest)?).into_owned())
    }

    /// Reads a small blob (text and JSON layers), refusing large ones.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        use std::io::Read;
        let path = self.layout.blob(digest);
        let file = std::fs::File::open(&path).map_err(Error::io(format!("open blob {digest}")))?;
        let mut bytes = Vec::new();
        file.take(MAX_TEXT_LAYER + 1)
            .read_to_end(&mut bytes)
            .map_err(Error::io(format!("read blob {digest}")))?;
        if bytes.len() as u64 > MAX_TEXT_LAYER {
            return Err(Error::InvalidModel(format!("blob {digest} is too large for a text layer")));
        }
        Ok(bytes)
    }

    /// Every model, for `hyperctl list`.
    pub async fn list(&self) -> Result<Vec<catalog::ModelRow>> {
        catalog::list(&self.db).await
    }

    /// Points `destination` at `source`'s model.
    pub async fn copy(&self, source: &str, destination: &str, who: &Requester) -> Result<()> {
        let from = self.parse_name(source)?;
        let to = self.parse_name(destination)?;
        let freed = catalog::copy(&self.db, &from.canonical(), &to.canonical(), who.uid, &who.user)
            .await?
            .ok_or_else(|| not_found(&from.display(&self.default_host)))?;
        self.remove_files(&freed);
        tracing::info!(by = %who.user, from = %from, to = %to, "model copied");
        Ok(())
    }

    /// Removes a name and every blob only it used; returns the bytes freed.
    pub async fn delete(&self, name: &str, who: &Requester) -> Result<u64> {
        let parsed = self.parse_name(name)?;
        let freed = catalog::delete(&self.db, &parsed.canonical(), who.uid, &who.user)
            .await?
            .ok_or_else(|| not_found(&parsed.display(&self.default_host)))?;
        let bytes = self.remove_files(&freed);
        tracing::info!(by = %who.user, model = %parsed, freed_bytes = bytes, "model deleted");
        Ok(bytes)
    }

    /// Models with a missing blob (for `hyperctl status`).
    pub async fn broken_count(&self) -> Result<u32> {
        catalog::broken_count(&self.db).await
    }

    /// The GGUF reader's limits.
    pub fn gguf_limits(&self) -> &crate::gguf::Limits {
        &self.gguf_limits
    }

    /// The download flights.
    pub fn downloads(&self) -> &Arc<downloads::Downloads> {
        &self.downloads
    }
}

/// The error for a model that is not in the store.
pub fn not_found(shown: &str) -> Error {
    Error::NotFound(format!("model '{shown}' not found; try `hyperctl pull {shown}`"))
}
