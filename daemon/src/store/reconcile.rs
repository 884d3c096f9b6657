//! Start-up reconciliation of the catalog with the blob files (the database's `quick_check` ran
//! when it was opened): a catalogued blob whose file is missing or of the wrong size is marked
//! absent, so its models show as broken; files nothing refers to (left by a crash between a
//! download and its registration, or by an `rm` cut short) are removed unless
//! `store.keep_orphans`; unfinished uploads in staging are removed, resumable downloads kept.
//! It runs before the daemon is ready, so nothing else touches the store meanwhile.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::digest::Digest;
use super::{Store, catalog};
use crate::error::{Error, Result};

/// Resumable downloads older than this are removed.
const STALE_PARTIAL: Duration = Duration::from_secs(14 * 24 * 3600);

/// What reconciliation found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Catalogued blobs.
    pub blobs: usize,
    /// Catalogued blobs whose file is missing or damaged.
    pub missing: usize,
    /// Unreferenced files removed.
    pub orphans_removed: usize,
    /// Unreferenced files kept (`store.keep_orphans`).
    pub orphans_kept: usize,
    /// Staging files removed.
    pub staging_removed: usize,
    /// Names whose model is broken.
    pub broken_models: u32,
}

/// Reconciles `store`'s catalog and files.
pub async fn reconcile(store: &Store, keep_orphans: bool) -> Result<Report> {
    let mut report = Report::default();
    // Garbage a crash left in the catalog (a name removed, its blobs not yet).
    let swept = catalog::sweep(store.db()).await?;
    if !keep_orphans {
        store.remove_files(&swept);
    }
    let rows = catalog::blobs(store.db()).await?;
    report.blobs = rows.len();
    let layout = store.layout();
    let mut known = HashSet::new();
    for (digest, size, present) in &rows {
        known.insert(*digest);
        let path = layout.blob(digest);
        let ok = layout.has_blob(digest, *size);
        if !ok {
            report.missing += 1;
            if path.exists() {
                tracing::warn!(%digest, "blob has the wrong size; removing it");
                let _ = std::fs::remove_file(&path);
            } else {
                tracing::warn!(%digest, "blob file is missing");
            }
        }
        if ok != *present {
            catalog::set_present(store.db(), digest, ok).await?;
        }
    }
    let entries = std::fs::read_dir(layout.blobs_dir())
        .map_err(Error::io(format!("read {}", layout.blobs_dir().display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let digest = Digest::from_file_name(&name);
        if digest.is_some_and(|d| known.contains(&d)) {
            continue;
        }
        if keep_orphans {
            report.orphans_kept += 1;
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => report.orphans_removed += 1,
            Err(e) => tracing::warn!(file = %name, error = %e, "cannot remove an orphaned file"),
        }
    }
    report.staging_removed = clean_staging(store)?;
    report.broken_models = catalog::broken_count(store.db()).await?;
    Ok(report)
}

/// Removes unfinished uploads and stale downloads; keeps recent downloads for resuming.
fn clean_staging(store: &Store) -> Result<usize> {
    let dir = store.layout().staging_dir();
    let mut removed = 0;
    let now = SystemTime::now();
    for entry in std::fs::read_dir(dir).map_err(Error::io(format!("read {}", dir.display())))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let resumable =
            name.starts_with("sha256-") && (name.ends_with(".partial") || name.ends_with(".parts"));
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_PARTIAL);
        if (!resumable || stale) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}
