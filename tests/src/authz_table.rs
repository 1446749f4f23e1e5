//! The role × RPC tables of `docs/security.md`: who may call each RPC of
//! `fleet.v1.Agent` and `fleet.v1.Controller`. The tests hold the daemons'
//! own tables and the running servers to them.
//!
//! Each table follows a line `<!-- authz-table fleet.v1.<Service> -->`;
//! its first column names the RPC, the others are [`Caller`]s, and a cell
//! is a [`Verdict`].

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Every kind of caller the tables have a column for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Caller {
    /// A TLS client without a certificate.
    NoCertificate,
    /// A certificate from a CA other than the fleet's.
    OtherCa,
    Viewer,
    Operator,
    Admin,
    /// The agent of another node than the one called (on the controller:
    /// an agent).
    OtherAgent,
    Controller,
    /// A user whose certificate the loaded CRL revokes.
    RevokedUser,
}

impl Caller {
    pub const ALL: [Caller; 8] = [
        Caller::NoCertificate,
        Caller::OtherCa,
        Caller::Viewer,
        Caller::Operator,
        Caller::Admin,
        Caller::OtherAgent,
        Caller::Controller,
        Caller::RevokedUser,
    ];

    /// The column heading in the document.
    pub fn heading(self) -> &'static str {
        match self {
            Caller::NoCertificate => "no certificate",
            Caller::OtherCa => "other CA",
            Caller::Viewer => "viewer",
            Caller::Operator => "operator",
            Caller::Admin => "admin",
            Caller::OtherAgent => "another node's agent",
            Caller::Controller => "controller",
            Caller::RevokedUser => "revoked user",
        }
    }
}

/// What a caller gets from one RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Passes authorization; the handler may still refuse the request.
    Allowed,
    /// `PERMISSION_DENIED` before any handler.
    Denied,
    /// The TLS handshake fails: no RPC is made.
    Handshake,
}

impl Verdict {
    fn parse(cell: &str) -> Option<Self> {
        match cell {
            "✓" => Some(Verdict::Allowed),
            "denied" => Some(Verdict::Denied),
            "TLS" => Some(Verdict::Handshake),
            _ => None,
        }
    }
}

/// One service's table: RPC name → caller → verdict.
pub type Table = BTreeMap<String, BTreeMap<Caller, Verdict>>;

/// `docs/security.md` in this repository.
pub fn security_doc() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/security.md")
}

/// Reads the table of `service` (`"Agent"` or `"Controller"`) from the
/// security document's text.
pub fn parse(text: &str, service: &str) -> anyhow::Result<Table> {
    let marker = format!("<!-- authz-table fleet.v1.{service} -->");
    let mut lines = text
        .lines()
        .skip_while(|l| l.trim() != marker)
        .skip(1)
        .map(str::trim)
        .skip_while(|l| l.is_empty());
    let cells = |line: &str| -> Vec<String> {
        line.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let header = lines
        .next()
        .ok_or_else(|| anyhow::anyhow!("no line {marker:?} followed by a table"))?;
    let header = cells(header);
    anyhow::ensure!(
        header.first().map(String::as_str) == Some("RPC"),
        "{header:?}"
    );
    let callers: Vec<Caller> = header[1..]
        .iter()
        .map(|h| {
            Caller::ALL
                .into_iter()
                .find(|c| c.heading() == h)
                .ok_or_else(|| anyhow::anyhow!("unknown column {h:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut sorted = callers.clone();
    sorted.sort();
    anyhow::ensure!(
        sorted == Caller::ALL,
        "the columns of {service} are {callers:?}, not one of each caller"
    );
    anyhow::ensure!(
        lines.next().is_some_and(|l| l.starts_with("|---")),
        "no separator line under the header of {service}"
    );
    let mut table = Table::new();
    for line in lines.take_while(|l| l.starts_with('|')) {
        let row = cells(line);
        anyhow::ensure!(row.len() == callers.len() + 1, "row {line:?}");
        let rpc = row[0].trim_matches('`').to_owned();
        let verdicts = callers
            .iter()
            .zip(&row[1..])
            .map(|(c, cell)| {
                Verdict::parse(cell)
                    .map(|v| (*c, v))
                    .ok_or_else(|| anyhow::anyhow!("{rpc}: cell {cell:?} is not ✓, denied or TLS"))
            })
            .collect::<anyhow::Result<_>>()?;
        anyhow::ensure!(
            table.insert(rpc.clone(), verdicts).is_none(),
            "{rpc} has two rows in {service}"
        );
    }
    anyhow::ensure!(!table.is_empty(), "the table of {service} has no row");
    Ok(table)
}

/// The table of `service` from `docs/security.md`, checked to have exactly
/// one row for each RPC of the generated service.
pub fn load(service: &str) -> anyhow::Result<Table> {
    let path = security_doc();
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let table = parse(&text, service)?;
    let mut rpcs = fleet_proto::v1::service_methods(service);
    rpcs.sort();
    let rows: Vec<String> = table.keys().cloned().collect();
    anyhow::ensure!(
        rows == rpcs,
        "docs/security.md's table of fleet.v1.{service} has rows {rows:?}, the service has \
         RPCs {rpcs:?}: give every RPC a row, and only those"
    );
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_read_and_checked() {
        let text = "x\n<!-- authz-table fleet.v1.Agent -->\n\n\
            | RPC | no certificate | other CA | viewer | operator | admin | another node's agent | controller | revoked user |\n\
            |---|---|---|---|---|---|---|---|---|\n\
            | `GetNode` | TLS | TLS | ✓ | ✓ | ✓ | denied | ✓ | TLS |\n\nafter\n";
        let table = parse(text, "Agent").unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table["GetNode"][&Caller::Viewer], Verdict::Allowed);
        assert_eq!(table["GetNode"][&Caller::OtherAgent], Verdict::Denied);
        assert_eq!(table["GetNode"][&Caller::RevokedUser], Verdict::Handshake);
        assert!(parse(text, "Controller").is_err());
        assert!(parse(&text.replace("| denied |", "| maybe |"), "Agent").is_err());
        assert!(parse(&text.replace("viewer", "guest"), "Agent").is_err());
        let twice = text.replace(
            "\n\nafter",
            "\n| `GetNode` | TLS | TLS | ✓ | ✓ | ✓ | denied | ✓ | TLS |\n",
        );
        assert!(parse(&twice, "Agent").is_err());
    }

    #[test]
    fn the_document_has_a_row_for_every_rpc() {
        for service in ["Agent", "Controller"] {
            load(service).unwrap();
        }
    }
}
