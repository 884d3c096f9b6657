//! Per-user HTTP sockets, `<user_socket_dir>/<uid>.sock`, made by `hyperctl endpoint`. Each is
//! owned by the service account with mode 0600 plus a POSIX ACL entry granting its user read and
//! write (the owner of a file may set its ACL, so no capability is needed); connections are also
//! checked against SO_PEERCRED, so even root connecting to another user's socket is refused.
//!
//! The socket is bound under a temporary name and renamed into place once its ACL is set, so it
//! is never reachable with looser permissions. Sockets survive restarts: at start the daemon binds
//! again every `<uid>.sock` found in the directory (which only the service account can write).

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use super::HttpServer;
use super::listen::UnixSpec;
use crate::error::{Error, Result};

/// The per-user sockets being served.
#[derive(Debug)]
pub struct UserSockets {
    dir: PathBuf,
    open: Mutex<HashMap<u32, CancellationToken>>,
}

impl UserSockets {
    /// Sockets under `dir`.
    pub fn new(dir: PathBuf, _service_user: String) -> Self {
        Self { dir, open: Mutex::new(HashMap::new()) }
    }

    fn path(&self, uid: u32) -> PathBuf {
        self.dir.join(format!("{uid}.sock"))
    }

    /// Makes and serves `uid`'s socket (idempotent); returns its path.
    pub fn open(&self, server: &HttpServer, uid: u32) -> Result<PathBuf> {
        let path = self.path(uid);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.contains_key(&uid) && is_socket(&path) {
            return Ok(path);
        }
        if !self.dir.is_dir() {
            std::fs::create_dir_all(&self.dir)
                .map_err(Error::io(format!("create {}", self.dir.display())))?;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755))
                .map_err(Error::io(format!("set mode of {}", self.dir.display())))?;
        }
        let staging = self.dir.join(format!(".{uid}.sock.{}", std::process::id()));
        let _ = std::fs::remove_file(&staging);
        let listener = std::os::unix::net::UnixListener::bind(&staging)
            .map_err(Error::io(format!("bind {}", staging.display())))?;
        let prepared = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
            .map_err(Error::io(format!("set mode of {}", staging.display())))
            .and_then(|()| grant(&staging, uid))
            .and_then(|()| {
                if let Ok(meta) = std::fs::symlink_metadata(&path)
                    && !meta.file_type().is_socket()
                {
                    return Err(Error::InvalidArgument(format!(
                        "{} exists and is not a socket",
                        path.display()
                    )));
                }
                std::fs::rename(&staging, &path)
                    .map_err(Error::io(format!("move the socket to {}", path.display())))
            });
        if let Err(error) = prepared {
            let _ = std::fs::remove_file(&staging);
            return Err(error);
        }
        if let Some(old) = open.remove(&uid) {
            old.cancel();
        }
        let stop = CancellationToken::new();
        server.serve_user_socket(UnixSpec { listener, owner: Some(uid) }, stop.clone())?;
        open.insert(uid, stop);
        tracing::info!(uid, socket = %path.display(), "per-user endpoint ready");
        Ok(path)
    }

    /// Stops serving and removes `uid`'s socket; returns its path.
    pub fn remove(&self, uid: u32) -> Result<PathBuf> {
        let path = self.path(uid);
        if let Some(stop) = self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid) {
            stop.cancel();
        }
        if is_socket(&path) {
            std::fs::remove_file(&path).map_err(Error::io(format!("remove {}", path.display())))?;
        }
        Ok(path)
    }

    /// Serves again the sockets made before a restart.
    pub fn restore(&self, server: &HttpServer) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.filter_map(std::result::Result::ok) {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(uid) = name.strip_suffix(".sock").and_then(|u| u.parse::<u32>().ok()) else { continue };
            if let Err(error) = self.open(server, uid) {
                tracing::warn!(uid, %error, "cannot restore a per-user endpoint");
            }
        }
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Sets the access ACL `u::rw-, u:<uid>:rw-, g::---, m::rw-, o::---` (the kernel's xattr form of
/// `setfacl -m u:<uid>:rw`).
fn grant(path: &Path, uid: u32) -> Result<()> {
    let acl = acl_xattr(uid, nix::unistd::Uid::effective().as_raw());
    rustix::fs::setxattr(path, "system.posix_acl_access", &acl, rustix::fs::XattrFlags::empty()).map_err(|e| {
        Error::Internal(format!(
            "cannot grant uid {uid} access to {} with a POSIX ACL ({e}); the file system of http.user_socket_dir must support ACLs",
            path.display()
        ))
    })
}

const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;
const RW: u16 = 0o6;

/// The `system.posix_acl_access` value: version 2, then entries sorted by tag and id.
fn acl_xattr(uid: u32, owner: u32) -> Vec<u8> {
    let mut entries = vec![(ACL_USER_OBJ, RW, ACL_UNDEFINED_ID)];
    if uid != owner {
        entries.push((ACL_USER, RW, uid));
    }
    entries.extend([
        (ACL_GROUP_OBJ, 0, ACL_UNDEFINED_ID),
        (ACL_MASK, RW, ACL_UNDEFINED_ID),
        (ACL_OTHER, 0, ACL_UNDEFINED_ID),
    ]);
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend(tag.to_le_bytes());
        out.extend(perm.to_le_bytes());
        out.extend(id.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_bytes_match_the_kernel_format() {
        let acl = acl_xattr(1000, 0);
        assert_eq!(acl.len(), 4 + 5 * 8);
        assert_eq!(&acl[..4], &[2, 0, 0, 0]);
        // The named-user entry: tag 2, rw, uid 1000.
        assert_eq!(&acl[12..20], &[2, 0, 6, 0, 0xe8, 0x03, 0, 0]);
        assert_eq!(acl_xattr(7, 7).len(), 4 + 4 * 8, "no named entry for the owner itself");
    }

    #[test]
    fn the_acl_is_accepted_by_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        if grant(&file, 4_000_000).is_err() {
            return; // a file system without ACLs (tmpfs built without them)
        }
        let mut value = vec![0u8; 128];
        let n = rustix::fs::getxattr(&file, "system.posix_acl_access", &mut value).unwrap();
        assert_eq!(&value[..n], &acl_xattr(4_000_000, nix::unistd::Uid::effective().as_raw())[..]);
    }
}
