//! Bounded reads of sysfs attributes: every read runs on tokio's blocking pool under a
//! timeout, so a driver that never answers cannot stall the sampler.
//!
//! Some Jetson sensors hang the reading thread instead of failing (Prometheus'
//! node_exporter hung on the dead `cv*` zones of an Orin Nano). A timed-out read leaves
//! its blocking thread stuck in the kernel, so the reader remembers which reads hung and
//! does not start another read of such a file until the hung one returns: one hung file
//! costs one thread, not one thread per sample.

use std::collections::{HashMap, HashSet};
use std::io;
use std::num::ParseIntError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What can go wrong reading one sysfs file or directory.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("could not read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "reading {path} did not finish within {timeout:?}; the driver behind it may be hung \
         (the reading is treated as missing)"
    )]
    TimedOut { path: PathBuf, timeout: Duration },
    #[error(
        "an earlier read of {path} has not returned yet; the driver behind it is hung \
         (the reading is treated as missing until that read returns)"
    )]
    StillHung { path: PathBuf },
    #[error("{path} holds {text:?}, which is not an integer")]
    NotAnInteger {
        path: PathBuf,
        text: String,
        #[source]
        source: ParseIntError,
    },
    #[error("the blocking read of {path} was cancelled (is the runtime shutting down?)")]
    Cancelled {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl ReadError {
    /// The file or directory the failed read was about.
    pub fn path(&self) -> &Path {
        match self {
            ReadError::Io { path, .. }
            | ReadError::TimedOut { path, .. }
            | ReadError::StillHung { path }
            | ReadError::NotAnInteger { path, .. }
            | ReadError::Cancelled { path, .. } => path,
        }
    }

    /// True when the file exists no more (or never did), as opposed to a file that
    /// exists but cannot be read.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// True when the read hung (timed out now, or an earlier read has not returned).
    pub fn is_hung(&self) -> bool {
        matches!(
            self,
            ReadError::TimedOut { .. } | ReadError::StillHung { .. }
        )
    }
}

/// Reads files under a sysfs root with a timeout per read. Cheap to clone; clones share
/// the record of reads in flight and of reads that hung.
#[derive(Debug, Clone)]
pub struct SysfsReader {
    root: PathBuf,
    timeout: Duration,
    reads: Arc<Mutex<Reads>>,
}

/// Reads that have started and not returned, and among them those that outlived their
/// timeout. Several reads of one path may run at once (two sensors listing
/// `class/hwmon`); only a read that has already hung blocks further reads of its path.
#[derive(Debug, Default)]
struct Reads {
    in_flight: HashMap<PathBuf, usize>,
    hung: HashSet<PathBuf>,
}

/// Marks the end of one read, whenever its blocking thread gets there (possibly long
/// after the caller gave up waiting).
struct ReadEnd {
    path: PathBuf,
    reads: Arc<Mutex<Reads>>,
    done: Arc<AtomicBool>,
}

impl Drop for ReadEnd {
    fn drop(&mut self) {
        let mut reads = lock(&self.reads);
        self.done.store(true, Ordering::SeqCst);
        if let Some(n) = reads.in_flight.get_mut(&self.path) {
            *n -= 1;
            if *n == 0 {
                reads.in_flight.remove(&self.path);
            }
        }
        reads.hung.remove(&self.path);
    }
}

fn lock(reads: &Mutex<Reads>) -> std::sync::MutexGuard<'_, Reads> {
    reads
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SysfsReader {
    /// A reader for the tree mounted at `root` (`/sys` on a board).
    pub fn new(root: impl Into<PathBuf>, timeout: Duration) -> Self {
        SysfsReader {
            root: root.into(),
            timeout,
            reads: Arc::default(),
        }
    }

    /// The sysfs mount point this reader works under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The timeout applied to every read.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Files with a read that has started and not returned, hung ones included.
    pub fn in_flight(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = lock(&self.reads).in_flight.keys().cloned().collect();
        paths.sort();
        paths
    }

    /// Files whose read outlived its timeout and has still not returned.
    pub fn hung(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = lock(&self.reads).hung.iter().cloned().collect();
        paths.sort();
        paths
    }

    /// `relative` under the root (`"class/thermal"` → `/sys/class/thermal`).
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    async fn blocking<T, F>(&self, path: &Path, op: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&Path) -> io::Result<T> + Send + 'static,
    {
        let done = Arc::new(AtomicBool::new(false));
        let end = {
            let mut reads = lock(&self.reads);
            if reads.hung.contains(path) {
                return Err(ReadError::StillHung {
                    path: path.to_path_buf(),
                });
            }
            *reads.in_flight.entry(path.to_path_buf()).or_default() += 1;
            ReadEnd {
                path: path.to_path_buf(),
                reads: Arc::clone(&self.reads),
                done: Arc::clone(&done),
            }
        };
        let owned = path.to_path_buf();
        let task = tokio::task::spawn_blocking(move || {
            let result = op(&end.path);
            drop(end);
            result
        });
        match tokio::time::timeout(self.timeout, task).await {
            Err(_elapsed) => {
                let mut reads = lock(&self.reads);
                // Checked under the lock the read's end also takes, so a read that ends
                // right now is never left marked as hung.
                if !done.load(Ordering::SeqCst) {
                    reads.hung.insert(owned.clone());
                }
                Err(ReadError::TimedOut {
                    path: owned,
                    timeout: self.timeout,
                })
            }
            Ok(Err(join)) => Err(ReadError::Cancelled {
                path: owned,
                source: join,
            }),
            Ok(Ok(Err(source))) => Err(ReadError::Io {
                path: owned,
                source,
            }),
            Ok(Ok(Ok(value))) => Ok(value),
        }
    }

    /// The raw bytes of a file.
    pub async fn read_bytes(&self, path: &Path) -> Result<Vec<u8>, ReadError> {
        self.blocking(path, |p| std::fs::read(p)).await
    }

    /// A text attribute without its trailing newline, NUL bytes and surrounding blanks.
    /// Device-tree strings end in NUL rather than a newline; both are stripped.
    pub async fn read_text(&self, path: &Path) -> Result<String, ReadError> {
        let bytes = self.read_bytes(path).await?;
        Ok(clean_text(&bytes))
    }

    /// An integer attribute.
    pub async fn read_i64(&self, path: &Path) -> Result<i64, ReadError> {
        let text = self.read_text(path).await?;
        parse_i64(path, &text)
    }

    /// The entry names of a directory, sorted with numbers in numeric order
    /// (`hwmon2` before `hwmon10`).
    pub async fn list_dir(&self, path: &Path) -> Result<Vec<String>, ReadError> {
        let mut names = self
            .blocking(path, |p| {
                let mut names = Vec::new();
                for entry in std::fs::read_dir(p)? {
                    names.push(entry?.file_name().to_string_lossy().into_owned());
                }
                Ok(names)
            })
            .await?;
        names.sort_by_key(|a| natural_key(a));
        Ok(names)
    }

    /// The path with every symlink resolved (`class/hwmon/hwmon2` → the device's own
    /// directory), so a device can be named by where it sits rather than by its number.
    pub async fn canonicalize(&self, path: &Path) -> Result<PathBuf, ReadError> {
        self.blocking(path, |p| std::fs::canonicalize(p)).await
    }

    /// Whether the path exists (following symlinks). A hung or failed check counts as
    /// absent.
    pub async fn exists(&self, path: &Path) -> bool {
        self.blocking(path, |p| Ok(p.exists()))
            .await
            .unwrap_or(false)
    }
}

/// Text of an attribute: NUL bytes removed, then surrounding whitespace trimmed.
pub fn clean_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.replace('\0', "").trim().to_string()
}

/// Parses an integer attribute, naming the file when it is not one.
pub fn parse_i64(path: &Path, text: &str) -> Result<i64, ReadError> {
    text.trim()
        .parse::<i64>()
        .map_err(|source| ReadError::NotAnInteger {
            path: path.to_path_buf(),
            text: text.to_string(),
            source,
        })
}

/// Splits a name into its text and the number at its end, for a natural sort.
pub(crate) fn natural_key(name: &str) -> (String, u64, String) {
    let digits_at = name
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let (stem, digits) = name.split_at(digits_at);
    match digits.parse::<u64>() {
        Ok(n) => (stem.to_string(), n, String::new()),
        Err(_) => (stem.to_string(), 0, digits.to_string()),
    }
}

/// The number at the end of a name such as `thermal_zone10` or `hwmon3`.
pub(crate) fn trailing_number(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_puts_numbers_in_numeric_order() {
        let mut names = vec![
            "thermal_zone10",
            "thermal_zone2",
            "cooling_device0",
            "thermal_zone0",
        ];
        names.sort_by_key(|a| natural_key(a));
        assert_eq!(
            names,
            [
                "cooling_device0",
                "thermal_zone0",
                "thermal_zone2",
                "thermal_zone10"
            ]
        );
    }

    #[test]
    fn clean_text_strips_newline_and_nul() {
        assert_eq!(clean_text(b"42593\n"), "42593");
        assert_eq!(clean_text(b"gpu\0"), "gpu");
        assert_eq!(clean_text(b"Jetson AGX Orin\0"), "Jetson AGX Orin");
    }

    #[test]
    fn non_numbers_name_the_file() {
        let err = parse_i64(Path::new("/sys/x/temp"), "N/A").unwrap_err();
        assert!(err.to_string().contains("/sys/x/temp"), "{err}");
        assert!(err.to_string().contains("N/A"), "{err}");
    }

    #[tokio::test]
    async fn concurrent_reads_of_one_file_are_not_mistaken_for_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("name"), "ina3221\n").unwrap();
        let reader = SysfsReader::new(dir.path(), Duration::from_secs(5));
        let path = reader.path("name");
        let reads = (0..8).map(|_| reader.read_text(&path));
        for result in futures_util::future::join_all(reads).await {
            assert_eq!(result.unwrap(), "ina3221");
        }
        assert!(reader.in_flight().is_empty());
    }

    #[tokio::test]
    async fn a_hung_read_blocks_only_its_own_file_until_it_returns() {
        let board = crate::hw::testutil::Board::copy("jetson-agx-orin");
        let hung = crate::hw::testutil::HungZone::new(&board, 1);
        let fifo = hung.path.clone();
        let reader = SysfsReader::new(board.sysfs(), Duration::from_secs(1));
        let err = reader.read_text(&fifo).await.unwrap_err();
        assert!(matches!(err, ReadError::TimedOut { .. }), "{err:?}");
        assert!(err.to_string().contains("thermal_zone1/temp"), "{err}");
        assert_eq!(reader.hung(), vec![fifo.clone()]);
        // No second thread is spent on the same hung file.
        let again = reader.read_text(&fifo).await.unwrap_err();
        assert!(matches!(again, ReadError::StillHung { .. }), "{again:?}");
        assert!(again.is_hung());
        // Other files read normally meanwhile.
        let other = reader.path("class/thermal/thermal_zone0/temp");
        assert_eq!(reader.read_i64(&other).await.unwrap(), 77281);
        // Once the stuck read returns, the file is read again.
        hung.release();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !reader.hung().is_empty() {
            assert!(std::time::Instant::now() < deadline, "{:?}", reader.hung());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(reader.in_flight().is_empty());
    }

    #[tokio::test]
    async fn missing_file_is_not_found() {
        let reader = SysfsReader::new("/nonexistent-sysfs-root", Duration::from_secs(1));
        let err = reader
            .read_text(&reader.path("class/thermal/thermal_zone0/temp"))
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
    }
}
