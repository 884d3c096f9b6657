//! Leaving root: a daemon started as root does its root-only setup (directories owned by the
//! service account, sockets bound), then becomes the service account keeping only the capabilities
//! it uses. It runs before any thread exists, because uids and capabilities are per thread.

use std::path::Path;

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, User};

/// Capabilities the daemon keeps: pinning KV memory (`mlock` beyond RLIMIT_MEMLOCK).
pub const KEPT: &[Capability] = &[Capability::CAP_IPC_LOCK];

/// Errors while dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The configured service account does not exist.
    #[error(
        "service user `{0}` does not exist: create it with `systemd-sysusers` (packages do) or \
         `useradd --system {0}`, or set `daemon.user`"
    )]
    NoSuchUser(String),
    /// A system call failed.
    #[error("cannot {what}: {source}")]
    Sys { what: String, source: std::io::Error },
}

fn sys(what: &str) -> impl FnOnce(nix::Error) -> PrivilegeError + '_ {
    move |e| PrivilegeError::Sys { what: what.to_string(), source: e.into() }
}

fn caps_err(what: &str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError + '_ {
    move |e| PrivilegeError::Sys { what: what.to_string(), source: std::io::Error::other(e.to_string()) }
}

/// The account the daemon will run as.
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    /// Login name.
    pub name: String,
    /// Its uid.
    pub uid: Uid,
    /// Its primary gid.
    pub gid: Gid,
}

/// The account to switch to: `configured` when running as root, otherwise the current user.
pub fn service_account(configured: &str) -> Result<ServiceAccount, PrivilegeError> {
    let uid = if Uid::effective().is_root() {
        let user = User::from_name(configured)
            .map_err(sys("look up the service user"))?
            .ok_or_else(|| PrivilegeError::NoSuchUser(configured.to_string()))?;
        return Ok(ServiceAccount { name: user.name, uid: user.uid, gid: user.gid });
    } else {
        Uid::effective()
    };
    let name = User::from_uid(uid).ok().flatten().map(|u| u.name).unwrap_or_else(|| uid.to_string());
    Ok(ServiceAccount { name, uid, gid: Gid::effective() })
}

/// Gives `path` to the service account (only meaningful while root).
pub fn hand_over(path: &Path, account: &ServiceAccount) -> Result<(), PrivilegeError> {
    if Uid::effective().is_root() {
        nix::unistd::chown(path, Some(account.uid), Some(account.gid))
            .map_err(sys("change the owner of a daemon directory"))?;
    }
    Ok(())
}

/// Becomes `account` (when root) and keeps only [`KEPT`]; returns the names of the capabilities
/// kept. Must run before any other thread starts.
pub fn drop_privileges(account: &ServiceAccount) -> Result<Vec<String>, PrivilegeError> {
    let keep: CapsHashSet = KEPT.iter().copied().collect();
    if Uid::effective().is_root() {
        caps::securebits::set_keepcaps(true).map_err(caps_err("keep capabilities across setuid"))?;
        // Keep the account's own supplementary groups (e.g. `render`, `video` for GPU devices).
        let groups = std::ffi::CString::new(account.name.as_bytes())
            .ok()
            .and_then(|name| nix::unistd::getgrouplist(&name, account.gid).ok())
            .unwrap_or_else(|| vec![account.gid]);
        nix::unistd::setgroups(&groups).map_err(sys("set the service account's groups"))?;
        nix::unistd::setgid(account.gid).map_err(sys("switch to the service group"))?;
        nix::unistd::setuid(account.uid).map_err(sys("switch to the service user"))?;
        caps::securebits::set_keepcaps(false).map_err(caps_err("reset keepcaps"))?;
        if Uid::effective().is_root() || nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err(PrivilegeError::Sys {
                what: "drop root".into(),
                source: std::io::Error::other("still able to become root after setuid"),
            });
        }
    }
    // Keep only what we use, in every set; a non-root start simply loses what it does not need.
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err("read capabilities"))?;
    let kept: CapsHashSet = keep.intersection(&permitted).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(caps_err("set effective capabilities"))?;
    caps::set(None, CapSet::Inheritable, &kept).map_err(caps_err("set inheritable capabilities"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_err("set permitted capabilities"))?;
    // Runners inherit the right to pin their KV memory, nothing more.
    for cap in &kept {
        if let Err(error) = caps::raise(None, CapSet::Ambient, *cap) {
            tracing::debug!(%error, ?cap, "cannot make capability ambient");
        }
    }
    let mut names: Vec<String> = kept.iter().map(|c| c.to_string().to_lowercase()).collect();
    names.sort();
    Ok(names)
}
