//! A board's mount and UTS namespaces, and how a process gets into them.
//!
//! A small holder process (`sleep infinity`) creates the namespaces and keeps
//! them alive while the board's systemd comes and goes. Every other process of
//! the board is started by the testbed with a pre-exec hook ([`Entry`]) that
//! moves it into the board's cgroup and `setns(2)`s it into the holder's
//! namespaces before `exec`, so it sees the board's `/run/systemd`, journal and
//! hostname from its first instruction.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use tokio::process::Command;

/// Open handles on a board's namespaces. While one exists, the namespaces do,
/// so the board drops its handles at teardown.
#[derive(Debug, Clone)]
pub struct Namespaces {
    mnt: Arc<OwnedFd>,
    uts: Arc<OwnedFd>,
}

impl Namespaces {
    /// The namespaces of process `pid`.
    pub fn of(pid: u32) -> io::Result<Namespaces> {
        let open = |kind: &str| -> io::Result<Arc<OwnedFd>> {
            // std opens with O_CLOEXEC: children get them only through setns.
            Ok(Arc::new(
                File::open(format!("/proc/{pid}/ns/{kind}"))?.into(),
            ))
        };
        Ok(Namespaces {
            mnt: open("mnt")?,
            uts: open("uts")?,
        })
    }

    /// The inode number that identifies the mount namespace (as in
    /// `readlink /proc/<pid>/ns/mnt` = `mnt:[<inode>]`).
    pub fn mount_inode(&self) -> io::Result<u64> {
        Ok(File::from(self.mnt.try_clone()?).metadata()?.ino())
    }

    /// Runs `f` on a short-lived thread that has joined the board's mount
    /// namespace; the rest of the process is untouched. The thread first
    /// unshares its filesystem attributes, which setns(CLONE_NEWNS) requires of
    /// a thread in a multi-threaded process.
    pub async fn run<R, F>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> io::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let mnt = Arc::clone(&self.mnt);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("testbed-setns".into())
            .spawn(move || {
                let result = (|| {
                    // SAFETY: plain syscalls on a valid fd, affecting only this
                    // thread, which exits when `f` returns.
                    check(unsafe { libc::unshare(libc::CLONE_FS) })?;
                    check(unsafe { libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS) })?;
                    f()
                })();
                let _ = tx.send(result);
            })?;
        rx.await
            .map_err(|_| io::Error::other("namespace thread panicked"))?
    }
}

/// What a child must do between fork and exec to become part of a board.
/// Everything is prepared before the fork: after it, only async-signal-safe
/// system calls may run.
pub struct Entry {
    /// cgroup directories to join, with their `cgroup.procs` files.
    pub cgroups: Vec<(CString, CString)>,
    /// The board's namespaces; `None` once the board is gone, which makes the
    /// spawn fail with ESRCH.
    pub namespaces: Option<Namespaces>,
    /// Working directory, set again after entering the mount namespace.
    pub cwd: CString,
}

impl Entry {
    pub fn new(
        cgroups: Vec<(CString, CString)>,
        namespaces: Option<Namespaces>,
        cwd: &Path,
    ) -> Entry {
        Entry {
            cgroups,
            namespaces,
            cwd: c_path(cwd),
        }
    }

    /// Installs the hook on `cmd`.
    pub fn install(self, cmd: &mut Command) {
        // SAFETY: `apply` only makes system calls on data prepared before the
        // fork; it neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(move || self.apply());
        }
    }

    fn apply(&self) -> io::Result<()> {
        for (dir, procs) in &self.cgroups {
            join_cgroup(dir, procs)?;
        }
        let Some(ns) = &self.namespaces else {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        };
        // SAFETY: valid fds; the child is single-threaded at this point.
        check(unsafe { libc::setns(ns.mnt.as_raw_fd(), libc::CLONE_NEWNS) })?;
        check(unsafe { libc::setns(ns.uts.as_raw_fd(), libc::CLONE_NEWUTS) })?;
        check(unsafe { libc::chdir(self.cwd.as_ptr()) })?;
        Ok(())
    }
}

/// The pre-exec hook of the holder: joins its cgroup, creates the board's mount
/// and UTS namespaces, stops mount propagation to and from the host (so nothing
/// the board mounts is ever seen outside it) and names the host.
pub fn install_holder_hook(cmd: &mut Command, cgroups: Vec<(CString, CString)>, hostname: &str) {
    let root = CString::new("/").expect("no NUL");
    let hostname = hostname.as_bytes().to_vec();
    // SAFETY: only system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for (dir, procs) in &cgroups {
                join_cgroup(dir, procs)?;
            }
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
            Ok(())
        });
    }
}

/// Moves the calling process into the cgroup `dir`. Async-signal-safe.
///
/// The cgroup is made again when it is missing: a board's systemd removes
/// empty cgroups below its root in v1 hierarchies its root slice does not use
/// (devices, typically) whenever it realizes that slice, and the testbed's
/// cgroup for commands is empty between two commands.
fn join_cgroup(dir: &CString, procs: &CString) -> io::Result<()> {
    let mut attempts = 0;
    loop {
        // SAFETY: plain system calls on NUL-terminated paths and a static buffer.
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                return if written == 1 { Ok(()) } else { Err(err) };
            }
            let err = io::Error::last_os_error();
            attempts += 1;
            if err.raw_os_error() != Some(libc::ENOENT) || attempts > 3 {
                return Err(err);
            }
            if libc::mkdir(dir.as_ptr(), 0o755) < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EEXIST) {
                    return Err(err);
                }
            }
        }
    }
}

pub fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("paths contain no NUL")
}

/// Whether this machine lets the testbed create mount and UTS namespaces and
/// mount a tmpfs in one: spawns `true` through the same hook as a holder.
pub async fn probe() -> anyhow::Result<()> {
    let mut cmd = Command::new("true");
    cmd.stdin(std::process::Stdio::null());
    install_holder_hook(&mut cmd, Vec::new(), "fleet-testbed-probe");
    let tmp = CString::new("/tmp").expect("no NUL");
    let tmpfs = CString::new("tmpfs").expect("no NUL");
    // SAFETY: only system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::mount(
                tmpfs.as_ptr(),
                tmp.as_ptr(),
                tmpfs.as_ptr(),
                0,
                std::ptr::null(),
            ))
        });
    }
    let status = cmd.status().await.map_err(|e| {
        anyhow::anyhow!("cannot create a mount namespace and mount a tmpfs in it: {e}")
    })?;
    anyhow::ensure!(status.success(), "probe process failed: {status}");
    Ok(())
}
