//! The board's systemd manager, over D-Bus.
//!
//! One connection per agent, to the system manager on a board or to a user
//! manager in tests and the dev fleet: the same code either way. Everything
//! here takes unit names that `unit_file::parse_instance_unit` has accepted
//! or the fixed target name; nothing else reaches the manager.

pub mod dbus;

use std::collections::HashMap;

use futures_util::StreamExt;
use serde::Deserialize;
use zbus::fdo::PropertiesProxy;
use zbus::names::InterfaceName;
use zbus::zvariant::{OwnedValue, Value};
use zbus::{Connection, MatchRule, MessageStream};

use dbus::{ManagerProxy, DESTINATION, SERVICE_INTERFACE, UNIT_INTERFACE, UNIT_PATH_PREFIX};

/// Which manager the agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bus {
    /// The system manager (a board).
    System,
    /// The user manager of the agent's session bus (tests, dev fleet).
    User,
}

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot connect to the {bus:?} systemd manager over D-Bus; is systemd running and DBUS_SESSION_BUS_ADDRESS set for a user manager?")]
    Connect {
        bus: Bus,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("systemd refused {op} on {unit}")]
    Call {
        op: &'static str,
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
}

impl SystemdError {
    /// True when systemd says the unit is not loaded.
    pub fn is_no_such_unit(&self) -> bool {
        match self {
            SystemdError::Call { source, .. } => is_no_such_unit(source),
            SystemdError::Connect { .. } => false,
        }
    }
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::MethodError(name, _, _) => {
            name.as_str() == "org.freedesktop.systemd1.NoSuchUnit"
        }
        _ => false,
    }
}

/// What systemd reports about one unit, read with two `GetAll` calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnitProps {
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// The service's `Result`: success, exit-code, signal, core-dump,
    /// oom-kill, timeout, start-limit-hit, resources, ...
    pub result: String,
    pub main_pid: u32,
    /// `CLD_EXITED` (1), `CLD_KILLED` (2), `CLD_DUMPED` (3), or 0.
    pub exec_main_code: i32,
    pub exec_main_status: i32,
    pub n_restarts: u32,
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    pub memory_max: Option<u64>,
    pub cpu_usage_nsec: Option<u64>,
    pub active_enter_us: Option<u64>,
    pub inactive_enter_us: Option<u64>,
    /// CLOCK_MONOTONIC µs when the main process started, to match kernel
    /// log lines (OOM kills) to this invocation.
    pub exec_main_start_mono_us: Option<u64>,
    pub invocation_id: String,
    pub need_daemon_reload: bool,
    pub unit_file_state: String,
}

impl UnitProps {
    pub fn from_maps(
        unit: &HashMap<String, OwnedValue>,
        svc: &HashMap<String, OwnedValue>,
    ) -> Self {
        let s = |m: &HashMap<String, OwnedValue>, k: &str| -> String {
            m.get(k)
                .and_then(|v| <&str>::try_from(&**v).ok().map(str::to_owned))
                .unwrap_or_default()
        };
        let u32_ = |m: &HashMap<String, OwnedValue>, k: &str| -> Option<u32> {
            m.get(k).and_then(|v| u32::try_from(&**v).ok())
        };
        let i32_ = |m: &HashMap<String, OwnedValue>, k: &str| -> Option<i32> {
            m.get(k).and_then(|v| i32::try_from(&**v).ok())
        };
        // systemd reports "unknown" as u64::MAX for counters and limits.
        let u64_ = |m: &HashMap<String, OwnedValue>, k: &str| -> Option<u64> {
            m.get(k)
                .and_then(|v| u64::try_from(&**v).ok())
                .filter(|v| *v != u64::MAX)
        };
        let ts = |m: &HashMap<String, OwnedValue>, k: &str| -> Option<u64> {
            u64_(m, k).filter(|v| *v != 0)
        };
        let invocation_id = unit
            .get("InvocationID")
            .and_then(|v| match &**v {
                Value::Array(a) => Some(
                    a.iter()
                        .filter_map(|b| u8::try_from(b).ok())
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .unwrap_or_default();
        UnitProps {
            load_state: s(unit, "LoadState"),
            active_state: s(unit, "ActiveState"),
            sub_state: s(unit, "SubState"),
            result: s(svc, "Result"),
            main_pid: u32_(svc, "MainPID").unwrap_or(0),
            exec_main_code: i32_(svc, "ExecMainCode").unwrap_or(0),
            exec_main_status: i32_(svc, "ExecMainStatus").unwrap_or(0),
            n_restarts: u32_(svc, "NRestarts").unwrap_or(0),
            memory_current: u64_(svc, "MemoryCurrent"),
            memory_peak: u64_(svc, "MemoryPeak"),
            memory_max: u64_(svc, "MemoryMax").or_else(|| u64_(svc, "MemoryLimit")),
            cpu_usage_nsec: u64_(svc, "CPUUsageNSec"),
            active_enter_us: ts(unit, "ActiveEnterTimestamp"),
            inactive_enter_us: ts(unit, "InactiveEnterTimestamp"),
            exec_main_start_mono_us: ts(svc, "ExecMainStartTimestampMonotonic"),
            invocation_id,
            need_daemon_reload: unit
                .get("NeedDaemonReload")
                .and_then(|v| bool::try_from(&**v).ok())
                .unwrap_or(false),
            unit_file_state: s(unit, "UnitFileState"),
        }
    }

    /// A unit that systemd does not know (never loaded, or collected).
    pub fn is_gone(&self) -> bool {
        self.load_state.is_empty() || self.load_state == "not-found"
    }
}

/// The agent's handle on the manager.
#[derive(Clone)]
pub struct Systemd {
    conn: Connection,
    manager: ManagerProxy<'static>,
    bus: Bus,
}

impl Systemd {
    pub async fn connect(bus: Bus) -> Result<Self, SystemdError> {
        let conn = match bus {
            Bus::System => Connection::system().await,
            Bus::User => Connection::session().await,
        }
        .map_err(|e| SystemdError::Connect {
            bus,
            source: Box::new(e),
        })?;
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(|e| SystemdError::Connect {
                bus,
                source: Box::new(e),
            })?;
        // Without Subscribe the manager emits no unit signals to us.
        manager
            .subscribe()
            .await
            .map_err(|e| SystemdError::Connect {
                bus,
                source: Box::new(e),
            })?;
        Ok(Systemd { conn, manager, bus })
    }

    pub fn bus(&self) -> Bus {
        self.bus
    }

    pub async fn version(&self) -> String {
        self.manager.version().await.unwrap_or_default()
    }

    /// The manager's `SystemState`: `stopping` while it shuts the board
    /// down.
    pub async fn system_state(&self) -> Result<String, SystemdError> {
        self.manager
            .system_state()
            .await
            .map_err(Self::call_err("read the state of", "the manager"))
    }

    /// When the manager started (µs since the epoch), i.e. the board's
    /// boot; `None` when it does not say.
    pub async fn started_us(&self) -> Option<u64> {
        self.manager
            .userspace_timestamp()
            .await
            .ok()
            .filter(|t| *t > 0)
    }

    fn call_err<'a>(
        op: &'static str,
        unit: &'a str,
    ) -> impl FnOnce(zbus::Error) -> SystemdError + 'a {
        move |source| SystemdError::Call {
            op,
            unit: unit.to_owned(),
            source: Box::new(source),
        }
    }

    pub async fn start(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager
            .start_unit(unit, "replace")
            .await
            .map(drop)
            .map_err(Self::call_err("start", unit))
    }

    pub async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
        match self.manager.stop_unit(unit, "replace").await {
            Ok(_) => Ok(()),
            Err(e) if is_no_such_unit(&e) => Ok(()),
            Err(e) => Err(Self::call_err("stop", unit)(e)),
        }
    }

    pub async fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager
            .restart_unit(unit, "replace")
            .await
            .map(drop)
            .map_err(Self::call_err("restart", unit))
    }

    /// Clears a failed state and the start-limit counter; a unit that is not
    /// loaded has nothing to reset.
    pub async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        match self.manager.reset_failed_unit(unit).await {
            Ok(()) => Ok(()),
            Err(e) if is_no_such_unit(&e) => Ok(()),
            Err(e) => Err(Self::call_err("reset-failed", unit)(e)),
        }
    }

    /// `daemon-reload`. Costly (it re-reads every unit), so the agent calls it
    /// only when a loaded unit's files changed.
    pub async fn reload(&self) -> Result<(), SystemdError> {
        self.manager
            .reload()
            .await
            .map_err(Self::call_err("daemon-reload", "the manager"))
    }

    pub async fn enable(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager
            .enable_unit_files(&[unit], false, true)
            .await
            .map(drop)
            .map_err(Self::call_err("enable", unit))
    }

    pub async fn disable(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager
            .disable_unit_files(&[unit], false)
            .await
            .map(drop)
            .map_err(Self::call_err("disable", unit))
    }

    /// The unit's properties, or `None` when systemd has not loaded it.
    /// Never loads a unit as a side effect.
    pub async fn props(&self, unit: &str) -> Result<Option<UnitProps>, SystemdError> {
        let path = match self.manager.get_unit(unit).await {
            Ok(p) => p,
            Err(e) if is_no_such_unit(&e) => return Ok(None),
            Err(e) => return Err(Self::call_err("get", unit)(e)),
        };
        let props = PropertiesProxy::builder(&self.conn)
            .destination(DESTINATION)
            .and_then(|b| b.path(path))
            .map_err(Self::call_err("get", unit))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(Self::call_err("get", unit))?;
        let unit_iface = InterfaceName::from_static_str_unchecked(UNIT_INTERFACE);
        let svc_iface = InterfaceName::from_static_str_unchecked(SERVICE_INTERFACE);
        let (u, s) = tokio::try_join!(props.get_all(unit_iface), props.get_all(svc_iface))
            .map_err(|e| Self::call_err("get", unit)(e.into()))?;
        Ok(Some(UnitProps::from_maps(&u, &s)))
    }

    /// Keeps the unit loaded while the agent is connected (see
    /// [`dbus::UnitProxy::add_ref`]). Loads the unit if needed.
    pub async fn hold(&self, unit: &str) -> Result<(), SystemdError> {
        let path = self
            .manager
            .load_unit(unit)
            .await
            .map_err(Self::call_err("load", unit))?;
        dbus::UnitProxy::builder(&self.conn)
            .path(path)
            .map_err(Self::call_err("ref", unit))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(Self::call_err("ref", unit))?
            .add_ref()
            .await
            .map_err(Self::call_err("ref", unit))
    }

    /// Drops the reference taken by [`Systemd::hold`], if any.
    pub async fn release(&self, unit: &str) {
        let Ok(path) = self.manager.get_unit(unit).await else {
            return;
        };
        if let Ok(b) = dbus::UnitProxy::builder(&self.conn).path(path) {
            if let Ok(p) = b
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
            {
                let _ = p.remove_ref().await;
            }
        }
    }

    /// Loaded units whose names match the glob.
    pub async fn list(&self, pattern: &str) -> Result<Vec<String>, SystemdError> {
        let units = self
            .manager
            .list_units_by_patterns(&[], &[pattern])
            .await
            .map_err(Self::call_err("list", pattern))?;
        Ok(units.into_iter().map(|u| u.0).collect())
    }

    /// A stream of unit names whose state changed, from systemd's
    /// PropertiesChanged and JobRemoved signals. Never polls.
    pub async fn unit_changes(
        &self,
    ) -> Result<impl futures_util::Stream<Item = String> + Send + 'static, SystemdError> {
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.freedesktop.DBus.Properties")
            .and_then(|b| b.member("PropertiesChanged"))
            .and_then(|b| b.path_namespace(UNIT_PATH_PREFIX.trim_end_matches('/')))
            .map_err(Self::call_err("subscribe", "unit signals"))?
            .build();
        let props = MessageStream::for_match_rule(rule, &self.conn, Some(256))
            .await
            .map_err(Self::call_err("subscribe", "unit signals"))?
            .filter_map(|m| async move {
                let m = m.ok()?;
                let path = m.header().path()?.to_string();
                dbus::unit_from_path(&path)
            });
        let jobs = self
            .manager
            .receive_job_removed()
            .await
            .map_err(Self::call_err("subscribe", "job signals"))?
            .filter_map(|s| async move { s.args().ok().map(|a| a.unit) });
        Ok(futures_util::stream::select(props, jobs))
    }
}
