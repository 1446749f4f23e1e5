//! fleet's wire format and the few types every part shares.
//!
//! `v1` is the generated gRPC code (committed; `tests/bootstrap.rs` keeps it
//! fresh). Only gRPC layers touch it: the rest of the code works on the
//! domain types in `spec` and converts at the edge.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    include!("gen/fleet.v1.rs");

    /// Encoded file descriptors, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/fleet_descriptor.bin");
}

pub mod identity;
#[cfg(feature = "pki")]
pub mod pki;
pub mod spec;
pub mod tls;
