//! Mutual TLS for every fleet connection: rustls (ring), TLS 1.3 only, SPIFFE-style identities.
//!
//! Peers are authenticated by the fleet CA and identified by the one URI SAN
//! of their certificate ([`Identity`]), never by DNS names: a client says
//! which identity it [`Expect`]s, a server hands each request the
//! [`PeerInfo`] of the connection it came on.
//!
//! * Server: [`ServerTls`] holds the current `rustls::ServerConfig`;
//!   [`ServerTls::reload`] re-reads the files (on SIGHUP) and swaps it
//!   atomically, so the next handshake sees a new certificate or CRL;
//!   connections already open keep their session, and
//!   [`ServerTls::check_peer`] checks their peer against the current CA and
//!   CRL on every call (the daemons' authorization layers do). [`incoming`] turns a
//!   `TcpListener` into the stream of authenticated connections that
//!   `tonic::transport::Server::serve_with_incoming` takes.
//! * Client: [`ClientTls`] dials `host:port`, does the handshake in its own
//!   connector and returns a `tonic::transport::Channel` (the URI scheme is
//!   `http://` because TLS is already done underneath).
//!
//! Session resumption is off on both sides: every connection is a full
//! handshake, so a CRL takes effect for every new connection.
//!
//! A server (here the standard health service; a handler reads the caller
//! with [`peer_info`]):
//!
//! ```no_run
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! use fleet_proto::tls::{incoming, ServerTls, TlsFiles};
//! use tokio::signal::unix::{signal, SignalKind};
//!
//! let tls = ServerTls::from_files(
//!     TlsFiles::new("/etc/fleet/ca.pem", "/etc/fleet/agent.pem", "/etc/fleet/agent.key")
//!         .with_crl("/etc/fleet/crl.pem"),
//! )?;
//! let reloader = tls.clone();
//! let mut hangups = signal(SignalKind::hangup())?;
//! tokio::spawn(async move {
//!     while hangups.recv().await.is_some() {
//!         if let Err(error) = reloader.reload() {
//!             tracing::warn!(error = %error, "keeping the current TLS configuration");
//!         }
//!     }
//! });
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:7443").await?;
//! let (_, health) = tonic_health::server::health_reporter();
//! tonic::transport::Server::builder()
//!     .add_service(health)
//!     .serve_with_incoming(incoming(listener, tls))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! A client:
//!
//! ```no_run
//! # async fn call() -> Result<(), Box<dyn std::error::Error>> {
//! use fleet_proto::tls::{ClientTls, Expect};
//! use fleet_proto::v1::agent_client::AgentClient;
//!
//! let tls = ClientTls::from_files(
//!     "/etc/fleet/ca.pem",
//!     "/etc/fleet/controller.pem",
//!     "/etc/fleet/controller.key",
//! )?;
//! let channel = tls.connect("jetson-01.lab:7443", Expect::Agent("jetson-01".into())).await?;
//! let agent = AgentClient::new(channel);
//! # drop(agent); Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{debug, info, warn, Instrument};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{self, Identity, IdentityError};

/// What [`peer_alert`] returns.
pub use rustls::AlertDescription;

/// How long a peer may take to complete the TLS handshake before it is
/// dropped. A fleet peer needs milliseconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How many handshakes [`incoming`] runs at once. A connection past that
/// drops the oldest handshake still pending, so a flood of silent peers
/// costs bounded memory and never makes a new peer wait.
pub const DEFAULT_MAX_CONCURRENT_HANDSHAKES: usize = 256;
/// How many handshakes [`incoming`] runs at once for one IP address. A
/// connection past that drops the oldest handshake still pending from the
/// same address, so one host cannot take the slots of others.
pub const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = 32;
/// How long [`ClientTls::connect`] waits for TCP and TLS to a peer.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive ping interval of client channels: a dead peer behind a
/// partition is noticed without waiting for TCP to give up.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a keep-alive ping may go unanswered before the channel is dropped.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept()` that is not about one connection
/// (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
const ALPN_H2: &[u8] = b"h2";

// ---------------------------------------------------------------------------
// Sources of key material
// ---------------------------------------------------------------------------

/// Where PEM came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file.
    File(PathBuf),
    /// Bytes handed over in memory.
    Memory,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{p:?}"),
            Origin::Memory => f.write_str("(given in memory)"),
        }
    }
}

/// What a PEM input should hold, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    /// The fleet CA certificate(s), the trust anchors.
    CaCertificate,
    /// This process's certificate (chain).
    Certificate,
    /// This process's private key.
    PrivateKey,
    /// The fleet's certificate revocation list.
    Crl,
}

impl PemKind {
    fn hint(self) -> &'static str {
        match self {
            PemKind::CaCertificate => {
                "put the fleet CA certificate there (\"fleetctl pki init\" creates it)"
            }
            PemKind::Certificate | PemKind::PrivateKey => {
                "issue one with \"fleetctl pki issue controller\", \
                 \"fleetctl pki issue agent <node>\" or \"fleetctl pki issue user <role> <name>\""
            }
            PemKind::Crl => "create it with \"fleetctl pki revoke\", or configure no CRL",
        }
    }
}

impl fmt::Display for PemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PemKind::CaCertificate => "CA certificate",
            PemKind::Certificate => "certificate",
            PemKind::PrivateKey => "private key",
            PemKind::Crl => "CRL",
        })
    }
}

/// The files a process's TLS is built from; read again on every reload.
///
/// It is also the `[tls]` table of the agent's and the controller's config
/// files: keys `ca`, `cert`, `key` and `crl`, read with
/// [`TlsFiles::deserialize_or`] (each process has its own default files) and
/// checked with [`TlsFiles::validate`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsFiles {
    /// The fleet CA certificate(s). Several are trusted at once during a CA rotation.
    pub ca: PathBuf,
    /// This process's certificate (leaf first).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The fleet CRL, if revocation is in use.
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    /// CA, certificate and key, no CRL.
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsFiles {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            crl: None,
        }
    }

    /// Also check peers against this CRL.
    pub fn with_crl(mut self, crl: impl Into<PathBuf>) -> Self {
        self.crl = Some(crl.into());
        self
    }

    /// Reads a config file's `[tls]` table, taking each of `ca`, `cert` and
    /// `key` it leaves out from `defaults` (the process's own files); `crl`
    /// is unset unless given. Any other key is refused.
    pub fn deserialize_or<'de, D>(deserializer: D, defaults: TlsFiles) -> Result<TlsFiles, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        /// The table as written: every key may be left out.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            ca: Option<PathBuf>,
            cert: Option<PathBuf>,
            key: Option<PathBuf>,
            crl: Option<PathBuf>,
        }
        let t = <Table as serde::Deserialize>::deserialize(deserializer)?;
        Ok(TlsFiles {
            ca: t.ca.unwrap_or(defaults.ca),
            cert: t.cert.unwrap_or(defaults.cert),
            key: t.key.unwrap_or(defaults.key),
            crl: t.crl,
        })
    }

    /// Checks the paths as a config file gives them, before anything is
    /// read: the error names the `[tls]` key and what to write instead.
    pub fn validate(&self) -> Result<(), TlsConfigError> {
        for (key, path, fix) in [
            (
                "ca",
                Some(&self.ca),
                "give the path of the fleet CA certificate, or leave ca out for the default",
            ),
            (
                "cert",
                Some(&self.cert),
                "give the path of this process's certificate, or leave cert out for the default",
            ),
            (
                "key",
                Some(&self.key),
                "give the path of its private key, or leave key out for the default",
            ),
            (
                "crl",
                self.crl.as_ref(),
                "give the path of the revocation list \"fleetctl pki revoke\" writes, or leave crl out to check none",
            ),
        ] {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(TlsConfigError::EmptyPath { key, fix });
            }
        }
        Ok(())
    }
}

/// A `[tls]` table that cannot be right, whatever the files hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsConfigError {
    /// A key is set to the empty path.
    #[error("tls.{key} is empty: {fix}")]
    EmptyPath {
        /// The key: `ca`, `cert`, `key` or `crl`.
        key: &'static str,
        /// What to write instead.
        fix: &'static str,
    },
}

/// The same material as [`TlsFiles`], already in memory.
#[derive(Clone, Default)]
pub struct TlsPem {
    /// The fleet CA certificate(s), PEM.
    pub ca: Vec<u8>,
    /// This process's certificate (chain), PEM.
    pub cert: Vec<u8>,
    /// Its private key, PEM.
    pub key: Vec<u8>,
    /// The fleet CRL, PEM, if any.
    pub crl: Option<Vec<u8>>,
}

impl fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca", &self.ca.len())
            .field("cert", &self.cert.len())
            .field("crl", &self.crl.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl TlsPem {
    /// CA, certificate and key, no CRL.
    pub fn new(ca: impl Into<Vec<u8>>, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        TlsPem {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            crl: None,
        }
    }

    /// Also check peers against this CRL.
    pub fn with_crl(mut self, crl: impl Into<Vec<u8>>) -> Self {
        self.crl = Some(crl.into());
        self
    }
}

/// Files or memory.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// Read from files, again on every reload.
    Files(TlsFiles),
    /// Given in memory; a reload rebuilds from the same bytes.
    Pem(TlsPem),
}

impl From<TlsFiles> for TlsSource {
    fn from(f: TlsFiles) -> Self {
        TlsSource::Files(f)
    }
}

impl From<TlsPem> for TlsSource {
    fn from(p: TlsPem) -> Self {
        TlsSource::Pem(p)
    }
}

/// Everything read from a source, checked for consistency.
struct Material {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: Identity,
    cert_origin: Origin,
    key_origin: Origin,
    /// The validity of this process's certificate, seconds since the epoch.
    not_before: i64,
    not_after: i64,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(kind: PemKind, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        kind,
        path: path.to_owned(),
        source,
    })
}

fn pem_items<T: PemObject>(kind: PemKind, origin: &Origin, pem: &[u8]) -> Result<Vec<T>, TlsError> {
    let items = T::pem_slice_iter(pem)
        .collect::<Result<Vec<T>, _>>()
        .map_err(|source| TlsError::Pem {
            kind,
            origin: origin.clone(),
            source,
        })?;
    if items.is_empty() {
        return Err(TlsError::Empty {
            kind,
            origin: origin.clone(),
        });
    }
    Ok(items)
}

/// The extended key usage this process's own certificate must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

impl Material {
    fn load(source: &TlsSource, side: Side) -> Result<Material, TlsError> {
        let (ca, cert, key, crl, origins) = match source {
            TlsSource::Files(f) => (
                read(PemKind::CaCertificate, &f.ca)?,
                read(PemKind::Certificate, &f.cert)?,
                read(PemKind::PrivateKey, &f.key)?,
                f.crl
                    .as_deref()
                    .map(|p| read(PemKind::Crl, p))
                    .transpose()?,
                [
                    Origin::File(f.ca.clone()),
                    Origin::File(f.cert.clone()),
                    Origin::File(f.key.clone()),
                    Origin::File(f.crl.clone().unwrap_or_default()),
                ],
            ),
            TlsSource::Pem(p) => (
                p.ca.clone(),
                p.cert.clone(),
                p.key.clone(),
                p.crl.clone(),
                [
                    Origin::Memory,
                    Origin::Memory,
                    Origin::Memory,
                    Origin::Memory,
                ],
            ),
        };
        let [ca_origin, cert_origin, key_origin, crl_origin] = origins;

        let mut roots = RootCertStore::empty();
        for der in pem_items::<CertificateDer>(PemKind::CaCertificate, &ca_origin, &ca)? {
            roots.add(der).map_err(|source| TlsError::BadCa {
                origin: ca_origin.clone(),
                source,
            })?;
        }
        let roots = Arc::new(roots);
        let chain = pem_items::<CertificateDer>(PemKind::Certificate, &cert_origin, &cert)?;
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|source| TlsError::Pem {
            kind: PemKind::PrivateKey,
            origin: key_origin.clone(),
            source,
        })?;
        let crls = match crl {
            Some(crl) => {
                pem_items::<CertificateRevocationListDer>(PemKind::Crl, &crl_origin, &crl)?
            }
            None => Vec::new(),
        };

        let (_, leaf) = X509Certificate::from_der(&chain[0]).map_err(|e| TlsError::Identity {
            origin: cert_origin.clone(),
            source: IdentityError::Certificate(match e {
                x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
                x509_parser::nom::Err::Incomplete(_) => {
                    x509_parser::error::X509Error::InvalidCertificate
                }
            }),
        })?;
        let identity = identity::identity_of(&leaf).map_err(|source| TlsError::Identity {
            origin: cert_origin.clone(),
            source,
        })?;

        let provider = provider();
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
            |source| TlsError::KeyMismatch {
                cert: cert_origin.clone(),
                key: key_origin.clone(),
                source,
            },
        )?;

        // Check our own certificate the way peers will, so that a certificate
        // from another CA, a wrong usage, a CRL from elsewhere or our own
        // revocation is a clear error now rather than failed handshakes later.
        // The check runs at a time inside the certificate's validity: a clock
        // that is off (a board without RTC before NTP) only warns, because
        // peers with a good clock will still accept us.
        let not_before = leaf.validity().not_before.timestamp();
        let not_after = leaf.validity().not_after.timestamp();
        let now = unix_now();
        let at = now.clamp(not_before.saturating_add(1), not_after.saturating_sub(1));
        if now != at {
            warn!(
                cert = %cert_origin,
                %identity,
                not_before,
                not_after,
                now,
                "this process's certificate is not valid at the current time: \
                 peers will refuse it; check the clock or issue a new certificate",
            );
        }
        let owned_crls = crls
            .iter()
            .map(|c| webpki::OwnedCertRevocationList::from_der(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::BadCrl {
                crl: crl_origin.clone(),
                ca: ca_origin.clone(),
                source,
            })?;
        let crl_list: Vec<webpki::CertRevocationList<'_>> =
            owned_crls.into_iter().map(Into::into).collect();
        let crl_refs: Vec<&webpki::CertRevocationList<'_>> = crl_list.iter().collect();
        let usage = match side {
            Side::Server => webpki::KeyUsage::server_auth(),
            Side::Client => webpki::KeyUsage::client_auth(),
        };
        let at = UnixTime::since_unix_epoch(Duration::from_secs(at.max(0) as u64));
        webpki::EndEntityCert::try_from(&chain[0])
            .and_then(|ee| {
                ee.verify_for_usage(
                    provider.signature_verification_algorithms.all,
                    &roots.roots,
                    &chain[1..],
                    at,
                    usage,
                    revocation_options(&crl_refs),
                    None,
                )
                .map(|_| ())
            })
            .map_err(|source| match source {
                webpki::Error::CertRevoked => TlsError::OwnCertRevoked {
                    cert: cert_origin.clone(),
                    crl: crl_origin.clone(),
                    identity: Box::new(identity.clone()),
                },
                webpki::Error::RequiredEkuNotFoundContext(_) => TlsError::WrongUsage {
                    cert: cert_origin.clone(),
                    identity: Box::new(identity.clone()),
                    usage: match side {
                        Side::Server => "serving",
                        Side::Client => "client authentication",
                    },
                },
                webpki::Error::UnknownRevocationStatus
                | webpki::Error::InvalidCrlSignatureForPublicKey
                | webpki::Error::IssuerNotCrlSigner
                | webpki::Error::UnsupportedCrlSignatureAlgorithmContext(_)
                | webpki::Error::UnsupportedCrlVersion
                | webpki::Error::UnsupportedDeltaCrl
                | webpki::Error::UnsupportedIndirectCrl
                | webpki::Error::InvalidCrlNumber => TlsError::BadCrl {
                    crl: crl_origin.clone(),
                    ca: ca_origin.clone(),
                    source,
                },
                source => TlsError::Untrusted {
                    cert: cert_origin.clone(),
                    ca: ca_origin.clone(),
                    source,
                },
            })?;

        Ok(Material {
            provider,
            roots,
            crls,
            chain,
            key,
            identity,
            cert_origin,
            key_origin,
            not_before,
            not_after,
        })
    }
}

/// A serial number as `fleetctl pki` shows it: lowercase hex pairs joined
/// by `:`, without leading zero bytes.
fn serial_text(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[start..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Revocation is checked for the leaf only (fleet certificates are issued
/// directly by the CA), and a CRL must cover the certificate: the fleet CA's
/// CRL always does, and an unrelated CRL is refused when it is loaded.
/// A CRL past its next-update is still used rather than locking everyone out.
fn revocation_options<'a>(
    crls: &'a [&'a webpki::CertRevocationList<'a>],
) -> Option<webpki::RevocationOptions<'a>> {
    webpki::RevocationOptionsBuilder::new(crls).ok().map(|b| {
        b.with_depth(webpki::RevocationCheckDepth::EndEntity)
            .with_status_policy(webpki::UnknownStatusPolicy::Deny)
            .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
            .build()
    })
}

fn rustls_cert_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let ce = match e {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::CertRevoked => CertificateError::Revoked,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        e => CertificateError::Other(OtherError(Arc::new(e))),
    };
    rustls::Error::InvalidCertificate(ce)
}

fn rustls_other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// A peer certificate that verified against the CA but names someone we did not expect.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerIdentityError {
    /// The certificate's URI SAN is not a valid fleet identity.
    #[error("the peer's certificate carries no valid fleet identity")]
    Invalid(#[source] IdentityError),
    /// The peer belongs to another fleet.
    #[error("the peer is {peer}, which is not in fleet \"{fleet}\"")]
    OtherFleet {
        /// The peer's identity.
        peer: Box<Identity>,
        /// Our fleet.
        fleet: String,
    },
    /// The peer is in our fleet but is not who we dialled.
    #[error("the peer is {peer}, but {expected} was expected")]
    Unexpected {
        /// The peer's identity.
        peer: Box<Identity>,
        /// Whom we expected.
        expected: Expect,
    },
}

/// The TLS alert the peer ended the connection with, if `e` or one of its
/// causes is one: how a client learns why a server refused its
/// certificate (`CertificateRevoked`, `CertificateExpired`, `UnknownCA`,
/// ...), often only at its first call, since a TLS 1.3 client finishes
/// its handshake before the server has checked its certificate.
pub fn peer_alert(e: &(dyn std::error::Error + 'static)) -> Option<rustls::AlertDescription> {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(rustls::Error::AlertReceived(alert)) = err.downcast_ref::<rustls::Error>() {
            return Some(*alert);
        }
        // io::Error's source() skips the error it wraps.
        if let Some(inner) = err.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            if let Some(alert) = peer_alert(inner) {
                return Some(alert);
            }
        }
        cause = err.source();
    }
    None
}

/// The identity complaint inside a failed handshake, if that is why it failed.
fn peer_identity_error(e: &io::Error) -> Option<PeerIdentityError> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<PeerIdentityError>().cloned()
        }
        _ => None,
    }
}

/// A handshake error for a log line: rustls shows our own verifier errors
/// with `Debug`, so those are shown with their message instead.
fn describe_handshake_error(e: &io::Error) -> String {
    match peer_identity_error(e) {
        Some(p) => {
            let mut s = p.to_string();
            if let Some(source) = std::error::Error::source(&p) {
                s = format!("{s}: {source}");
            }
            s
        }
        None => e.to_string(),
    }
}

fn peer_identity(der: &CertificateDer<'_>, fleet: &str) -> Result<Identity, PeerIdentityError> {
    let peer = identity::principal_from_cert_der(der).map_err(PeerIdentityError::Invalid)?;
    if peer.fleet() != fleet {
        return Err(PeerIdentityError::OtherFleet {
            peer: Box::new(peer),
            fleet: fleet.to_owned(),
        });
    }
    Ok(peer)
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// Requires a client certificate from the fleet CA (webpki, with the CRL) and
/// then a valid identity of our own fleet; what the identity may do is for
/// the server's authorization table.
#[derive(Debug)]
struct FleetClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    fleet: String,
}

impl ClientCertVerifier for FleetClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        peer_identity(end_entity, &self.fleet).map_err(rustls_other)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

struct ServerState {
    config: Arc<ServerConfig>,
    identity: Identity,
    /// What peers are checked against on every call ([`ServerTls::check_peer`]).
    check: PeerCheck,
    /// Counts configurations: 1 for the first, one more per reload.
    generation: u64,
}

/// The CA and CRL a server checks its peers against, call by call.
struct PeerCheck {
    roots: Arc<RootCertStore>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

struct ServerInner {
    source: RwLock<TlsSource>,
    state: RwLock<ServerState>,
}

/// The server's TLS configuration, shared by the accept loop and whoever
/// handles SIGHUP. Cloning shares it.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<ServerInner>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("source", &self.source())
            .field("identity", &self.identity())
            .finish()
    }
}

impl ServerTls {
    /// Loads and checks the material; the certificate must allow serverAuth
    /// (a controller or agent certificate).
    pub fn new(source: impl Into<TlsSource>) -> Result<Self, TlsError> {
        let source = source.into();
        let state = build_server(&source, 1)?;
        Ok(ServerTls {
            inner: Arc::new(ServerInner {
                source: RwLock::new(source),
                state: RwLock::new(state),
            }),
        })
    }

    /// [`ServerTls::new`] from files.
    pub fn from_files(files: TlsFiles) -> Result<Self, TlsError> {
        ServerTls::new(files)
    }

    /// [`ServerTls::new`] from PEM in memory.
    pub fn from_pem(pem: TlsPem) -> Result<Self, TlsError> {
        ServerTls::new(pem)
    }

    /// Re-reads the source and swaps the configuration for the next handshakes.
    ///
    /// Connections already established keep their session, but every call
    /// on them is checked against the new CA and CRL by
    /// [`ServerTls::check_peer`]. On any error the current configuration
    /// stays in use. The certificate must keep naming the same identity:
    /// changing who a process is takes a restart.
    pub fn reload(&self) -> Result<Identity, TlsError> {
        let source = self.source();
        self.reload_from(source)
    }

    /// As [`ServerTls::reload`], from another source (the `[tls]` table of
    /// a config file read again, which may name other files or add a CRL).
    /// On success the new source is the one later reloads read; on error
    /// nothing changes.
    pub fn reload_from(&self, source: impl Into<TlsSource>) -> Result<Identity, TlsError> {
        let source = source.into();
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let new = build_server(&source, state.generation + 1)?;
        if new.identity != state.identity {
            return Err(TlsError::IdentityChanged {
                now: Box::new(new.identity),
                running: Box::new(state.identity.clone()),
            });
        }
        *state = new;
        *self
            .inner
            .source
            .write()
            .unwrap_or_else(PoisonError::into_inner) = source;
        info!(identity = %state.identity, "TLS configuration reloaded");
        Ok(state.identity.clone())
    }

    /// Where the configuration is read from.
    pub fn source(&self) -> TlsSource {
        self.inner
            .source
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether `peer`, authenticated when its connection was made, still
    /// is under the configuration loaded now: its certificate not revoked
    /// by the current CRL, still issued by a trusted CA, not expired.
    ///
    /// Meant for every call (an authorization layer), so that a revocation
    /// loaded by [`ServerTls::reload`] reaches connections already open.
    /// The full check runs once per connection and configuration; after
    /// that a call costs a lock and a comparison.
    pub fn check_peer(&self, peer: &PeerInfo) -> Result<(), PeerRefused> {
        let cert = &peer.cert;
        let refused = |why: RefusedBecause| PeerRefused {
            identity: Box::new(peer.identity.clone()),
            serial: cert.serial.clone(),
            why,
        };
        let now = unix_now();
        if now > cert.not_after {
            return Err(refused(RefusedBecause::Expired {
                not_after: cert.not_after,
            }));
        }
        let state = self.read_state();
        if cert.checked.load(Ordering::Acquire) == state.generation {
            return Ok(());
        }
        let check = &state.check;
        let crl_refs: Vec<&webpki::CertRevocationList<'_>> = check.crls.iter().collect();
        let at = UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64));
        let verdict = webpki::EndEntityCert::try_from(&cert.chain[0]).and_then(|ee| {
            ee.verify_for_usage(
                check.algorithms.all,
                &check.roots.roots,
                &cert.chain[1..],
                at,
                webpki::KeyUsage::client_auth(),
                revocation_options(&crl_refs),
                None,
            )
            .map(|_| ())
        });
        match verdict {
            Ok(()) => {
                cert.checked.store(state.generation, Ordering::Release);
                Ok(())
            }
            Err(webpki::Error::CertRevoked) => Err(refused(RefusedBecause::Revoked)),
            Err(webpki::Error::CertExpired { .. }) => Err(refused(RefusedBecause::Expired {
                not_after: cert.not_after,
            })),
            Err(e) => Err(refused(RefusedBecause::Untrusted {
                reason: e.to_string(),
            })),
        }
    }

    /// The configuration the next handshake will use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.read_state().config.clone()
    }

    /// [`ServerTls::config`] and its generation, for the accept loop.
    fn config_and_generation(&self) -> (Arc<ServerConfig>, u64) {
        let state = self.read_state();
        (state.config.clone(), state.generation)
    }

    /// Who this server is, from its own certificate.
    pub fn identity(&self) -> Identity {
        self.read_state().identity.clone()
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, ServerState> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn build_server(source: &TlsSource, generation: u64) -> Result<ServerState, TlsError> {
    let m = Material::load(source, Side::Server)?;
    let check = PeerCheck {
        roots: m.roots.clone(),
        crls: m
            .crls
            .iter()
            .map(|c| webpki::OwnedCertRevocationList::from_der(c).map(Into::into))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::BadCrl {
                crl: Origin::Memory,
                ca: Origin::Memory,
                source,
            })?,
        algorithms: m.provider.signature_verification_algorithms,
    };
    let inner = WebPkiClientVerifier::builder_with_provider(m.roots.clone(), m.provider.clone())
        .with_crls(m.crls.iter().cloned())
        .only_check_end_entity_revocation()
        .build()
        .map_err(|source| TlsError::Verifier { source })?;
    let verifier = Arc::new(FleetClientVerifier {
        inner,
        fleet: m.identity.fleet().to_owned(),
    });
    let mut config = ServerConfig::builder_with_provider(m.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Config { source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain, m.key)
        .map_err(|source| TlsError::KeyMismatch {
            cert: m.cert_origin,
            key: m.key_origin,
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: a resumed session would skip the client certificate
    // check, and with it a CRL loaded since.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(ServerState {
        config: Arc::new(config),
        identity: m.identity,
        check,
        generation,
    })
}

/// Why [`ServerTls::check_peer`] no longer accepts a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the certificate of {identity} (serial {serial}) {why}")]
pub struct PeerRefused {
    /// Whom the certificate names.
    pub identity: Box<Identity>,
    /// Its serial number, hex, as `fleetctl pki revoke` takes it.
    pub serial: String,
    /// Why.
    pub why: RefusedBecause,
}

/// The reason in a [`PeerRefused`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedBecause {
    /// On the CRL this server loaded.
    #[error(
        "is revoked by this server's CRL; ask an admin for a new certificate (fleetctl pki issue)"
    )]
    Revoked,
    /// Past its not-after.
    #[error("expired at {not_after} (Unix time); ask an admin for a new certificate (fleetctl pki issue)")]
    Expired {
        /// Its not-after, seconds since the epoch.
        not_after: i64,
    },
    /// No longer issued by a CA this server trusts (after a CA rotation).
    #[error("is no longer trusted by this server ({reason}); ask an admin for a certificate from the fleet's current CA")]
    Untrusted {
        /// webpki's reason.
        reason: String,
    },
}

/// Who is on the other end of a server connection; in every request's
/// extensions (`request.extensions().get::<PeerInfo>()`, or [`peer_info`]).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    identity: Identity,
    remote_addr: SocketAddr,
    cert: Arc<PeerCert>,
}

impl PartialEq for PeerInfo {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
            && self.remote_addr == other.remote_addr
            && self.cert.chain == other.cert.chain
    }
}

impl Eq for PeerInfo {}

/// The certificate a peer presented, for [`ServerTls::check_peer`].
#[derive(Debug)]
struct PeerCert {
    /// Leaf first.
    chain: Vec<CertificateDer<'static>>,
    /// Hex, as `fleetctl pki revoke` takes it.
    serial: String,
    not_after: i64,
    /// The generation of the server configuration it last passed under.
    checked: AtomicU64,
}

impl PeerInfo {
    /// The identity named by the peer's certificate, verified against the
    /// fleet CA and CRL.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    /// The serial number of the peer's certificate, hex, as
    /// `fleetctl pki revoke` takes it.
    pub fn serial(&self) -> &str {
        &self.cert.serial
    }
}

/// The [`PeerInfo`] of the connection a request came on, or `UNAUTHENTICATED`
/// if the server was not started with [`incoming`].
pub fn peer_info<T>(request: &tonic::Request<T>) -> Result<&PeerInfo, tonic::Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .ok_or_else(|| tonic::Status::unauthenticated("no verified TLS peer on this connection"))
}

/// An accepted, authenticated TLS connection, as yielded by [`incoming`].
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConn").field("peer", &self.peer).finish()
    }
}

impl TlsConn {
    fn new(
        stream: tokio_rustls::server::TlsStream<TcpStream>,
        remote_addr: SocketAddr,
        generation: u64,
    ) -> Result<Self, PeerIdentityError> {
        let (_, session) = stream.get_ref();
        let chain: Vec<CertificateDer<'static>> = session
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.clone().into_owned())
            .collect();
        let leaf = chain
            .first()
            .ok_or(PeerIdentityError::Invalid(IdentityError::NoUriSan))?;
        let identity =
            identity::principal_from_cert_der(leaf).map_err(PeerIdentityError::Invalid)?;
        let (serial, not_after) = match X509Certificate::from_der(leaf) {
            Ok((_, x)) => (
                serial_text(x.raw_serial()),
                x.validity().not_after.timestamp(),
            ),
            Err(_) => return Err(PeerIdentityError::Invalid(IdentityError::NoUriSan)),
        };
        Ok(TlsConn {
            stream,
            peer: PeerInfo {
                identity,
                remote_addr,
                cert: Arc::new(PeerCert {
                    chain,
                    serial,
                    not_after,
                    checked: AtomicU64::new(generation),
                }),
            },
        })
    }

    /// Who is connected.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Limits of [`incoming_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncomingOptions {
    /// A peer that has not completed its handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; a new connection past it drops the
    /// oldest pending one.
    pub max_concurrent_handshakes: usize,
    /// Handshakes in progress at once from one IP address; a new
    /// connection past it drops the oldest pending one from that address.
    pub max_handshakes_per_ip: usize,
}

impl Default for IncomingOptions {
    fn default() -> Self {
        IncomingOptions {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_concurrent_handshakes: DEFAULT_MAX_CONCURRENT_HANDSHAKES,
            max_handshakes_per_ip: DEFAULT_MAX_HANDSHAKES_PER_IP,
        }
    }
}

/// The handshakes in progress, oldest first, to drop the oldest when a
/// limit is reached. Dropping an entry's sender ends its handshake.
#[derive(Default)]
struct Pending {
    next_id: u64,
    by_id: BTreeMap<u64, (IpAddr, oneshot::Sender<()>)>,
    per_ip: HashMap<IpAddr, VecDeque<u64>>,
}

impl Pending {
    /// Registers a new handshake from `ip`, first dropping the oldest one
    /// from the same address, or, when all are taken, the oldest one of the
    /// address that holds the most, that a limit leaves no room for.
    /// Returns its id and what ends it early. An IPv6 peer counts by its
    /// /64: one host is given a whole /64, and must not get a limit per
    /// address in it.
    fn admit(&mut self, ip: IpAddr, options: &IncomingOptions) -> (u64, oneshot::Receiver<()>) {
        let ip = limit_group(ip);
        let per_ip = options.max_handshakes_per_ip.max(1);
        let max = options.max_concurrent_handshakes.max(1);
        let from_ip = self.per_ip.get(&ip).map_or(0, VecDeque::len);
        if from_ip >= per_ip {
            if let Some(oldest) = self.per_ip.get(&ip).and_then(|q| q.front().copied()) {
                debug!(%ip, limit = per_ip, "dropping this address's oldest pending TLS handshake");
                self.remove(oldest);
            }
        }
        if self.by_id.len() >= max {
            // The flood pays: the busiest address loses its oldest, so
            // sockets from a few addresses cannot push out everyone else's.
            let busiest = self
                .per_ip
                .values()
                .filter_map(|q| {
                    q.front()
                        .map(|&oldest| (q.len(), std::cmp::Reverse(oldest)))
                })
                .max()
                .map(|(_, std::cmp::Reverse(oldest))| oldest);
            if let Some(oldest) = busiest {
                debug!(
                    limit = max,
                    "dropping the oldest pending TLS handshake of the busiest address"
                );
                self.remove(oldest);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let (cancel, cancelled) = oneshot::channel();
        self.by_id.insert(id, (ip, cancel));
        self.per_ip.entry(ip).or_default().push_back(id);
        (id, cancelled)
    }

    fn remove(&mut self, id: u64) {
        let Some((ip, _cancel)) = self.by_id.remove(&id) else {
            return;
        };
        if let Some(q) = self.per_ip.get_mut(&ip) {
            q.retain(|&other| other != id);
            if q.is_empty() {
                self.per_ip.remove(&ip);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// Removes a handshake from [`Pending`] when it ends, however it ends.
struct PendingGuard {
    pending: Arc<Mutex<Pending>>,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.id);
    }
}

/// The address a peer is counted under: an IPv4 peer on an IPv6 socket
/// counts as its IPv4 address.
/// What the per-address handshake limit counts by: an IPv4 address, or
/// an IPv6 /64.
fn limit_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

fn peer_ip(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    }
}

/// Authenticated connections from `listener`, for
/// `tonic::transport::Server::builder().serve_with_incoming(incoming(listener, tls))`.
///
/// Each handshake runs in its own task with [`DEFAULT_HANDSHAKE_TIMEOUT`],
/// using the configuration current when the connection was accepted, so
/// a slow or hostile peer never holds up the others. Accepting never
/// waits: past [`DEFAULT_MAX_HANDSHAKES_PER_IP`] pending handshakes from
/// one address, or [`DEFAULT_MAX_CONCURRENT_HANDSHAKES`] in all, a new
/// connection drops the oldest pending one (a fleet peer finishes its
/// handshake in milliseconds; a socket that is still silent is the one to
/// go). Failed handshakes are logged at debug level and dropped; the
/// stream never yields an error.
/// Dropping the stream stops accepting and closes the listener.
///
/// Must be called inside a tokio runtime.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + Unpin + 'static {
    incoming_with(listener, tls, IncomingOptions::default())
}

/// [`incoming`] with explicit limits.
pub fn incoming_with(
    listener: TcpListener,
    tls: ServerTls,
    options: IncomingOptions,
) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + Unpin + 'static {
    let (tx, rx) = mpsc::channel(options.max_concurrent_handshakes.max(1));
    let span = tracing::debug_span!(
        "tls_accept",
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
    );
    tokio::spawn(accept_loop(listener, tls, options, tx).instrument(span));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: ServerTls,
    options: IncomingOptions,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    let pending = Arc::new(Mutex::new(Pending::default()));
    loop {
        let (tcp, remote) = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_per_connection(&error) => {
                    debug!(%error, "accept failed for one connection");
                    continue;
                }
                Err(error) => {
                    warn!(%error, "accept failed; retrying shortly");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%remote, %error, "cannot set TCP_NODELAY");
        }
        let (id, cancelled) = pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(peer_ip(remote), &options);
        let guard = PendingGuard {
            pending: pending.clone(),
            id,
        };
        let (config, generation) = tls.config_and_generation();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tx = tx.clone();
        tokio::spawn(
            async move {
                let handshake =
                    tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp));
                let stream = tokio::select! {
                    _ = cancelled => {
                        debug!("TLS handshake dropped for a newer connection");
                        return;
                    }
                    done = handshake => match done {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            let error = describe_handshake_error(&error);
                            debug!(%error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(timeout = ?options.handshake_timeout, "TLS handshake timed out");
                            return;
                        }
                    },
                };
                // Authenticated: no longer counted as pending.
                drop(guard);
                match TlsConn::new(stream, remote, generation) {
                    Ok(conn) => {
                        debug!(peer = %conn.peer.identity, "TLS connection accepted");
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(error) => debug!(%error, "TLS peer refused"),
                }
            }
            .instrument(tracing::debug_span!("tls_handshake", %remote)),
        );
    }
}

/// Errors of `accept()` that concern one connection only (it was reset
/// before we took it): try the next one at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// Whom a client expects to find at the address it dials. The peer must also
/// be in the client's own fleet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expect {
    /// The controller.
    Controller,
    /// The agent of this node.
    Agent(String),
    /// Any agent (fleetctl talking to a single board with `--agent host:port`).
    AnyAgent,
    /// Exactly this identity.
    Exactly(Identity),
}

impl Expect {
    /// Whether `peer` is acceptable.
    pub fn matches(&self, peer: &Identity) -> bool {
        match self {
            Expect::Controller => peer.is_controller(),
            Expect::Agent(node) => peer.agent_node() == Some(node.as_str()),
            Expect::AnyAgent => peer.agent_node().is_some(),
            Expect::Exactly(id) => id == peer,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Controller => f.write_str("the controller"),
            Expect::Agent(node) => write!(f, "agent \"{node}\""),
            Expect::AnyAgent => f.write_str("an agent"),
            Expect::Exactly(id) => write!(f, "{id}"),
        }
    }
}

/// Checks the server's chain against the fleet CA (and CRL, if given) with
/// webpki, then its identity against [`Expect`], instead of a DNS name.
#[derive(Debug)]
struct FleetServerVerifier {
    roots: Arc<RootCertStore>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
    fleet: String,
    expect: Expect,
}

impl ServerCertVerifier for FleetServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let crl_refs: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        webpki::EndEntityCert::try_from(end_entity)
            .and_then(|ee| {
                ee.verify_for_usage(
                    self.algorithms.all,
                    &self.roots.roots,
                    intermediates,
                    now,
                    webpki::KeyUsage::server_auth(),
                    revocation_options(&crl_refs),
                    None,
                )
                .map(|_| ())
            })
            .map_err(rustls_cert_error)?;
        let peer = peer_identity(end_entity, &self.fleet).map_err(rustls_other)?;
        if !self.expect.matches(&peer) {
            return Err(rustls_other(PeerIdentityError::Unexpected {
                peer: Box::new(peer),
                expected: self.expect.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

struct ClientInner {
    source: RwLock<TlsSource>,
    material: RwLock<Arc<Material>>,
}

/// A client's TLS material (CA, certificate, key, optional CRL). Cloning
/// shares it; [`ClientTls::reload`] affects connections made afterwards,
/// including reconnects of lazy channels.
#[derive(Clone)]
pub struct ClientTls {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("source", &self.source())
            .field("identity", &self.identity())
            .finish()
    }
}

impl ClientTls {
    /// Loads and checks the material; the certificate must allow clientAuth.
    pub fn new(source: impl Into<TlsSource>) -> Result<Self, TlsError> {
        let source = source.into();
        let material = Material::load(&source, Side::Client)?;
        Ok(ClientTls {
            inner: Arc::new(ClientInner {
                source: RwLock::new(source),
                material: RwLock::new(Arc::new(material)),
            }),
        })
    }

    /// From the fleet CA certificate, this client's certificate and its key.
    pub fn from_files(
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<Self, TlsError> {
        ClientTls::new(TlsFiles::new(ca, cert, key))
    }

    /// The same from PEM bytes.
    pub fn from_pem(
        ca: impl Into<Vec<u8>>,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Result<Self, TlsError> {
        ClientTls::new(TlsPem::new(ca, cert, key))
    }

    /// Re-reads the source for connections made from now on; on error the
    /// current material stays. The identity must not change.
    pub fn reload(&self) -> Result<Identity, TlsError> {
        let source = self.source();
        self.reload_from(source)
    }

    /// Where the material is read from.
    pub fn source(&self) -> TlsSource {
        self.inner
            .source
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// As [`ClientTls::reload`], from another source; on success later
    /// reloads read it.
    pub fn reload_from(&self, source: impl Into<TlsSource>) -> Result<Identity, TlsError> {
        let source = source.into();
        let new = Material::load(&source, Side::Client)?;
        let mut material = self
            .inner
            .material
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if new.identity != material.identity {
            return Err(TlsError::IdentityChanged {
                now: Box::new(new.identity),
                running: Box::new(material.identity.clone()),
            });
        }
        *material = Arc::new(new);
        *self
            .inner
            .source
            .write()
            .unwrap_or_else(PoisonError::into_inner) = source;
        info!(identity = %material.identity, "client TLS material reloaded");
        Ok(material.identity.clone())
    }

    /// Who this client is, from its own certificate.
    pub fn identity(&self) -> Identity {
        self.material().identity.clone()
    }

    /// When this client's certificate becomes valid and when it expires,
    /// seconds since the Unix epoch. A server refuses it outside them.
    pub fn validity(&self) -> (i64, i64) {
        let m = self.material();
        (m.not_before, m.not_after)
    }

    fn material(&self) -> Arc<Material> {
        self.inner
            .material
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A rustls configuration that presents our certificate and accepts
    /// only a server of our fleet matching `expect`.
    pub fn client_config(&self, expect: Expect) -> Result<Arc<ClientConfig>, TlsError> {
        let m = self.material();
        let crls = m
            .crls
            .iter()
            .map(|c| webpki::OwnedCertRevocationList::from_der(c).map(Into::into))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::BadCrl {
                crl: Origin::Memory,
                ca: Origin::Memory,
                source,
            })?;
        let verifier = Arc::new(FleetServerVerifier {
            roots: m.roots.clone(),
            crls,
            algorithms: m.provider.signature_verification_algorithms,
            fleet: m.identity.fleet().to_owned(),
            expect,
        });
        let mut config = ClientConfig::builder_with_provider(m.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Config { source })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
            .map_err(|source| TlsError::KeyMismatch {
                cert: m.cert_origin.clone(),
                key: m.key_origin.clone(),
                source,
            })?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        // The server is identified by its certificate's URI SAN, not by a
        // name we would have to send in the clear.
        config.enable_sni = false;
        Ok(Arc::new(config))
    }

    /// An endpoint for `addr` (`host:port`, or a `SocketAddr`) with the
    /// fleet's defaults: connect timeout and HTTP/2 keep-alive. Adjust it,
    /// then connect it with [`ClientTls::connector`].
    pub fn endpoint(addr: impl fmt::Display) -> Result<Endpoint, TlsError> {
        let addr = addr.to_string();
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|source| {
            TlsError::Address {
                addr: addr.clone(),
                source,
            }
        })?;
        let uri = endpoint.uri();
        if uri.port_u16().is_none() || uri.path() != "/" || uri.query().is_some() {
            return Err(TlsError::NoPort { addr });
        }
        Ok(endpoint
            .connect_timeout(DEFAULT_CONNECT_TIMEOUT)
            .http2_keep_alive_interval(DEFAULT_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(DEFAULT_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true))
    }

    /// The connector for `Endpoint::connect_with_connector`: dials TCP, then
    /// does the TLS handshake expecting `expect`.
    pub fn connector(&self, expect: Expect) -> TlsConnector {
        TlsConnector {
            tls: self.clone(),
            expect,
        }
    }

    /// Connects now; fails if the peer cannot be reached or is not `expect`.
    pub async fn connect(
        &self,
        addr: impl fmt::Display,
        expect: Expect,
    ) -> Result<Channel, TlsError> {
        let addr = addr.to_string();
        let endpoint = ClientTls::endpoint(&addr)?;
        endpoint
            .connect_with_connector(self.connector(expect.clone()))
            .await
            .map_err(|source| TlsError::Connect {
                addr,
                expect,
                source,
            })
    }

    /// The TLS alert with which the server at `addr` refuses this client's
    /// certificate, if it does (`CertificateRevoked`, `CertificateExpired`,
    /// ...); `None` if it accepts it or cannot be asked.
    ///
    /// A TLS 1.3 client finishes its handshake before the server checks
    /// its certificate, and the server's alert then often reaches a gRPC
    /// call only as "connection closed". This makes one connection of its
    /// own, sends the HTTP/2 preface and reads the answer: the server's
    /// first frame, or its alert.
    pub async fn refusal(
        &self,
        addr: impl fmt::Display,
        expect: Expect,
    ) -> Option<AlertDescription> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let uri: Uri = format!("http://{addr}").parse().ok()?;
        let ask = async {
            let mut stream = match self.connector(expect).dial(uri).await {
                Ok(io) => io.into_inner(),
                Err(e) => return peer_alert(&e),
            };
            if let Err(e) = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await {
                return peer_alert(&e);
            }
            let _ = stream.flush().await;
            let mut buf = [0u8; 64];
            match stream.read(&mut buf).await {
                Ok(_) => None,
                Err(e) => peer_alert(&e),
            }
        };
        tokio::time::timeout(DEFAULT_CONNECT_TIMEOUT, ask)
            .await
            .ok()
            .flatten()
    }

    /// A channel that connects on first use and reconnects after failures:
    /// for long-lived channels (controller to agents).
    pub fn connect_lazy(
        &self,
        addr: impl fmt::Display,
        expect: Expect,
    ) -> Result<Channel, TlsError> {
        let endpoint = ClientTls::endpoint(addr)?;
        Ok(endpoint.connect_with_connector_lazy(self.connector(expect)))
    }
}

/// A `tower::Service<Uri>` that dials TCP and does the client TLS handshake.
#[derive(Clone, Debug)]
pub struct TlsConnector {
    tls: ClientTls,
    expect: Expect,
}

impl TlsConnector {
    async fn dial(
        self,
        uri: Uri,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, TlsError> {
        let addr = uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| uri.to_string());
        let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
            return Err(TlsError::NoPort { addr });
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| TlsError::NoPort { addr: addr.clone() })?;
        let config = self.tls.client_config(self.expect.clone())?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| TlsError::Dial {
                addr: addr.clone(),
                source,
            })?;
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%addr, %error, "cannot set TCP_NODELAY");
        }
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|source| match peer_identity_error(&source) {
                Some(source) => TlsError::WrongPeer { addr, source },
                None => TlsError::Handshake {
                    addr,
                    expect: self.expect.clone(),
                    source,
                },
            })?;
        Ok(TokioIo::new(stream))
    }
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, TlsError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TlsError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().dial(uri))
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why TLS material could not be loaded or a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {kind} {path:?}; {}", kind.hint())]
    Read {
        /// What the file should hold.
        kind: PemKind,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The input is not PEM of the expected kind.
    #[error("{kind} {origin} is not valid PEM; {}", kind.hint())]
    Pem {
        /// What it should hold.
        kind: PemKind,
        /// Where it came from.
        origin: Origin,
        /// The PEM parser's reason.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The input holds no PEM block of the expected kind.
    #[error("{origin} holds no {kind}; {}", kind.hint())]
    Empty {
        /// What it should hold.
        kind: PemKind,
        /// Where it came from.
        origin: Origin,
    },
    /// A CA certificate could not be used as a trust anchor.
    #[error("CA certificate {origin} cannot be used as a trust anchor; {}", PemKind::CaCertificate.hint())]
    BadCa {
        /// Where it came from.
        origin: Origin,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// Our own certificate carries no valid fleet identity.
    #[error("certificate {origin} is not a fleet certificate; {}", PemKind::Certificate.hint())]
    Identity {
        /// Where it came from.
        origin: Origin,
        /// What is wrong with its identity.
        #[source]
        source: IdentityError,
    },
    /// The key does not fit the certificate (or is of an unsupported kind).
    #[error("private key {key} does not belong to certificate {cert}, or cannot be used; issue both together with \"fleetctl pki issue\"")]
    KeyMismatch {
        /// The certificate.
        cert: Origin,
        /// The key.
        key: Origin,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// Our own certificate does not verify against the configured CA.
    #[error("certificate {cert} does not verify against the fleet CA {ca}; issue it from this fleet's CA (\"fleetctl pki issue\") or point to the right CA certificate")]
    Untrusted {
        /// The certificate.
        cert: Origin,
        /// The CA certificate(s).
        ca: Origin,
        /// webpki's reason.
        #[source]
        source: webpki::Error,
    },
    /// Our own certificate lacks the usage this side needs.
    #[error("certificate {cert} ({identity}) is not valid for {usage}; servers need a controller or agent certificate")]
    WrongUsage {
        /// The certificate.
        cert: Origin,
        /// Its identity.
        identity: Box<Identity>,
        /// What it was to be used for.
        usage: &'static str,
    },
    /// Our own certificate is on the CRL.
    #[error("certificate {cert} ({identity}) is revoked by CRL {crl}; issue a new one with \"fleetctl pki issue\"")]
    OwnCertRevoked {
        /// The certificate.
        cert: Origin,
        /// The CRL.
        crl: Origin,
        /// Its identity.
        identity: Box<Identity>,
    },
    /// The CRL does not parse, is not signed by the fleet CA, or does not cover its certificates.
    #[error("CRL {crl} is not a valid CRL of the fleet CA {ca}; {}", PemKind::Crl.hint())]
    BadCrl {
        /// The CRL.
        crl: Origin,
        /// The CA certificate(s).
        ca: Origin,
        /// webpki's reason.
        #[source]
        source: webpki::Error,
    },
    /// rustls refused the configuration.
    #[error("cannot build the TLS configuration")]
    Config {
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the client verifier (e.g. an unusable CRL).
    #[error("cannot build the client certificate verifier from the CA and CRL")]
    Verifier {
        /// rustls's reason.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// A reload found a certificate naming someone else.
    #[error("the certificate now names {now}, but this process runs as {running}; restart it to change identity")]
    IdentityChanged {
        /// What the new certificate names.
        now: Box<Identity>,
        /// Who this process is.
        running: Box<Identity>,
    },
    /// The address does not parse.
    #[error("\"{addr}\" is not a valid address; use host:port")]
    Address {
        /// The rejected address.
        addr: String,
        /// tonic's reason.
        #[source]
        source: tonic::transport::Error,
    },
    /// The address names no port, or more than a host and port.
    #[error("\"{addr}\" is not a valid address; use host:port, e.g. 127.0.0.1:7443")]
    NoPort {
        /// The rejected address.
        addr: String,
    },
    /// TCP could not connect.
    #[error("cannot connect to {addr}")]
    Dial {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed, e.g. the peer is not who we expected.
    #[error("TLS handshake with {addr} (expecting {expect}) failed")]
    Handshake {
        /// The address.
        addr: String,
        /// Whom we expected.
        expect: Expect,
        /// The handshake error (a rustls error inside).
        #[source]
        source: io::Error,
    },
    /// The server's certificate is valid but names someone else.
    #[error("the server at {addr} is not the one expected")]
    WrongPeer {
        /// The address.
        addr: String,
        /// Whom it is, and whom we expected.
        #[source]
        source: PeerIdentityError,
    },
    /// The gRPC channel could not be established.
    #[error("cannot open a gRPC channel to {addr} (expecting {expect})")]
    Connect {
        /// The address.
        addr: String,
        /// Whom we expected.
        expect: Expect,
        /// tonic's error, with the dial or handshake error inside.
        #[source]
        source: tonic::transport::Error,
    },
}

#[cfg(test)]
mod pending_tests {
    use super::*;

    fn options(per_ip: usize, max: usize) -> IncomingOptions {
        IncomingOptions {
            max_handshakes_per_ip: per_ip,
            max_concurrent_handshakes: max,
            ..IncomingOptions::default()
        }
    }

    #[test]
    fn a_new_handshake_drops_the_oldest_of_its_address_then_the_oldest_of_all() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let o = options(2, 3);
        let mut p = Pending::default();
        let (_, mut a1) = p.admit(a, &o);
        let (_, mut a2) = p.admit(a, &o);
        let (_, mut b1) = p.admit(b, &o);
        assert_eq!(p.len(), 3);
        // A third from a: its own oldest goes, b's stays.
        let (_, mut a3) = p.admit(a, &o);
        assert!(a1
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
        assert!(a2
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        assert!(b1
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        assert_eq!(p.len(), 3);
        // A second from b: the limit of all drops the oldest of all (a2).
        let (b2, _b2) = p.admit(b, &o);
        assert!(a2
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
        assert!(a3
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        assert_eq!(p.len(), 3);
        // Ended handshakes free their place.
        p.remove(b2);
        p.remove(b2);
        assert_eq!(p.len(), 2);
        assert_eq!(p.per_ip.get(&b).map(VecDeque::len), Some(1));
    }

    #[test]
    fn a_flood_from_one_prefix_cannot_push_out_other_peers() {
        let o = options(32, 4);
        let mut p = Pending::default();
        // A real peer's handshake, then a flood from one IPv6 /64, each
        // socket from another address in it.
        let (_, mut real) = p.admit("192.0.2.7".parse().unwrap(), &o);
        let mut flood = Vec::new();
        for i in 1..=40u16 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i));
            flood.push(p.admit(ip, &o).1);
        }
        // The /64 counts as one address: it holds at most 3 of the 4 places
        // and never the real peer's.
        assert!(real
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        assert_eq!(p.len(), 4);
        assert_eq!(p.per_ip.len(), 2);
        let alive = flood
            .iter_mut()
            .map(|rx| rx.try_recv())
            .filter(|r| *r == Err(oneshot::error::TryRecvError::Empty))
            .count();
        assert_eq!(alive, 3);
    }

    #[test]
    fn ipv4_peers_on_an_ipv6_socket_count_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:4000".parse().unwrap();
        assert_eq!(peer_ip(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        assert_eq!(peer_ip(v6), v6.ip());
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[serde(default = "defaults", deserialize_with = "tls")]
        tls: TlsFiles,
    }

    fn defaults() -> TlsFiles {
        TlsFiles::new("/etc/fleet/ca.pem", "/etc/fleet/p.pem", "/etc/fleet/p.key")
    }

    fn tls<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TlsFiles, D::Error> {
        TlsFiles::deserialize_or(d, defaults())
    }

    fn parse(text: &str) -> Result<TlsFiles, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.tls.validate().map_err(|e| e.to_string())?;
        Ok(c.tls)
    }

    #[test]
    fn keys_left_out_take_the_process_defaults() {
        assert_eq!(parse("").unwrap(), defaults());
        assert_eq!(parse("[tls]\n").unwrap(), defaults());
        assert_eq!(
            parse("[tls]\ncert = \"/x/c.pem\"\ncrl = \"/x/crl.pem\"\n").unwrap(),
            TlsFiles::new("/etc/fleet/ca.pem", "/x/c.pem", "/etc/fleet/p.key")
                .with_crl("/x/crl.pem")
        );
        let all = "[tls]\nca = \"/a\"\ncert = \"/b\"\nkey = \"/c\"\ncrl = \"/d\"\n";
        assert_eq!(
            parse(all).unwrap(),
            TlsFiles::new("/a", "/b", "/c").with_crl("/d")
        );
    }

    #[test]
    fn round_trips_through_toml() {
        for files in [defaults(), defaults().with_crl("/etc/fleet/crl.pem")] {
            let text = toml::to_string(&Config { tls: files.clone() }).unwrap();
            assert_eq!(parse(&text).unwrap(), files, "{text}");
        }
    }

    #[test]
    fn unknown_and_empty_keys_are_refused_by_name() {
        let e = parse("[tls]\ncertificate = \"/b\"\n").unwrap_err();
        assert!(e.contains("certificate") && e.contains("`cert`"), "{e}");
        for key in ["ca", "cert", "key", "crl"] {
            let e = parse(&format!("[tls]\n{key} = \"\"\n")).unwrap_err();
            assert!(e.starts_with(&format!("tls.{key} is empty: ")), "{e}");
            assert!(e.contains("leave") && e.contains(key), "{e}");
        }
    }
}
