//! Who may call what on the controller: default deny, one table.
//!
//! As the proto's header says: `viewer` users read; `operator` users also
//! submit, cancel, stop and restart; `admin` users also manage nodes and
//! the policy (cordon, drain, labels, power mode, jetson_clocks). Agents
//! may only Join (the handler then takes the node name from the
//! certificate, never from the request). The controller never calls
//! itself, so its own identity may call nothing. Health is open to every
//! fleet member (an agent may check its controller is up), reflection only
//! to people. A method missing from the table is refused for all.

use fleet_proto::identity::{Principal, Role};

/// What a method does, for the table: the least role that may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Viewer and up.
    Read,
    /// Operator and up: runs experiments.
    Operate,
    /// Admin only: nodes and the policy.
    Admin,
    /// Agents only.
    Join,
}

/// The controller's methods (`/fleet.v1.Controller/<name>`) and what each
/// does.
pub const CONTROLLER_METHODS: &[(&str, Access)] = &[
    ("Submit", Access::Operate),
    ("Cancel", Access::Operate),
    ("Stop", Access::Operate),
    ("Restart", Access::Operate),
    ("Get", Access::Read),
    ("List", Access::Read),
    ("Explain", Access::Read),
    ("Logs", Access::Read),
    ("WatchEvents", Access::Read),
    ("ListNodes", Access::Read),
    ("Cordon", Access::Admin),
    ("Uncordon", Access::Admin),
    ("Drain", Access::Admin),
    ("SetLabels", Access::Admin),
    ("SetPowerMode", Access::Admin),
    ("SetClocks", Access::Admin),
    ("AddNode", Access::Admin),
    ("RemoveNode", Access::Admin),
    ("GetPolicy", Access::Read),
    ("SetPolicy", Access::Admin),
    ("Join", Access::Join),
];

/// Open to every authenticated fleet member.
const HEALTH_SERVICES: &[&str] = &["/grpc.health.v1.Health/"];

/// Open to people: it lists the API for tools like grpcurl.
const REFLECTION_SERVICES: &[&str] = &[
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

pub fn access_of(path: &str) -> Option<Access> {
    let method = path.strip_prefix("/fleet.v1.Controller/")?;
    CONTROLLER_METHODS
        .iter()
        .find(|(m, _)| *m == method)
        .map(|(_, a)| *a)
}

/// The table as the shared authorization layer asks it
/// ([`fleet_proto::authz`]): every call but a read is logged as a change.
pub fn verdict(principal: &Principal, path: &str) -> fleet_proto::authz::Verdict {
    if allowed(principal, path) {
        fleet_proto::authz::Verdict::Allowed {
            changes_state: access_of(path).is_some_and(|a| a != Access::Read),
        }
    } else {
        fleet_proto::authz::Verdict::Denied
    }
}

/// Decides one call. `path` is the HTTP/2 path, `/package.Service/Method`.
pub fn allowed(principal: &Principal, path: &str) -> bool {
    if HEALTH_SERVICES.iter().any(|s| path.starts_with(s)) {
        return true;
    }
    if REFLECTION_SERVICES.iter().any(|s| path.starts_with(s)) {
        return matches!(principal, Principal::User { .. });
    }
    let Some(access) = access_of(path) else {
        return false;
    };
    match principal {
        Principal::Controller => false,
        Principal::Agent { .. } => access == Access::Join,
        Principal::User { role, .. } => match (role, access) {
            (Role::Admin, Access::Read | Access::Operate | Access::Admin) => true,
            (Role::Operator, Access::Read | Access::Operate) => true,
            (Role::Operator, Access::Admin) => false,
            (Role::Viewer, Access::Read) => true,
            (Role::Viewer, Access::Operate | Access::Admin) => false,
            (Role::Admin | Role::Operator | Role::Viewer, Access::Join) => false,
        },
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
        for (method, access) in CONTROLLER_METHODS {
            let path = format!("/fleet.v1.Controller/{method}");
            assert!(!allowed(&Principal::Controller, &path), "{path}");
            assert_eq!(
                allowed(&user(Role::Admin), &path),
                *access != Access::Join,
                "{path}"
            );
            assert_eq!(
                allowed(&user(Role::Operator), &path),
                matches!(access, Access::Read | Access::Operate),
                "{path}"
            );
            assert_eq!(
                allowed(&user(Role::Viewer), &path),
                *access == Access::Read,
                "{path}"
            );
            assert_eq!(allowed(&agent, &path), *access == Access::Join, "{path}");
        }
        for p in [
            "/fleet.v1.Controller/Unknown",
            "/fleet.v1.Controller/",
            "/fleet.v1.Controller/SubmitX",
            "/fleet.v1.Agent/StartExperiment",
            "/other.Svc/X",
            "",
        ] {
            assert!(!allowed(&Principal::Controller, p), "{p}");
            assert!(!allowed(&user(Role::Admin), p), "{p}");
            assert!(!allowed(&agent, p), "{p}");
        }
        let health = "/grpc.health.v1.Health/Check";
        for who in [
            Principal::Controller,
            agent.clone(),
            user(Role::Admin),
            user(Role::Viewer),
        ] {
            assert!(allowed(&who, health), "{who}");
        }
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert!(allowed(&user(Role::Viewer), reflection));
        assert!(!allowed(&agent, reflection));
        assert!(!allowed(&Principal::Controller, reflection));
    }

    /// The proto's header comment, role by role.
    #[test]
    fn each_role_may_call_what_the_proto_promises() {
        let may = |who: &Principal| -> Vec<&str> {
            CONTROLLER_METHODS
                .iter()
                .map(|(m, _)| *m)
                .filter(|m| allowed(who, &format!("/fleet.v1.Controller/{m}")))
                .collect()
        };
        let reads = [
            "Get",
            "List",
            "Explain",
            "Logs",
            "WatchEvents",
            "ListNodes",
            "GetPolicy",
        ];
        let mut viewer = may(&user(Role::Viewer));
        viewer.sort_unstable();
        let mut want = reads.to_vec();
        want.sort_unstable();
        assert_eq!(viewer, want);

        let mut operator = may(&user(Role::Operator));
        operator.sort_unstable();
        want.extend(["Submit", "Cancel", "Stop", "Restart"]);
        want.sort_unstable();
        assert_eq!(operator, want);

        let mut admin = may(&user(Role::Admin));
        admin.sort_unstable();
        want.extend([
            "Cordon",
            "Uncordon",
            "Drain",
            "SetLabels",
            "SetPowerMode",
            "SetClocks",
            "AddNode",
            "RemoveNode",
            "SetPolicy",
        ]);
        want.sort_unstable();
        assert_eq!(admin, want);

        assert_eq!(may(&Principal::Agent { node: "j1".into() }), vec!["Join"]);
        assert!(may(&Principal::Controller).is_empty());
    }

    /// The table names exactly the methods of the generated service, so a
    /// new RPC cannot ship without a decision.
    #[test]
    fn table_covers_the_service() {
        let mut methods = fleet_proto::v1::service_methods("Controller");
        methods.sort();
        let mut table: Vec<String> = CONTROLLER_METHODS
            .iter()
            .map(|(m, _)| m.to_string())
            .collect();
        table.sort();
        assert_eq!(methods, table);
    }
}
