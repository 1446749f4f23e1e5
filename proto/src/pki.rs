//! pki (placeholder until written).
