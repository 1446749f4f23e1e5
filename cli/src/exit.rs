//! Exit codes scripts can trust, and fleetctl's one error type.
//!
//! Every failure ends as `fleetctl: <message>` on stderr (a spec file's
//! problems as `FILE:LINE:COL: field: problem` lines first) and one of the
//! codes below; never a backtrace or a `Debug` dump.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | error: the request failed, a file is bad, the peer cannot be reached, or the command needs a controller or an agent |
//! | 2 | usage: bad flags or arguments (clap's own code too) |
//! | 3 | not found: no such experiment or node (gRPC `NotFound`) |
//! | 4 | refused: by policy or permission (`PermissionDenied`, `Unauthenticated`), the certificate (revoked, expired, not of the fleet), a stale epoch or a needed reboot (`FailedPrecondition`), or the board declines (`Unavailable`, e.g. too hot) |

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use fleet_proto::identity::Principal;
use fleet_proto::pki::PkiError;
use fleet_proto::spec::file::SpecFileError;
use fleet_proto::tls::{peer_alert, AlertDescription, TlsError};
use tonic::Code;

use crate::config::ConfigError;

/// The process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    Error = 1,
    Usage = 2,
    NotFound = 3,
    Refused = 4,
}

impl ExitCode {
    /// The code for a gRPC status: one exhaustive table, so a new code forces
    /// a decision here.
    pub fn of_grpc(code: Code) -> Self {
        match code {
            Code::Ok => ExitCode::Ok,
            Code::NotFound => ExitCode::NotFound,
            Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::Unavailable => ExitCode::Refused,
            Code::Cancelled
            | Code::Unknown
            | Code::InvalidArgument
            | Code::DeadlineExceeded
            | Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Internal
            | Code::DataLoss => ExitCode::Error,
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

/// One spec file that did not pass validation.
#[derive(Debug)]
pub struct BadSpecFile {
    /// The file as the user named it.
    pub path: PathBuf,
    pub error: SpecFileError,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The peer answered a call with an error status.
    #[error("{context}: {}", status_text(.status))]
    Rpc {
        /// What was being done, e.g. `stop "amnesiac-001"`.
        context: String,
        status: tonic::Status,
    },
    /// TLS material could not be loaded or the peer could not be reached.
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// One or more spec files are invalid; nothing was submitted.
    #[error("{}", spec_summary(.0))]
    Spec(Vec<BadSpecFile>),
    /// A spec file or another input file cannot be read.
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file cannot be written.
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The command needs a controller and none is configured, or it has
    /// no single-board form and an agent is.
    #[error("{}", needs_controller(.command, *.single_board, *.with_agent))]
    NeedsController {
        /// The command as typed, e.g. `ps`.
        command: String,
        /// Whether the command also works with `--agent`.
        single_board: bool,
        /// Whether an agent is what is configured.
        with_agent: bool,
    },
    /// The command works only straight against a board's agent.
    #[error("\"{command}\" works only with --agent HOST:PORT: {why}")]
    AgentOnly {
        command: String,
        /// Why the controller cannot do it, and what to do instead.
        why: &'static str,
    },
    /// A peer refused this fleetctl's certificate (revoked, expired, not
    /// of the fleet), or fleetctl saw before calling that it would.
    #[error(
        "{peer} {} the certificate {} ({identity}): {why}",
        if *.before_calling { "would refuse" } else { "refused" },
        .cert.display()
    )]
    CertificateRefused {
        /// "the controller" or "the agent".
        peer: &'static str,
        /// Seen by fleetctl before it called (an expired certificate).
        before_calling: bool,
        /// The certificate file used.
        cert: PathBuf,
        /// The identity it names, as far as it could be read.
        identity: String,
        /// Why, and what to do.
        why: String,
    },
    /// The peer knows no such thing (without a gRPC `NotFound` to say so).
    #[error("{0}")]
    NotFound(String),
    /// Arguments that clap accepted but that make no sense together or
    /// break a rule of their value.
    #[error("{0}")]
    Usage(String),
    /// A request went through but its outcome is a failure (e.g. `submit
    /// --wait` saw the experiment fail).
    #[error("{0}")]
    Failed(String),
    /// Writing to standard output failed.
    #[error("cannot write to standard output")]
    Output(#[source] io::Error),
    /// Several items of one command failed (`stop a b c`); never empty.
    #[error("{}", .0.iter().map(|e| chain(e)).collect::<Vec<_>>().join("; "))]
    Many(Vec<CliError>),
}

impl CliError {
    /// The exit code this error ends the process with.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Rpc { status, .. } => ExitCode::of_grpc(status.code()),
            CliError::Many(errors) => errors.first().map_or(ExitCode::Error, CliError::exit_code),
            CliError::Usage(_) => ExitCode::Usage,
            CliError::NotFound(_) => ExitCode::NotFound,
            CliError::CertificateRefused { .. } => ExitCode::Refused,
            CliError::Tls(_)
            | CliError::Config(_)
            | CliError::Pki(_)
            | CliError::Spec(_)
            | CliError::Read { .. }
            | CliError::Write { .. }
            | CliError::NeedsController { .. }
            | CliError::AgentOnly { .. }
            | CliError::Failed(_)
            | CliError::Output(_) => ExitCode::Error,
        }
    }

    /// Whether this is standard output closed under us (`fleetctl logs x |
    /// head`): not worth a message, and not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }

    /// What is printed on stderr: spec problems one per line
    /// (`FILE:LINE:COL: field: problem`), then `fleetctl: <message>` with
    /// the causes of the error on the same line.
    pub fn report(&self) -> String {
        if let CliError::Many(errors) = self {
            return errors
                .iter()
                .map(CliError::report)
                .collect::<Vec<_>>()
                .join("\n");
        }
        let mut out = String::new();
        if let CliError::Spec(files) = self {
            for file in files {
                for problem in file.error.problems() {
                    out.push_str(&format!("{}:{problem}\n", file.path.display()));
                }
            }
        }
        out.push_str("fleetctl: ");
        out.push_str(&chain(self));
        out
    }

    /// One error for the failures of several items, `Ok` when none failed.
    pub fn from_many(mut errors: Vec<CliError>) -> Result<(), CliError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(CliError::Many(errors)),
        }
    }

    /// This error, told as a refusal of fleetctl's own certificate when
    /// that is what it is: the peer ended the connection with a TLS alert
    /// about the certificate (a revoked one is refused only once the
    /// handshake is over, so the call fails with a bare "transport
    /// error"), or answered `UNAUTHENTICATED`.
    ///
    /// `probed` is the alert a fresh connection got (see
    /// [`fleet_proto::tls::ClientTls::refusal`]), for a call that failed
    /// at the transport: hyper often drops the alert and reports only a
    /// closed connection.
    pub fn into_certificate_refusal(
        self,
        peer: &'static str,
        cert: &Path,
        identity: &str,
        probed: Option<AlertDescription>,
    ) -> Self {
        let refused = |why: String| CliError::CertificateRefused {
            peer,
            before_calling: false,
            cert: cert.to_owned(),
            identity: identity.to_owned(),
            why,
        };
        match self {
            CliError::Many(errors) => CliError::Many(
                errors
                    .into_iter()
                    .map(|e| e.into_certificate_refusal(peer, cert, identity, probed))
                    .collect(),
            ),
            CliError::Rpc { status, context } => {
                let transport = is_transport(&status);
                let alert = peer_alert(&status).or(probed.filter(|_| transport));
                if let Some(why) = alert.and_then(|a| alert_reason(a, identity)) {
                    refused(why)
                } else if status.code() == Code::Unauthenticated {
                    refused(status_text(&status))
                } else {
                    CliError::Rpc { status, context }
                }
            }
            CliError::Tls(e) => match peer_alert(&e)
                .or(probed)
                .and_then(|a| alert_reason(a, identity))
            {
                Some(why) => refused(why),
                None => CliError::Tls(e),
            },
            other => other,
        }
    }

    /// Whether the call failed at the connection rather than with an
    /// answer, as a certificate the peer refused makes it fail.
    pub fn is_transport_failure(&self) -> bool {
        match self {
            CliError::Rpc { status, .. } => is_transport(status),
            CliError::Tls(
                TlsError::Connect { .. } | TlsError::Handshake { .. } | TlsError::Dial { .. },
            ) => true,
            CliError::Many(errors) => errors.iter().any(CliError::is_transport_failure),
            _ => false,
        }
    }

    /// Refuses to call with a certificate outside its validity, which
    /// every peer would refuse (and say less clearly why).
    pub fn check_validity(
        peer: &'static str,
        cert: &Path,
        tls: &fleet_proto::tls::ClientTls,
    ) -> Result<(), CliError> {
        let (not_before, not_after) = tls.validity();
        let now = crate::time::now_us() / 1_000_000;
        let at = |secs: i64| crate::time::rfc3339_utc(secs.saturating_mul(1_000_000));
        let identity = tls.identity().to_string();
        let why = if now > not_after {
            format!(
                "it expired at {}; ask an admin for a new one ({})",
                at(not_after),
                reissue(&identity)
            )
        } else if now < not_before {
            format!(
                "it is not valid before {}; check this machine's clock",
                at(not_before)
            )
        } else {
            return Ok(());
        };
        Err(CliError::CertificateRefused {
            peer,
            before_calling: true,
            cert: cert.to_owned(),
            identity,
            why,
        })
    }

    /// An error status of a call, with what the call was for.
    pub fn rpc(context: impl Into<String>, status: tonic::Status) -> Self {
        CliError::Rpc {
            context: context.into(),
            status,
        }
    }
}

/// An error and its causes on one line, each cause once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !more.is_empty() && !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = inner.source();
    }
    text
}

/// Whether a status is tonic's report of a broken connection, not an
/// answer of the peer.
fn is_transport(status: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.is::<tonic::transport::Error>() || e.is::<io::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// What a TLS alert about our certificate means, and what to do; `None`
/// for alerts about something else.
fn alert_reason(alert: AlertDescription, identity: &str) -> Option<String> {
    let text = match alert {
        AlertDescription::CertificateRevoked => format!(
            "it is revoked (on the fleet's CRL); ask an admin for a new certificate ({})",
            reissue(identity)
        ),
        AlertDescription::CertificateExpired => format!(
            "it has expired, or is not valid yet (check this machine's clock); \
             ask an admin for a new certificate ({})",
            reissue(identity)
        ),
        AlertDescription::UnknownCA
        | AlertDescription::BadCertificate
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::AccessDenied
        | AlertDescription::CertificateRequired => {
            return Some(format!(
                "it is not accepted (TLS alert {alert:?}): it is not from this fleet's CA or \
                 names no valid fleet identity; check --cert, FLEET_CERT or the context's cert"
            ))
        }
        _ => return None,
    };
    Some(text)
}

/// The command that issues a new certificate for `identity`.
fn reissue(identity: &str) -> String {
    match fleet_proto::identity::Identity::parse(identity).map(|i| i.principal().clone()) {
        Ok(Principal::User { name, role }) => format!("fleetctl pki issue user {role} {name}"),
        Ok(Principal::Agent { node }) => format!("fleetctl pki issue agent {node}"),
        Ok(Principal::Controller) => "fleetctl pki issue controller".to_owned(),
        Err(_) => "fleetctl pki issue".to_owned(),
    }
}

/// A status's message, or the meaning of its code when it has none.
fn status_text(status: &tonic::Status) -> String {
    let message = status.message().trim();
    if message.is_empty() {
        status.code().description().to_owned()
    } else {
        message.to_owned()
    }
}

fn spec_summary(files: &[BadSpecFile]) -> String {
    let problems: usize = files.iter().map(|f| f.error.problems().len()).sum();
    let names: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
    format!(
        "{} in {}; nothing was submitted",
        plural(problems, "problem"),
        names.join(", ")
    )
}

fn needs_controller(command: &str, single_board: bool, with_agent: bool) -> String {
    if with_agent {
        return format!(
            "\"{command}\" needs a controller; it has no single-board form with --agent"
        );
    }
    let mut text = format!(
        "\"{command}\" needs a controller: name one with --controller HOST:PORT, \
         FLEET_CONTROLLER or `controller` in a context of the config file"
    );
    if single_board {
        text.push_str("; or use --agent HOST:PORT for a single board");
    }
    text
}

/// `1 problem`, `2 problems`.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", *self as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::spec::file::spec_from_toml;

    #[test]
    fn a_refused_certificate_is_named_with_exit_4() {
        let cert = Path::new("/home/bob/.fleet/bob.pem");
        let id = "spiffe://lab/user/operator/bob";
        // The alert reached fleetctl only through its own probe.
        let broken = tonic::Status::from_error(Box::new(io::Error::other("connection closed")));
        let e = CliError::rpc("list nodes", broken).into_certificate_refusal(
            "the controller",
            cert,
            id,
            Some(AlertDescription::CertificateRevoked),
        );
        assert_eq!(e.exit_code(), ExitCode::Refused);
        assert_eq!(
            e.report(),
            "fleetctl: the controller refused the certificate /home/bob/.fleet/bob.pem \
             (spiffe://lab/user/operator/bob): it is revoked (on the fleet's CRL); ask an admin \
             for a new certificate (fleetctl pki issue user operator bob)"
        );
        // The daemons' per-call check answers UNAUTHENTICATED.
        let e = CliError::rpc(
            "cordon",
            tonic::Status::unauthenticated("the certificate of x is revoked"),
        )
        .into_certificate_refusal("the agent", cert, id, None);
        assert!(
            matches!(&e, CliError::CertificateRefused { why, .. } if why.contains("is revoked")),
            "{e:?}"
        );
        // An answer of the peer is not a transport failure: a probe's
        // alert does not rename it.
        let e = CliError::rpc("get", tonic::Status::not_found("no such experiment"))
            .into_certificate_refusal(
                "the agent",
                cert,
                id,
                Some(AlertDescription::CertificateRevoked),
            );
        assert_eq!(e.exit_code(), ExitCode::NotFound);
        // An alert about something else is not about the certificate.
        let broken = tonic::Status::from_error(Box::new(io::Error::other("connection closed")));
        let e = CliError::rpc("get", broken).into_certificate_refusal(
            "the agent",
            cert,
            id,
            Some(AlertDescription::HandshakeFailure),
        );
        assert_eq!(e.exit_code(), ExitCode::Error);
    }

    #[test]
    fn grpc_codes_map_to_documented_exit_codes() {
        let cases = [
            (Code::NotFound, 3),
            (Code::PermissionDenied, 4),
            (Code::Unauthenticated, 4),
            (Code::FailedPrecondition, 4),
            (Code::Unavailable, 4),
            (Code::InvalidArgument, 1),
            (Code::Internal, 1),
            (Code::Unimplemented, 1),
            (Code::DeadlineExceeded, 1),
        ];
        for (code, exit) in cases {
            let e = CliError::rpc("stop \"x\"", tonic::Status::new(code, "m"));
            assert_eq!(e.exit_code() as u8, exit, "{code:?}");
        }
    }

    #[test]
    fn rpc_errors_show_the_server_message_not_debug() {
        let e = CliError::rpc(
            "stop \"amnesiac-001\"",
            tonic::Status::not_found("experiment amnesiac-001 is not known to this board"),
        );
        assert_eq!(
            e.report(),
            "fleetctl: stop \"amnesiac-001\": experiment amnesiac-001 is not known to this board"
        );
        let empty = CliError::rpc("get node", tonic::Status::permission_denied(""));
        assert!(empty.report().starts_with("fleetctl: get node: "));
        assert!(!empty.report().contains("Status {"));
    }

    #[test]
    fn local_errors_have_their_own_codes() {
        assert_eq!(CliError::Usage("u".into()).exit_code(), ExitCode::Usage);
        let needs = CliError::NeedsController {
            command: "ps".into(),
            single_board: true,
            with_agent: false,
        };
        assert_eq!(needs.exit_code(), ExitCode::Error);
        assert_eq!(
            needs.report(),
            "fleetctl: \"ps\" needs a controller: name one with --controller HOST:PORT, \
             FLEET_CONTROLLER or `controller` in a context of the config file; or use \
             --agent HOST:PORT for a single board"
        );
        let events = CliError::NeedsController {
            command: "events".into(),
            single_board: false,
            with_agent: true,
        };
        assert_eq!(
            events.report(),
            "fleetctl: \"events\" needs a controller; it has no single-board form with --agent"
        );
        let clocks = CliError::AgentOnly {
            command: "clocks".into(),
            why: "no controller call switches jetson_clocks",
        };
        assert_eq!(clocks.exit_code(), ExitCode::Error);
        assert!(clocks.report().contains("only with --agent"));
        assert_eq!(
            CliError::NotFound("no node x".into()).exit_code(),
            ExitCode::NotFound
        );
        let pipe = CliError::Output(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(pipe.is_broken_pipe());
    }

    #[test]
    fn several_failures_report_each_and_exit_with_the_first() {
        let many = CliError::from_many(vec![
            CliError::rpc("stop \"a\"", tonic::Status::not_found("no a")),
            CliError::rpc("stop \"b\"", tonic::Status::permission_denied("viewer")),
        ])
        .unwrap_err();
        assert_eq!(many.exit_code(), ExitCode::NotFound);
        assert_eq!(
            many.report(),
            "fleetctl: stop \"a\": no a\nfleetctl: stop \"b\": viewer"
        );
        assert!(CliError::from_many(Vec::new()).is_ok());
    }

    #[test]
    fn spec_errors_list_file_line_column_field_problem() {
        let text = "command = [\"/bin/true\"]\n[resources]\nmemory_max = \"8GB\"\n";
        let error = spec_from_toml(text, |_| Ok(Vec::new())).unwrap_err();
        let e = CliError::Spec(vec![BadSpecFile {
            path: "exp.toml".into(),
            error,
        }]);
        let report = e.report();
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(lines.len(), 2, "{report}");
        assert!(
            lines[0]
                .starts_with("exp.toml:3:14: resources.memory_max: memory size \"8GB\" is invalid"),
            "{report}"
        );
        assert_eq!(
            lines[1],
            "fleetctl: 1 problem in exp.toml; nothing was submitted"
        );
        assert_eq!(e.exit_code(), ExitCode::Error);
    }

    #[test]
    fn causes_are_joined_once() {
        let inner = io::Error::new(io::ErrorKind::NotFound, "No such file or directory");
        let e = CliError::Read {
            path: "exp.toml".into(),
            source: inner,
        };
        assert_eq!(
            e.report(),
            "fleetctl: cannot read exp.toml: No such file or directory"
        );
    }
}
