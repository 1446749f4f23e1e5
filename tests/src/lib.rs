//! fleet-testbed: a whole fleet on one machine for end-to-end tests and the
//! dev fleet. Boards are real, private systemd managers ([`testbed`]); tests
//! wait on conditions with deadlines ([`poll`]); [`hwsim`] gives each board
//! simulated Jetson hardware.
//!
//! Only test and development tooling lives here; nothing in this crate ships
//! to a board.

pub mod agent;
pub mod authz_table;
pub mod controller;
pub mod faults;
pub mod hwsim;
pub mod pki;
pub mod poll;
pub mod process;
pub mod settings;
pub mod testbed;
pub mod tlsprobe;
