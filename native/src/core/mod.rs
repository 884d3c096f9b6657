//! The pure half of the native engine: everything that decides what runs, with no CUDA and no
//! tokio, so it is unit-tested on any machine.

pub mod executor;
