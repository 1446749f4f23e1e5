//! `fleetctl pki init|issue|revoke`: the fleet CA on this workstation.
//!
//! One directory holds the CA (`ca.pem`, `ca.key`), the CRL (`crl.pem`)
//! and the certificates issued from it: `controller.pem`,
//! `agent-<node>.pem`, `user-<name>.pem`, each with its `.key`. Keys are
//! written with mode 0600 from their first byte; the directory, when
//! created here, is 0700. The CA key never leaves this directory: boards
//! only get `ca.pem`, their own certificate and key, and the CRL.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_proto::identity::{Principal, Role};
use fleet_proto::pki::{write_public_file, Ca, ExtraSan, Serial};
use serde::Serialize;

use crate::args::{IssueKind, PkiInitArgs, PkiIssueArgs, PkiRevokeArgs};
use crate::exit::{plural, CliError};
use crate::output::Out;
use crate::time::{rfc3339_utc, system_time_us};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const CRL: &str = "crl.pem";

/// Where a board keeps its TLS files, as `deploy/agent.toml` says.
const BOARD_DIR: &str = "/etc/fleet";

/// `pki init`.
#[derive(Debug, Serialize)]
pub struct InitView {
    pub fleet: String,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub not_after: String,
}

/// `pki issue`.
#[derive(Debug, Serialize)]
pub struct IssueView {
    /// The certificate's one URI SAN, `spiffe://<fleet>/...`.
    pub identity: String,
    pub serial: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_cert: PathBuf,
    pub sans: Vec<String>,
    pub not_after: String,
}

/// `pki revoke`.
#[derive(Debug, Serialize)]
pub struct RevokeView {
    pub crl: PathBuf,
    /// Serials this call added.
    pub revoked: Vec<String>,
    /// Serials asked for that the CRL already listed.
    pub already_revoked: Vec<String>,
    /// Every serial the CRL lists now.
    pub total: usize,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// Creates `dir` (0700) if needed.
fn make_dir(dir: &Path) -> Result<(), CliError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CliError::Write {
            path: dir.to_owned(),
            source,
        })
}

fn load_ca(dir: &Path) -> Result<Ca, CliError> {
    Ok(Ca::load_files(&dir.join(CA_CERT), &dir.join(CA_KEY))?)
}

pub fn init(args: &PkiInitArgs, out: &mut Out) -> Result<(), CliError> {
    let dir = absolute(&args.dir);
    let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if !args.force {
        if let Some(existing) = [&cert, &key].into_iter().find(|p| p.exists()) {
            return Err(CliError::Failed(format!(
                "{} already exists: this directory holds a fleet CA; pass --force to replace it \
                 (every certificate it issued stops working)",
                existing.display()
            )));
        }
    }
    let ca = Ca::init(&args.fleet)?;
    make_dir(&dir)?;
    ca.write(&cert, &key)?;
    let view = InitView {
        fleet: ca.fleet().to_owned(),
        ca_cert: cert.clone(),
        ca_key: key.clone(),
        not_after: rfc3339_utc(system_time_us(ca.not_after())),
    };
    if out.is_json() {
        return out.json(&view);
    }
    let d = args.dir.display();
    out.line(&format!(
        "created the CA of fleet \"{}\", valid until {}",
        view.fleet, view.not_after
    ))?;
    out.line(&format!(
        "  certificate  {}  (every board, the controller and every user trust it)",
        cert.display()
    ))?;
    out.line(&format!(
        "  key          {}  (mode 0600: the key to the whole fleet, keep it off the boards)",
        key.display()
    ))?;
    out.line("next: issue certificates from it")?;
    out.line(&format!(
        "  fleetctl pki issue controller --dir {d} --san <controller host>"
    ))?;
    out.line(&format!(
        "  fleetctl pki issue agent <node> --dir {d} --san <board host or address>"
    ))?;
    out.line(&format!(
        "  fleetctl pki issue user <name> --role admin --dir {d}"
    ))
}

/// The principal named by `pki issue`'s arguments.
pub fn principal(
    kind: IssueKind,
    name: Option<&str>,
    role: Option<&str>,
) -> Result<Principal, CliError> {
    let usage = |m: &str| Err(CliError::Usage(m.to_owned()));
    match (kind, name, role) {
        (IssueKind::Controller, None, None) => Ok(Principal::Controller),
        (IssueKind::Controller, Some(_), _) => {
            usage("a controller certificate takes no name: `pki issue controller --dir DIR`")
        }
        (IssueKind::Agent, Some(node), None) => Ok(Principal::Agent {
            node: node.to_owned(),
        }),
        (IssueKind::Agent, None, _) => usage("name the board: `pki issue agent NODE --dir DIR`"),
        (IssueKind::Controller | IssueKind::Agent, _, Some(_)) => {
            usage("--role is for user certificates only")
        }
        (IssueKind::User, None, _) => {
            usage("name the user: `pki issue user NAME --role admin|operator|viewer --dir DIR`")
        }
        (IssueKind::User, Some(_), None) => {
            usage("a user certificate needs a role: --role admin, operator or viewer")
        }
        (IssueKind::User, Some(name), Some(role)) => {
            let role: Role = role.parse().map_err(|_| {
                CliError::Usage(format!(
                    "role \"{role}\" is invalid: use admin, operator or viewer"
                ))
            })?;
            Ok(Principal::User {
                name: name.to_owned(),
                role,
            })
        }
    }
}

/// File stem of a principal's certificate and key in the CA directory.
pub fn file_stem(p: &Principal) -> String {
    match p {
        Principal::Controller => "controller".to_owned(),
        Principal::Agent { node } => format!("agent-{node}"),
        Principal::User { name, .. } => format!("user-{name}"),
    }
}

pub fn issue(args: &PkiIssueArgs, out: &mut Out) -> Result<(), CliError> {
    let principal = principal(args.kind, args.name.as_deref(), args.role.as_deref())?;
    let sans = args
        .san
        .iter()
        .map(|s| s.parse::<ExtraSan>())
        .collect::<Result<Vec<_>, _>>()?;
    if args.days == 0 {
        return Err(CliError::Usage("--days must be at least 1".to_owned()));
    }
    let dir = absolute(&args.dir);
    let ca = load_ca(&dir)?;
    let stem = file_stem(&principal);
    let (cert, key) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    if !args.force {
        if let Some(existing) = [&cert, &key].into_iter().find(|p| p.exists()) {
            return Err(CliError::Failed(format!(
                "{} already exists; pass --force to replace it, or revoke the old \
                 certificate first with `fleetctl pki revoke --dir {} --cert {}`",
                existing.display(),
                args.dir.display(),
                cert.display()
            )));
        }
    }
    let validity = Duration::from_secs(u64::from(args.days) * 86_400);
    let issued = ca.issue(&principal, validity, &sans)?;
    issued.write(&cert, &key)?;
    let view = IssueView {
        identity: issued.identity.to_string(),
        serial: issued.serial.to_string(),
        cert: cert.clone(),
        key: key.clone(),
        ca_cert: dir.join(CA_CERT),
        sans: sans.iter().map(ToString::to_string).collect(),
        not_after: rfc3339_utc(system_time_us(issued.not_after)),
    };
    if out.is_json() {
        return out.json(&view);
    }
    out.line(&format!("issued {}", view.identity))?;
    out.line(&format!("  serial       {}", view.serial))?;
    out.line(&format!("  valid until  {}", view.not_after))?;
    if !view.sans.is_empty() {
        out.line(&format!("  also for     {}", view.sans.join(", ")))?;
    }
    out.line(&format!("  certificate  {}", cert.display()))?;
    out.line(&format!("  key          {}  (mode 0600)", key.display()))?;
    for line in next_steps(&principal, &view) {
        out.line(&line)?;
    }
    Ok(())
}

/// What to do with a new certificate.
fn next_steps(p: &Principal, v: &IssueView) -> Vec<String> {
    let (ca, cert, key) = (v.ca_cert.display(), v.cert.display(), v.key.display());
    match p {
        Principal::Agent { node } => vec![
            format!("next: copy to the board {node} (as root):"),
            format!("  {ca} -> {BOARD_DIR}/ca.pem"),
            format!("  {cert} -> {BOARD_DIR}/agent.pem"),
            format!("  {key} -> {BOARD_DIR}/agent.key  (mode 0600)"),
            "and set in the board's agent.toml:".to_owned(),
            format!("  node = \"{node}\""),
            "  [tls]".to_owned(),
            format!("  ca = \"{BOARD_DIR}/ca.pem\""),
            format!("  cert = \"{BOARD_DIR}/agent.pem\""),
            format!("  key = \"{BOARD_DIR}/agent.key\""),
            format!("  # crl = \"{BOARD_DIR}/crl.pem\"  (once `fleetctl pki revoke` made one)"),
        ],
        Principal::Controller => vec![
            "next: copy to the controller's server (as root):".to_owned(),
            format!("  {ca} -> {BOARD_DIR}/ca.pem"),
            format!("  {cert} -> {BOARD_DIR}/controller.pem"),
            format!("  {key} -> {BOARD_DIR}/controller.key  (mode 0600)"),
            "and point the controller's TLS settings (ca, cert, key) at them".to_owned(),
        ],
        Principal::User { name, .. } => vec![
            format!("next: add a context for {name} to fleetctl.toml (`fleetctl config` shows where it is):"),
            "  [contexts.<name>]".to_owned(),
            "  controller = \"<controller host>:<port>\"   # or agent = \"<board>:7443\"".to_owned(),
            format!("  ca = \"{ca}\""),
            format!("  cert = \"{cert}\""),
            format!("  key = \"{key}\""),
        ],
    }
}

/// `revoke` takes serials, the certificate given with the global `--cert`,
/// or both.
pub fn revoke(
    args: &PkiRevokeArgs,
    cert_file: Option<&Path>,
    out: &mut Out,
) -> Result<(), CliError> {
    let mut asked = args
        .serials
        .iter()
        .map(|s| s.parse::<Serial>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(file) = cert_file {
        let pem = std::fs::read_to_string(file).map_err(|source| CliError::Read {
            path: file.to_owned(),
            source,
        })?;
        asked.push(Serial::of_cert_pem(&pem)?);
    }
    if asked.is_empty() {
        return Err(CliError::Usage(
            "name what to revoke: serial numbers, or --cert FILE".to_owned(),
        ));
    }
    let dir = absolute(&args.dir);
    let ca = load_ca(&dir)?;
    let crl_path = dir.join(CRL);
    let mut listed = match std::fs::read_to_string(&crl_path) {
        Ok(text) => ca.revoked_in(&text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(CliError::Read {
                path: crl_path,
                source,
            })
        }
    };
    let mut revoked = Vec::new();
    let mut already = Vec::new();
    for serial in asked {
        if revoked.contains(&serial) || already.contains(&serial) {
            continue;
        }
        if listed.contains(&serial) {
            already.push(serial);
        } else {
            revoked.push(serial);
        }
    }
    listed.extend(revoked.iter().cloned());
    let crl = ca.revoke(&listed)?;
    write_public_file(&crl_path, &crl)?;
    let view = RevokeView {
        crl: crl_path.clone(),
        revoked: revoked.iter().map(ToString::to_string).collect(),
        already_revoked: already.iter().map(ToString::to_string).collect(),
        total: listed.len(),
    };
    if out.is_json() {
        return out.json(&view);
    }
    for s in &view.revoked {
        out.line(&format!("revoked {s}"))?;
    }
    for s in &view.already_revoked {
        out.line(&format!("{s} was already revoked"))?;
    }
    out.line(&format!(
        "{} now lists {}",
        crl_path.display(),
        plural(view.total, "revoked certificate")
    ))?;
    out.line(&format!(
        "next: copy it to every board and the controller as {BOARD_DIR}/crl.pem, set \
         `crl = \"{BOARD_DIR}/crl.pem\"` under [tls] in their config, and send them SIGHUP \
         (`systemctl kill -s HUP fleet-agent`); the next handshake refuses the certificates"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_from_arguments() {
        assert_eq!(
            principal(IssueKind::Controller, None, None).unwrap(),
            Principal::Controller
        );
        assert_eq!(
            principal(IssueKind::Agent, Some("jetson-01"), None).unwrap(),
            Principal::Agent {
                node: "jetson-01".into()
            }
        );
        assert_eq!(
            principal(IssueKind::User, Some("ada"), Some("operator")).unwrap(),
            Principal::User {
                name: "ada".into(),
                role: Role::Operator
            }
        );
        for (kind, name, role) in [
            (IssueKind::Controller, Some("x"), None),
            (IssueKind::Agent, None, None),
            (IssueKind::Agent, Some("j"), Some("admin")),
            (IssueKind::User, Some("ada"), None),
            (IssueKind::User, Some("ada"), Some("root")),
            (IssueKind::User, None, Some("admin")),
        ] {
            let err = principal(kind, name, role).unwrap_err();
            assert!(
                matches!(err, CliError::Usage(_)),
                "{kind:?} {name:?} {role:?}"
            );
        }
    }

    #[test]
    fn file_stems_name_the_principal() {
        assert_eq!(file_stem(&Principal::Controller), "controller");
        assert_eq!(
            file_stem(&Principal::Agent {
                node: "jetson-01".into()
            }),
            "agent-jetson-01"
        );
        assert_eq!(
            file_stem(&Principal::User {
                name: "ada".into(),
                role: Role::Admin
            }),
            "user-ada"
        );
    }
}
