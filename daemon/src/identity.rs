//! Who is calling: turns kernel-provided peer credentials (SO_PEERCRED on unix sockets) into a
//! [`PeerIdentity`] with the user's name and whether they administer the service. Nothing a
//! client sends is trusted for this.

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User};

/// A caller as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Effective uid of the peer process when it connected.
    pub uid: u32,
    /// Its login name, or the number when the uid has no passwd entry.
    pub user: String,
    /// Root, the daemon's own account, or a member of the admin group.
    pub admin: bool,
    /// The peer process, when known.
    pub pid: Option<i32>,
}

/// Decides who is an administrator.
#[derive(Debug, Clone)]
pub struct Authority {
    admin_group: String,
    admin_gid: Option<Gid>,
    daemon_uid: u32,
}

impl Authority {
    /// An authority for `admin_group`; the daemon's own uid is always an administrator (in user
    /// mode that is the developer who started it, in system mode the service account).
    pub fn new(admin_group: &str) -> Self {
        let admin_gid = Group::from_name(admin_group).ok().flatten().map(|g| g.gid);
        if admin_gid.is_none() {
            tracing::info!(
                group = admin_group,
                "admin group does not exist; only root and the service account administer"
            );
        }
        Self { admin_group: admin_group.to_string(), admin_gid, daemon_uid: Uid::current().as_raw() }
    }

    /// The group that grants administration (named in permission errors).
    pub fn admin_group(&self) -> &str {
        &self.admin_group
    }

    /// Builds the identity of a peer from its kernel credentials.
    pub fn identify(&self, uid: u32, gid: u32, pid: Option<i32>) -> PeerIdentity {
        let account = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        let user = account.as_ref().map(|u| u.name.clone()).unwrap_or_else(|| uid.to_string());
        let admin = uid == 0
            || uid == self.daemon_uid
            || self.admin_gid.is_some_and(|admin_gid| {
                gid == admin_gid.as_raw() || account.as_ref().is_some_and(|u| member_of(u, admin_gid))
            });
        PeerIdentity { uid, user, admin, pid }
    }
}

/// Whether `user` belongs to `group`, primary or supplementary (as the group database says now,
/// so `usermod -aG` takes effect without restarting the daemon).
fn member_of(user: &User, group: Gid) -> bool {
    if user.gid == group {
        return true;
    }
    let Ok(name) = CString::new(user.name.as_bytes()) else { return false };
    nix::unistd::getgrouplist(&name, user.gid).is_ok_and(|groups| groups.contains(&group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_daemon_account_are_admins() {
        let authority = Authority::new("no-such-group-hyperllama-test");
        assert!(authority.identify(0, 0, None).admin);
        let me = Uid::current().as_raw();
        assert!(authority.identify(me, 0, None).admin);
    }

    #[test]
    fn unknown_uid_is_not_admin_and_named_by_number() {
        let authority = Authority::new("no-such-group-hyperllama-test");
        let who = authority.identify(3_999_999_999, 3_999_999_999, Some(1));
        assert!(!who.admin || Uid::current().as_raw() == 3_999_999_999);
        assert_eq!(who.user, "3999999999");
    }

    #[test]
    fn primary_group_membership_counts() {
        // Group 0 (root) exists everywhere; a non-root uid whose primary gid is 0 is an admin of
        // an authority for group "root".
        let authority = Authority::new("root");
        assert!(authority.identify(3_999_999_998, 0, None).admin);
    }
}
