//! hyperllamad: the HyperLlama service. See `shared/ARCHITECTURE.md` for the picture; each module
//! says what it owns.

pub mod accounts;
pub mod admission;
pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod db;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod identity;
pub mod inference;
pub mod inventory;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod privileges;
pub mod registry;
pub mod residency;
pub mod runner;
pub mod spawn;
pub mod state;
pub mod store;
pub mod systemd;
