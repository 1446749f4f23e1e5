//! Tells cargo whether systemd's programs are here for the unit-file tests,
//! so that they are reported as ignored rather than passed where they are not
//! (see `tests/e2e_probe.rs`).

include!("../tests/e2e_probe.rs");

fn main() {
    probe_systemd_tests("fleet-agent", "../tests/e2e_probe.rs", false);
}
