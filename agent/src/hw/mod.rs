//! Board hardware (placeholder until written).
