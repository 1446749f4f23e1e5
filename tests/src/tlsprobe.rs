//! Handshakes that a well-behaved fleet client would never attempt: no
//! client certificate, a foreign CA, an identity outside the fleet's
//! scheme. Used to show the server refuses them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Accepts any server: these probes test the server's checks, not ours.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub struct Probe {
    addr: SocketAddr,
}

impl Probe {
    pub fn new(addr: SocketAddr, _ca: &Path) -> Self {
        Probe { addr }
    }

    fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
    }

    /// Handshakes and sends the HTTP/2 preface; `Err` carries the alert or
    /// I/O error that ended the connection.
    async fn run(&self, config: ClientConfig) -> Result<(), String> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("agent.invalid").expect("valid name");
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{e:?}"))?;
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .map_err(|e| format!("{e:?}"))?;
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
            Err(_) => Err("timed out".into()),
            Ok(Err(e)) => Err(format!("{e:?}")),
            Ok(Ok(0)) => Err("closed".into()),
            Ok(Ok(_)) => Ok(()),
        }
    }

    pub async fn without_certificate(&self) -> Result<(), String> {
        self.run(Self::builder().with_no_client_auth()).await
    }

    pub async fn with(&self, cert: &Path, key: &Path) -> Result<(), String> {
        let certs = read_certs(cert);
        let key = PrivateKeyDer::from_pem_slice(&std::fs::read(key).expect("key file"))
            .expect("a PEM key");
        let config = Self::builder()
            .with_client_auth_cert(certs, key)
            .expect("client certificate");
        self.run(config).await
    }
}

fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

use rustls::pki_types::pem::PemObject as _;

/// Issues a certificate signed by the fleet CA but naming `uri`, whatever it
/// is: for identities the fleet's own issuer refuses to make.
pub fn issue_raw(
    ca: &fleet_proto::pki::Ca,
    uri: &str,
    dir: &Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    issue_raw_with(ca, uri, dir, |_| {})
}

/// A client certificate for `uri` from the fleet CA that expired in 2021.
pub fn issue_expired(
    ca: &fleet_proto::pki::Ca,
    uri: &str,
    dir: &Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    issue_raw_with(ca, uri, dir, |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    })
}

fn issue_raw_with(
    ca: &fleet_proto::pki::Ca,
    uri: &str,
    dir: &Path,
    adjust: impl FnOnce(&mut rcgen::CertificateParams),
) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let ca_key = rcgen::KeyPair::from_pem(ca.key_pem())?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca.cert_pem(), ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(rcgen::string::Ia5String::try_from(
        uri,
    )?)];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    adjust(&mut params);
    let cert = params.signed_by(&key, &issuer)?;
    let cert_path = dir.join("raw.pem");
    let key_path = dir.join("raw.key");
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((cert_path, key_path))
}
