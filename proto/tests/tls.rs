//! mTLS end to end: a tonic health server behind `incoming`, clients from `ClientTls`, certificates from a per-run CA.
#![cfg(feature = "pki")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::identity::{Identity, Principal, Role};
use fleet_proto::pki::{self, Ca, ExtraSan, Serial};
use fleet_proto::tls::{
    self, incoming, incoming_with, ClientTls, Expect, IncomingOptions, PeerInfo, ServerTls,
    TlsError, TlsFiles,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Every network step of a test gets this long; a hang fails the test instead of stalling CI.
const STEP: Duration = Duration::from_secs(10);
const VALIDITY: Duration = pki::DEFAULT_CERT_VALIDITY;

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {STEP:?}"))
}

/// Flattens an error and its sources into one line, as a log would show it.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A CA and a directory of certificates for one test.
struct TestFleet {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl TestFleet {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init("lab").unwrap();
        ca.write(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))
            .unwrap();
        pki::write_public_file(&dir.path().join("crl.pem"), &ca.revoke(&[]).unwrap()).unwrap();
        TestFleet { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues a certificate for `principal` into `<name>.pem` / `<name>.key`.
    fn issue(&self, name: &str, principal: Principal) -> (TlsFiles, Serial) {
        let sans = match principal {
            Principal::User { .. } => vec![],
            _ => vec![ExtraSan::Ip("127.0.0.1".parse().unwrap())],
        };
        let issued = self.ca.issue(&principal, VALIDITY, &sans).unwrap();
        let (cert, key) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        issued.write(&cert, &key).unwrap();
        (
            TlsFiles::new(self.path("ca.pem"), cert, key).with_crl(self.path("crl.pem")),
            issued.serial,
        )
    }

    fn client(&self, name: &str, principal: Principal) -> ClientTls {
        let (files, _) = self.issue(name, principal);
        ClientTls::new(files).unwrap()
    }

    fn revoke(&self, serials: &[Serial]) {
        pki::write_public_file(&self.path("crl.pem"), &self.ca.revoke(serials).unwrap()).unwrap();
    }
}

fn agent(node: &str) -> Principal {
    Principal::Agent { node: node.into() }
}

fn user(name: &str, role: Role) -> Principal {
    Principal::User {
        name: name.into(),
        role,
    }
}

/// A tonic server with the standard health service, recording the
/// `PeerInfo` every request arrives with.
struct TestServer {
    addr: SocketAddr,
    tls: ServerTls,
    peers: Arc<Mutex<Vec<PeerInfo>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TestServer {
    async fn start(tls: ServerTls) -> Self {
        TestServer::start_with(tls, IncomingOptions::default()).await
    }

    async fn start_with(tls: ServerTls, options: IncomingOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        let (_, health) = tonic_health::server::health_reporter();
        let health = InterceptedService::new(health, move |req: tonic::Request<()>| {
            let peer = tls::peer_info(&req)?.clone();
            seen.lock().unwrap().push(peer);
            Ok(req)
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let conns = incoming_with(listener, tls.clone(), options);
        tokio::spawn(async move {
            Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(conns, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestServer {
            addr,
            tls,
            peers,
            _stop: stop,
        }
    }

    fn last_peer(&self) -> Option<PeerInfo> {
        self.peers.lock().unwrap().last().cloned()
    }

    fn calls(&self) -> usize {
        self.peers.lock().unwrap().len()
    }
}

async fn check(channel: Channel) -> Result<(), tonic::Status> {
    within(
        "health check",
        HealthClient::new(channel).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .map(|_| ())
}

/// Connects and makes one call; the error chain if either fails.
async fn call(client: &ClientTls, addr: SocketAddr, expect: Expect) -> Result<(), String> {
    let channel = within("connect", client.connect(addr, expect))
        .await
        .map_err(|e| chain(&e))?;
    check(channel).await.map_err(|e| chain(&e))
}

/// A plain rustls client (no fleet verifier) that trusts `ca_pem` and
/// checks the server's IP SAN, optionally presenting a certificate. Returns
/// the server's first bytes after the handshake, or the error that ended it.
async fn raw_handshake(
    addr: SocketAddr,
    ca_pem: &[u8],
    client_cert: Option<(&[u8], &[u8])>,
) -> std::io::Result<usize> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert)
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await?;
    // In TLS 1.3 the client finishes first; the server's verdict on our
    // certificate arrives with its first bytes: an alert, or HTTP/2 SETTINGS.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await?;
    let mut buf = [0u8; 64];
    tls.read(&mut buf).await
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn good_client_connects_and_server_sees_its_identity() {
    let fleet = TestFleet::new();
    let (files, _) = fleet.issue("agent", agent("jetson-01"));
    let server = TestServer::start(ServerTls::from_files(files).unwrap()).await;
    assert_eq!(server.tls.identity().uri(), "spiffe://lab/agent/jetson-01");

    let controller = fleet.client("controller", Principal::Controller);
    assert_eq!(controller.identity().uri(), "spiffe://lab/controller");
    call(&controller, server.addr, Expect::Agent("jetson-01".into()))
        .await
        .unwrap();
    let peer = server.last_peer().expect("the handler saw a PeerInfo");
    assert_eq!(peer.identity(), &Identity::controller("lab").unwrap());
    assert_eq!(peer.remote_addr().ip(), server.addr.ip());

    // A person, through a "host:port" string and a lazy channel.
    let ada = fleet.client("ada", user("ada", Role::Admin));
    let lazy = ada
        .connect_lazy(
            format!("127.0.0.1:{}", server.addr.port()),
            Expect::AnyAgent,
        )
        .unwrap();
    check(lazy).await.unwrap();
    let peer = server.last_peer().unwrap();
    assert_eq!(peer.identity().user_role(), Some(Role::Admin));
    assert_eq!(peer.identity().uri(), "spiffe://lab/user/admin/ada");
}

#[tokio::test]
async fn client_without_certificate_fails_the_handshake() {
    let fleet = TestFleet::new();
    let (files, _) = fleet.issue("agent", agent("jetson-01"));
    let server = TestServer::start(ServerTls::from_files(files).unwrap()).await;
    let ca = read(&fleet.path("ca.pem"));

    let err = within("anonymous handshake", raw_handshake(server.addr, &ca, None))
        .await
        .expect_err("a client without a certificate must be refused");
    assert!(
        chain(&err).contains("CertificateRequired"),
        "{}",
        chain(&err)
    );
    assert_eq!(server.calls(), 0);

    // The same plain client with a fleet certificate gets through, which
    // shows the refusal above was about the missing certificate.
    let c = fleet
        .ca
        .issue(&Principal::Controller, VALIDITY, &[])
        .unwrap();
    let n = within(
        "handshake with a certificate",
        raw_handshake(
            server.addr,
            &ca,
            Some((c.cert_pem.as_bytes(), c.key_pem.as_bytes())),
        ),
    )
    .await
    .unwrap();
    assert!(n > 0, "the server answered with HTTP/2 frames");
}

#[tokio::test]
async fn client_with_a_certificate_from_a_foreign_ca_fails() {
    let fleet = TestFleet::new();
    let (files, _) = fleet.issue("agent", agent("jetson-01"));
    let server = TestServer::start(ServerTls::from_files(files).unwrap()).await;

    // Same fleet name, different CA: the name proves nothing.
    let foreign = Ca::init("lab").unwrap();
    let intruder = foreign
        .issue(&Principal::Controller, VALIDITY, &[])
        .unwrap();
    let err = within(
        "foreign handshake",
        raw_handshake(
            server.addr,
            &read(&fleet.path("ca.pem")),
            Some((intruder.cert_pem.as_bytes(), intruder.key_pem.as_bytes())),
        ),
    )
    .await
    .expect_err("a certificate from another CA must be refused");
    assert!(chain(&err).contains("UnknownCA"), "{}", chain(&err));
    assert_eq!(server.calls(), 0);

    // ClientTls refuses to even load a certificate its CA did not issue.
    let err = ClientTls::from_pem(
        fleet.ca.cert_pem(),
        intruder.cert_pem.clone(),
        intruder.key_pem.clone(),
    )
    .unwrap_err();
    assert!(matches!(err, TlsError::Untrusted { .. }), "{err:?}");
    assert!(err.to_string().contains("fleetctl pki issue"), "{err}");

    // A client of the foreign fleet does not trust our server either.
    let stranger = ClientTls::from_pem(
        foreign.cert_pem(),
        intruder.cert_pem.clone(),
        intruder.key_pem.clone(),
    )
    .unwrap();
    let err = call(&stranger, server.addr, Expect::AnyAgent)
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn revoked_client_fails_after_reload_while_others_keep_working() {
    let fleet = TestFleet::new();
    let (files, _) = fleet.issue("agent", agent("jetson-01"));
    let server = TestServer::start(ServerTls::from_files(files).unwrap()).await;
    let (eve_files, eve_serial) = fleet.issue("eve", user("eve", Role::Operator));
    let eve = ClientTls::new(eve_files).unwrap();
    let controller = fleet.client("controller", Principal::Controller);

    let eve_before = within("connect", eve.connect(server.addr, Expect::AnyAgent))
        .await
        .unwrap();
    check(eve_before.clone()).await.unwrap();
    let eve_peer = server.last_peer().unwrap();
    server.tls.check_peer(&eve_peer).unwrap();

    // Revoking without a reload changes nothing yet.
    fleet.revoke(std::slice::from_ref(&eve_serial));
    call(&eve, server.addr, Expect::AnyAgent).await.unwrap();
    server.tls.check_peer(&eve_peer).unwrap();

    assert_eq!(
        server.tls.reload().unwrap(),
        Identity::agent("lab", "jetson-01").unwrap()
    );
    let err = call(&eve, server.addr, Expect::AnyAgent)
        .await
        .expect_err("a revoked certificate must be refused at the next handshake");
    assert!(err.contains("CertificateRevoked"), "{err}");
    let calls = server.calls();

    // A new handshake with a good certificate still works...
    call(&controller, server.addr, Expect::Agent("jetson-01".into()))
        .await
        .unwrap();
    assert_eq!(
        server.last_peer().unwrap().identity(),
        &Identity::controller("lab").unwrap()
    );
    assert_eq!(server.calls(), calls + 1);
    server.tls.check_peer(&server.last_peer().unwrap()).unwrap();
    // ...and the connection eve made before the reload keeps its session
    // (a reload never drops what is in flight), but its peer no longer
    // passes the check the daemons make on every call.
    check(eve_before).await.unwrap();
    let refused = server.tls.check_peer(&eve_peer).unwrap_err();
    assert_eq!(refused.why, tls::RefusedBecause::Revoked);
    assert_eq!(refused.serial, eve_serial.to_string());
    assert_eq!(eve_peer.serial(), eve_serial.to_string());
    assert!(
        refused
            .to_string()
            .contains("spiffe://lab/user/operator/eve")
            && refused.to_string().contains("revoked"),
        "{refused}"
    );
}

#[tokio::test]
async fn client_refuses_a_server_that_is_not_the_expected_one() {
    let fleet = TestFleet::new();
    let (files, _) = fleet.issue("agent", agent("jetson-01"));
    let server = TestServer::start(ServerTls::from_files(files).unwrap()).await;
    let controller = fleet.client("controller", Principal::Controller);

    let err = call(&controller, server.addr, Expect::Agent("jetson-02".into()))
        .await
        .expect_err("jetson-01 must not pass for jetson-02");
    assert!(
        err.contains(
            "the peer is spiffe://lab/agent/jetson-01, but agent \"jetson-02\" was expected"
        ),
        "{err}"
    );
    assert!(err.contains(&server.addr.to_string()), "{err}");

    let err = call(&controller, server.addr, Expect::Controller)
        .await
        .unwrap_err();
    assert!(err.contains("but the controller was expected"), "{err}");
    assert_eq!(server.calls(), 0, "no request reached the wrong server");

    for ok in [
        Expect::AnyAgent,
        Expect::Exactly(Identity::agent("lab", "jetson-01").unwrap()),
    ] {
        call(&controller, server.addr, ok).await.unwrap();
    }
}

#[tokio::test]
async fn reload_with_broken_files_keeps_the_old_config() {
    let fleet = TestFleet::new();
    let (files, _) = fleet.issue("agent", agent("jetson-01"));
    let server = TestServer::start(ServerTls::from_files(files.clone()).unwrap()).await;
    let controller = fleet.client("controller", Principal::Controller);
    let expect = || Expect::Agent("jetson-01".into());
    let good_cert = read(&files.cert);
    let good_crl = read(&fleet.path("crl.pem"));

    // A truncated certificate.
    std::fs::write(&files.cert, &good_cert[..good_cert.len() / 2]).unwrap();
    let err = server.tls.reload().unwrap_err();
    assert!(err.to_string().contains("agent.pem"), "{err}");
    call(&controller, server.addr, expect()).await.unwrap();

    // A certificate of someone else: identity changes need a restart.
    std::fs::copy(fleet.path("controller.pem"), &files.cert).unwrap();
    std::fs::copy(fleet.path("controller.key"), &files.key).unwrap();
    let err = server.tls.reload().unwrap_err();
    assert!(matches!(err, TlsError::IdentityChanged { .. }), "{err:?}");
    assert!(err.to_string().contains("restart"), "{err}");
    call(&controller, server.addr, expect()).await.unwrap();

    // A key that does not belong to the certificate.
    std::fs::write(&files.cert, &good_cert).unwrap();
    let err = server.tls.reload().unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    let (_, _) = fleet.issue("agent2", agent("jetson-01"));
    std::fs::copy(fleet.path("agent2.key"), &files.key).unwrap();
    std::fs::copy(fleet.path("agent2.pem"), &files.cert).unwrap();

    // A CRL from another CA, then garbage, then a missing one.
    let foreign = Ca::init("lab").unwrap();
    std::fs::write(fleet.path("crl.pem"), foreign.revoke(&[]).unwrap()).unwrap();
    let err = server.tls.reload().unwrap_err();
    assert!(matches!(err, TlsError::BadCrl { .. }), "{err:?}");
    std::fs::write(fleet.path("crl.pem"), "garbage").unwrap();
    assert!(server.tls.reload().is_err());
    std::fs::remove_file(fleet.path("crl.pem")).unwrap();
    let err = server.tls.reload().unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("fleetctl pki revoke"), "{err}");

    // Through all of it the server kept serving with what it had.
    call(&controller, server.addr, expect()).await.unwrap();
    assert_eq!(server.tls.identity().uri(), "spiffe://lab/agent/jetson-01");

    // Good files again: the reload takes, with the new certificate.
    std::fs::write(fleet.path("crl.pem"), &good_crl).unwrap();
    server.tls.reload().unwrap();
    call(&controller, server.addr, expect()).await.unwrap();
}

#[tokio::test]
async fn silent_clients_do_not_stall_others() {
    let fleet = TestFleet::new();
    let (files, _) = fleet.issue("agent", agent("jetson-01"));
    // Far longer than the test may take: only concurrent handshakes let
    // the good client through while the silent ones are still pending.
    let options = IncomingOptions {
        handshake_timeout: Duration::from_secs(600),
        ..IncomingOptions::default()
    };
    let server = TestServer::start_with(ServerTls::from_files(files).unwrap(), options).await;
    let controller = fleet.client("controller", Principal::Controller);

    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    // The server has taken every connection up to the garbage one (accept
    // is in order) once it hangs up on that one.
    let mut buf = [0u8; 64];
    within("the server hangs up on garbage", async {
        loop {
            match garbage.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;

    let started = tokio::time::Instant::now();
    call(&controller, server.addr, Expect::AnyAgent)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.calls(), 1);
    drop(silent);
}

#[tokio::test]
async fn hundreds_of_idle_sockets_do_not_hold_up_a_new_peer() {
    let fleet = TestFleet::new();
    let (files, _) = fleet.issue("agent", agent("jetson-01"));
    // Far longer than the test may take: only dropping the oldest silent
    // sockets lets the good client in while they are still open.
    let options = IncomingOptions {
        handshake_timeout: Duration::from_secs(600),
        ..IncomingOptions::default()
    };
    let server = TestServer::start_with(ServerTls::from_files(files).unwrap(), options).await;
    let controller = fleet.client("controller", Principal::Controller);
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let started = tokio::time::Instant::now();
    call(&controller, server.addr, Expect::AnyAgent)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_pending_handshakes() {
    let fleet = TestFleet::new();
    let (files, _) = fleet.issue("agent", agent("jetson-01"));
    let options = IncomingOptions {
        handshake_timeout: Duration::from_secs(600),
        max_handshakes_per_ip: 4,
        ..IncomingOptions::default()
    };
    let server = TestServer::start_with(ServerTls::from_files(files).unwrap(), options).await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // The fifth from this address drops the first.
    let mut buf = [0u8; 16];
    let read = within("the server hangs up on the oldest", idle[0].read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let controller = fleet.client("controller", Principal::Controller);
    call(&controller, server.addr, Expect::AnyAgent)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_dropped() {
    let fleet = TestFleet::new();
    let (files, _) = fleet.issue("agent", agent("jetson-01"));
    let options = IncomingOptions {
        handshake_timeout: Duration::from_millis(300),
        ..IncomingOptions::default()
    };
    let server = TestServer::start_with(ServerTls::from_files(files).unwrap(), options).await;

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = within("the server hangs up", silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    let controller = fleet.client("controller", Principal::Controller);
    call(&controller, server.addr, Expect::AnyAgent)
        .await
        .unwrap();
}

#[tokio::test]
async fn incoming_stops_when_the_server_stops() {
    let fleet = TestFleet::new();
    let (files, _) = fleet.issue("agent", agent("jetson-01"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = incoming(listener, ServerTls::from_files(files).unwrap());
    drop(conns);
    // The accept loop notices the dropped stream and closes the listener.
    let refused = within("listener closed", async {
        loop {
            if TcpStream::connect(addr).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(refused);
}

#[tokio::test]
async fn loading_checks_the_material_and_says_what_to_do() {
    let fleet = TestFleet::new();
    let (agent_files, agent_serial) = fleet.issue("agent", agent("jetson-01"));
    let (user_files, _) = fleet.issue("ada", user("ada", Role::Viewer));

    // A user certificate cannot serve.
    let err = ServerTls::from_files(user_files.clone()).unwrap_err();
    assert!(matches!(err, TlsError::WrongUsage { .. }), "{err:?}");

    // A missing certificate names the file and the command that makes one.
    let missing = TlsFiles::new(
        fleet.path("ca.pem"),
        fleet.path("nope.pem"),
        fleet.path("nope.key"),
    );
    let err = ServerTls::from_files(missing).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cannot read certificate"), "{msg}");
    assert!(msg.contains("nope.pem"), "{msg}");
    assert!(msg.contains("fleetctl pki issue agent <node>"), "{msg}");
    assert!(chain(&err).contains("No such file"), "{}", chain(&err));

    // A CA file that holds a key, not a certificate.
    let err =
        ClientTls::from_files(&user_files.key, &user_files.cert, &user_files.key).unwrap_err();
    assert!(matches!(err, TlsError::Empty { .. }), "{err:?}");

    // A server whose own certificate is revoked learns it at start-up.
    fleet.revoke(&[agent_serial]);
    let err = ServerTls::from_files(agent_files).unwrap_err();
    assert!(matches!(err, TlsError::OwnCertRevoked { .. }), "{err:?}");

    // Bad addresses are refused before dialling.
    let client = ClientTls::new(user_files).unwrap();
    for bad in ["no-port", "127.0.0.1:x", "127.0.0.1:1/path"] {
        assert!(
            client.connect_lazy(bad, Expect::AnyAgent).is_err(),
            "{bad} accepted"
        );
    }
}
