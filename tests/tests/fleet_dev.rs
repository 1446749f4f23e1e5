//! The newcomer's first command: `fleet-dev up --demo` runs a simulated
//! board, an agent and a controller, puts two experiments through the
//! controller, and leaves nothing behind when it stops.

use fleet_testbed::testbed::Testbed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_dev_up_demo_runs_the_queue_and_cleans_up() {
    // Skips (or, with FLEET_REQUIRE_SYSTEMD=1, fails) like every testbed test.
    let Some(probe) = Testbed::new("fleet-dev-probe").await else {
        return;
    };
    probe.shutdown().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet-dev"))
        .args(["up", "--demo", "--once", "--dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("hello-world: succeeded"), "{stdout}");
    assert!(stdout.contains("flaky: failed"), "{stdout}");
    assert!(stdout.contains("restart limit"), "{stdout}");
    assert!(stdout.contains("[log] hello-world  done"), "{stdout}");
    assert!(stdout.contains("stopped; nothing left running"), "{stdout}");
    // What a newcomer uses next is there.
    for f in ["fleet.json", "fleetctl.toml", "pki/ca.pem"] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
}
