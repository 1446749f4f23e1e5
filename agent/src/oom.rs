//! Attributes kernel OOM kills to experiment units.
//!
//! On cgroup v2 systemd reports `Result=oom-kill` itself. On cgroup v1 (every
//! JetPack before 6, and the test machines) the unit merely ends by SIGKILL
//! (or exit 137 under a shell), and only the kernel log says why:
//! `oom-kill:...,oom_memcg=/.../brain-experiment@<id>.service,...`. This is
//! how kubelet's OOM watcher attributes kills too.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// One kernel log record: its time (µs since boot, CLOCK_MONOTONIC) and text.
fn parse_record(rec: &str) -> Option<(u64, &str)> {
    let (prefix, message) = rec.split_once(';')?;
    let mut fields = prefix.split(',');
    let _priority = fields.next()?;
    let _seq = fields.next()?;
    let ts = fields.next()?.parse().ok()?;
    Some((ts, message.trim_end()))
}

/// True when the kernel log says the memory cgroup of `unit` had a process
/// OOM-killed at or after `since_mono_us`.
pub fn killed_since(kmsg: &Path, unit: &str, since_mono_us: u64) -> bool {
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(kmsg)
    else {
        return false;
    };
    let needle = format!("/{unit}");
    // Each read of /dev/kmsg returns exactly one record; EAGAIN at the end.
    let mut buf = vec![0u8; 8192];
    let mut found = false;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                if let Some((ts, msg)) = parse_record(&rec) {
                    if ts + 1_000_000 >= since_mono_us && is_oom_of(msg, &needle) {
                        found = true;
                    }
                }
            }
            // EPIPE: records were overwritten while reading; keep going.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    found
}

fn is_oom_of(msg: &str, needle: &str) -> bool {
    msg.starts_with("oom-kill:")
        && msg.split(',').any(|f| {
            f.strip_prefix("oom_memcg=")
                .is_some_and(|cg| cg.ends_with(needle))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_kernels_oom_line_for_one_unit() {
        let rec = "4,1234,5000000,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/fleet-testbed/b1/app.slice/brain-experiment@hog.service,task_memcg=/fleet-testbed/b1/app.slice/brain-experiment@hog.service,task=python3,pid=42,uid=0\n";
        let (ts, msg) = parse_record(rec).unwrap();
        assert_eq!(ts, 5_000_000);
        assert!(is_oom_of(msg, "/brain-experiment@hog.service"));
        assert!(!is_oom_of(msg, "/brain-experiment@ho.service"));
        assert!(!is_oom_of("Out of memory: Killed process 42", "/x"));
    }
}
