//! What every part of the running daemon shares: configuration (reloadable), directories, the
//! authority deciding who administers, the lifecycle (admission and drain) and the database.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use sqlx::SqlitePool;

use crate::config::{Config, Dirs};
use crate::identity::Authority;
use crate::lifecycle::Lifecycle;
use crate::residency::Residency;
use crate::store::Store;

/// Shared daemon state.
#[derive(Debug)]
pub struct Shared {
    config: RwLock<Arc<Config>>,
    /// Directories fixed at start (changing them needs a restart).
    pub dirs: Dirs,
    /// Decides who administers (fixed at start; the group's members are looked up per call).
    pub authority: Authority,
    /// Admission and drain.
    pub lifecycle: Arc<Lifecycle>,
    /// The database.
    pub db: SqlitePool,
    /// When the daemon started.
    pub started: Instant,
    /// Capabilities kept after dropping privileges.
    pub capabilities: Vec<String>,
    /// The account the daemon runs as.
    pub service_user: String,
    /// Loaded models and their runners.
    pub residency: Arc<Residency>,
    /// The shared model store.
    pub store: Arc<Store>,
}

/// What [`Shared::new`] needs.
#[derive(Debug)]
pub struct SharedParts {
    /// The configuration in force.
    pub config: Config,
    /// The database.
    pub db: SqlitePool,
    /// Capabilities kept.
    pub capabilities: Vec<String>,
    /// The account the daemon runs as.
    pub service_user: String,
    /// Loaded models and their runners.
    pub residency: Arc<Residency>,
    /// The shared model store, opened and reconciled.
    pub store: Arc<Store>,
}

impl Shared {
    /// Builds the shared state.
    pub fn new(parts: SharedParts) -> Arc<Self> {
        Arc::new(Self {
            dirs: parts.config.dirs(),
            authority: Authority::new(&parts.config.daemon.admin_group),
            config: RwLock::new(Arc::new(parts.config)),
            lifecycle: Lifecycle::new(),
            db: parts.db,
            started: Instant::now(),
            capabilities: parts.capabilities,
            service_user: parts.service_user,
            residency: parts.residency,
            store: parts.store,
        })
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the configuration (SIGHUP).
    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }
}
