//! Identity from real certificates: the one-URI-SAN rule, and certificates the fleet CA signed but that break it.
#![cfg(feature = "pki")]

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::identity::{principal_from_cert_der, IdentityError, Principal};
use fleet_proto::pki::{Ca, DEFAULT_CERT_VALIDITY};
use fleet_proto::tls::{ClientTls, ServerTls, TlsError, TlsPem};
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A certificate signed by `ca`'s key with exactly these SANs, bypassing
/// `Ca::issue` and its rules: what a careless or hostile signer could make.
fn forge(ca: &Ca, sans: &[&str], server: bool) -> (String, String) {
    let issuer =
        Issuer::from_ca_cert_pem(ca.cert_pem(), KeyPair::from_pem(ca.key_pem()).unwrap()).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.strip_prefix("dns:") {
            Some(dns) => SanType::DnsName((*dns).try_into().unwrap()),
            None => SanType::URI((*s).try_into().unwrap()),
        })
        .collect();
    params.extended_key_usages = if server {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn the_one_uri_san_names_the_principal() {
    let ca = Ca::init("lab").unwrap();
    let (cert, _) = forge(
        &ca,
        &["dns:jetson-01.lab", "spiffe://lab/agent/jetson-01"],
        true,
    );
    let id = principal_from_cert_der(&der(&cert)).unwrap();
    assert_eq!(
        id.principal(),
        &Principal::Agent {
            node: "jetson-01".into()
        }
    );
}

#[test]
fn certificates_without_exactly_one_valid_uri_san_are_refused() {
    let ca = Ca::init("lab").unwrap();
    type Check = fn(&IdentityError) -> bool;
    let cases: [(&[&str], Check); 5] = [
        (&[], |e| matches!(e, IdentityError::NoUriSan)),
        (&["dns:controller.lab"], |e| {
            matches!(e, IdentityError::NoUriSan)
        }),
        (
            &["spiffe://lab/controller", "spiffe://lab/user/admin/eve"],
            |e| matches!(e, IdentityError::SeveralUriSans { uris } if uris.len() == 2),
        ),
        (&["spiffe://lab/user/root/eve"], |e| {
            matches!(e, IdentityError::UnknownRole { .. })
        }),
        (&["https://lab/controller"], |e| {
            matches!(e, IdentityError::NotSpiffe { .. })
        }),
    ];
    for (sans, expected) in cases {
        let (cert, key) = forge(&ca, sans, true);
        let err = principal_from_cert_der(&der(&cert)).unwrap_err();
        assert!(expected(&err), "{sans:?}: {err:?}");
        // Loading such a certificate says so, with the fix.
        let err = ClientTls::from_pem(ca.cert_pem(), cert, key).unwrap_err();
        assert!(matches!(err, TlsError::Identity { .. }), "{err:?}");
        assert!(err.to_string().contains("fleetctl pki issue"), "{err}");
    }
    let err = principal_from_cert_der(&der(&forge(
        &ca,
        &["spiffe://lab/controller", "spiffe://lab/controller"],
        true,
    )
    .0))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the certificate carries 2 URI SANs (spiffe://lab/controller, spiffe://lab/controller); \
         a fleet certificate carries exactly one: issue a new one with \"fleetctl pki issue\""
    );
}

/// Handshake as a plain rustls client presenting `cert`; the server's verdict.
async fn handshake(
    addr: std::net::SocketAddr,
    ca: &Ca,
    cert: &str,
    key: &str,
) -> std::io::Result<usize> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await?;
    let mut buf = [0u8; 64];
    tls.read(&mut buf).await
}

#[tokio::test]
async fn server_refuses_clients_of_the_ca_that_break_the_identity_rules() {
    let ca = Ca::init("lab").unwrap();
    let server_cert = ca
        .issue(
            &Principal::Agent {
                node: "jetson-01".into(),
            },
            DEFAULT_CERT_VALIDITY,
            &["127.0.0.1".parse().unwrap()],
        )
        .unwrap();
    let tls = ServerTls::from_pem(TlsPem::new(
        ca.cert_pem(),
        server_cert.cert_pem.clone(),
        server_cert.key_pem.clone(),
    ))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_, health) = tonic_health::server::health_reporter();
    let conns = fleet_proto::tls::incoming(listener, tls);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(conns),
    );
    let step = Duration::from_secs(10);

    let good = ca
        .issue(&Principal::Controller, DEFAULT_CERT_VALIDITY, &[])
        .unwrap();
    let n = tokio::time::timeout(step, handshake(addr, &ca, &good.cert_pem, &good.key_pem))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0);

    for sans in [
        &[][..],
        &["spiffe://other/controller"],
        &["spiffe://lab/controller", "spiffe://lab/agent/jetson-02"],
        &["spiffe://lab/agent/Jetson"],
    ] {
        let (cert, key) = forge(&ca, sans, false);
        let result = tokio::time::timeout(step, handshake(addr, &ca, &cert, &key))
            .await
            .unwrap();
        let err = result.expect_err(&format!("{sans:?} must be refused"));
        assert!(
            err.to_string().contains("received fatal alert"),
            "{sans:?}: {err}"
        );
    }
}

/// Every identity the proto's comments give as an example (a quoted
/// "user/…", "agent/…") is one the fleet really writes: a principal path
/// that parses, so `user/<role>/<name>`, never `user/<name>`.
#[test]
fn identities_in_the_proto_comments_are_real_ones() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/fleet/v1");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "proto") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let Some((_, comment)) = line.split_once("//") else {
                continue;
            };
            for quoted in comment.split('"').skip(1).step_by(2) {
                if !(quoted.starts_with("user/") || quoted.starts_with("agent/"))
                    || quoted.contains('<')
                {
                    continue;
                }
                seen += 1;
                let uri = format!("spiffe://lab/{quoted}");
                if let Err(e) = fleet_proto::identity::Identity::parse(&uri) {
                    panic!(
                        "{}:{}: \"{quoted}\" is not an identity the fleet writes ({e}); \
                         users are user/<role>/<name>",
                        path.display(),
                        n + 1
                    );
                }
            }
        }
    }
    assert!(seen > 0, "no identity examples found in {}", dir.display());
}
