//! The fleet agent: runs one Jetson board's experiments as systemd units,
//! reads and guards its hardware, and serves all of it over mutual-TLS gRPC.
//!
//! Must never live here: scheduling across boards (the controller's job).

pub mod guard;
pub mod hw;
pub mod unit_file;
