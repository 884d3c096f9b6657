//! The store's catalog in SQLite (tables from `migrations/0002_store.sql`): blobs, manifests and
//! their layers, tags, and the event log. Each change is one transaction; reference counting is
//! a query (a blob is garbage when no manifest layer refers to it, a manifest when no tag does),
//! run in the same transaction as the change that freed them.

use sqlx::{Row, Sqlite, SqlitePool, Transaction};

use super::digest::Digest;
use super::manifest::Manifest;
use crate::db::now;
use crate::error::{Error, Result};
use crate::gguf::ModelInfo;

/// What the catalog knows about a GGUF blob.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlobInfo {
    /// `general.architecture`.
    pub architecture: String,
    /// Sum of tensor elements.
    pub parameter_count: u64,
    /// `<arch>.context_length`.
    pub context_length: u64,
    /// `<arch>.embedding_length`.
    pub embedding_length: u64,
    /// Quantization name.
    pub quantization: String,
}

impl From<&ModelInfo> for BlobInfo {
    fn from(i: &ModelInfo) -> Self {
        Self {
            architecture: i.architecture.clone(),
            parameter_count: i.parameter_count,
            context_length: i.context_length,
            embedding_length: i.embedding_length,
            quantization: i.quantization.clone(),
        }
    }
}

/// A layer of a stored model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRow {
    /// -1 for the config, then 0, 1, ...
    pub position: i64,
    /// Media type.
    pub media_type: String,
    /// The blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Whether the start-up check found its file.
    pub present: bool,
    /// For GGUF blobs.
    pub info: Option<BlobInfo>,
}

/// A name and the model it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRow {
    /// Canonical name.
    pub name: String,
    /// The manifest (the model's id).
    pub manifest: Digest,
    /// Total size of its blobs.
    pub size: u64,
    /// When the name was last pointed at a manifest.
    pub modified_at: i64,
    /// Config and layers, config first.
    pub layers: Vec<LayerRow>,
}

impl ModelRow {
    /// Whether any of its blobs is missing.
    pub fn broken(&self) -> bool {
        self.layers.iter().any(|l| !l.present)
    }

    /// The model (GGUF weights) layer.
    pub fn model_layer(&self) -> Option<&LayerRow> {
        self.layers.iter().find(|l| l.media_type == super::manifest::MODEL)
    }

    /// The index of a model stored as a Hugging Face folder.
    pub fn folder_layer(&self) -> Option<&LayerRow> {
        self.layers.iter().find(|l| l.media_type == super::manifest::FOLDER)
    }

    /// The layer that describes the weights (architecture, size): the GGUF or the folder index.
    pub fn weights_layer(&self) -> Option<&LayerRow> {
        self.model_layer().or_else(|| self.folder_layer())
    }
}

/// A model to register.
#[derive(Debug)]
pub struct NewModel<'a> {
    /// Canonical name.
    pub name: &'a str,
    /// The manifest.
    pub manifest: &'a Manifest,
    /// Its bytes as stored and served (the id is their sha256).
    pub manifest_bytes: &'a [u8],
    /// Facts about GGUF blobs.
    pub infos: &'a [(Digest, BlobInfo)],
    /// Where it came from.
    pub source: &'a str,
    /// Who registered it.
    pub uid: u32,
    /// Their name.
    pub user: &'a str,
    /// "pull", "create" or "copy" for the event log.
    pub action: &'a str,
}

fn digest_of(text: &str) -> Result<Digest> {
    Digest::parse(text).map_err(|e| Error::Internal(format!("the catalog holds an invalid digest: {e}")))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Registers a model: its blobs (all of whose files exist and are verified), its manifest and
/// its name, in one transaction. Returns the blobs freed because the name pointed elsewhere
/// before.
pub async fn register(db: &SqlitePool, m: &NewModel<'_>) -> Result<Vec<(Digest, u64)>> {
    let digest = Digest::of(m.manifest_bytes);
    let now = now();
    let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
    for layer in m.manifest.all_layers() {
        let info = m.infos.iter().find(|(d, _)| *d == layer.digest).map(|(_, i)| i);
        sqlx::query(
            "INSERT INTO blobs (digest, size, present, added_at, architecture, parameter_count, context_length,
                                embedding_length, quantization)
             VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(digest) DO UPDATE SET present = 1,
               architecture = COALESCE(excluded.architecture, architecture),
               parameter_count = COALESCE(excluded.parameter_count, parameter_count),
               context_length = COALESCE(excluded.context_length, context_length),
               embedding_length = COALESCE(excluded.embedding_length, embedding_length),
               quantization = COALESCE(excluded.quantization, quantization)",
        )
        .bind(layer.digest.to_string())
        .bind(to_i64(layer.size))
        .bind(now)
        .bind(info.map(|i| i.architecture.clone()))
        .bind(info.map(|i| to_i64(i.parameter_count)))
        .bind(info.map(|i| to_i64(i.context_length)))
        .bind(info.map(|i| to_i64(i.embedding_length)))
        .bind(info.map(|i| i.quantization.clone()))
        .execute(&mut *tx)
        .await?;
    }
    let inserted = sqlx::query(
        "INSERT INTO manifests (digest, body, size, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
    )
    .bind(digest.to_string())
    .bind(m.manifest_bytes)
    .bind(to_i64(m.manifest.total_size()))
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        let layers =
            std::iter::once((-1i64, &m.manifest.config)).chain((0i64..).zip(m.manifest.layers.iter()));
        for (position, layer) in layers {
            sqlx::query(
                "INSERT INTO manifest_layers (manifest, position, media_type, blob) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(digest.to_string())
            .bind(position)
            .bind(&layer.media_type)
            .bind(layer.digest.to_string())
            .execute(&mut *tx)
            .await?;
        }
    }
    point_tag(&mut tx, m.name, &digest, m.source, m.uid, m.user).await?;
    record(&mut *tx, m.action, m.name, m.uid, m.user, Some(&digest), "success").await?;
    let freed = collect_garbage(&mut tx).await?;
    tx.commit().await?;
    Ok(freed)
}

async fn point_tag(
    tx: &mut Transaction<'_, Sqlite>,
    name: &str,
    manifest: &Digest,
    source: &str,
    uid: u32,
    user: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO tags (name, manifest, source, uid, user, modified_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(name) DO UPDATE SET manifest = excluded.manifest, source = excluded.source,
           uid = excluded.uid, user = excluded.user, modified_at = excluded.modified_at, name = excluded.name",
    )
    .bind(name)
    .bind(manifest.to_string())
    .bind(source)
    .bind(i64::from(uid))
    .bind(user)
    .bind(now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes manifests no tag points at and blobs no layer refers to; returns the freed blobs.
async fn collect_garbage(tx: &mut Transaction<'_, Sqlite>) -> Result<Vec<(Digest, u64)>> {
    sqlx::query("DELETE FROM manifests WHERE digest NOT IN (SELECT manifest FROM tags)")
        .execute(&mut **tx)
        .await?;
    let rows = sqlx::query(
        "DELETE FROM blobs WHERE digest NOT IN (SELECT blob FROM manifest_layers) RETURNING digest, size",
    )
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(|r| Ok((digest_of(r.get::<&str, _>(0))?, to_u64(r.get(1))))).collect()
}

/// Appends to the event log.
pub async fn record<'c, E: sqlx::Executor<'c, Database = Sqlite>>(
    db: E,
    action: &str,
    name: &str,
    uid: u32,
    user: &str,
    manifest: Option<&Digest>,
    outcome: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO store_events (action, name, uid, user, manifest, outcome, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(action)
    .bind(name)
    .bind(i64::from(uid))
    .bind(user)
    .bind(manifest.map(ToString::to_string))
    .bind(outcome)
    .bind(now())
    .execute(db)
    .await?;
    Ok(())
}

// Query heads as macros so `concat!` keeps every query a static string (sqlx refuses dynamic SQL).
macro_rules! model_columns {
    () => {
        "SELECT t.name, t.manifest, m.size, t.modified_at FROM tags t JOIN manifests m ON m.digest = t.manifest"
    };
}
macro_rules! layer_columns {
    () => {
        "SELECT l.manifest, l.position, l.media_type, l.blob, b.size, b.present, b.architecture,
                b.parameter_count, b.context_length, b.embedding_length, b.quantization
         FROM manifest_layers l JOIN blobs b ON b.digest = l.blob"
    };
}

fn layer_from(r: &sqlx::sqlite::SqliteRow) -> Result<(String, LayerRow)> {
    let architecture: Option<String> = r.get(6);
    Ok((
        r.get(0),
        LayerRow {
            position: r.get(1),
            media_type: r.get(2),
            digest: digest_of(r.get::<&str, _>(3))?,
            size: to_u64(r.get(4)),
            present: r.get::<i64, _>(5) != 0,
            info: architecture.map(|architecture| BlobInfo {
                architecture,
                parameter_count: to_u64(r.get::<Option<i64>, _>(7).unwrap_or(0)),
                context_length: to_u64(r.get::<Option<i64>, _>(8).unwrap_or(0)),
                embedding_length: to_u64(r.get::<Option<i64>, _>(9).unwrap_or(0)),
                quantization: r.get::<Option<String>, _>(10).unwrap_or_default(),
            }),
        },
    ))
}

fn model_from(r: &sqlx::sqlite::SqliteRow) -> Result<ModelRow> {
    Ok(ModelRow {
        name: r.get(0),
        manifest: digest_of(r.get::<&str, _>(1))?,
        size: to_u64(r.get(2)),
        modified_at: r.get(3),
        layers: Vec::new(),
    })
}

/// The model a canonical name points at.
pub async fn find(db: &SqlitePool, name: &str) -> Result<Option<ModelRow>> {
    let Some(row) =
        sqlx::query(concat!(model_columns!(), " WHERE t.name = ?1")).bind(name).fetch_optional(db).await?
    else {
        return Ok(None);
    };
    let mut model = model_from(&row)?;
    let layers = sqlx::query(concat!(layer_columns!(), " WHERE l.manifest = ?1 ORDER BY l.position"))
        .bind(model.manifest.to_string())
        .fetch_all(db)
        .await?;
    for r in &layers {
        model.layers.push(layer_from(r)?.1);
    }
    Ok(Some(model))
}

/// Every name, with its model, sorted by name.
pub async fn list(db: &SqlitePool) -> Result<Vec<ModelRow>> {
    let mut models: Vec<ModelRow> = sqlx::query(concat!(model_columns!(), " ORDER BY t.name"))
        .fetch_all(db)
        .await?
        .iter()
        .map(model_from)
        .collect::<Result<_>>()?;
    let layers =
        sqlx::query(concat!(layer_columns!(), " ORDER BY l.manifest, l.position")).fetch_all(db).await?;
    let mut by_manifest: std::collections::HashMap<String, Vec<LayerRow>> = std::collections::HashMap::new();
    for r in &layers {
        let (manifest, layer) = layer_from(r)?;
        by_manifest.entry(manifest).or_default().push(layer);
    }
    for m in &mut models {
        m.layers = by_manifest.get(&m.manifest.to_string()).cloned().unwrap_or_default();
    }
    Ok(models)
}

/// The stored bytes of a manifest.
pub async fn manifest_body(db: &SqlitePool, digest: &Digest) -> Result<Option<Vec<u8>>> {
    Ok(sqlx::query_scalar("SELECT body FROM manifests WHERE digest = ?1")
        .bind(digest.to_string())
        .fetch_optional(db)
        .await?)
}

/// Points `destination` at `source`'s model. Returns the blobs freed if `destination` pointed
/// at a model nothing else uses.
pub async fn copy(
    db: &SqlitePool,
    source: &str,
    destination: &str,
    uid: u32,
    user: &str,
) -> Result<Option<Vec<(Digest, u64)>>> {
    let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
    let manifest: Option<String> = sqlx::query_scalar("SELECT manifest FROM tags WHERE name = ?1")
        .bind(source)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(manifest) = manifest else { return Ok(None) };
    let manifest = digest_of(&manifest)?;
    point_tag(&mut tx, destination, &manifest, "copy", uid, user).await?;
    record(&mut *tx, "copy", destination, uid, user, Some(&manifest), "success").await?;
    let freed = collect_garbage(&mut tx).await?;
    tx.commit().await?;
    Ok(Some(freed))
}

/// Removes a name; returns the blobs nothing refers to any more, or `None` if the name is
/// unknown.
pub async fn delete(db: &SqlitePool, name: &str, uid: u32, user: &str) -> Result<Option<Vec<(Digest, u64)>>> {
    let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
    let manifest: Option<String> = sqlx::query_scalar("DELETE FROM tags WHERE name = ?1 RETURNING manifest")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(manifest) = manifest else { return Ok(None) };
    record(&mut *tx, "delete", name, uid, user, Some(&digest_of(&manifest)?), "success").await?;
    let freed = collect_garbage(&mut tx).await?;
    tx.commit().await?;
    Ok(Some(freed))
}

/// Every blob row: digest, size, present.
pub async fn blobs(db: &SqlitePool) -> Result<Vec<(Digest, u64, bool)>> {
    sqlx::query("SELECT digest, size, present FROM blobs")
        .fetch_all(db)
        .await?
        .iter()
        .map(|r| Ok((digest_of(r.get::<&str, _>(0))?, to_u64(r.get(1)), r.get::<i64, _>(2) != 0)))
        .collect()
}

/// Whether any blob row exists for `digest`.
pub async fn has_blob_row(db: &SqlitePool, digest: &Digest) -> Result<bool> {
    Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM blobs WHERE digest = ?1")
        .bind(digest.to_string())
        .fetch_one(db)
        .await?
        > 0)
}

/// Records whether a blob's file was found.
pub async fn set_present(db: &SqlitePool, digest: &Digest, present: bool) -> Result<()> {
    sqlx::query("UPDATE blobs SET present = ?2 WHERE digest = ?1")
        .bind(digest.to_string())
        .bind(i64::from(present))
        .execute(db)
        .await?;
    Ok(())
}

/// Removes garbage left by a crash between a name's removal and its blobs' (start-up).
pub async fn sweep(db: &SqlitePool) -> Result<Vec<(Digest, u64)>> {
    let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
    let freed = collect_garbage(&mut tx).await?;
    tx.commit().await?;
    Ok(freed)
}

/// Total bytes of present blobs.
pub async fn total_size(db: &SqlitePool) -> Result<u64> {
    let total: Option<i64> =
        sqlx::query_scalar("SELECT SUM(size) FROM blobs WHERE present = 1").fetch_one(db).await?;
    Ok(to_u64(total.unwrap_or(0)))
}

/// Names whose model has a missing blob.
pub async fn broken_count(db: &SqlitePool) -> Result<u32> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tags t WHERE EXISTS (
           SELECT 1 FROM manifest_layers l JOIN blobs b ON b.digest = l.blob
           WHERE l.manifest = t.manifest AND b.present = 0)",
    )
    .fetch_one(db)
    .await?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}
