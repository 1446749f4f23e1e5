//! The daemons' role tables against the one in `docs/security.md`: every
//! RPC of both services has a row there, and each cell a principal can be
//! given in-process (the roles, an agent, the controller) says what the
//! daemon's table decides. The TLS cells are the handshake's, which
//! `authz_table_e2e` checks against real servers.

use fleet_proto::identity::{Principal, Role};
use fleet_testbed::authz_table::{self, Caller, Verdict};

/// The principal a caller's certificate names, for the callers that get
/// past the handshake.
fn principal(caller: Caller) -> Option<Principal> {
    let user = |role| Principal::User {
        name: "someone".into(),
        role,
    };
    match caller {
        Caller::Viewer => Some(user(Role::Viewer)),
        Caller::Operator => Some(user(Role::Operator)),
        Caller::Admin => Some(user(Role::Admin)),
        Caller::OtherAgent => Some(Principal::Agent {
            node: "elsewhere".into(),
        }),
        Caller::Controller => Some(Principal::Controller),
        Caller::NoCertificate | Caller::OtherCa | Caller::RevokedUser => None,
    }
}

fn check(service: &str, allowed: impl Fn(&Principal, &str) -> bool) {
    let table = authz_table::load(service).unwrap();
    let mut wrong = Vec::new();
    for (rpc, row) in &table {
        let path = format!("/fleet.v1.{service}/{rpc}");
        for (caller, want) in row {
            let got = match principal(*caller) {
                Some(p) if allowed(&p, &path) => Verdict::Allowed,
                Some(_) => Verdict::Denied,
                None => Verdict::Handshake,
            };
            if got != *want {
                wrong.push(format!(
                    "{service}/{rpc} as {}: the document says {want:?}, the daemon's table {got:?}",
                    caller.heading()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_agents_table_is_the_documents() {
    check("Agent", fleet_agent::grpc::authz::allowed);
}

#[test]
fn the_controllers_table_is_the_documents() {
    check("Controller", fleet_controller::authz::allowed);
}
