//! The hyperllama.v1 gRPC contract, generated from `proto/hyperllama/v1/*.proto`.
//!
//! `Control`: what `hyperctl` speaks to `hyperllamad` over `/run/hyperllama/control.sock`.
//! `Runner`: what `hyperllamad` speaks to each model runner over a private unix socket.
//! The protos are a contract: fields are added, never renumbered.

/// Package `hyperllama.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("hyperllama.v1");
}
