//! Who may call what on the agent: default deny, one table.
//!
//! The controller and `admin` users may do everything; `operator` users
//! run experiments (everything but removal and the board's hardware: power
//! mode and jetson_clocks, which are admin-only as on the controller);
//! `viewer` users only read. Agents (other boards) may call nothing. A
//! method missing from the table is refused for all.

use fleet_proto::identity::{Principal, Role};

/// What a method does, for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Viewer and up.
    Read,
    /// Operator and up: runs experiments.
    Write,
    /// Admin only: removes an experiment and its record.
    Remove,
    /// Admin only: the board's power mode (which may reboot it) and clocks.
    Hardware,
}

impl Access {
    /// Whether a call changes something, so the agent logs who made it.
    pub fn changes_state(self) -> bool {
        !matches!(self, Access::Read)
    }
}

/// The agent's methods (`/fleet.v1.Agent/<name>`) and what each does.
pub const AGENT_METHODS: &[(&str, Access)] = &[
    ("StartExperiment", Access::Write),
    ("StopExperiment", Access::Write),
    ("RestartExperiment", Access::Write),
    ("RemoveExperiment", Access::Remove),
    ("SetAutostart", Access::Write),
    ("GetExperiment", Access::Read),
    ("ListExperiments", Access::Read),
    ("StreamLogs", Access::Read),
    ("WatchExperiments", Access::Read),
    ("StartAll", Access::Write),
    ("StopAll", Access::Write),
    ("GetNode", Access::Read),
    ("SetPowerMode", Access::Hardware),
    ("SetClocks", Access::Hardware),
    ("WatchNode", Access::Read),
];

/// Services every authenticated fleet member may use: health and reflection.
const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

pub fn access_of(path: &str) -> Option<Access> {
    let method = path.strip_prefix("/fleet.v1.Agent/")?;
    AGENT_METHODS
        .iter()
        .find(|(m, _)| *m == method)
        .map(|(_, a)| *a)
}

/// The table as the shared authorization layer asks it
/// ([`fleet_proto::authz`]).
pub fn verdict(principal: &Principal, path: &str) -> fleet_proto::authz::Verdict {
    if allowed(principal, path) {
        fleet_proto::authz::Verdict::Allowed {
            changes_state: access_of(path).is_some_and(Access::changes_state),
        }
    } else {
        fleet_proto::authz::Verdict::Denied
    }
}

/// Decides one call. `path` is the HTTP/2 path, `/package.Service/Method`.
pub fn allowed(principal: &Principal, path: &str) -> bool {
    if OPEN_SERVICES.iter().any(|s| path.starts_with(s)) {
        return !matches!(principal, Principal::Agent { .. });
    }
    let Some(access) = access_of(path) else {
        return false;
    };
    match principal {
        Principal::Controller => true,
        Principal::User { role, .. } => match (role, access) {
            (Role::Admin, _) => true,
            (Role::Operator, Access::Read | Access::Write) => true,
            (Role::Operator, Access::Remove | Access::Hardware) => false,
            (Role::Viewer, Access::Read) => true,
            (Role::Viewer, Access::Write | Access::Remove | Access::Hardware) => false,
        },
        Principal::Agent { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> Principal {
        Principal::User {
            name: "u".into(),
            role,
        }
    }

    /// Walks the whole role × method table.
    #[test]
    fn every_role_and_method() {
        let agent = Principal::Agent { node: "j1".into() };
        for (method, access) in AGENT_METHODS {
            let path = format!("/fleet.v1.Agent/{method}");
            assert!(allowed(&Principal::Controller, &path), "{path}");
            assert!(allowed(&user(Role::Admin), &path), "{path}");
            assert_eq!(
                allowed(&user(Role::Operator), &path),
                matches!(access, Access::Read | Access::Write),
                "{path}"
            );
            assert_eq!(
                allowed(&user(Role::Viewer), &path),
                *access == Access::Read,
                "{path}"
            );
            assert!(!allowed(&agent, &path), "{path}");
        }
        for p in [
            "/fleet.v1.Agent/Unknown",
            "/fleet.v1.Controller/Submit",
            "/other.Svc/X",
        ] {
            assert!(!allowed(&Principal::Controller, p), "{p}");
            assert!(!allowed(&user(Role::Admin), p), "{p}");
        }
        assert!(allowed(&user(Role::Viewer), "/grpc.health.v1.Health/Check"));
        assert!(!allowed(&agent, "/grpc.health.v1.Health/Check"));
    }

    /// Board hardware is admin-only, as the controller has it: an operator
    /// may neither switch the power mode (which may reboot the board) nor
    /// lock the clocks by calling the agent directly.
    #[test]
    fn hardware_is_for_admins_and_the_controller() {
        for method in ["SetPowerMode", "SetClocks"] {
            let path = format!("/fleet.v1.Agent/{method}");
            assert!(allowed(&Principal::Controller, &path));
            assert!(allowed(&user(Role::Admin), &path));
            assert!(!allowed(&user(Role::Operator), &path));
            assert!(!allowed(&user(Role::Viewer), &path));
        }
    }

    /// The table names exactly the methods of the generated service, so a
    /// new RPC cannot ship without a decision.
    #[test]
    fn table_covers_the_service() {
        let mut methods = fleet_proto::v1::service_methods("Agent");
        methods.sort();
        let mut table: Vec<String> = AGENT_METHODS.iter().map(|(m, _)| m.to_string()).collect();
        table.sort();
        assert_eq!(methods, table);
    }
}
