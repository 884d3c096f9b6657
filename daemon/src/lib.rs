//! hyperllamad: the HyperLlama service. See `shared/ARCHITECTURE.md` for the picture; each module
//! says what it owns.

pub mod accounts;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod db;
pub mod engine;
pub mod error;
pub mod identity;
pub mod inventory;
pub mod lifecycle;
pub mod logging;
pub mod policy;
pub mod privileges;
pub mod state;
pub mod systemd;
