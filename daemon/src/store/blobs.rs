//! The blob directory and how a file becomes a blob. Blobs live in `<state>/blobs/sha256-<hex>`,
//! named only through [`Digest`]; everything in progress lives in `<state>/staging` on the same
//! file system. A blob appears only complete and verified: written to staging, hashed, fsynced,
//! renamed into place, and the directory fsynced, so a crash at any point leaves either no blob
//! or the right one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use crate::error::{Error, Result};

/// Mode of blob files: readable by runners, writable by no one but the service (and only
/// through a new rename).
const BLOB_MODE: u32 = 0o644;

/// Where the store keeps its files.
#[derive(Debug, Clone)]
pub struct Layout {
    blobs: PathBuf,
    staging: PathBuf,
}

impl Layout {
    /// The layout under a state directory.
    pub fn new(state_dir: &Path) -> Self {
        Self { blobs: state_dir.join("blobs"), staging: state_dir.join("staging") }
    }

    /// Creates the directories (blobs readable by all, staging private to the service).
    pub fn create_dirs(&self) -> Result<()> {
        for (dir, mode) in [(&self.blobs, 0o755), (&self.staging, 0o700)] {
            std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(Error::io(format!("set mode of {}", dir.display())))?;
        }
        Ok(())
    }

    /// The blobs directory.
    pub fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    /// The staging directory.
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// The path of a blob.
    pub fn blob(&self, digest: &Digest) -> PathBuf {
        digest.blob_path(&self.blobs)
    }

    /// Whether a blob is present with the expected size.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        std::fs::metadata(self.blob(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Moves a complete, fsynced staging file into place as `digest`'s blob and makes the
    /// rename durable.
    pub fn commit(&self, staged: &Path, digest: &Digest) -> Result<()> {
        let target = self.blob(digest);
        std::fs::set_permissions(staged, std::fs::Permissions::from_mode(BLOB_MODE))
            .map_err(Error::io(format!("set mode of {}", staged.display())))?;
        std::fs::rename(staged, &target)
            .map_err(Error::io(format!("move {} into the blob store", staged.display())))?;
        sync_dir(&self.blobs)
    }

    /// Writes a small blob from memory (configs, templates, parameters) and returns its digest.
    pub fn write_small(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if self.has_blob(&digest, bytes.len() as u64) {
            return Ok(digest);
        }
        let mut staged = BlobWriter::create(self)?;
        staged.write(bytes)?;
        let (got, _) = staged.finish(self, Some(bytes.len() as u64), |_| Ok(()))?;
        debug_assert_eq!(got, digest);
        Ok(digest)
    }
}

/// Fsyncs a directory so renames and removals in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io(format!("sync directory {}", dir.display())))
}

/// Hashes a file, returning its digest and length.
pub fn hash_file(path: &Path) -> Result<(Digest, u64)> {
    let mut file = File::open(path).map_err(Error::io(format!("open {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(Error::io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((Digest::from_hasher(hasher), len))
}

/// A file being written into staging while it is hashed (used for uploads, whose digest is
/// known only at the end). Dropped unfinished, it removes its staging file.
#[derive(Debug)]
pub struct BlobWriter {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    written: u64,
    done: bool,
}

impl BlobWriter {
    /// Starts a new staging file with a unique name.
    pub fn create(layout: &Layout) -> Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix("upload-")
            .suffix(".partial")
            .tempfile_in(&layout.staging)
            .map_err(Error::io("create a staging file"))?;
        let (file, path) = temp.keep().map_err(|e| Error::io("keep a staging file")(e.error))?;
        Ok(Self { file, path, hasher: Sha256::new(), written: 0, done: false })
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).map_err(Error::io("write a staging file"))?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The staging file (for checks before it is committed).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the length, runs `check` on the complete staged file (e.g. a GGUF check), then
    /// fsyncs and commits it as a blob. Returns the digest and size.
    pub fn finish(
        mut self,
        layout: &Layout,
        expected_len: Option<u64>,
        check: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<(Digest, u64)> {
        if let Some(expected) = expected_len
            && expected != self.written
        {
            return Err(Error::InvalidArgument(format!(
                "received {} bytes where {expected} were announced",
                self.written
            )));
        }
        self.file.sync_all().map_err(Error::io("sync a staging file"))?;
        check(&self.path)?;
        let digest = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if layout.has_blob(&digest, self.written) {
            // Same content already stored: drop the copy.
            let _ = std::fs::remove_file(&self.path);
        } else {
            layout.commit(&self.path, &digest)?;
        }
        self.done = true;
        Ok((digest, self.written))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Opens (creating) a staging file for a known digest, for resumable downloads.
pub fn open_partial(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("open {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_appears_only_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create_dirs().unwrap();
        let mut w = BlobWriter::create(&layout).unwrap();
        w.write(b"hello ").unwrap();
        w.write(b"world").unwrap();
        assert_eq!(std::fs::read_dir(layout.blobs_dir()).unwrap().count(), 0);
        let (digest, len) = w.finish(&layout, Some(11), |_| Ok(())).unwrap();
        assert_eq!(digest, Digest::of(b"hello world"));
        assert_eq!(len, 11);
        assert_eq!(std::fs::read(layout.blob(&digest)).unwrap(), b"hello world");
        assert_eq!(std::fs::read_dir(layout.staging_dir()).unwrap().count(), 0);
        let mode = std::fs::metadata(layout.blob(&digest)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn failed_or_dropped_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create_dirs().unwrap();
        let mut w = BlobWriter::create(&layout).unwrap();
        w.write(b"abc").unwrap();
        assert!(w.finish(&layout, Some(4), |_| Ok(())).is_err());
        let mut w = BlobWriter::create(&layout).unwrap();
        w.write(b"abc").unwrap();
        let refused = w.finish(&layout, None, |_| Err(Error::InvalidModel("no".into())));
        assert!(refused.is_err());
        drop(BlobWriter::create(&layout).unwrap());
        assert_eq!(std::fs::read_dir(layout.staging_dir()).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(layout.blobs_dir()).unwrap().count(), 0);
    }
}
