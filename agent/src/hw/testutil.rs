//! Test support: the repository's Jetson fixtures (`tests/fixtures/jetson`), copied into a temporary directory with
//! their symlinks made real, and small stand-in programs for nvpmodel/jetson_clocks.
//!
//! The fixture trees may arrive with each symlink flattened into a regular file that
//! holds the link target (a checkout without symlink support does that). A real board
//! has real symlinks (`class/hwmon/hwmon2` → `../../devices/…`), and the code under test
//! must follow them, so the copy turns such files back into symlinks.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The Jetson fixtures in the repository (`tests/fixtures/jetson`), or
/// `FLEET_FIXTURES_DIR` when set.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("FLEET_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jetson"))
}

/// A path inside the fixtures.
pub fn fixture(relative: &str) -> PathBuf {
    fixtures_dir().join(relative)
}

/// A fixture file's text.
pub fn fixture_text(relative: &str) -> String {
    let path = fixture(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A copy of one board's fixture directory with real symlinks.
pub struct Board {
    pub dir: tempfile::TempDir,
}

impl Board {
    /// Copies `fixtures/<relative>` (e.g. `jetson-agx-orin` or `jetson-agx-orin/l4t-r35`).
    pub fn copy(relative: &str) -> Board {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = fixture(relative);
        copy_tree(&src, &src, dir.path());
        Board { dir }
    }

    /// The board's identity root (stands for `/`).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The board's sysfs root (stands for `/sys`).
    pub fn sysfs(&self) -> PathBuf {
        self.dir.path().join("sysfs")
    }

    /// A file under the board's copy.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Overwrites a file under the board's copy.
    pub fn write(&self, relative: &str, text: &str) {
        let path = self.path(relative);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// Whether a regular fixture file is a flattened symlink: one line of path text with
/// no trailing newline (sysfs text attributes end in one, device-tree strings in NUL)
/// that names an existing entry relative to the file's directory.
fn flattened_link_target(src_root: &Path, file: &Path) -> Option<String> {
    let bytes = std::fs::read(file).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    if text.is_empty() || text.contains(['\n', '\0', ' ', '\t']) {
        return None;
    }
    let target = file.parent()?.join(text);
    let resolved = normalize(&target);
    (resolved.starts_with(normalize(src_root)) && resolved.exists()).then(|| text.to_string())
}

/// Resolves `.` and `..` lexically (the targets may themselves pass through flattened
/// links, so the filesystem cannot resolve them).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn copy_tree(src_root: &Path, src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from).unwrap(), &to).unwrap();
        } else if kind.is_dir() {
            copy_tree(src_root, &from, &to);
        } else if let Some(target) = flattened_link_target(src_root, &from) {
            std::os::unix::fs::symlink(target, &to).unwrap();
        } else {
            std::fs::copy(&from, &to).unwrap();
            let mut perms = std::fs::metadata(&to).unwrap().permissions();
            perms.set_mode(0o644);
            std::fs::set_permissions(&to, perms).unwrap();
        }
    }
    let mut perms = std::fs::metadata(dst).unwrap().permissions();
    perms.set_mode(0o755);
    std::fs::set_permissions(dst, perms).unwrap();
}

/// A zone whose `temp` is a FIFO: opening it for reading blocks until a writer comes,
/// as a dead sensor's read blocks in the kernel.
///
/// Dropping it lets any blocked read return, so the runtime can shut down even when a
/// test fails half-way (a runtime waits for its blocking threads).
pub struct HungZone {
    /// The path the sensors read it by (through `class/thermal`).
    pub path: PathBuf,
}

impl HungZone {
    pub fn new(board: &Board, zone: u32) -> HungZone {
        let temp = board.path(&format!(
            "sysfs/devices/virtual/thermal/thermal_zone{zone}/temp"
        ));
        std::fs::remove_file(&temp).unwrap();
        let c_path = std::ffi::CString::new(temp.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path and a plain mode.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        HungZone {
            path: board.path(&format!("sysfs/class/thermal/thermal_zone{zone}/temp")),
        }
    }

    /// Lets a blocked read return (with no data). Opening the write end without
    /// blocking fails when no reader waits, which is then nothing to release.
    pub fn release(&self) {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path);
    }
}

impl Drop for HungZone {
    fn drop(&mut self) {
        self.release();
    }
}

/// Waits for `task` on tokio's paused clock while a read of `hung` hangs.
///
/// A blocking read in flight keeps the paused clock from jumping ahead by itself, so
/// the clock is moved by hand, past the read timeout, but only at moments when the hung
/// read is the only one in flight: moving it while a healthy read runs would time that
/// read out too.
pub async fn drive_past_hung_read<T>(
    reader: &crate::hw::sysfs::SysfsReader,
    hung: &Path,
    task: tokio::task::JoinHandle<T>,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !task.is_finished() {
        tokio::task::yield_now().await;
        std::thread::sleep(std::time::Duration::from_millis(2));
        let in_flight = reader.in_flight();
        if !in_flight.is_empty() && in_flight.iter().all(|p| p == hung) {
            tokio::time::advance(reader.timeout()).await;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task still running after 20 s; reads in flight: {in_flight:?}, waiting past {}",
            hung.display()
        );
    }
    task.await.expect("task panicked")
}

/// Stand-in programs for the tools, written once per test process.
///
/// They are all written before the first one runs: a test thread that forks while
/// another thread still holds a freshly written script open for writing makes `exec`
/// of that script fail with ETXTBSY, so no script is written after any has run.
pub fn script(name: &str) -> PathBuf {
    static SCRIPTS: OnceLock<(tempfile::TempDir, BTreeMap<&'static str, PathBuf>)> =
        OnceLock::new();
    let (_, paths) = SCRIPTS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut paths = BTreeMap::new();
        for (name, body) in scripts() {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            paths.insert(name, path);
        }
        (dir, paths)
    });
    paths
        .get(name)
        .unwrap_or_else(|| panic!("no test script {name}"))
        .clone()
}

/// A test's own instance of a stand-in program: a symlink to the shared script in a
/// fresh directory. Scripts keep their state beside `$0`, so each instance has its own
/// state, and a symlink is made without opening the script for writing.
pub struct ScriptInstance {
    pub dir: tempfile::TempDir,
    pub program: PathBuf,
}

impl ScriptInstance {
    pub fn new(name: &str) -> ScriptInstance {
        let shared = script(name);
        let dir = tempfile::tempdir().expect("tempdir");
        let program = dir.path().join(name);
        std::os::unix::fs::symlink(&shared, &program).unwrap();
        ScriptInstance { dir, program }
    }

    /// A file the script keeps beside itself (`state`, `answer`).
    pub fn side_file(&self, suffix: &str) -> PathBuf {
        let mut name = self.program.as_os_str().to_owned();
        name.push(".");
        name.push(suffix);
        PathBuf::from(name)
    }
}

fn scripts() -> Vec<(&'static str, String)> {
    let agx = fixture("jetson-agx-orin").display().to_string();
    let nx = fixture("jetson-orin-nx-16gb").display().to_string();
    vec![
        // nvpmodel -q as captured on each board.
        ("nvpmodel-q-agx", format!("cat '{agx}/nvpmodel/q.txt'\n")),
        ("nvpmodel-q-nx", format!("cat '{nx}/nvpmodel/q.txt'\n")),
        (
            "nvpmodel-q-xavier",
            format!("cat '{agx}/nvpmodel/q.agx-xavier-l4t-r32.txt'\n"),
        ),
        ("nvpmodel-q-garbage", "echo 'something else'\n".to_string()),
        ("nvpmodel-hangs", "sleep 30\n".to_string()),
        // nvpmodel -m that asks for a reboot, reading the answer like the real tool:
        // YES/yes reboots, an empty stdin is "bad input", anything else declines.
        // The answer is recorded so a test can see what the runner typed.
        (
            "nvpmodel-reboot-prompt",
            r#"case "$1" in
  -q) printf 'NV Power Mode: MODE_30W\n2\n'; exit 0 ;;
esac
echo 'NVPM WARN: Golden image context is already created'
echo "NVPM WARN: Reboot required for changing to this power mode: $2"
printf 'NVPM WARN: DO YOU WANT TO REBOOT NOW? enter YES/yes to confirm:\n'
if ! read answer; then
  echo "<eof>" > "$0.answer"
  echo 'NVPM ERROR: bad input!'
  echo 'NVPM ERROR: optMask is 1, no request for power mode'
  exit 1
fi
echo "$answer" > "$0.answer"
case "$answer" in
  YES|yes) echo 'NVPM WARN: rebooting'; exit 0 ;;
esac
echo 'NVPM ERROR: optMask is 1, no request for power mode'
exit 1
"#
            .to_string(),
        ),
        // nvpmodel -m that fails on a sysfs write (the Orin Nano capture) but exits 0:
        // the runner must go by the text.
        (
            "nvpmodel-write-error",
            format!(
                "case \"$1\" in -q) cat '{agx}/nvpmodel/q.txt'; exit 0 ;; esac\n\
                 cat '{agx}/nvpmodel/m-write-error.orin-nano-4gb.txt'\nexit 0\n"
            ),
        ),
        // nvpmodel -m that prints nothing (success) and switches a state file, and -q
        // that reads it back.
        (
            "nvpmodel-stateful",
            r#"state="$0.state"
[ -f "$state" ] || echo 2 > "$state"
case "$1" in
  -q) id=$(cat "$state")
      case "$id" in 0) n=MAXN ;; 1) n=MODE_15W ;; 2) n=MODE_30W ;; 3) n=MODE_50W ;; esac
      printf 'NV Power Mode: %s\n%s\n' "$n" "$id" ;;
  -m) echo "$2" > "$state" ;;
esac
"#
            .to_string(),
        ),
        // nvpmodel -m that prints nothing and does not switch: the read-back must catch it.
        (
            "nvpmodel-silent-noop",
            format!("case \"$1\" in -q) cat '{agx}/nvpmodel/q.txt' ;; esac\nexit 0\n"),
        ),
        // jetson_clocks: --show prints the fixture for the current state; no arguments
        // lock; --store writes the example store file; --restore unlocks.
        ("jetson-clocks-stateful", jetson_clocks_script(&agx, false)),
        // The same, but --restore fails to write a file and still exits 0 (the R35 quirk).
        (
            "jetson-clocks-restore-lies",
            jetson_clocks_script(&agx, true),
        ),
    ]
}

fn jetson_clocks_script(agx: &str, restore_lies: bool) -> String {
    let restore = if restore_lies {
        "echo \"Restoring system configuration from $2\"\n    \
         echo 'Error: Failed to restore /sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq'\n    \
         exit 0"
            .to_string()
    } else {
        "[ -f \"$2\" ] || { echo \"Error: $2 file not found !\"; exit 1; }\n    \
         echo \"Restoring system configuration from $2\"\n    \
         echo unlocked > \"$state\""
            .to_string()
    };
    format!(
        r#"state="$0.state"
[ -f "$state" ] || echo unlocked > "$state"
case "$1" in
  --show)
    if [ "$(cat "$state")" = locked ]; then cat '{agx}/jetson_clocks/show-after-run.txt'
    else cat '{agx}/jetson_clocks-show.txt'; fi ;;
  --store)
    if [ -f "$2" ]; then
      printf 'File %s already exists. Can I overwrite it? Y/N:' "$2"
      read answer || answer=
      case "$answer" in y|Y) ;; *) echo "Error: file $2 already exists!"; exit 1 ;; esac
    fi
    echo "Storing system configuration in $2"
    cat '{agx}/jetson_clocks/store-example.conf' > "$2" ;;
  --restore)
    {restore} ;;
  "") echo locked > "$state" ;;
  *) echo "Unknown option: $1"; exit 0 ;;
esac
"#
    )
}
