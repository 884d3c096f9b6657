//! What each kind of caller may do. Administrators (root, the service account, the admin group)
//! manage the store and residency; every other local user may read, run models and manage what is
//! their own. A denial names the group that would grant the action.

use crate::error::Error;
use crate::identity::PeerIdentity;

/// An action that needs a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Status, list, show, ps.
    Inspect,
    /// Generate, chat, embed as oneself.
    Infer,
    /// Pull a model into the shared store.
    Pull,
    /// Create a model from a Modelfile.
    Create,
    /// Copy a model name.
    Copy,
    /// Delete a model.
    Delete,
    /// Load or pin a model.
    Load,
    /// Unload a model.
    Unload,
    /// Act on another user's tokens, quota or usage.
    ManageOthers,
    /// Change quotas.
    SetQuota,
    /// Manage one's own tokens, read one's own quota and usage, make one's own endpoint.
    ManageOwn,
}

impl Action {
    /// Whether only administrators may do this.
    pub fn needs_admin(self) -> bool {
        !matches!(self, Action::Inspect | Action::Infer | Action::ManageOwn)
    }

    /// How a denial describes the action.
    pub fn describe(self) -> &'static str {
        match self {
            Action::Inspect => "inspecting the service",
            Action::Infer => "running a model",
            Action::Pull => "pulling models",
            Action::Create => "creating models",
            Action::Copy => "copying models",
            Action::Delete => "deleting models",
            Action::Load => "loading models",
            Action::Unload => "unloading models",
            Action::ManageOthers => "acting on another user's tokens, quota or usage",
            Action::SetQuota => "setting quotas",
            Action::ManageOwn => "managing your own tokens",
        }
    }
}

/// Allows or denies `action` for `who`.
pub fn authorize(who: &PeerIdentity, action: Action, admin_group: &str) -> Result<(), Error> {
    if action.needs_admin() && !who.admin {
        tracing::info!(uid = who.uid, user = %who.user, action = action.describe(), "denied");
        return Err(Error::PermissionDenied { action: action.describe(), group: admin_group.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(admin: bool) -> PeerIdentity {
        PeerIdentity { uid: 1000, user: "alice".into(), admin, pid: None }
    }

    #[test]
    fn users_may_read_and_run_but_not_administer() {
        for action in [Action::Inspect, Action::Infer, Action::ManageOwn] {
            assert!(authorize(&user(false), action, "g").is_ok());
        }
        for action in [
            Action::Pull,
            Action::Create,
            Action::Copy,
            Action::Delete,
            Action::Load,
            Action::Unload,
            Action::ManageOthers,
            Action::SetQuota,
        ] {
            let err = authorize(&user(false), action, "hyperllama-admin").unwrap_err();
            assert!(err.to_string().contains("hyperllama-admin"), "{err}");
            assert!(authorize(&user(true), action, "g").is_ok());
        }
    }
}
