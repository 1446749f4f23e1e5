//! tls (placeholder until written).
