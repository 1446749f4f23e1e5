//! Who is on the other end of a connection: the SPIFFE-style identity every fleet certificate carries.
//!
//! Every certificate the fleet CA issues carries exactly one URI SAN naming a
//! principal of one fleet (the SPIFFE "trust domain"):
//!
//! | URI | principal |
//! |---|---|
//! | `spiffe://<fleet>/controller` | the controller |
//! | `spiffe://<fleet>/agent/<node>` | the agent of board `<node>` |
//! | `spiffe://<fleet>/user/<role>/<name>` | a person, with role `admin`, `operator` or `viewer` |
//!
//! Anything else is refused: no guessing from DNS names or the subject CN.
//! Parsing is strict so that the authorization layer can match on
//! [`Principal`] and never look at strings.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;
use x509_parser::nom;
use x509_parser::prelude::{FromDer, X509Certificate, X509Error};

/// The URI scheme of every fleet identity.
pub const SCHEME: &str = "spiffe://";

/// Longest node, user or fleet name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// The three roles a person can hold; what each may call is decided by the
/// authorization table of the server, not here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything, including PKI and power modes.
    Admin,
    /// Runs experiments: submit, stop, drain.
    Operator,
    /// Reads only.
    Viewer,
}

impl Role {
    /// Every role, in decreasing power.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Viewer];

    /// The name used in URIs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole {
                role: s.to_owned(),
                uri: None,
            })
    }
}

/// What a certificate names inside its fleet.
///
/// Build one through [`Identity`]'s constructors, which validate names; a
/// `Principal` inside an [`Identity`] is always valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// The fleet's controller.
    Controller,
    /// The agent of one board.
    Agent {
        /// The board's node name, e.g. `jetson-01`.
        node: String,
    },
    /// A person using fleetctl.
    User {
        /// The user's name.
        name: String,
        /// What the user may do.
        role: Role,
    },
}

impl Principal {
    /// The node name if this is an agent.
    pub fn agent_node(&self) -> Option<&str> {
        match self {
            Principal::Agent { node } => Some(node),
            _ => None,
        }
    }

    /// The role if this is a user.
    pub fn user_role(&self) -> Option<Role> {
        match self {
            Principal::User { role, .. } => Some(*role),
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), IdentityError> {
        match self {
            Principal::Controller => Ok(()),
            Principal::Agent { node } => validate_name(NameKind::Node, node),
            Principal::User { name, .. } => validate_name(NameKind::User, name),
        }
    }
}

/// The URI path of the principal: `controller`, `agent/<node>` or `user/<role>/<name>`.
impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Controller => f.write_str("controller"),
            Principal::Agent { node } => write!(f, "agent/{node}"),
            Principal::User { name, role } => write!(f, "user/{role}/{name}"),
        }
    }
}

/// A validated fleet identity: the fleet (trust domain) and the principal in it.
///
/// `Display` and [`Identity::uri`] give back the URI; `FromStr` parses one.
/// Serde (de)serializes it as the URI string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    fleet: String,
    principal: Principal,
}

impl Identity {
    /// Validates `fleet` and the names inside `principal`.
    pub fn new(fleet: impl Into<String>, principal: Principal) -> Result<Self, IdentityError> {
        let fleet = fleet.into();
        validate_name(NameKind::Fleet, &fleet)?;
        principal.validate()?;
        Ok(Identity { fleet, principal })
    }

    /// `spiffe://<fleet>/controller`.
    pub fn controller(fleet: impl Into<String>) -> Result<Self, IdentityError> {
        Identity::new(fleet, Principal::Controller)
    }

    /// `spiffe://<fleet>/agent/<node>`.
    pub fn agent(fleet: impl Into<String>, node: impl Into<String>) -> Result<Self, IdentityError> {
        Identity::new(fleet, Principal::Agent { node: node.into() })
    }

    /// `spiffe://<fleet>/user/<role>/<name>`.
    pub fn user(
        fleet: impl Into<String>,
        name: impl Into<String>,
        role: Role,
    ) -> Result<Self, IdentityError> {
        Identity::new(
            fleet,
            Principal::User {
                name: name.into(),
                role,
            },
        )
    }

    /// Parses `spiffe://<fleet>/<principal path>`; see the module docs for the accepted forms.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let invalid = |reason| IdentityError::Malformed {
            uri: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::NotSpiffe {
                uri: uri.to_owned(),
            })?;
        let (fleet, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid(Malformed::NoPath))?;
        validate_name(NameKind::Fleet, fleet).map_err(|e| e.in_uri(uri))?;
        let segments: Vec<&str> = path.split('/').collect();
        let principal = match segments.as_slice() {
            ["controller"] => Principal::Controller,
            ["agent", node] => Principal::Agent {
                node: (*node).to_owned(),
            },
            ["user", role, name] => Principal::User {
                role: role.parse().map_err(|e: IdentityError| e.in_uri(uri))?,
                name: (*name).to_owned(),
            },
            ["controller", ..] | ["agent", ..] | ["user", ..] => {
                return Err(invalid(Malformed::Segments {
                    kind: segments[0].to_owned(),
                }))
            }
            _ => return Err(invalid(Malformed::UnknownKind)),
        };
        principal.validate().map_err(|e| e.in_uri(uri))?;
        Ok(Identity {
            fleet: fleet.to_owned(),
            principal,
        })
    }

    /// The fleet (SPIFFE trust domain) this identity belongs to.
    pub fn fleet(&self) -> &str {
        &self.fleet
    }

    /// What the identity names inside its fleet.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The URI, as carried in the certificate's SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }

    /// True for `spiffe://<fleet>/controller`.
    pub fn is_controller(&self) -> bool {
        self.principal == Principal::Controller
    }

    /// The node name if this is an agent.
    pub fn agent_node(&self) -> Option<&str> {
        self.principal.agent_node()
    }

    /// The role if this is a user.
    pub fn user_role(&self) -> Option<Role> {
        self.principal.user_role()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.fleet, self.principal)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::parse(s)
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let uri = String::deserialize(deserializer)?;
        Identity::parse(&uri).map_err(serde::de::Error::custom)
    }
}

/// Which kind of name failed validation, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// The fleet (trust domain); may also contain dots.
    Fleet,
    /// A board's node name.
    Node,
    /// A person's user name.
    User,
}

impl NameKind {
    fn rule(self) -> &'static str {
        match self {
            NameKind::Fleet => {
                "use lowercase letters, digits, '.', '-' and '_', starting with a letter or digit (at most 63)"
            }
            NameKind::Node | NameKind::User => {
                "use lowercase letters, digits, '-' and '_', starting with a letter or digit (at most 63)"
            }
        }
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Fleet => "fleet",
            NameKind::Node => "node",
            NameKind::User => "user",
        })
    }
}

/// Checks a fleet, node or user name: `[a-z0-9][a-z0-9_-]{0,62}`, and for a
/// fleet also `.` after the first character.
pub fn validate_name(kind: NameKind, name: &str) -> Result<(), IdentityError> {
    let extra_ok = |c: u8| kind == NameKind::Fleet && c == b'.';
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes[1..].iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_' || extra_ok(c)
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidName {
            kind,
            name: name.to_owned(),
            uri: None,
        })
    }
}

/// Checks a board's node name (same rule as in `spiffe://<fleet>/agent/<node>`).
pub fn validate_node_name(node: &str) -> Result<(), IdentityError> {
    validate_name(NameKind::Node, node)
}

/// Why a URI is not a fleet identity although it is a `spiffe://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// `spiffe://<fleet>` with no principal path.
    NoPath,
    /// A known kind (`controller`, `agent`, `user`) with missing or extra segments.
    Segments {
        /// The kind named by the first path segment.
        kind: String,
    },
    /// A path naming no known kind.
    UnknownKind,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::NoPath => f.write_str("it names a fleet but no principal"),
            Malformed::Segments { kind } => f.write_str(match kind.as_str() {
                "controller" => "a controller identity has the form spiffe://<fleet>/controller",
                "agent" => "an agent identity has the form spiffe://<fleet>/agent/<node>",
                _ => "a user identity has the form spiffe://<fleet>/user/<role>/<name>",
            }),
            Malformed::UnknownKind => f.write_str(
                "expected spiffe://<fleet>/controller, spiffe://<fleet>/agent/<node> \
                 or spiffe://<fleet>/user/<role>/<name>",
            ),
        }
    }
}

fn in_uri(uri: &Option<String>) -> String {
    uri.as_ref()
        .map(|u| format!(" in \"{u}\""))
        .unwrap_or_default()
}

/// Why a URI or a certificate does not carry a valid fleet identity.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdentityError {
    /// The URI does not start with `spiffe://`.
    #[error("\"{uri}\" is not a fleet identity: it must start with \"spiffe://\"")]
    NotSpiffe {
        /// The offending URI.
        uri: String,
    },
    /// A `spiffe://` URI whose path names no principal.
    #[error("\"{uri}\" is not a fleet identity: {reason}")]
    Malformed {
        /// The offending URI.
        uri: String,
        /// What is wrong with its path.
        reason: Malformed,
    },
    /// A fleet, node or user name breaks the naming rule.
    #[error("{kind} name \"{name}\"{} is invalid: {}", in_uri(uri), kind.rule())]
    InvalidName {
        /// Which name.
        kind: NameKind,
        /// The offending name.
        name: String,
        /// The URI it came from, if any.
        uri: Option<String>,
    },
    /// A user role other than admin, operator or viewer.
    #[error(
        "role \"{role}\"{} is unknown: use admin, operator or viewer",
        in_uri(uri)
    )]
    UnknownRole {
        /// The offending role.
        role: String,
        /// The URI it came from, if any.
        uri: Option<String>,
    },
    /// The DER is not an X.509 certificate.
    #[error("cannot parse the certificate (DER X.509 expected)")]
    Certificate(#[source] X509Error),
    /// The certificate has no URI SAN.
    #[error(
        "the certificate carries no spiffe:// URI SAN, so it is not a fleet certificate; \
         issue one with \"fleetctl pki issue\""
    )]
    NoUriSan,
    /// The certificate has more than one URI SAN.
    #[error(
        "the certificate carries {} URI SANs ({}); a fleet certificate carries exactly one: \
         issue a new one with \"fleetctl pki issue\"",
        uris.len(),
        uris.join(", ")
    )]
    SeveralUriSans {
        /// All URI SANs found.
        uris: Vec<String>,
    },
}

impl IdentityError {
    fn in_uri(self, uri: &str) -> Self {
        match self {
            IdentityError::InvalidName { kind, name, .. } => IdentityError::InvalidName {
                kind,
                name,
                uri: Some(uri.to_owned()),
            },
            IdentityError::UnknownRole { role, .. } => IdentityError::UnknownRole {
                role,
                uri: Some(uri.to_owned()),
            },
            other => other,
        }
    }
}

/// Parses a DER certificate and returns the identity named by its one URI SAN.
///
/// This checks the form of the identity only: whether the certificate is
/// trusted is the job of the TLS verifiers in [`crate::tls`].
pub fn principal_from_cert_der(der: &[u8]) -> Result<Identity, IdentityError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| {
        IdentityError::Certificate(match e {
            nom::Err::Error(e) | nom::Err::Failure(e) => e,
            nom::Err::Incomplete(_) => X509Error::InvalidCertificate,
        })
    })?;
    if !rest.is_empty() {
        return Err(IdentityError::Certificate(X509Error::InvalidCertificate));
    }
    identity_of(&cert)
}

/// The identity of an already parsed certificate.
pub(crate) fn identity_of(cert: &X509Certificate<'_>) -> Result<Identity, IdentityError> {
    let san = cert
        .subject_alternative_name()
        .map_err(IdentityError::Certificate)?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(IdentityError::NoUriSan),
        [uri] => Identity::parse(uri),
        _ => Err(IdentityError::SeveralUriSans {
            uris: uris.iter().map(|u| (*u).to_owned()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_principal_and_displays_it_back() {
        for (uri, principal) in [
            ("spiffe://lab/controller", Principal::Controller),
            (
                "spiffe://lab/agent/jetson-01",
                Principal::Agent {
                    node: "jetson-01".into(),
                },
            ),
            (
                "spiffe://lab/user/admin/ada",
                Principal::User {
                    name: "ada".into(),
                    role: Role::Admin,
                },
            ),
            (
                "spiffe://lab.example/user/operator/o_1",
                Principal::User {
                    name: "o_1".into(),
                    role: Role::Operator,
                },
            ),
            (
                "spiffe://lab/user/viewer/v",
                Principal::User {
                    name: "v".into(),
                    role: Role::Viewer,
                },
            ),
        ] {
            let id: Identity = uri.parse().unwrap();
            assert_eq!(id.principal(), &principal, "{uri}");
            assert_eq!(id.to_string(), uri);
            assert_eq!(id.uri(), uri);
        }
        let id = Identity::parse("spiffe://my-lab.1/agent/j_9").unwrap();
        assert_eq!(id.fleet(), "my-lab.1");
        assert_eq!(id.agent_node(), Some("j_9"));
        assert!(!id.is_controller());
    }

    #[test]
    fn constructors_validate() {
        assert_eq!(
            Identity::agent("lab", "jetson-01").unwrap().uri(),
            "spiffe://lab/agent/jetson-01"
        );
        assert!(Identity::agent("lab", "Jetson").is_err());
        assert!(Identity::agent("lab", "a.b").is_err());
        assert!(Identity::user("lab", "", Role::Viewer).is_err());
        assert!(Identity::controller("Lab").is_err());
        assert!(Identity::controller(".lab").is_err());
    }

    fn err(uri: &str) -> IdentityError {
        Identity::parse(uri).expect_err(uri)
    }

    #[test]
    fn rejects_every_bad_form() {
        let bad = [
            "",
            "spiffe://",
            "spiffe://lab",
            "spiffe://lab/",
            "spiffe:///controller",
            "SPIFFE://lab/controller",
            "https://lab/controller",
            "spiffe:/lab/controller",
            "spiffe://lab/controller/",
            "spiffe://lab/controller/x",
            "spiffe://lab/Controller",
            "spiffe://lab/agent",
            "spiffe://lab/agent/",
            "spiffe://lab/agent/jetson-01/",
            "spiffe://lab/agent/jetson-01/extra",
            "spiffe://lab/agent/Jetson-01",
            "spiffe://lab/agent/-jetson",
            "spiffe://lab/agent/_jetson",
            "spiffe://lab/agent/jet.son",
            "spiffe://lab/agent/jet son",
            "spiffe://lab/agent/jetson%2f01",
            "spiffe://lab/agent/jetson?x=1",
            "spiffe://lab/agent/jetson#frag",
            "spiffe://lab/agent/ジェトソン",
            "spiffe://lab/user/admin",
            "spiffe://lab/user/ada",
            "spiffe://lab/user/root/ada",
            "spiffe://lab/user/Admin/ada",
            "spiffe://lab/user/admin/ada/x",
            "spiffe://lab/user/admin/",
            "spiffe://lab/user//ada",
            "spiffe://lab/node/jetson-01",
            "spiffe://lab//controller",
            "spiffe://Lab/controller",
            "spiffe://lab:443/controller",
            "spiffe://user@lab/controller",
            "spiffe://-lab/controller",
            "spiffe://.lab/controller",
            " spiffe://lab/controller",
            "spiffe://lab/controller ",
        ];
        for uri in bad {
            err(uri);
        }
        let long = "a".repeat(64);
        err(&format!("spiffe://lab/agent/{long}"));
        err(&format!("spiffe://{long}/controller"));
        let max = "a".repeat(63);
        Identity::parse(&format!("spiffe://{max}/agent/{max}")).unwrap();
    }

    #[test]
    fn messages_say_what_is_wrong_and_what_to_do() {
        assert_eq!(
            err("spiffe://lab/user/root/ada").to_string(),
            "role \"root\" in \"spiffe://lab/user/root/ada\" is unknown: use admin, operator or viewer"
        );
        assert_eq!(
            err("spiffe://lab/agent/Jetson").to_string(),
            "node name \"Jetson\" in \"spiffe://lab/agent/Jetson\" is invalid: use lowercase \
             letters, digits, '-' and '_', starting with a letter or digit (at most 63)"
        );
        assert_eq!(
            err("spiffe://lab/agent/a/b").to_string(),
            "\"spiffe://lab/agent/a/b\" is not a fleet identity: an agent identity has the form \
             spiffe://<fleet>/agent/<node>"
        );
        assert!(err("https://x/controller")
            .to_string()
            .contains("must start with \"spiffe://\""));
        assert!(err("spiffe://lab/node/x")
            .to_string()
            .contains("expected spiffe://<fleet>/controller"));
        assert!(err("spiffe://Lab/controller")
            .to_string()
            .starts_with("fleet name \"Lab\""));
        assert!(matches!(
            "root".parse::<Role>(),
            Err(IdentityError::UnknownRole { uri: None, .. })
        ));
    }

    #[test]
    fn serde_uses_the_uri() {
        #[derive(serde::Deserialize)]
        struct C {
            id: Identity,
        }
        let id = Identity::agent("lab", "j1").unwrap();
        let c: C = toml::from_str("id = \"spiffe://lab/agent/j1\"").unwrap();
        assert_eq!(c.id, id);
        assert!(toml::from_str::<C>("id = \"spiffe://lab/agent/J1\"").is_err());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            principal_from_cert_der(b"not a certificate"),
            Err(IdentityError::Certificate(_))
        ));
    }
}
