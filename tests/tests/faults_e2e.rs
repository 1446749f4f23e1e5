//! The fault suite at the size CI runs: 50 controller kills during a storm
//! of submissions, 20 agent kills with experiments running, a partition
//! and two board reboots, on three simulated boards; nothing lost, nothing
//! on two boards, no unit restarted and no phase changed by an agent
//! restart, no outcome that differs between controller and board. The
//! same scenario runs as a soak with `fleet-faults` (docs/faults.md).
//!
//! A failure prints the seed; `FLEET_FAULTS_SEED=<seed>` (or `fleet-faults
//! --seed <seed>` with the same counts) replays the same faults.

use fleet_testbed::faults::{self, Plan};

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_nothing_mislabelled_under_faults() {
    // FLEET_FAULTS_SEED replays a run.
    let seed = std::env::var("FLEET_FAULTS_SEED")
        .ok()
        .map(|s| s.parse().expect("FLEET_FAULTS_SEED is a number"));
    let plan = Plan {
        seed: seed.unwrap_or_else(faults::seed_from_clock),
        controller_kills: 50,
        agent_kills: 20,
        partitions: 1,
        reboots: 2,
        verbose: true,
        ..Plan::default()
    };
    let seed = plan.seed;
    let report = faults::run(plan)
        .await
        .unwrap_or_else(|e| panic!("the fault suite (seed {seed}) could not run: {e:#}"));
    eprintln!("{report}");
    assert_eq!(report.controller_kills, 50);
    assert_eq!(report.agent_kills, 20);
    assert_eq!(report.partitions, 1);
    assert_eq!(report.reboots, 2);
    assert!(report.submissions_acked > 0, "{report}");
    assert!(report.invocations_compared > 0, "{report}");
    assert!(report.agent_restarts_checked > 0, "{report}");
    assert!(report.outcomes_compared > 0, "{report}");
    assert_eq!(report.violations(), 0, "{report}");
    // A board going away may refuse a start once per fault; a placement
    // retried at once on a board whose connection just failed made hundreds.
    let board_faults = (report.agent_kills + report.partitions + report.reboots) as usize;
    assert!(report.start_failures <= board_faults, "{report}");
}
