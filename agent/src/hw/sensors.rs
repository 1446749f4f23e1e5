//! The board's sysfs sensors behind one narrow trait: thermal zones, power rails, GPU
//! load and fan.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use super::gpu::{read_gpu, GpuError, GpuReading};
use super::hwmon::{read_fan, read_power, FanReading, HwmonError, PowerReading};
use super::sysfs::{ReadError, SysfsReader};
use super::thermal::{read_zone_info, read_zones, ZoneInfo, ZoneReading};

pub const DEFAULT_SYSFS_ROOT: &str = "/sys";
/// Deadline for one sysfs read. A healthy attribute answers in microseconds; the
/// deadline exists for drivers that hang.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Where sensor readings come from.
pub trait Sensors: Send + Sync {
    fn thermal_zones(&self) -> impl Future<Output = Result<Vec<ZoneReading>, ReadError>> + Send;
    fn power(&self) -> impl Future<Output = Result<PowerReading, HwmonError>> + Send;
    fn gpu(&self) -> impl Future<Output = Result<GpuReading, GpuError>> + Send;
    fn fan(&self) -> impl Future<Output = Result<FanReading, HwmonError>> + Send;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsConfig {
    /// The sysfs mount point (`/sys`).
    pub root: PathBuf,
    pub read_timeout: Duration,
    /// Zones never read nor guarded, by normalised name (`cv0`) or as the kernel
    /// spells them (`CV0-therm`).
    pub ignore_zones: Vec<String>,
}

impl Default for SysfsConfig {
    fn default() -> Self {
        SysfsConfig {
            root: DEFAULT_SYSFS_ROOT.into(),
            read_timeout: DEFAULT_READ_TIMEOUT,
            ignore_zones: Vec::new(),
        }
    }
}

/// [`Sensors`] read from a sysfs tree.
#[derive(Debug, Clone)]
pub struct SysfsSensors {
    reader: SysfsReader,
    ignore_zones: Vec<String>,
}

impl SysfsSensors {
    pub fn new(config: SysfsConfig) -> Self {
        SysfsSensors {
            reader: SysfsReader::new(config.root, config.read_timeout),
            ignore_zones: config.ignore_zones,
        }
    }

    pub fn reader(&self) -> &SysfsReader {
        &self.reader
    }

    /// Zone names and trip points; they do not change while the board runs.
    pub async fn zone_info(&self) -> Result<Vec<ZoneInfo>, ReadError> {
        read_zone_info(&self.reader).await
    }
}

impl Sensors for SysfsSensors {
    async fn thermal_zones(&self) -> Result<Vec<ZoneReading>, ReadError> {
        read_zones(&self.reader, &self.ignore_zones).await
    }

    async fn power(&self) -> Result<PowerReading, HwmonError> {
        read_power(&self.reader).await
    }

    async fn gpu(&self) -> Result<GpuReading, GpuError> {
        read_gpu(&self.reader).await
    }

    async fn fan(&self) -> Result<FanReading, HwmonError> {
        read_fan(&self.reader).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::testutil::{drive_past_hung_read, Board, HungZone};
    use crate::hw::thermal::{OfflineReason, ZoneState};

    #[tokio::test(start_paused = true)]
    async fn a_hung_zone_is_offline_and_does_not_hold_up_the_others() {
        let board = Board::copy("jetson-agx-orin");
        let hung = HungZone::new(&board, 2);
        let fifo = hung.path.clone();
        let sensors = SysfsSensors::new(SysfsConfig {
            root: board.sysfs(),
            read_timeout: Duration::from_secs(1),
            ignore_zones: Vec::new(),
        });
        let sample = tokio::spawn({
            let sensors = sensors.clone();
            async move { sensors.thermal_zones().await }
        });
        let zones = drive_past_hung_read(sensors.reader(), &fifo, sample)
            .await
            .unwrap();
        assert_eq!(zones[2].name, "cv0");
        assert_eq!(zones[2].state, ZoneState::Offline(OfflineReason::Hung));
        assert_eq!(zones[2].celsius(), None);
        assert_eq!(zones[0].celsius(), Some(77.281));
        assert_eq!(zones.iter().filter(|z| z.celsius().is_some()).count(), 10);

        // The first read is still stuck: the next sample does not start another one.
        let again = sensors.thermal_zones().await.unwrap();
        assert_eq!(again[2].state, ZoneState::Offline(OfflineReason::Hung));
    }

    #[tokio::test]
    async fn every_sensor_of_both_agx_layouts() {
        for board in ["jetson-agx-orin", "jetson-agx-orin/l4t-r35"] {
            let board = Board::copy(board);
            let sensors = SysfsSensors::new(SysfsConfig {
                root: board.sysfs(),
                // Generous, so a loaded test machine never times a healthy read out.
                read_timeout: Duration::from_secs(10),
                ..SysfsConfig::default()
            });
            assert_eq!(sensors.thermal_zones().await.unwrap().len(), 11);
            assert_eq!(sensors.power().await.unwrap().rails.len(), 4);
            assert!(sensors.gpu().await.is_ok());
            assert!(sensors.fan().await.unwrap().pwm.is_some());
            assert_eq!(sensors.zone_info().await.unwrap().len(), 11);
        }
    }
}
