//! The board itself: identity, power modes, clocks and telemetry.

use fleet_proto::v1;

use crate::grpc::BoxStream;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "power mode {mode:?} is not one of this board's modes ({known}); list them with GetNode"
    )]
    UnknownMode { mode: String, known: String },
    #[error("switching to power mode {mode} needs a reboot; ask again with allow_reboot to reboot the board")]
    RebootRequired { mode: String },
    #[error("{what} is not available on this board")]
    NotSupported { what: String },
    #[error("hardware error: {0}")]
    Hardware(String),
}

pub struct Node {
    pub name: String,
}

impl Node {
    pub async fn info(&self) -> Result<v1::NodeInfo, NodeError> {
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        Ok(v1::NodeInfo {
            node: self.name.clone(),
            cpu_cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_total_bytes: sys.total_memory(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    pub async fn set_power_mode(
        &self,
        _mode: &str,
        _allow_reboot: bool,
    ) -> Result<v1::SetPowerModeResponse, NodeError> {
        Err(NodeError::NotSupported {
            what: "nvpmodel".into(),
        })
    }

    pub async fn set_clocks(&self, _enabled: bool) -> Result<bool, NodeError> {
        Err(NodeError::NotSupported {
            what: "jetson_clocks".into(),
        })
    }

    pub fn watch(&self, _interval_ms: u32) -> Result<BoxStream<v1::NodeUpdate>, NodeError> {
        Err(NodeError::NotSupported {
            what: "telemetry".into(),
        })
    }
}
