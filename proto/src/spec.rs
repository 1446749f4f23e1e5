//! spec (placeholder until written).
