//! The cgroup hierarchies of this machine and the testbed's subtree in them.
//!
//! Every process of a board lives under `/fleet-testbed/<run>/<board>` in each
//! hierarchy the board's systemd uses, so a board can be limited, counted and
//! killed as one, and left-overs of a crashed run can be found and reaped.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context as _};

/// The top of the testbed's subtree in every hierarchy.
pub const ROOT: &str = "fleet-testbed";

/// The cgroup v1 controllers a board's systemd manages, besides name=systemd.
/// cpuset is left out on purpose: a new cpuset cgroup has no CPUs until
/// someone fills `cpuset.cpus`, so joining one fails, and systemd 252 does not
/// use it on v1 anyway. freezer, perf_event and the like are not systemd's.
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "devices", "blkio"];

/// Controllers enabled for the testbed's subtree on a cgroup v2 machine.
const V2_CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io"];

/// One mounted hierarchy.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub mount: PathBuf,
    /// `None` for cgroup2, else the v1 controllers (`memory`, `name=systemd`).
    pub controllers: Option<Vec<String>>,
}

impl Hierarchy {
    fn is_unified(&self) -> bool {
        self.controllers.is_none()
    }

    fn is_named_systemd(&self) -> bool {
        self.controllers
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c == "name=systemd"))
    }

    /// The directory of `rel` (a path below the hierarchy's root) in it.
    pub fn dir(&self, rel: &str) -> PathBuf {
        self.mount.join(rel.trim_start_matches('/'))
    }
}

/// How systemd will see this machine's cgroups (its own words in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// cgroup2 on `/sys/fs/cgroup`.
    Unified,
    /// v1 controllers plus cgroup2 on `/sys/fs/cgroup/unified` for systemd.
    Hybrid,
    /// v1 only; systemd tracks processes in name=systemd.
    Legacy,
}

/// The hierarchies the testbed puts board processes in.
#[derive(Debug, Clone)]
pub struct Layout {
    pub mode: Mode,
    pub hierarchies: Vec<Hierarchy>,
    /// Index of the hierarchy that lists every board process: the one systemd
    /// tracks processes in (cgroup2 when there is one, else name=systemd).
    primary: usize,
}

impl Layout {
    /// Reads this machine's cgroup mounts from `/proc/self/mountinfo`.
    pub fn detect() -> anyhow::Result<Layout> {
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
        Self::from_mountinfo(&mountinfo)
    }

    fn from_mountinfo(mountinfo: &str) -> anyhow::Result<Layout> {
        let mut all = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let (Some(fstype), Some(_source), Some(options)) =
                (right.next(), right.next(), right.next())
            else {
                continue;
            };
            // systemd only ever looks below /sys/fs/cgroup.
            if !(mount == "/sys/fs/cgroup" || mount.starts_with("/sys/fs/cgroup/")) {
                continue;
            }
            let controllers = match fstype {
                "cgroup2" => None,
                "cgroup" => Some(
                    options
                        .split(',')
                        .filter(|o| o.starts_with("name=") || !is_mount_flag(o))
                        .map(str::to_owned)
                        .collect::<Vec<_>>(),
                ),
                _ => continue,
            };
            all.push(Hierarchy {
                mount: PathBuf::from(mount),
                controllers,
            });
        }

        if let Some(h) = all
            .iter()
            .find(|h| h.is_unified() && h.mount == Path::new("/sys/fs/cgroup"))
        {
            return Ok(Layout {
                mode: Mode::Unified,
                hierarchies: vec![h.clone()],
                primary: 0,
            });
        }
        let mut chosen = Vec::new();
        let mut seen = BTreeSet::new();
        for h in &all {
            let wanted = match &h.controllers {
                None => h.mount == Path::new("/sys/fs/cgroup/unified"),
                Some(c) => {
                    h.is_named_systemd()
                        || (c.iter().any(|c| V1_CONTROLLERS.contains(&c.as_str()))
                            && !c.iter().any(|c| c == "cpuset"))
                }
            };
            // A hierarchy mounted twice (bind mounts) is one hierarchy.
            if wanted && seen.insert(h.controllers.clone()) {
                chosen.push(h.clone());
            }
        }
        let (mode, primary) = if let Some(i) = chosen.iter().position(Hierarchy::is_unified) {
            (Mode::Hybrid, i)
        } else if let Some(i) = chosen.iter().position(Hierarchy::is_named_systemd) {
            (Mode::Legacy, i)
        } else {
            bail!(
                "no cgroup hierarchy systemd could use: neither cgroup2 on /sys/fs/cgroup or \
                 /sys/fs/cgroup/unified nor name=systemd is mounted"
            );
        };
        Ok(Layout {
            mode,
            hierarchies: chosen,
            primary,
        })
    }

    fn primary(&self) -> &Hierarchy {
        &self.hierarchies[self.primary]
    }

    /// The directories of `rel` in every hierarchy.
    pub fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.dir(rel)).collect()
    }

    /// Creates `rel` (and its parents) in every hierarchy. On a cgroup2 machine
    /// it also enables the controllers on the way down, so the board's systemd
    /// can hand them on to its units.
    pub fn create(&self, rel: &str) -> anyhow::Result<()> {
        for h in &self.hierarchies {
            // Another run may remove the shared top cgroup, empty for an
            // instant, between two of our mkdirs: then start again.
            let mut attempts = 0;
            loop {
                attempts += 1;
                match self.create_in(h, rel) {
                    Err(e) if attempts < 5 && e.kind() == io::ErrorKind::NotFound => continue,
                    result => {
                        result
                            .with_context(|| format!("create cgroup {}", h.dir(rel).display()))?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn create_in(&self, h: &Hierarchy, rel: &str) -> io::Result<()> {
        if self.mode != Mode::Unified {
            return fs::create_dir_all(h.dir(rel));
        }
        let mut current = h.mount.clone();
        let parts: Vec<_> = Path::new(rel.trim_start_matches('/')).iter().collect();
        for (i, part) in parts.iter().enumerate() {
            current.push(part);
            match fs::create_dir(&current) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            // The leaf holds processes, so it must not distribute controllers
            // (cgroup2's "no internal processes" rule).
            if i + 1 < parts.len() {
                enable_v2_controllers(&current)?;
            }
        }
        Ok(())
    }

    /// The directories of `rel` with their `cgroup.procs` files, ready for a
    /// pre-exec hook to join (writing "0" moves the writer there).
    pub fn join_paths(&self, rel: &str) -> Vec<(CString, CString)> {
        let c =
            |p: &Path| CString::new(p.as_os_str().as_bytes()).expect("cgroup paths contain no NUL");
        self.dirs(rel)
            .into_iter()
            .map(|d| (c(&d), c(&d.join("cgroup.procs"))))
            .collect()
    }

    /// Every process in `rel` and below.
    pub fn pids(&self, rel: &str) -> io::Result<Vec<i32>> {
        let mut pids = Vec::new();
        collect_pids(&self.primary().dir(rel), &mut pids)?;
        Ok(pids)
    }

    /// Whether `rel` and everything below it is free of processes (or gone).
    pub fn is_empty(&self, rel: &str) -> bool {
        matches!(self.pids(rel).as_deref(), Ok([]))
    }

    /// Sends `signal` to every process in `rel` and below.
    pub fn signal(&self, rel: &str, signal: i32) -> io::Result<()> {
        for pid in self.pids(rel)? {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }

    /// Kills every process in `rel` and below: through `cgroup.kill` where the
    /// kernel has it (atomic, catches processes that fork meanwhile), and with
    /// SIGKILL to each listed process in any case. Call until [`is_empty`].
    ///
    /// [`is_empty`]: Layout::is_empty
    pub fn kill(&self, rel: &str) -> io::Result<()> {
        let primary = self.primary();
        let kill = primary.dir(rel).join("cgroup.kill");
        if primary.is_unified() && kill.exists() {
            match fs::write(&kill, "1") {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.signal(rel, libc::SIGKILL)
    }

    /// Removes `rel` and every cgroup below it, in every hierarchy. The cgroups
    /// must be empty of processes.
    pub fn remove(&self, rel: &str) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        for h in &self.hierarchies {
            let dir = h.dir(rel);
            if let Err(e) = remove_tree(&dir) {
                failed.push(format!("{}: {e}", dir.display()));
            }
        }
        if !failed.is_empty() {
            bail!("cannot remove cgroups: {}", failed.join("; "));
        }
        Ok(())
    }

    /// Removes the testbed's top cgroup where no run uses it any more. Other
    /// runs may be using it at the same time, so a busy one is left alone.
    pub fn remove_root_if_unused(&self) {
        for h in &self.hierarchies {
            let _ = fs::remove_dir(h.dir(ROOT));
        }
    }

    /// The names of the run cgroups below [`ROOT`].
    pub fn runs(&self) -> Vec<String> {
        let mut runs = BTreeSet::new();
        for h in &self.hierarchies {
            let Ok(entries) = fs::read_dir(h.dir(ROOT)) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    runs.insert(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        runs.into_iter().collect()
    }

    /// Checks that the testbed may create, join and remove cgroups here.
    pub fn probe(&self) -> anyhow::Result<()> {
        static PROBES: AtomicU32 = AtomicU32::new(0);
        let n = PROBES.fetch_add(1, Ordering::Relaxed);
        let rel = format!("{ROOT}/probe-{}-{n}", std::process::id());
        // No live process but this one has its pid: a probe cgroup of that
        // name is a leftover of a dead process that had the same pid.
        let _ = self.remove(&rel);
        self.create(&rel)?;
        let result = self.dirs(&rel).iter().try_for_each(|d| {
            let procs = d.join("cgroup.procs");
            fs::OpenOptions::new()
                .write(true)
                .open(&procs)
                .map(drop)
                .with_context(|| format!("open {} for writing", procs.display()))
        });
        self.remove(&rel)?;
        self.remove_root_if_unused();
        result
    }
}

/// Whether a cgroup v1 super option is a mount flag rather than a controller.
fn is_mount_flag(option: &str) -> bool {
    option.contains('=')
        || matches!(
            option,
            "rw" | "ro" | "xattr" | "noprefix" | "clone_children" | "cpuset_v2_mode"
        )
}

fn enable_v2_controllers(dir: &Path) -> io::Result<()> {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    fs::write(dir.join("cgroup.subtree_control"), wanted.join(" "))
}

fn collect_pids(dir: &Path, pids: &mut Vec<i32>) -> io::Result<()> {
    // A cgroup removed while it is read (a manager prunes the empty ones
    // below its root, e.g. right after the last process of a board's
    // commands exited) reads as ENODEV, or is gone: it has no processes.
    let gone = |e: &io::Error| {
        e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
    };
    let procs = match fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(procs) => procs,
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            collect_pids(&entry.path(), pids)?;
        }
    }
    Ok(())
}

/// rmdir(2) children first; cgroupfs directories cannot be removed otherwise
/// (their control files are not files one could unlink).
fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn hybrid_layout_uses_the_unified_hierarchy_to_find_processes() {
        let layout = Layout::from_mountinfo(HYBRID).unwrap();
        assert_eq!(layout.mode, Mode::Hybrid);
        let mounts: Vec<_> = layout
            .hierarchies
            .iter()
            .map(|h| h.mount.to_str().unwrap())
            .collect();
        assert_eq!(
            mounts,
            [
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/cpuacct",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/pids",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified",
            ]
        );
        assert_eq!(layout.primary().mount, Path::new("/sys/fs/cgroup/unified"));
        assert!(layout.hierarchies[4].is_named_systemd());
    }

    #[test]
    fn joined_cpu_cpuacct_is_one_hierarchy() {
        let mountinfo = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
";
        let layout = Layout::from_mountinfo(mountinfo).unwrap();
        assert_eq!(layout.mode, Mode::Legacy);
        assert_eq!(
            layout.hierarchies[0].controllers.as_deref().unwrap(),
            ["cpu", "cpuacct"]
        );
        assert_eq!(layout.primary().mount, Path::new("/sys/fs/cgroup/systemd"));
    }

    #[test]
    fn unified_layout_is_one_hierarchy() {
        let mountinfo = "25 23 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout = Layout::from_mountinfo(mountinfo).unwrap();
        assert_eq!(layout.mode, Mode::Unified);
        assert_eq!(
            layout.dirs("fleet-testbed/r/b"),
            [PathBuf::from("/sys/fs/cgroup/fleet-testbed/r/b")]
        );
    }

    #[test]
    fn no_cgroups_is_an_error_that_says_so() {
        let err = Layout::from_mountinfo("22 27 0:21 / /proc rw - proc proc rw\n").unwrap_err();
        assert!(err.to_string().contains("no cgroup hierarchy"), "{err}");
    }
}
