//! Thermal zones under `<sysfs>/class/thermal/thermal_zone*`: names, temperatures and
//! trip points, with offline zones reported as offline and never as a temperature.
//!
//! Zones are matched on a normalised name (`CPU-therm` on L4T R35 and `cpu-thermal` on
//! R36 are both `cpu`), never on their index. A zone is offline when its `temp` reads
//! -256000 (a powered-off DLA, PVA or rail-gated GPU on R35), when the read fails or
//! returns text that is not a number (newer releases), or when the read hangs (the dead
//! `cv*` zones of an Orin Nano). Every zone is read on its own under a timeout, so one
//! bad zone never holds up the others.

use std::path::PathBuf;

use futures_util::future::join_all;

use super::sysfs::{trailing_number, ReadError, SysfsReader};

/// What `temp` reads when the sensor behind a zone is powered off (tegrastats shows it
/// as `-256C`).
pub const OFFLINE_MILLIDEGREES: i64 = -256_000;

/// Zones that exist but never report on some modules: an Orin Nano has no DLA/PVA, yet
/// keeps the `cv0`..`cv2` zones, and reading them has hung other tools. Suggested for the
/// ignore list on those boards; on an AGX Orin or Orin NX they are real sensors.
pub const ORIN_NANO_DEAD_ZONES: [&str; 3] = ["cv0", "cv1", "cv2"];

/// The zones worth ignoring on a board, from its device-tree model string.
pub fn suggested_ignore_zones(model: &str) -> Vec<String> {
    if model.contains("Orin Nano") {
        ORIN_NANO_DEAD_ZONES.iter().map(|z| z.to_string()).collect()
    } else {
        Vec::new()
    }
}

/// The name a zone is matched on: lowercase, without the `-thermal`, `-therm` or
/// `_tegra` suffix. `CPU-therm` (R35) and `cpu-thermal` (R36) are both `cpu`;
/// `Tboard_tegra` and `tboard-thermal` are both `tboard`.
pub fn normalize_zone_name(kind: &str) -> String {
    let lower = kind.trim().to_ascii_lowercase();
    for suffix in ["-thermal", "-therm", "_tegra"] {
        if let Some(stem) = lower.strip_suffix(suffix) {
            return stem.to_string();
        }
    }
    lower
}

/// Whether `name` (normalised or not) is on an ignore list (normalised or not).
pub fn is_ignored(name: &str, ignore: &[String]) -> bool {
    let name = normalize_zone_name(name);
    ignore.iter().any(|i| normalize_zone_name(i) == name)
}

/// One zone as read in one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneReading {
    /// The `N` of `thermal_zoneN`, for people reading logs only; never used to match.
    pub index: u32,
    /// The zone's `type`, as the kernel spells it (`cpu-thermal`, `CPU-therm`).
    pub kind: String,
    /// The normalised name (`cpu`), what configs and the guard match on.
    pub name: String,
    pub state: ZoneState,
}

impl ZoneReading {
    /// The temperature, only when the zone is online.
    pub fn celsius(&self) -> Option<f64> {
        match self.state {
            ZoneState::Online { celsius } => Some(celsius),
            _ => None,
        }
    }

    pub fn is_offline(&self) -> bool {
        matches!(self.state, ZoneState::Offline(_))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ZoneState {
    Online {
        celsius: f64,
    },
    Offline(OfflineReason),
    /// On the ignore list; not read at all.
    Ignored,
}

/// Why a zone has no temperature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineReason {
    /// `temp` read -256000: the sensor's block is powered off.
    PoweredOff,
    /// The read failed; the error chain as text.
    ReadFailed(String),
    /// `temp` held something other than an integer.
    Unparsable(String),
    /// The read did not return in time, or an earlier read still has not.
    Hung,
}

impl std::fmt::Display for OfflineReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OfflineReason::PoweredOff => f.write_str("powered off (reads -256000)"),
            OfflineReason::ReadFailed(e) => write!(f, "read failed: {e}"),
            OfflineReason::Unparsable(t) => write!(f, "unparsable reading {t:?}"),
            OfflineReason::Hung => f.write_str("read hung"),
        }
    }
}

/// Interprets the text of a zone's `temp` file.
pub fn parse_zone_temp(text: &str) -> ZoneState {
    match text.trim().parse::<i64>() {
        Ok(OFFLINE_MILLIDEGREES) => ZoneState::Offline(OfflineReason::PoweredOff),
        // Below absolute zero is no reading either.
        Ok(m) if m < -273_150 => ZoneState::Offline(OfflineReason::PoweredOff),
        Ok(m) => ZoneState::Online {
            celsius: m as f64 / 1000.0,
        },
        Err(_) => ZoneState::Offline(OfflineReason::Unparsable(text.trim().to_string())),
    }
}

/// One trip point of a zone, as the kernel lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct TripPoint {
    pub index: u32,
    /// `critical`, `passive`, `active` or `hot`.
    pub kind: String,
    pub celsius: f64,
    pub hysteresis_c: Option<f64>,
}

/// A zone's static description: name and trip points.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneInfo {
    pub index: u32,
    pub kind: String,
    pub name: String,
    pub trips: Vec<TripPoint>,
}

/// The class directory of thermal zones under a sysfs root.
fn class_dir(reader: &SysfsReader) -> PathBuf {
    reader.path("class/thermal")
}

/// The `thermal_zoneN` entries, in numeric order.
async fn zone_dirs(reader: &SysfsReader) -> Result<Vec<(u32, PathBuf)>, ReadError> {
    let class = class_dir(reader);
    let names = reader.list_dir(&class).await?;
    Ok(names
        .iter()
        .filter_map(|n| Some((trailing_number(n, "thermal_zone")?, class.join(n))))
        .collect())
}

async fn zone_kind(reader: &SysfsReader, index: u32, dir: &std::path::Path) -> String {
    match reader.read_text(&dir.join("type")).await {
        Ok(kind) if !kind.is_empty() => kind,
        // Without a type the zone is still worth reporting under its directory name.
        _ => format!("thermal_zone{index}"),
    }
}

/// Reads every zone: type and temperature, each zone on its own under the reader's
/// timeout. Zones on `ignore` are listed as ignored and their `temp` is not read.
pub async fn read_zones(
    reader: &SysfsReader,
    ignore: &[String],
) -> Result<Vec<ZoneReading>, ReadError> {
    let dirs = zone_dirs(reader).await?;
    let reads = dirs.into_iter().map(|(index, dir)| async move {
        let kind = zone_kind(reader, index, &dir).await;
        let name = normalize_zone_name(&kind);
        let state = if is_ignored(&name, ignore) {
            ZoneState::Ignored
        } else {
            match reader.read_text(&dir.join("temp")).await {
                Ok(text) => parse_zone_temp(&text),
                Err(e) if e.is_hung() => ZoneState::Offline(OfflineReason::Hung),
                Err(e) => ZoneState::Offline(OfflineReason::ReadFailed(error_chain(&e))),
            }
        };
        ZoneReading {
            index,
            kind,
            name,
            state,
        }
    });
    Ok(join_all(reads).await)
}

/// Reads every zone's name and trip points (however many `trip_point_*` files exist).
pub async fn read_zone_info(reader: &SysfsReader) -> Result<Vec<ZoneInfo>, ReadError> {
    let dirs = zone_dirs(reader).await?;
    let reads = dirs.into_iter().map(|(index, dir)| async move {
        let kind = zone_kind(reader, index, &dir).await;
        let name = normalize_zone_name(&kind);
        let mut trip_ids: Vec<u32> = reader
            .list_dir(&dir)
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|f| {
                f.strip_prefix("trip_point_")?
                    .strip_suffix("_temp")?
                    .parse()
                    .ok()
            })
            .collect();
        trip_ids.sort_unstable();
        let mut trips = Vec::new();
        for t in trip_ids {
            let Ok(milli) = reader
                .read_i64(&dir.join(format!("trip_point_{t}_temp")))
                .await
            else {
                continue;
            };
            let kind = reader
                .read_text(&dir.join(format!("trip_point_{t}_type")))
                .await
                .unwrap_or_default();
            let hysteresis_c = reader
                .read_i64(&dir.join(format!("trip_point_{t}_hyst")))
                .await
                .ok()
                .map(|h| h as f64 / 1000.0);
            trips.push(TripPoint {
                index: t,
                kind,
                celsius: milli as f64 / 1000.0,
                hysteresis_c,
            });
        }
        ZoneInfo {
            index,
            kind,
            name,
            trips,
        }
    });
    Ok(join_all(reads).await)
}

pub(crate) use fleet_proto::daemon::error_chain;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::hw::testutil::{fixture_text, Board};

    fn reader(board: &Board) -> SysfsReader {
        SysfsReader::new(board.sysfs(), Duration::from_secs(10))
    }

    /// Zone temperatures as tegrastats printed them (`CPU@42.593C`, `GPU@-256C`).
    fn tegrastats_temps(line: &str) -> BTreeMap<String, f64> {
        line.split_whitespace()
            .filter_map(|w| {
                let (name, rest) = w.split_once('@')?;
                let t = rest.strip_suffix('C')?.parse().ok()?;
                Some((normalize_zone_name(name), t))
            })
            .collect()
    }

    #[test]
    fn names_normalise_across_releases() {
        let r35 = [
            "CPU-therm",
            "GPU-therm",
            "CV0-therm",
            "SOC0-therm",
            "tj-therm",
            "Tboard_tegra",
            "Tdiode_tegra",
        ];
        let r36 = [
            "cpu-thermal",
            "gpu-thermal",
            "cv0-thermal",
            "soc0-thermal",
            "tj-thermal",
            "tboard-thermal",
            "tdiode-thermal",
        ];
        for (a, b) in r35.iter().zip(r36) {
            assert_eq!(normalize_zone_name(a), normalize_zone_name(b), "{a} vs {b}");
        }
        assert_eq!(normalize_zone_name("Tboard_tegra"), "tboard");
        assert_eq!(normalize_zone_name("cpu-thermal"), "cpu");
    }

    #[test]
    fn temp_text_parses_to_celsius_or_offline() {
        assert_eq!(
            parse_zone_temp("77281\n"),
            ZoneState::Online { celsius: 77.281 }
        );
        assert_eq!(
            parse_zone_temp("-256000\n"),
            ZoneState::Offline(OfflineReason::PoweredOff)
        );
        assert_eq!(
            parse_zone_temp("-5000\n"),
            ZoneState::Online { celsius: -5.0 }
        );
        assert!(matches!(
            parse_zone_temp(""),
            ZoneState::Offline(OfflineReason::Unparsable(_))
        ));
        assert!(matches!(
            parse_zone_temp("N/A"),
            ZoneState::Offline(OfflineReason::Unparsable(_))
        ));
    }

    #[test]
    fn nano_boards_suggest_ignoring_the_dead_cv_zones() {
        assert_eq!(
            suggested_ignore_zones("NVIDIA Jetson Orin Nano Developer Kit"),
            ["cv0", "cv1", "cv2"]
        );
        assert!(suggested_ignore_zones("NVIDIA Jetson AGX Orin Developer Kit").is_empty());
    }

    #[tokio::test]
    async fn r36_zones_match_the_loaded_tegrastats_capture() {
        let board = Board::copy("jetson-agx-orin");
        let zones = read_zones(&reader(&board), &[]).await.unwrap();
        let names: Vec<_> = zones.iter().map(|z| z.name.as_str()).collect();
        assert_eq!(
            names,
            ["cpu", "gpu", "cv0", "cv1", "cv2", "soc0", "soc1", "soc2", "tj", "tboard", "tdiode"]
        );
        assert_eq!(zones[0].kind, "cpu-thermal");
        assert_eq!(zones[10].index, 10);
        // Every zone is online in this capture (DLA active); values from the README.
        let expected = [
            ("cpu", 77.281),
            ("gpu", 69.125),
            ("cv0", 73.625),
            ("cv1", 72.5),
            ("cv2", 67.25),
            ("soc0", 69.531),
            ("soc1", 68.968),
            ("soc2", 70.0),
            ("tj", 77.281),
            ("tboard", 62.0),
            ("tdiode", 62.25),
        ];
        for (zone, (name, celsius)) in zones.iter().zip(expected) {
            assert_eq!(zone.name, name);
            assert_eq!(zone.celsius(), Some(celsius), "{name}");
        }
    }

    #[tokio::test]
    async fn r35_offline_zones_are_offline_and_the_rest_match_tegrastats() {
        let board = Board::copy("jetson-agx-orin/l4t-r35");
        let zones = read_zones(&reader(&board), &[]).await.unwrap();
        assert_eq!(zones.len(), 11);
        assert_eq!(zones[0].kind, "CPU-therm");
        assert_eq!(zones[9].kind, "Tboard_tegra");
        let tegrastats =
            tegrastats_temps(&fixture_text("jetson-agx-orin/l4t-r35/tegrastats-idle.txt"));
        assert_eq!(tegrastats.len(), 11, "{tegrastats:?}");
        for zone in &zones {
            let shown = tegrastats[&zone.name];
            if shown == -256.0 {
                assert_eq!(
                    zone.state,
                    ZoneState::Offline(OfflineReason::PoweredOff),
                    "{}",
                    zone.name
                );
                assert_eq!(zone.celsius(), None);
            } else {
                assert_eq!(zone.celsius(), Some(shown), "{}", zone.name);
            }
        }
        let offline: Vec<_> = zones
            .iter()
            .filter(|z| z.is_offline())
            .map(|z| z.name.as_str())
            .collect();
        assert_eq!(offline, ["gpu", "cv0", "cv1", "cv2"]);
    }

    #[tokio::test]
    async fn ignored_zones_are_not_read() {
        let board = Board::copy("jetson-agx-orin");
        // A zone that would fail to read: the ignore list must keep it from being read.
        std::fs::remove_file(board.path("sysfs/devices/virtual/thermal/thermal_zone2/temp"))
            .unwrap();
        let ignore = vec!["CV0-therm".to_string(), "cv1".to_string()];
        let zones = read_zones(&reader(&board), &ignore).await.unwrap();
        assert_eq!(zones[2].state, ZoneState::Ignored);
        assert_eq!(zones[3].state, ZoneState::Ignored);
        assert_eq!(zones[4].celsius(), Some(67.25));
    }

    #[tokio::test]
    async fn failed_and_garbled_reads_are_offline() {
        let board = Board::copy("jetson-agx-orin");
        std::fs::remove_file(board.path("sysfs/devices/virtual/thermal/thermal_zone1/temp"))
            .unwrap();
        board.write(
            "sysfs/devices/virtual/thermal/thermal_zone2/temp",
            "garbage\n",
        );
        let zones = read_zones(&reader(&board), &[]).await.unwrap();
        match &zones[1].state {
            ZoneState::Offline(OfflineReason::ReadFailed(e)) => {
                assert!(e.contains("thermal_zone1/temp"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            zones[2].state,
            ZoneState::Offline(OfflineReason::Unparsable("garbage".into()))
        );
        assert_eq!(zones[0].celsius(), Some(77.281));
    }

    #[tokio::test]
    async fn a_missing_thermal_class_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_zones(&SysfsReader::new(dir.path(), Duration::from_secs(1)), &[])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("class/thermal"), "{err}");
    }

    #[tokio::test]
    async fn trip_points_are_read_for_both_layouts() {
        for board in ["jetson-agx-orin", "jetson-agx-orin/l4t-r35"] {
            let board = Board::copy(board);
            let info = read_zone_info(&reader(&board)).await.unwrap();
            assert_eq!(info.len(), 11);
            let by_name: BTreeMap<_, _> = info.iter().map(|z| (z.name.as_str(), z)).collect();
            // SoC zones: critical 104.5 and passive 99; tj: critical only;
            // tboard/tdiode: critical 107 (upstream DT values, §4 of the README).
            let cpu = &by_name["cpu"].trips;
            assert_eq!(cpu.len(), 2);
            assert_eq!((cpu[0].kind.as_str(), cpu[0].celsius), ("critical", 104.5));
            assert_eq!((cpu[1].kind.as_str(), cpu[1].celsius), ("passive", 99.0));
            assert_eq!(cpu[0].hysteresis_c, Some(0.0));
            let tj = &by_name["tj"].trips;
            assert_eq!(tj.len(), 1);
            assert_eq!((tj[0].kind.as_str(), tj[0].celsius), ("critical", 104.5));
            for z in ["tboard", "tdiode"] {
                let t = &by_name[z].trips;
                assert_eq!(t.len(), 1, "{z}");
                assert_eq!(
                    (t[0].kind.as_str(), t[0].celsius),
                    ("critical", 107.0),
                    "{z}"
                );
            }
        }
    }
}
