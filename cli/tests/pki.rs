//! `fleetctl pki init|issue|revoke` through the real binary: the files it
//! writes, their modes, the identities in the certificates, and a CRL that
//! grows and that TLS honours.

mod common;

use common::{mode, pem_to_der, Home};
use fleet_proto::identity::principal_from_cert_der;
use fleet_proto::pki::{Ca, Serial};
use fleet_proto::tls::{ClientTls, ServerTls, TlsError, TlsFiles};

fn read(home: &Home, rel: &str) -> String {
    std::fs::read_to_string(home.path(rel)).unwrap()
}

fn identity_of(home: &Home, rel: &str) -> String {
    principal_from_cert_der(&pem_to_der(&read(home, rel)))
        .unwrap()
        .to_string()
}

fn crl_serials(home: &Home) -> Vec<Serial> {
    let ca = Ca::load_files(&home.path("pki/ca.pem"), &home.path("pki/ca.key")).unwrap();
    ca.revoked_in(&read(home, "pki/crl.pem")).unwrap()
}

#[test]
fn init_writes_a_ca_with_a_private_key_and_refuses_to_overwrite_it() {
    let home = Home::new();
    let run = home
        .run(&["pki", "init", "--dir", "pki", "--fleet", "lab"])
        .expect_code(0);
    assert!(
        run.stdout.contains("created the CA of fleet \"lab\""),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("fleetctl pki issue agent"),
        "{}",
        run.stdout
    );
    assert_eq!(mode(&home.path("pki/ca.key")), 0o600);
    assert_eq!(mode(&home.path("pki/ca.pem")), 0o644);
    assert_eq!(mode(&home.path("pki")), 0o700);
    let ca = Ca::load_files(&home.path("pki/ca.pem"), &home.path("pki/ca.key")).unwrap();
    assert_eq!(ca.fleet(), "lab");

    let before = read(&home, "pki/ca.pem");
    let again = home
        .run(&["pki", "init", "--dir", "pki", "--fleet", "lab"])
        .expect_code(1);
    assert!(again.stderr.starts_with("fleetctl: "), "{}", again.stderr);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(read(&home, "pki/ca.pem"), before, "the CA was replaced");

    home.run(&["pki", "init", "--dir", "pki", "--fleet", "lab", "--force"])
        .expect_code(0);
    assert_ne!(read(&home, "pki/ca.pem"), before);

    let bad = home.run(&["pki", "init", "--dir", "other", "--fleet", "Bad Fleet"]);
    let bad = bad.expect_code(1);
    assert!(bad.stderr.contains("Bad Fleet"), "{}", bad.stderr);
    assert!(!home.path("other/ca.key").exists());
}

#[test]
fn issued_certificates_carry_the_right_identity_and_work_for_tls() {
    let home = Home::new();
    home.run(&["pki", "init", "--dir", "pki", "--fleet", "lab"])
        .expect_code(0);

    let agent = home
        .run(&[
            "pki",
            "issue",
            "agent",
            "jetson-01",
            "--dir",
            "pki",
            "--san",
            "127.0.0.2",
            "--san",
            "jetson-01.lab",
        ])
        .expect_code(0);
    assert!(
        agent.stdout.contains("issued spiffe://lab/agent/jetson-01"),
        "{}",
        agent.stdout
    );
    assert!(
        agent.stdout.contains("node = \"jetson-01\""),
        "{}",
        agent.stdout
    );
    assert!(
        agent.stdout.contains("cert = \"/etc/fleet/agent.pem\""),
        "{}",
        agent.stdout
    );
    assert_eq!(
        identity_of(&home, "pki/agent-jetson-01.pem"),
        "spiffe://lab/agent/jetson-01"
    );
    assert_eq!(mode(&home.path("pki/agent-jetson-01.key")), 0o600);
    let der = pem_to_der(&read(&home, "pki/agent-jetson-01.pem"));
    assert!(
        der.windows(13).any(|w| w == b"jetson-01.lab"),
        "DNS SAN missing"
    );
    assert!(
        der.windows(4).any(|w| w == [127, 0, 0, 2]),
        "IP SAN missing"
    );
    // The agent can serve with it.
    ServerTls::from_files(TlsFiles::new(
        home.path("pki/ca.pem"),
        home.path("pki/agent-jetson-01.pem"),
        home.path("pki/agent-jetson-01.key"),
    ))
    .unwrap();

    home.run(&["pki", "issue", "controller", "--dir", "pki"])
        .expect_code(0);
    assert_eq!(
        identity_of(&home, "pki/controller.pem"),
        "spiffe://lab/controller"
    );
    assert_eq!(mode(&home.path("pki/controller.key")), 0o600);

    let user = home
        .run(&[
            "pki", "issue", "user", "ada", "--role", "operator", "--dir", "pki", "-o", "json",
        ])
        .expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&user.stdout).unwrap();
    assert_eq!(json["identity"], "spiffe://lab/user/operator/ada");
    assert_eq!(
        json["serial"].as_str().unwrap(),
        Serial::of_cert_pem(&read(&home, "pki/user-ada.pem"))
            .unwrap()
            .to_string()
    );
    assert_eq!(
        identity_of(&home, "pki/user-ada.pem"),
        "spiffe://lab/user/operator/ada"
    );
    assert_eq!(mode(&home.path("pki/user-ada.key")), 0o600);
    // fleetctl can be a client with it.
    ClientTls::from_files(
        home.path("pki/ca.pem"),
        home.path("pki/user-ada.pem"),
        home.path("pki/user-ada.key"),
    )
    .unwrap();

    // Issuing again does not silently replace a key in use.
    let again = home
        .run(&[
            "pki", "issue", "user", "ada", "--role", "operator", "--dir", "pki",
        ])
        .expect_code(1);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
}

#[test]
fn issue_arguments_are_checked() {
    let home = Home::new();
    home.run(&["pki", "init", "--dir", "pki", "--fleet", "lab"])
        .expect_code(0);
    for args in [
        vec!["pki", "issue", "user", "ada", "--dir", "pki"],
        vec![
            "pki", "issue", "user", "ada", "--role", "root", "--dir", "pki",
        ],
        vec!["pki", "issue", "agent", "--dir", "pki"],
        vec![
            "pki", "issue", "agent", "j1", "--role", "admin", "--dir", "pki",
        ],
        vec!["pki", "issue", "controller", "extra", "--dir", "pki"],
        vec!["pki", "issue", "robot", "x", "--dir", "pki"],
    ] {
        let run = home.run(&args).expect_code(2);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    let sans = home
        .run(&[
            "pki", "issue", "user", "ada", "--role", "admin", "--dir", "pki", "--san", "x.lab",
        ])
        .expect_code(1);
    assert!(
        sans.stderr.contains("carries no DNS names"),
        "{}",
        sans.stderr
    );
    let no_ca = home
        .run(&["pki", "issue", "controller", "--dir", "nowhere"])
        .expect_code(1);
    assert!(
        no_ca.stderr.contains("fleetctl pki init"),
        "{}",
        no_ca.stderr
    );
}

#[test]
fn revoke_grows_the_crl_and_tls_refuses_the_revoked_certificate() {
    let home = Home::new();
    home.run(&["pki", "init", "--dir", "pki", "--fleet", "lab"])
        .expect_code(0);
    home.run(&[
        "pki", "issue", "user", "ada", "--role", "admin", "--dir", "pki",
    ])
    .expect_code(0);
    home.run(&[
        "pki", "issue", "user", "bob", "--role", "viewer", "--dir", "pki",
    ])
    .expect_code(0);
    let ada = Serial::of_cert_pem(&read(&home, "pki/user-ada.pem")).unwrap();
    let bob = Serial::of_cert_pem(&read(&home, "pki/user-bob.pem")).unwrap();

    let run = home
        .run(&[
            "pki",
            "revoke",
            "--dir",
            "pki",
            "--cert",
            "pki/user-ada.pem",
        ])
        .expect_code(0);
    assert!(
        run.stdout.contains(&format!("revoked {ada}")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("1 revoked certificate"),
        "{}",
        run.stdout
    );
    assert_eq!(mode(&home.path("pki/crl.pem")), 0o644);
    assert_eq!(crl_serials(&home), vec![ada.clone()]);

    // By serial, merged with what the CRL already lists.
    let run = home
        .run(&[
            "pki",
            "revoke",
            "--dir",
            "pki",
            &bob.to_string(),
            &ada.to_string(),
            "-o",
            "json",
        ])
        .expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["revoked"], serde_json::json!([bob.to_string()]));
    assert_eq!(
        json["already_revoked"],
        serde_json::json!([ada.to_string()])
    );
    assert_eq!(json["total"], 2);
    let mut listed = crl_serials(&home);
    listed.sort();
    let mut want = vec![ada, bob];
    want.sort();
    assert_eq!(listed, want);

    // TLS loads the CRL and refuses a revoked certificate of its own.
    let err = ClientTls::new(
        TlsFiles::new(
            home.path("pki/ca.pem"),
            home.path("pki/user-ada.pem"),
            home.path("pki/user-ada.key"),
        )
        .with_crl(home.path("pki/crl.pem")),
    )
    .unwrap_err();
    assert!(matches!(err, TlsError::OwnCertRevoked { .. }), "{err}");

    home.run(&["pki", "revoke", "--dir", "pki"]).expect_code(2);
    home.run(&["pki", "revoke", "--dir", "pki", "not-hex"])
        .expect_code(2);
}
