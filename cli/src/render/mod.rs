//! Human output: tables and key–value blocks built from the views of
//! [`crate::views`] or the wire messages they come from.
//!
//! `board` is what a board's agent reports, printed the same way whether
//! it came straight from the agent (`--agent`) or through the controller;
//! `fleet` is what only the controller knows (queue, runs, decisions,
//! events, nodes, policy); `spec` is an experiment spec. Nothing here talks
//! to a peer or decides an exit code.

pub mod board;
pub mod fleet;
pub mod spec;
