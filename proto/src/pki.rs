//! The fleet's certificate authority: create it, issue certificates, revoke them (rcgen).
//!
//! Used by `fleetctl pki init|issue|revoke` and by the testbed, never by a
//! daemon: the agent and controller only *verify* (see [`crate::tls`]). The
//! CA key is the key to the whole fleet, so it stays on the workstation of
//! whoever runs `fleetctl pki`.
//!
//! Every issued certificate carries exactly one URI SAN, the [`Identity`] it
//! names; servers (controller, agents) also get the DNS names and addresses
//! they are reached by, and both serverAuth and clientAuth usages, because
//! they dial each other too. Keys are ECDSA P-256, serial numbers random.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::identity::{self, Identity, IdentityError, NameKind, Principal};
use crate::tls::Origin;

/// How long `fleetctl pki init` makes the CA valid.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long `fleetctl pki issue` makes a certificate valid.
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// The next-update a CRL announces. Servers keep using a CRL past it (they
/// do not fail closed on a stale CRL); it tells readers when to expect a new one.
pub const DEFAULT_CRL_NEXT_UPDATE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Certificates and CRLs start this much in the past, so that a board whose
/// clock is a little behind accepts a certificate issued a moment ago.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The fleet CA: its certificate, its key, and the fleet it names.
///
/// The CA certificate's only URI SAN is `spiffe://<fleet>`, the trust
/// domain, so [`Ca::load`] knows which fleet it signs for.
pub struct Ca {
    fleet: String,
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    key_id: Vec<u8>,
    not_after: SystemTime,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("fleet", &self.fleet)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A freshly issued certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM). Write it with [`write_private_file`].
    pub key_pem: String,
    /// The certificate's serial number, what [`Ca::revoke`] takes.
    pub serial: Serial,
    /// The identity the certificate names.
    pub identity: Identity,
    /// When the certificate expires.
    pub not_after: SystemTime,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// Writes the certificate (mode 0644) and the key (mode 0600), each atomically.
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), PkiError> {
        write_private_file(key_path, &self.key_pem)?;
        write_public_file(cert_path, &self.cert_pem)
    }
}

/// A DNS name or IP address a server certificate is also valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraSan {
    /// A DNS name, e.g. `jetson-01.lab`.
    Dns(String),
    /// An IP address, e.g. `192.0.2.7`.
    Ip(IpAddr),
}

impl FromStr for ExtraSan {
    type Err = PkiError;

    /// An IP address if it parses as one, a DNS name otherwise.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse() {
            return Ok(ExtraSan::Ip(ip));
        }
        let dns_ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-')
            });
        if dns_ok {
            Ok(ExtraSan::Dns(s.to_ascii_lowercase()))
        } else {
            Err(PkiError::InvalidSan { san: s.to_owned() })
        }
    }
}

impl fmt::Display for ExtraSan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtraSan::Dns(d) => f.write_str(d),
            ExtraSan::Ip(ip) => ip.fmt(f),
        }
    }
}

/// A certificate serial number, shown as lowercase hex pairs separated by `:`.
///
/// Parsing accepts hex with or without `:` separators, in any case.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// From the big-endian bytes of a positive integer; leading zero bytes are dropped.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let start = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len().saturating_sub(1));
        Serial(bytes[start..].to_vec())
    }

    /// Big-endian bytes, without leading zeros.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The serial of a PEM certificate, for `fleetctl pki revoke --cert <file>`.
    pub fn of_cert_pem(cert_pem: &str) -> Result<Self, PkiError> {
        let der = cert_der_from_pem(cert_pem.as_bytes(), &Origin::Memory)?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| PkiError::BadCertificate {
            origin: Origin::Memory,
            reason: e.to_string(),
        })?;
        Ok(Serial::from_bytes(cert.raw_serial()))
    }

    fn random() -> Result<Self, PkiError> {
        let mut bytes = [0u8; 16];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut bytes)
            .map_err(|_| PkiError::Random)?;
        // Positive and without a leading zero byte, so the DER encoding is
        // exactly these 16 bytes and reads back as the same `Serial`.
        bytes[0] = (bytes[0] & 0x7f) | 0x01;
        Ok(Serial(bytes.to_vec()))
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

impl FromStr for Serial {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s.chars().filter(|&c| c != ':').collect();
        let bad = || PkiError::InvalidSerial {
            serial: s.to_owned(),
        };
        if hex.is_empty() || hex.len() > 42 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let hex = if hex.len() % 2 == 1 {
            format!("0{hex}")
        } else {
            hex
        };
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>, _>>()?;
        Ok(Serial::from_bytes(&bytes))
    }
}

impl Ca {
    /// Creates a new self-signed CA for `fleet`, valid for [`DEFAULT_CA_VALIDITY`].
    pub fn init(fleet: &str) -> Result<Ca, PkiError> {
        Ca::init_with_validity(fleet, DEFAULT_CA_VALIDITY)
    }

    /// Creates a new self-signed CA for `fleet`, valid for `validity`.
    pub fn init_with_validity(fleet: &str, validity: Duration) -> Result<Ca, PkiError> {
        identity::validate_name(NameKind::Fleet, fleet)?;
        let (not_before, not_after) = validity_window(validity)?;
        let serial = Serial::random()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        // A CA made by a later `pki init` for the same fleet gets another
        // name, so peers report its certificates as from an unknown issuer
        // rather than as badly signed ones of the CA they know.
        let tag: String = serial
            .to_string()
            .replace(':', "")
            .chars()
            .take(8)
            .collect();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{fleet} fleet CA {tag}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, fleet);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI(
            format!("{}{fleet}", identity::SCHEME)
                .try_into()
                .map_err(|e| generate("encode the CA's URI", e))?,
        )];
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| generate("generate the CA key", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| generate("sign the CA certificate", e))?;
        Ca::load(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from its certificate and key (PEM), as written by [`Ca::write`].
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        Ca::load_from(cert_pem, key_pem, &Origin::Memory, &Origin::Memory)
    }

    /// Loads a CA from the files written by `fleetctl pki init`.
    pub fn load_files(cert_path: &Path, key_path: &Path) -> Result<Ca, PkiError> {
        let cert_pem = read_to_string(cert_path, "CA certificate")?;
        let key_pem = read_to_string(key_path, "CA key")?;
        Ca::load_from(
            &cert_pem,
            &key_pem,
            &Origin::File(cert_path.to_owned()),
            &Origin::File(key_path.to_owned()),
        )
    }

    fn load_from(
        cert_pem: &str,
        key_pem: &str,
        cert_origin: &Origin,
        key_origin: &Origin,
    ) -> Result<Ca, PkiError> {
        let bad_cert = |reason: String| PkiError::BadCertificate {
            origin: cert_origin.clone(),
            reason,
        };
        let der = cert_der_from_pem(cert_pem.as_bytes(), cert_origin)?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad_cert(e.to_string()))?;
        if !cert.is_ca() {
            return Err(bad_cert("it is not a CA certificate".into()));
        }
        let fleet = ca_fleet(&cert).map_err(bad_cert)?;
        let key = KeyPair::from_pem(key_pem).map_err(|source| PkiError::BadKey {
            origin: key_origin.clone(),
            source,
        })?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::KeyMismatch {
                cert: cert_origin.clone(),
                key: key_origin.clone(),
            });
        }
        let key_id = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .unwrap_or_default();
        let not_after = system_time(cert.validity().not_after.timestamp());
        let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)
            .map_err(|e| bad_cert(e.to_string()))?;
        Ok(Ca {
            fleet,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
            key_id,
            not_after,
        })
    }

    /// The fleet this CA signs for.
    pub fn fleet(&self) -> &str {
        &self.fleet
    }

    /// The CA certificate (PEM): what every agent, controller and fleetctl trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key (PEM). Keep it off the boards.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Writes the CA certificate (mode 0644) and key (mode 0600), each atomically.
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), PkiError> {
        write_private_file(key_path, &self.key_pem)?;
        write_public_file(cert_path, &self.cert_pem)
    }

    /// Issues a certificate for `principal` in this CA's fleet, valid for `validity`.
    ///
    /// `extra_sans` are DNS names or addresses a server is reached by; user
    /// certificates take none.
    pub fn issue(
        &self,
        principal: &Principal,
        validity: Duration,
        extra_sans: &[ExtraSan],
    ) -> Result<IssuedCert, PkiError> {
        let identity = Identity::new(self.fleet.clone(), principal.clone())?;
        let (not_before, not_after) = validity_window(validity)?;
        if system_time(not_after.unix_timestamp()) > self.not_after {
            return Err(PkiError::OutlivesCa {
                identity: Box::new(identity),
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, principal.to_string());
        params
            .distinguished_name
            .push(DnType::OrganizationName, self.fleet.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = match principal {
            Principal::Controller | Principal::Agent { .. } => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Principal::User { .. } => {
                if !extra_sans.is_empty() {
                    return Err(PkiError::SansForUser {
                        identity: Box::new(identity),
                    });
                }
                vec![ExtendedKeyUsagePurpose::ClientAuth]
            }
        };
        let mut sans = vec![SanType::URI(
            identity
                .uri()
                .try_into()
                .map_err(|e| generate("encode the URI SAN", e))?,
        )];
        for san in extra_sans {
            sans.push(match san {
                ExtraSan::Ip(ip) => SanType::IpAddress(*ip),
                ExtraSan::Dns(name) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|_| PkiError::InvalidSan { san: name.clone() })?,
                ),
            });
        }
        params.subject_alt_names = sans;
        let serial = Serial::random()?;
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| generate("generate a key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| generate("sign the certificate", e))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
            identity,
            not_after: system_time(not_after.unix_timestamp()),
        })
    }

    /// Signs a CRL listing exactly `serials`, next update in [`DEFAULT_CRL_NEXT_UPDATE`].
    ///
    /// A CRL replaces the previous one, so pass every serial still revoked:
    /// [`Ca::revoked_in`] reads them from the current CRL.
    pub fn revoke(&self, serials: &[Serial]) -> Result<String, PkiError> {
        self.revoke_with_next_update(serials, DEFAULT_CRL_NEXT_UPDATE)
    }

    /// [`Ca::revoke`] with an explicit next-update.
    pub fn revoke_with_next_update(
        &self,
        serials: &[Serial],
        next_update: Duration,
    ) -> Result<String, PkiError> {
        let (this_update, next_update) = validity_window(next_update)?;
        let now = OffsetDateTime::now_utc();
        let mut serials = serials.to_vec();
        serials.sort();
        serials.dedup();
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            // Seconds since the epoch grow with every CRL the fleet issues,
            // without keeping a counter anywhere.
            crl_number: SerialNumber::from(now.unix_timestamp().max(1) as u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s.as_bytes()),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: if self.key_id.is_empty() {
                KeyIdMethod::Sha256
            } else {
                KeyIdMethod::PreSpecified(self.key_id.clone())
            },
        };
        params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .map_err(|e| generate("sign the CRL", e))
    }

    /// The serials listed in a CRL (PEM) issued by this CA.
    pub fn revoked_in(&self, crl_pem: &str) -> Result<Vec<Serial>, PkiError> {
        let bad = |reason: String| PkiError::BadCrl { reason };
        let (_, pem) = parse_x509_pem(crl_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        if pem.label != "X509 CRL" {
            return Err(bad(format!("it holds a \"{}\" PEM block", pem.label)));
        }
        let (_, crl) =
            CertificateRevocationList::from_der(&pem.contents).map_err(|e| bad(e.to_string()))?;
        let ca_der = cert_der_from_pem(self.cert_pem.as_bytes(), &Origin::Memory)?;
        let (_, ca) = X509Certificate::from_der(&ca_der).map_err(|e| bad(e.to_string()))?;
        if crl.issuer().as_raw() != ca.subject().as_raw()
            || crl.verify_signature(ca.public_key()).is_err()
        {
            return Err(bad(format!(
                "it was not issued by the CA of fleet \"{}\"",
                self.fleet
            )));
        }
        Ok(crl
            .iter_revoked_certificates()
            .map(|r| Serial::from_bytes(r.raw_serial()))
            .collect())
    }
}

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A fleet, node or user name is invalid.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// rcgen refused an operation.
    #[error("cannot {what}")]
    Generate {
        /// What was being done.
        what: &'static str,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// The system's random number generator failed.
    #[error("cannot draw a random serial number from the system's random generator")]
    Random,
    /// A file could not be read.
    #[error("cannot read the {what} {path:?}; create the fleet CA with \"fleetctl pki init\"")]
    Read {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path:?}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CA certificate is unusable.
    #[error(
        "the CA certificate {origin} is not a fleet CA: {reason}; \
         create one with \"fleetctl pki init\""
    )]
    BadCertificate {
        /// Where it came from.
        origin: Origin,
        /// What is wrong.
        reason: String,
    },
    /// The CA key is unusable.
    #[error("the CA key {origin} cannot be loaded (PKCS#8 PEM expected)")]
    BadKey {
        /// Where it came from.
        origin: Origin,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// The CA key does not belong to the CA certificate.
    #[error("the CA key {key} does not belong to the CA certificate {cert}")]
    KeyMismatch {
        /// The certificate.
        cert: Origin,
        /// The key.
        key: Origin,
    },
    /// A requested certificate would outlive the CA.
    #[error(
        "a certificate for {identity} would expire after the CA does; \
         ask for a shorter validity"
    )]
    OutlivesCa {
        /// The certificate's identity.
        identity: Box<Identity>,
    },
    /// A validity or next-update of zero or beyond what X.509 can encode.
    #[error(
        "a validity of {validity:?} is out of range: give a duration between 1 s and 100 years"
    )]
    Validity {
        /// The rejected duration.
        validity: Duration,
    },
    /// DNS or IP names asked for a user certificate.
    #[error(
        "a user certificate ({identity}) carries no DNS names or addresses: \
         drop them, they are for controller and agent certificates"
    )]
    SansForUser {
        /// The user's identity.
        identity: Box<Identity>,
    },
    /// An extra SAN is neither an IP address nor a DNS name.
    #[error(
        "\"{san}\" is neither an IP address nor a DNS name: \
         use letters, digits and '-' in dot-separated labels"
    )]
    InvalidSan {
        /// The rejected name.
        san: String,
    },
    /// A serial number does not parse.
    #[error(
        "serial number \"{serial}\" is invalid: use hex digits, optionally in ':'-separated pairs"
    )]
    InvalidSerial {
        /// The rejected text.
        serial: String,
    },
    /// A CRL does not parse or was not issued by this CA.
    #[error("the CRL is unusable: {reason}; create a new one with \"fleetctl pki revoke\"")]
    BadCrl {
        /// What is wrong.
        reason: String,
    },
}

fn generate(what: &'static str, source: rcgen::Error) -> PkiError {
    PkiError::Generate { what, source }
}

fn validity_window(validity: Duration) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    const MAX: Duration = Duration::from_secs(100 * 366 * 24 * 3600);
    if validity.is_zero() || validity > MAX {
        return Err(PkiError::Validity { validity });
    }
    let now = OffsetDateTime::now_utc();
    // Both fit: the durations are bounded above and `now` is a real clock.
    let start = now - time::Duration::seconds(BACKDATE.as_secs() as i64);
    let end = now + time::Duration::seconds(validity.as_secs().max(1) as i64);
    Ok((start, end))
}

fn system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

fn ca_fleet(cert: &X509Certificate<'_>) -> Result<String, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .ok_or("it carries no spiffe://<fleet> URI SAN")?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(format!(
            "it must carry exactly one spiffe://<fleet> URI SAN, not {}",
            uris.len()
        ));
    };
    let fleet = uri
        .strip_prefix(identity::SCHEME)
        .ok_or_else(|| format!("its URI SAN \"{uri}\" is not spiffe://<fleet>"))?;
    identity::validate_name(NameKind::Fleet, fleet).map_err(|e| e.to_string())?;
    Ok(fleet.to_owned())
}

fn cert_der_from_pem(pem: &[u8], origin: &Origin) -> Result<Vec<u8>, PkiError> {
    let (_, pem) = parse_x509_pem(pem).map_err(|e| PkiError::BadCertificate {
        origin: origin.clone(),
        reason: format!("it is not PEM ({e})"),
    })?;
    if pem.label != "CERTIFICATE" {
        return Err(PkiError::BadCertificate {
            origin: origin.clone(),
            reason: format!("it holds a \"{}\" PEM block, not a CERTIFICATE", pem.label),
        });
    }
    Ok(pem.contents)
}

fn read_to_string(path: &Path, what: &'static str) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Writes a private key: mode 0600 from the first byte, replacing `path` atomically.
pub fn write_private_file(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_atomically(path, contents, 0o600)
}

/// Writes a certificate or CRL: mode 0644, replacing `path` atomically, so a
/// server reloading on SIGHUP never reads half a file.
pub fn write_public_file(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_atomically(path, contents, 0o644)
}

fn write_atomically(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("the path names no file")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{principal_from_cert_der, Role};

    fn der(pem: &str) -> Vec<u8> {
        cert_der_from_pem(pem.as_bytes(), &Origin::Memory).unwrap()
    }

    #[test]
    fn issues_each_kind_with_one_uri_san_and_the_right_usages() {
        let ca = Ca::init("lab").unwrap();
        let cases = [
            (Principal::Controller, true),
            (
                Principal::Agent {
                    node: "jetson-01".into(),
                },
                true,
            ),
            (
                Principal::User {
                    name: "ada".into(),
                    role: Role::Operator,
                },
                false,
            ),
        ];
        for (principal, server) in cases {
            let issued = ca.issue(&principal, DEFAULT_CERT_VALIDITY, &[]).unwrap();
            let der = der(&issued.cert_pem);
            let id = principal_from_cert_der(&der).unwrap();
            assert_eq!(id.principal(), &principal);
            assert_eq!(id.fleet(), "lab");
            assert_eq!(issued.identity, id);
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert_eq!(eku.server_auth, server, "{principal}");
            assert!(eku.client_auth);
            assert!(!cert.is_ca());
            assert_eq!(Serial::from_bytes(cert.raw_serial()), issued.serial);
            assert_eq!(
                Serial::of_cert_pem(&issued.cert_pem).unwrap(),
                issued.serial
            );
        }
    }

    #[test]
    fn serials_are_random() {
        let ca = Ca::init("lab").unwrap();
        let p = Principal::Controller;
        let a = ca.issue(&p, DEFAULT_CERT_VALIDITY, &[]).unwrap().serial;
        let b = ca.issue(&p, DEFAULT_CERT_VALIDITY, &[]).unwrap().serial;
        assert_ne!(a, b);
        assert_eq!(a.as_bytes().len(), 16);
    }

    #[test]
    fn extra_sans_for_servers_only() {
        let ca = Ca::init("lab").unwrap();
        let sans = [
            "jetson-01.lab".parse().unwrap(),
            "127.0.0.2".parse().unwrap(),
        ];
        let issued = ca
            .issue(
                &Principal::Agent {
                    node: "jetson-01".into(),
                },
                DEFAULT_CERT_VALIDITY,
                &sans,
            )
            .unwrap();
        let der = der(&issued.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .len(),
            3
        );
        let user = Principal::User {
            name: "ada".into(),
            role: Role::Admin,
        };
        assert!(matches!(
            ca.issue(&user, DEFAULT_CERT_VALIDITY, &sans),
            Err(PkiError::SansForUser { .. })
        ));
        assert!("bad name!".parse::<ExtraSan>().is_err());
        assert!("-x.lab".parse::<ExtraSan>().is_err());
    }

    #[test]
    fn load_round_trips_and_checks_the_key() {
        let ca = Ca::init("lab.example").unwrap();
        let again = Ca::load(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.fleet(), "lab.example");
        let other = Ca::init("lab.example").unwrap();
        assert!(matches!(
            Ca::load(ca.cert_pem(), other.key_pem()),
            Err(PkiError::KeyMismatch { .. })
        ));
        let leaf = ca
            .issue(&Principal::Controller, DEFAULT_CERT_VALIDITY, &[])
            .unwrap();
        let err = Ca::load(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(err.to_string().contains("not a CA certificate"), "{err}");
        // A CA loaded from PEM issues certificates that chain to the original.
        let issued = again
            .issue(&Principal::Controller, DEFAULT_CERT_VALIDITY, &[])
            .unwrap();
        let anchor_der = der(ca.cert_pem());
        let anchor_der = rustls::pki_types::CertificateDer::from(anchor_der);
        let anchor = webpki::anchor_from_trusted_cert(&anchor_der).unwrap();
        let leaf_der = rustls::pki_types::CertificateDer::from(der(&issued.cert_pem));
        webpki::EndEntityCert::try_from(&leaf_der)
            .unwrap()
            .verify_for_usage(
                rustls::crypto::ring::default_provider()
                    .signature_verification_algorithms
                    .all,
                &[anchor],
                &[],
                rustls::pki_types::UnixTime::now(),
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .unwrap();
    }

    #[test]
    fn validity_is_bounded() {
        let ca = Ca::init_with_validity("lab", Duration::from_secs(3600)).unwrap();
        assert!(matches!(
            ca.issue(&Principal::Controller, Duration::from_secs(7200), &[]),
            Err(PkiError::OutlivesCa { .. })
        ));
        assert!(matches!(
            ca.issue(&Principal::Controller, Duration::ZERO, &[]),
            Err(PkiError::Validity { .. })
        ));
        assert!(Ca::init("Bad Fleet").is_err());
    }

    #[test]
    fn crl_lists_the_revoked_serials() {
        let ca = Ca::init("lab").unwrap();
        let a: Serial = "01:ab:cd".parse().unwrap();
        let b: Serial = "7F0001".parse().unwrap();
        assert_eq!(b.to_string(), "7f:00:01");
        let crl = ca.revoke(&[a.clone(), b.clone(), a.clone()]).unwrap();
        assert!(crl.starts_with("-----BEGIN X509 CRL-----"));
        assert_eq!(ca.revoked_in(&crl).unwrap(), vec![a, b]);
        let other = Ca::init("lab").unwrap();
        assert!(matches!(
            other.revoked_in(&crl),
            Err(PkiError::BadCrl { .. })
        ));
        assert!("xyz".parse::<Serial>().is_err());
        assert!("".parse::<Serial>().is_err());
    }

    #[test]
    fn keys_are_written_0600_and_certs_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init("lab").unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        // Replacing a world-readable file still leaves the key private.
        fs::write(&key, "old").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        ca.write(&cert, &key).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        let loaded = Ca::load_files(&cert, &key).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        let err = Ca::load_files(&dir.path().join("nope.pem"), &key).unwrap_err();
        assert!(err.to_string().contains("fleetctl pki init"), "{err}");
    }
}
