//! hwmon sensors found by their `name` and label files, never by `hwmonN` number:
//! the INA3221 power monitors (rails in watts) and the fan (`pwmfan` duty, `pwm_tach`
//! speed).
//!
//! hwmon numbers follow probe order and differ between boards and boots (the same
//! INA3221 at 0x40 is `hwmon2` on one AGX Orin and `hwmon3` on another; numbers can have
//! gaps), so a device is known by its `name` file and, for the power monitors, by the
//! I²C client directory it hangs off (`1-0040`).

use std::path::PathBuf;

use super::sysfs::{trailing_number, ReadError, SysfsReader};

/// The hwmon `name` of the INA3221 power monitor driver.
pub const INA3221: &str = "ina3221";
/// The hwmon `name` of the PWM fan driver.
pub const PWM_FAN: &str = "pwmfan";
/// The hwmon `name` of the fan tachometer driver.
pub const PWM_TACH: &str = "pwm_tach";

/// Rails that measure the whole board's input, used as the total when present
/// (`VDD_IN` on Orin NX/Nano, `POM_5V_IN` on older modules). The AGX Orin has none,
/// and its total is the sum of its rails.
pub const INPUT_RAILS: [&str; 2] = ["VDD_IN", "POM_5V_IN"];

/// One hwmon device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwmonDevice {
    /// `<sysfs>/class/hwmon/hwmonN`, for reading its files.
    pub dir: PathBuf,
    /// The contents of its `name` file.
    pub name: String,
    /// The directory of the device it belongs to (`1-0040` for an I²C chip,
    /// `pwm-fan`), which, unlike the number, is stable.
    pub device: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HwmonError {
    #[error("could not list the hwmon devices")]
    List(#[source] ReadError),
    #[error(
        "no hwmon device named {name:?} under {class}; this board has no such sensor, \
         or the sysfs root is not a Jetson's"
    )]
    NotFound { name: &'static str, class: PathBuf },
}

/// Every hwmon device whose `name` is `name`, ordered by the device they belong to
/// (so `1-0040` comes before `1-0041` whatever their hwmon numbers).
pub async fn find_hwmon(reader: &SysfsReader, name: &str) -> Result<Vec<HwmonDevice>, ReadError> {
    let class = reader.path("class/hwmon");
    let mut found = Vec::new();
    for entry in reader.list_dir(&class).await? {
        if trailing_number(&entry, "hwmon").is_none() {
            continue;
        }
        let dir = class.join(&entry);
        let Ok(device_name) = reader.read_text(&dir.join("name")).await else {
            continue;
        };
        if device_name != name {
            continue;
        }
        // `…/1-0040/hwmon/hwmon2` → `1-0040`.
        let device = reader.canonicalize(&dir).await.ok().and_then(|real| {
            Some(
                real.parent()?
                    .parent()?
                    .file_name()?
                    .to_string_lossy()
                    .into_owned(),
            )
        });
        found.push(HwmonDevice {
            dir,
            name: device_name,
            device,
        });
    }
    found.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(found)
}

/// One INA3221 channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Rail {
    /// The channel's label (`VDD_GPU_SOC`).
    pub name: String,
    /// The I²C client of the chip (`1-0040`).
    pub chip: Option<String>,
    /// The channel number K of `inK_label`.
    pub channel: u32,
    pub volts: f64,
    pub amps: f64,
    pub watts: f64,
}

/// How a [`PowerReading`]'s total was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TotalSource {
    /// A rail that measures the board's input (`VDD_IN`).
    InputRail(String),
    /// No input rail: the sum of all rails (what jtop shows on an AGX Orin).
    SumOfRails,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PowerReading {
    pub rails: Vec<Rail>,
    pub total_watts: f64,
    pub total_source: TotalSource,
}

/// Whether an INA3221 channel label names a real rail: `NC` is an unconnected channel
/// and `sum of shunt voltages` (channel 7) a summary channel.
pub fn is_rail_label(label: &str) -> bool {
    let label = label.trim();
    !label.is_empty() && label != "NC" && !label.starts_with("sum of")
}

/// Power in watts from the INA3221 units: bus voltage in mV and current in mA.
pub fn rail_watts(millivolts: i64, milliamps: i64) -> f64 {
    millivolts as f64 * milliamps as f64 / 1_000_000.0
}

/// Reads every rail of every INA3221. A rail whose files cannot be read is left out
/// (and logged), so one bad channel does not hide the others.
pub async fn read_power(reader: &SysfsReader) -> Result<PowerReading, HwmonError> {
    let chips = find_hwmon(reader, INA3221)
        .await
        .map_err(HwmonError::List)?;
    if chips.is_empty() {
        return Err(HwmonError::NotFound {
            name: INA3221,
            class: reader.path("class/hwmon"),
        });
    }
    let mut rails = Vec::new();
    for chip in &chips {
        let files = reader.list_dir(&chip.dir).await.unwrap_or_default();
        let mut channels: Vec<u32> = files
            .iter()
            .filter_map(|f| f.strip_prefix("in")?.strip_suffix("_label")?.parse().ok())
            .collect();
        channels.sort_unstable();
        for k in channels {
            let Ok(label) = reader
                .read_text(&chip.dir.join(format!("in{k}_label")))
                .await
            else {
                continue;
            };
            if !is_rail_label(&label) {
                continue;
            }
            let volts = reader
                .read_i64(&chip.dir.join(format!("in{k}_input")))
                .await;
            let amps = reader
                .read_i64(&chip.dir.join(format!("curr{k}_input")))
                .await;
            match (volts, amps) {
                (Ok(mv), Ok(ma)) => rails.push(Rail {
                    name: label,
                    chip: chip.device.clone(),
                    channel: k,
                    volts: mv as f64 / 1000.0,
                    amps: ma as f64 / 1000.0,
                    watts: rail_watts(mv, ma),
                }),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(rail = %label, error = %super::thermal::error_chain(&e), "power rail unreadable; left out");
                }
            }
        }
    }
    let (total_watts, total_source) = match rails
        .iter()
        .find(|r| INPUT_RAILS.contains(&r.name.as_str()))
    {
        Some(input) => (input.watts, TotalSource::InputRail(input.name.clone())),
        None => (rails.iter().map(|r| r.watts).sum(), TotalSource::SumOfRails),
    };
    Ok(PowerReading {
        rails,
        total_watts,
        total_source,
    })
}

/// The fan: duty from `pwmfan`, speed from `pwm_tach`, each when present.
#[derive(Debug, Clone, PartialEq)]
pub struct FanReading {
    /// PWM duty 0–255 of the first `pwmN` of the first `pwmfan` device.
    pub pwm: Option<u8>,
    /// The same duty in percent.
    pub duty_percent: Option<f64>,
    pub rpm: Option<u32>,
}

/// Reads the fan. Errors only when the board has neither a `pwmfan` nor a `pwm_tach`.
pub async fn read_fan(reader: &SysfsReader) -> Result<FanReading, HwmonError> {
    let fans = find_hwmon(reader, PWM_FAN)
        .await
        .map_err(HwmonError::List)?;
    let tachs = find_hwmon(reader, PWM_TACH)
        .await
        .map_err(HwmonError::List)?;
    if fans.is_empty() && tachs.is_empty() {
        return Err(HwmonError::NotFound {
            name: PWM_FAN,
            class: reader.path("class/hwmon"),
        });
    }
    let mut pwm = None;
    if let Some(fan) = fans.first() {
        let files = reader.list_dir(&fan.dir).await.unwrap_or_default();
        // `pwm1`, not `pwm1_enable`.
        if let Some(first) = files.iter().find(|f| trailing_number(f, "pwm").is_some()) {
            pwm = reader
                .read_i64(&fan.dir.join(first))
                .await
                .ok()
                .and_then(|v| u8::try_from(v).ok());
        }
    }
    let mut rpm = None;
    if let Some(tach) = tachs.first() {
        rpm = reader
            .read_i64(&tach.dir.join("rpm"))
            .await
            .ok()
            .and_then(|v| u32::try_from(v).ok());
    }
    Ok(FanReading {
        pwm,
        duty_percent: pwm.map(|p| p as f64 * 100.0 / 255.0),
        rpm,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hw::testutil::{fixture_text, Board};

    fn reader(board: &Board) -> SysfsReader {
        SysfsReader::new(board.sysfs(), Duration::from_secs(10))
    }

    /// Rail powers as tegrastats printed them (`VDD_GPU_SOC 2399mW/2399mW`).
    fn tegrastats_rails(line: &str) -> Vec<(String, f64)> {
        let words: Vec<_> = line.split_whitespace().collect();
        words
            .windows(2)
            .filter_map(|w| {
                let mw = w[1].split_once("mW/")?.0.parse::<f64>().ok()?;
                Some((w[0].to_string(), mw))
            })
            .filter(|(name, _)| name != "NC")
            .collect()
    }

    #[tokio::test]
    async fn devices_are_found_by_name_whatever_their_number() {
        // R36: pwmfan is hwmon0, ina3221 hwmon2/3. R35: pwmfan hwmon2, ina3221 hwmon3/4,
        // and no hwmon1 at all.
        for (board, fan_number) in [
            ("jetson-agx-orin", "hwmon0"),
            ("jetson-agx-orin/l4t-r35", "hwmon2"),
        ] {
            let board = Board::copy(board);
            let r = reader(&board);
            let chips = find_hwmon(&r, INA3221).await.unwrap();
            let devices: Vec<_> = chips.iter().map(|c| c.device.as_deref().unwrap()).collect();
            assert_eq!(devices, ["1-0040", "1-0041"]);
            let fans = find_hwmon(&r, PWM_FAN).await.unwrap();
            assert_eq!(fans.len(), 1);
            assert!(fans[0].dir.ends_with(fan_number), "{:?}", fans[0].dir);
            assert_eq!(fans[0].device.as_deref(), Some("pwm-fan"));
            assert!(find_hwmon(&r, "nvme").await.unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn r36_rails_match_the_loaded_tegrastats_figures() {
        let board = Board::copy("jetson-agx-orin");
        let power = read_power(&reader(&board)).await.unwrap();
        // mW from the README: VDD_GPU_SOC 3150, VDD_CPU_CV 14312, VIN_SYS_5V0 4968,
        // VDDQ_VDD2_1V8AO 1091 (the made-up V and I give these within 2 mW). NC channels
        // and the shunt-sum channel are skipped.
        let expected = [
            ("VDD_GPU_SOC", "1-0040", 1, 3150.0),
            ("VDD_CPU_CV", "1-0040", 2, 14312.0),
            ("VIN_SYS_5V0", "1-0040", 3, 4968.0),
            ("VDDQ_VDD2_1V8AO", "1-0041", 2, 1091.0),
        ];
        assert_eq!(power.rails.len(), expected.len(), "{:?}", power.rails);
        for (rail, (name, chip, channel, mw)) in power.rails.iter().zip(expected) {
            assert_eq!(
                (rail.name.as_str(), rail.chip.as_deref(), rail.channel),
                (name, Some(chip), channel)
            );
            assert!(
                (rail.watts * 1000.0 - mw).abs() <= 2.0,
                "{rail:?} vs {mw} mW"
            );
        }
        // No input rail on an AGX Orin: the total is the sum.
        assert_eq!(power.total_source, TotalSource::SumOfRails);
        assert!((power.total_watts - (3.150 + 14.312 + 4.968 + 1.091)).abs() < 0.01);
        let gpu = &power.rails[0];
        assert_eq!(gpu.volts, 4.984);
        assert_eq!(gpu.amps, 0.632);
    }

    #[tokio::test]
    async fn r35_rails_match_the_idle_tegrastats_line() {
        let board = Board::copy("jetson-agx-orin/l4t-r35");
        let power = read_power(&reader(&board)).await.unwrap();
        let expected =
            tegrastats_rails(&fixture_text("jetson-agx-orin/l4t-r35/tegrastats-idle.txt"));
        assert_eq!(expected.len(), 4, "{expected:?}");
        let names: Vec<_> = power.rails.iter().map(|r| r.name.as_str()).collect();
        let expected_names: Vec<_> = expected.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, expected_names);
        for (rail, (_, mw)) in power.rails.iter().zip(&expected) {
            assert!(
                (rail.watts * 1000.0 - mw).abs() <= 2.0,
                "{rail:?} vs {mw} mW"
            );
        }
        assert_eq!(power.total_source, TotalSource::SumOfRails);
    }

    #[tokio::test]
    async fn an_input_rail_is_the_total_when_present() {
        let board = Board::copy("jetson-agx-orin");
        // An Orin NX carries VDD_IN on channel 1 of 0x40.
        board.write(
            "sysfs/devices/platform/bus@0/c240000.i2c/i2c-1/1-0040/hwmon/hwmon2/in1_label",
            "VDD_IN\n",
        );
        let power = read_power(&reader(&board)).await.unwrap();
        assert_eq!(power.total_source, TotalSource::InputRail("VDD_IN".into()));
        assert_eq!((power.total_watts * 1000.0).round(), 3150.0);
    }

    #[tokio::test]
    async fn an_unreadable_rail_is_left_out() {
        let board = Board::copy("jetson-agx-orin");
        std::fs::remove_file(board.path(
            "sysfs/devices/platform/bus@0/c240000.i2c/i2c-1/1-0040/hwmon/hwmon2/curr2_input",
        ))
        .unwrap();
        let power = read_power(&reader(&board)).await.unwrap();
        let names: Vec<_> = power.rails.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["VDD_GPU_SOC", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]);
    }

    #[tokio::test]
    async fn fan_duty_and_speed_on_both_layouts() {
        for (board, pwm, rpm) in [
            ("jetson-agx-orin", 48, 1037),
            ("jetson-agx-orin/l4t-r35", 55, 1158),
        ] {
            let board = Board::copy(board);
            let fan = read_fan(&reader(&board)).await.unwrap();
            assert_eq!(fan.pwm, Some(pwm));
            assert_eq!(fan.rpm, Some(rpm));
            assert!((fan.duty_percent.unwrap() - pwm as f64 / 2.55).abs() < 1e-9);
        }
    }

    #[tokio::test]
    async fn a_board_without_sensors_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("class/hwmon")).unwrap();
        let r = SysfsReader::new(dir.path(), Duration::from_secs(1));
        let err = read_power(&r).await.unwrap_err();
        assert!(err.to_string().contains("ina3221"), "{err}");
        assert!(read_fan(&r).await.is_err());
    }
}
