//! The fleet controller: a persistent experiment queue and a scheduler that
//! places experiments across the fleet by load and temperature.
//!
//! - [`model`]: the domain: an experiment's phases and runs, nodes, events.
//! - [`store`]: the durable state in sled; every acknowledged write is
//!   flushed, every change comes with its event.
//! - [`scheduler`]: pure decisions (filters, policies, order), no I/O.
//!
//! Generated gRPC types (`fleet_proto::v1`) stay at the edge: only the
//! gRPC layer converts them; the store keeps a spec's wire form as bytes.

pub mod app;
pub mod authz;
pub mod config;
pub mod grpc;
pub mod links;
pub mod live;
pub mod metrics;
pub mod model;
pub mod reconciler;
pub mod scheduler;
pub mod store;
pub mod wire;
