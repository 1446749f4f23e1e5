//! Unit file rendering (placeholder until written).
