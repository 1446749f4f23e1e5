//! GPU load and clocks.
//!
//! The load file holds per-mille (0–1000). Where it lives changed between releases:
//! on L4T R36 the devfreq device `class/devfreq/17000000.gpu` links (`device`) to
//! `devices/platform/bus@0/17000000.gpu`, whose `of_node/name` is `gpu` and which holds
//! `load`; on R35 the devfreq entry is `17000000.ga10b` with no device link, and the
//! load sits in `devices/platform/gpu.0/load` (also `devices/gpu.0/load`). Discovery
//! follows jtop: a devfreq device whose `device/of_node/name` is `gpu` or `ga10b`, then
//! the known R35 paths.

use std::path::PathBuf;

use super::sysfs::{ReadError, SysfsReader};

/// `of_node/name` values of the Orin GPU (jtop accepts both).
pub const GPU_NODE_NAMES: [&str; 2] = ["gpu", "ga10b"];

/// Load files tried, in order, when devfreq does not lead to one (L4T R35 layouts).
pub const FALLBACK_LOAD_PATHS: [&str; 3] = [
    "devices/platform/bus@0/17000000.gpu/load",
    "devices/platform/gpu.0/load",
    "devices/gpu.0/load",
];

#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    /// Load in percent (the file's per-mille / 10).
    pub load_percent: f64,
    pub cur_freq_hz: Option<u64>,
    pub min_freq_hz: Option<u64>,
    pub max_freq_hz: Option<u64>,
    pub governor: Option<String>,
    /// The load file read, for people debugging a board.
    pub load_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "found no GPU load file (no devfreq device with of_node name gpu/ga10b, none of {tried:?} \
         under {root}); this board has no Orin GPU, or the sysfs root is wrong"
    )]
    NotFound { root: PathBuf, tried: Vec<String> },
    #[error("could not read the GPU load")]
    Load(#[source] ReadError),
}

/// Converts the per-mille of a `load` file to percent.
pub fn load_percent(per_mille: i64) -> f64 {
    per_mille as f64 / 10.0
}

struct Located {
    load: PathBuf,
    devfreq: Option<PathBuf>,
}

async fn locate(reader: &SysfsReader) -> Result<Located, GpuError> {
    let class = reader.path("class/devfreq");
    let entries = reader.list_dir(&class).await.unwrap_or_default();
    let mut gpu_devfreq = None;
    for entry in &entries {
        let dir = class.join(entry);
        let node = reader
            .read_text(&dir.join("device/of_node/name"))
            .await
            .unwrap_or_default();
        if GPU_NODE_NAMES.contains(&node.as_str()) {
            let load = dir.join("device/load");
            if reader.exists(&load).await {
                return Ok(Located {
                    load,
                    devfreq: Some(dir),
                });
            }
        }
        // R35: the devfreq entry has no device link; its name still says GPU.
        if gpu_devfreq.is_none() && (entry.contains("gpu") || entry.contains("ga10b")) {
            gpu_devfreq = Some(dir);
        }
    }
    for candidate in FALLBACK_LOAD_PATHS {
        let load = reader.path(candidate);
        if reader.exists(&load).await {
            return Ok(Located {
                load,
                devfreq: gpu_devfreq,
            });
        }
    }
    Err(GpuError::NotFound {
        root: reader.root().to_path_buf(),
        tried: FALLBACK_LOAD_PATHS.iter().map(|p| p.to_string()).collect(),
    })
}

/// Reads the GPU load and, where devfreq has them, its clocks.
pub async fn read_gpu(reader: &SysfsReader) -> Result<GpuReading, GpuError> {
    let located = locate(reader).await?;
    let per_mille = reader
        .read_i64(&located.load)
        .await
        .map_err(GpuError::Load)?;
    let mut reading = GpuReading {
        load_percent: load_percent(per_mille),
        cur_freq_hz: None,
        min_freq_hz: None,
        max_freq_hz: None,
        governor: None,
        load_path: located.load,
    };
    if let Some(devfreq) = located.devfreq {
        let freq = |name: &'static str| {
            let path = devfreq.join(name);
            async move {
                reader
                    .read_i64(&path)
                    .await
                    .ok()
                    .and_then(|v| u64::try_from(v).ok())
            }
        };
        reading.cur_freq_hz = freq("cur_freq").await;
        reading.min_freq_hz = freq("min_freq").await;
        reading.max_freq_hz = freq("max_freq").await;
        reading.governor = reader
            .read_text(&devfreq.join("governor"))
            .await
            .ok()
            .filter(|g| !g.is_empty());
    }
    Ok(reading)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hw::testutil::Board;

    fn reader(board: &Board) -> SysfsReader {
        SysfsReader::new(board.sysfs(), Duration::from_secs(10))
    }

    #[tokio::test]
    async fn r36_load_is_found_through_devfreq() {
        let board = Board::copy("jetson-agx-orin");
        let gpu = read_gpu(&reader(&board)).await.unwrap();
        assert_eq!(gpu.load_percent, 14.0);
        assert_eq!(gpu.cur_freq_hz, Some(306_000_000));
        assert_eq!(gpu.min_freq_hz, Some(306_000_000));
        assert_eq!(gpu.max_freq_hz, Some(612_000_000));
        assert_eq!(gpu.governor.as_deref(), Some("nvhost_podgov"));
        assert!(
            gpu.load_path
                .ends_with("class/devfreq/17000000.gpu/device/load"),
            "{:?}",
            gpu.load_path
        );
    }

    #[tokio::test]
    async fn r36_platform_gpu0_path_is_the_fallback() {
        let board = Board::copy("jetson-agx-orin");
        std::fs::remove_file(board.path("sysfs/class/devfreq/17000000.gpu")).unwrap();
        std::fs::remove_file(board.path("sysfs/devices/platform/bus@0/17000000.gpu/load")).unwrap();
        let gpu = read_gpu(&reader(&board)).await.unwrap();
        assert_eq!(gpu.load_percent, 14.0);
        assert!(gpu.load_path.ends_with("devices/platform/gpu.0/load"));
        assert_eq!(gpu.max_freq_hz, None);
    }

    #[tokio::test]
    async fn r35_load_from_gpu0_and_clocks_from_the_ga10b_devfreq() {
        let board = Board::copy("jetson-agx-orin/l4t-r35");
        let gpu = read_gpu(&reader(&board)).await.unwrap();
        assert_eq!(gpu.load_percent, 0.0);
        assert!(gpu.load_path.ends_with("devices/platform/gpu.0/load"));
        assert_eq!(gpu.max_freq_hz, Some(1_300_500_000));
        assert_eq!(gpu.cur_freq_hz, Some(306_000_000));
        // The second R35 path also works on its own.
        std::fs::remove_file(board.path("sysfs/devices/platform/gpu.0/load")).unwrap();
        let gpu = read_gpu(&reader(&board)).await.unwrap();
        assert!(gpu.load_path.ends_with("devices/gpu.0/load"));
    }

    #[tokio::test]
    async fn no_gpu_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_gpu(&SysfsReader::new(dir.path(), Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no GPU load file"), "{err}");
    }
}
