//! The fleet agent: runs one Jetson board's experiments as systemd units,
//! reads and guards its hardware, and serves all of it over mutual-TLS gRPC.
//!
//! Must never live here: scheduling across boards (the controller's job).

pub mod app;
pub mod config;
pub mod exit_record;
pub mod experiments;
pub mod grpc;
pub mod guard;
pub mod hw;
pub mod join;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod oom;
pub mod status;
pub mod store;
pub mod systemd;
pub mod unit_file;
