//! Thermal guard (placeholder until written).
