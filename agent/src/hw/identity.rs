//! Which board this is: the device-tree model (`<root>/proc/device-tree/model`) and the
//! L4T release (`<root>/etc/nv_tegra_release`).

use std::fmt;
use std::path::{Path, PathBuf};

use super::sysfs::clean_text;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardIdentity {
    /// `NVIDIA Jetson AGX Orin Developer Kit` (R36 devkit), `Jetson AGX Orin` (R35).
    pub model: String,
    /// The device-tree `compatible` list (`nvidia,tegra234` …), empty when absent.
    pub compatible: Vec<String>,
    /// None when `nv_tegra_release` is absent (not every image ships it).
    pub l4t: Option<L4tRelease>,
}

impl BoardIdentity {
    /// The SoC family from `compatible` (`tegra234` for every Orin), as jetson_clocks
    /// derives it.
    pub fn soc_family(&self) -> Option<&str> {
        self.compatible
            .iter()
            .find_map(|c| c.strip_prefix("nvidia,").filter(|s| s.starts_with("tegra")))
    }
}

/// The L4T release from the first line of `nv_tegra_release`:
/// `# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, …` is 36.4.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4tRelease {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub gcid: Option<String>,
    pub board: Option<String>,
}

impl fmt::Display for L4tRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "could not read the board model from {path}; this does not look like a Jetson \
         (set the identity root if the board's files live elsewhere)"
    )]
    Model {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read {path}")]
    Release {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: first line {line:?} is not `# R<major> (release), REVISION: <minor>.<patch>, …`"
    )]
    ReleaseFormat { path: PathBuf, line: String },
}

/// Parses the first line of `nv_tegra_release`. Later lines (`# KERNEL_VARIANT: oot`,
/// `TARGET_USERSPACE_LIB_DIR…` on R36) are ignored.
pub fn parse_nv_tegra_release(text: &str) -> Option<L4tRelease> {
    let line = text.lines().next()?.trim();
    let rest = line.strip_prefix('#')?.trim_start();
    let mut major = None;
    let mut revision = None;
    let mut gcid = None;
    let mut board = None;
    // jtop splits on ", ".
    for field in rest.split(", ") {
        let field = field.trim();
        if let Some(v) = field.strip_prefix("REVISION:") {
            revision = Some(v.trim().to_string());
        } else if let Some(r) = field
            .strip_prefix('R')
            .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        {
            // `R36 (release)`
            let digits: String = r.chars().take_while(|c| c.is_ascii_digit()).collect();
            major = digits.parse::<u32>().ok();
        } else if let Some(v) = field.strip_prefix("GCID:") {
            gcid = Some(v.trim().to_string());
        } else if let Some(v) = field.strip_prefix("BOARD:") {
            board = Some(v.trim().to_string());
        }
    }
    let revision = revision?;
    let (minor, patch) = revision.split_once('.').unwrap_or((&revision, "0"));
    Some(L4tRelease {
        major: major?,
        minor: minor.parse().ok()?,
        patch: patch.parse().ok()?,
        gcid,
        board,
    })
}

/// A device-tree string: the bytes up to the first NUL.
pub fn parse_dt_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    clean_text(&bytes[..end])
}

/// A NUL-separated device-tree string list (`compatible`).
pub fn parse_dt_string_list(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .map(clean_text)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Reads the identity under `root` (`/` on a board).
pub async fn read_identity(root: &Path) -> Result<BoardIdentity, IdentityError> {
    let model_path = root.join("proc/device-tree/model");
    let model = tokio::fs::read(&model_path)
        .await
        .map_err(|source| IdentityError::Model {
            path: model_path.clone(),
            source,
        })?;
    let compatible = tokio::fs::read(root.join("proc/device-tree/compatible"))
        .await
        .map(|b| parse_dt_string_list(&b))
        .unwrap_or_default();
    let release_path = root.join("etc/nv_tegra_release");
    let l4t = match tokio::fs::read_to_string(&release_path).await {
        Ok(text) => {
            Some(
                parse_nv_tegra_release(&text).ok_or_else(|| IdentityError::ReleaseFormat {
                    path: release_path.clone(),
                    line: text.lines().next().unwrap_or_default().to_string(),
                })?,
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(IdentityError::Release {
                path: release_path,
                source,
            })
        }
    };
    Ok(BoardIdentity {
        model: parse_dt_string(&model),
        compatible,
        l4t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::testutil::{fixture, fixture_text, Board};

    #[test]
    fn release_lines_of_both_boards() {
        let agx =
            parse_nv_tegra_release(&fixture_text("jetson-agx-orin/etc/nv_tegra_release")).unwrap();
        assert_eq!(agx.to_string(), "36.4.3");
        assert_eq!(agx.gcid.as_deref(), Some("38968081"));
        assert_eq!(agx.board.as_deref(), Some("generic"));
        let nx = parse_nv_tegra_release(&fixture_text("jetson-orin-nx-16gb/etc/nv_tegra_release"))
            .unwrap();
        assert_eq!(nx.to_string(), "36.5.0");
        // The R35 form (not captured; believed to be like this).
        let r35 = parse_nv_tegra_release(
            "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n",
        )
        .unwrap();
        assert_eq!((r35.major, r35.minor, r35.patch), (35, 4, 1));
        assert!(parse_nv_tegra_release("garbage").is_none());
        assert!(parse_nv_tegra_release("").is_none());
    }

    #[test]
    fn model_strings_end_at_the_nul() {
        let r36 = std::fs::read(fixture("jetson-agx-orin/proc/device-tree/model")).unwrap();
        assert_eq!(r36.last(), Some(&0));
        assert_eq!(
            parse_dt_string(&r36),
            "NVIDIA Jetson AGX Orin Developer Kit"
        );
        let r35 = std::fs::read(fixture("jetson-agx-orin/l4t-r35/proc/device-tree/model")).unwrap();
        assert_eq!(parse_dt_string(&r35), "Jetson AGX Orin");
    }

    #[test]
    fn compatible_is_a_nul_separated_list() {
        let bytes = std::fs::read(fixture("jetson-agx-orin/proc/device-tree/compatible")).unwrap();
        let list = parse_dt_string_list(&bytes);
        assert!(list.len() > 1, "{list:?}");
        assert!(list.iter().any(|c| c.contains("tegra234")), "{list:?}");
    }

    #[tokio::test]
    async fn identities_of_the_fixture_boards() {
        let agx = read_identity(&fixture("jetson-agx-orin")).await.unwrap();
        assert_eq!(agx.model, "NVIDIA Jetson AGX Orin Developer Kit");
        assert_eq!(agx.l4t.as_ref().unwrap().to_string(), "36.4.3");
        assert_eq!(agx.soc_family(), Some("tegra234"));
        // The R35 fixture has no nv_tegra_release: the release is unknown, not an error.
        let r35 = read_identity(&fixture("jetson-agx-orin/l4t-r35"))
            .await
            .unwrap();
        assert_eq!(r35.model, "Jetson AGX Orin");
        assert_eq!(r35.l4t, None);
        assert!(r35.compatible.is_empty());
    }

    #[tokio::test]
    async fn missing_model_and_bad_release_are_errors_naming_the_file() {
        let nx = read_identity(&fixture("jetson-orin-nx-16gb"))
            .await
            .unwrap_err();
        assert!(nx.to_string().contains("proc/device-tree/model"), "{nx}");
        let board = Board::copy("jetson-agx-orin");
        board.write("etc/nv_tegra_release", "R36 something\n");
        let err = read_identity(board.root()).await.unwrap_err();
        assert!(err.to_string().contains("nv_tegra_release"), "{err}");
    }
}
