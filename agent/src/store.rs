//! The agent's local memory: what it was given and what it has counted.
//!
//! systemd is the source of truth for what runs; this store only keeps what
//! systemd cannot: the spec and epoch each experiment was started with, crash
//! and disruption counters across reboots, what the researcher asked for
//! (running or stopped), and the last outcome of a unit systemd has since
//! forgotten. One sled tree, one JSON record per experiment, flushed before
//! any reply that depends on it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bumped when the record layout changes incompatibly.
pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the agent's store at {path}; check that the state directory exists and that no other agent holds it")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("cannot write the agent's store")]
    Write(#[source] sled::Error),
    #[error("record of experiment {id} in the agent's store is unreadable")]
    Corrupt {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("record of experiment {id} has version {found}, this agent reads version {RECORD_VERSION}; upgrade the agent")]
    Version { id: String, found: u32 },
}

/// What the researcher (or the board) last asked of the experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Running,
    /// Stopped on request: an inactive unit reads as stopped, not failed.
    Stopped,
    /// Stopped by the board (thermal guard, drain): a disruption.
    Disrupted,
}

/// How a run ended, kept because systemd collects inactive units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub result: String,
    pub exec_main_code: i32,
    pub exec_main_status: i32,
    pub oom: bool,
    pub ended_us: u64,
    pub invocation_id: String,
    /// The run ended while the board shut down (its manager was stopping,
    /// or it ended before the manager that now runs started).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shutdown: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub id: String,
    /// The wire form of the spec (`fleet.v1.ExperimentSpec`), validated
    /// before it was stored.
    pub spec: Vec<u8>,
    pub epoch: u64,
    pub autostart: bool,
    /// The spec's restart policy: systemd restarts crashes (`on-failure`).
    #[serde(default = "yes")]
    pub restart_on_failure: bool,
    pub desired: Desired,
    /// Crashes in runs that have ended (explicit restarts, reboots).
    pub crashes_before: u64,
    /// Crashes in the current run, as last derived from systemd.
    pub crashes_in_run: u64,
    pub disruptions: u64,
    /// Times the board started the current run over after its shutdown
    /// interrupted it (autostart).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub board_restarts: u64,
    /// When the current run was set up (µs since the epoch): an exit record
    /// older than that is an earlier run's, never this one's.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run_started_us: u64,
    pub last_outcome: Option<Outcome>,
    /// The invocation that was the unit's last when a new run was set up
    /// (a start of a new epoch, a restart). Until systemd starts another,
    /// what systemd says of the unit is the old run's end, not this run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_invocation: Option<String>,
}

impl Record {
    pub fn crashes_total(&self) -> u64 {
        self.crashes_before + self.crashes_in_run
    }

    /// Takes a fresh reading of the current run's crash count. systemd resets
    /// `NRestarts` on an explicit start and forgets it on a reboot; a reading
    /// below the last one means a new run began, so the last one is banked.
    /// Returns true when the record changed.
    pub fn observe_crashes(&mut self, in_run: u64) -> bool {
        if in_run == self.crashes_in_run {
            return false;
        }
        if in_run < self.crashes_in_run {
            self.crashes_before += self.crashes_in_run;
        }
        self.crashes_in_run = in_run;
        true
    }

    /// Banks the current run's crashes before an explicit new run.
    /// `current` is the unit's invocation when the new run is set up: its
    /// end belongs to the old run.
    pub fn new_run(&mut self, current: Option<&str>) {
        self.crashes_before += self.crashes_in_run;
        self.crashes_in_run = 0;
        self.board_restarts = 0;
        self.run_started_us = fleet_proto::unix::now_us().max(0) as u64;
        self.last_outcome = None;
        self.superseded_invocation = current.filter(|i| !i.is_empty()).map(str::to_owned);
    }

    /// Whether systemd's view of the unit is still that of the invocation a
    /// new run replaced.
    pub fn is_superseded(&self, invocation_id: &str) -> bool {
        self.superseded_invocation.as_deref() == Some(invocation_id)
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone)]
pub struct Store {
    tree: sled::Tree,
    db: sled::Db,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("agent.sled");
        let db = sled::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let tree = db
            .open_tree("experiments")
            .map_err(|source| StoreError::Open { path, source })?;
        Ok(Store { tree, db })
    }

    pub fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        match self.tree.get(id).map_err(StoreError::Write)? {
            Some(bytes) => decode(id, &bytes).map(Some),
            None => Ok(None),
        }
    }

    pub fn list(&self) -> Result<Vec<Record>, StoreError> {
        self.tree
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(StoreError::Write)?;
                decode(&String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }

    /// Writes and flushes: when this returns, the record survives `kill -9`.
    pub async fn put(&self, record: &Record) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).expect("records always serialize");
        self.tree
            .insert(record.id.as_bytes(), bytes)
            .map_err(StoreError::Write)?;
        self.flush().await
    }

    pub async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.tree.remove(id).map_err(StoreError::Write)?.is_some();
        self.flush().await?;
        Ok(existed)
    }

    /// sled 0.34's `flush_async` can deadlock when flushes overlap
    /// (sled#1241): a blocking `flush` on tokio's blocking pool gives the
    /// same durability without it.
    async fn flush(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .expect("the flush task does not panic")
            .map_err(StoreError::Write)?;
        Ok(())
    }
}

fn yes() -> bool {
    true
}

fn decode(id: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned = serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        id: id.to_owned(),
        source,
    })?;
    if v.version != RECORD_VERSION {
        return Err(StoreError::Version {
            id: id.to_owned(),
            found: v.version,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        id: id.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            version: RECORD_VERSION,
            id: "a".into(),
            spec: vec![],
            epoch: 1,
            autostart: false,
            restart_on_failure: true,
            desired: Desired::Running,
            crashes_before: 0,
            crashes_in_run: 0,
            disruptions: 0,
            board_restarts: 0,
            run_started_us: 0,
            last_outcome: None,
            superseded_invocation: None,
        }
    }

    #[test]
    fn crash_counter_survives_resets_of_nrestarts() {
        let mut r = record();
        assert!(r.observe_crashes(1));
        assert!(r.observe_crashes(2));
        assert!(!r.observe_crashes(2));
        // A reboot: systemd starts counting from zero again.
        assert!(r.observe_crashes(0));
        assert_eq!(r.crashes_total(), 2);
        r.observe_crashes(1);
        assert_eq!(r.crashes_total(), 3);
        r.new_run(None);
        assert_eq!((r.crashes_before, r.crashes_in_run), (3, 0));
    }

    #[tokio::test]
    async fn records_round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let mut r = record();
            r.crashes_before = 7;
            s.put(&r).await.unwrap();
        }
        // sled's flusher thread lets go of the file lock shortly after the
        // last handle drops; a new process (the agent after kill -9) never
        // waits for it, this test does.
        let s = {
            let mut tries = 0;
            loop {
                match Store::open(dir.path()) {
                    Ok(s) => break s,
                    Err(e) if tries < 100 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        };
        assert_eq!(s.get("a").unwrap().unwrap().crashes_before, 7);
        assert_eq!(s.list().unwrap().len(), 1);
        assert!(s.remove("a").await.unwrap());
        assert!(s.get("a").unwrap().is_none());
    }

    #[tokio::test]
    async fn a_future_record_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut r = record();
        r.version = 99;
        s.put(&r).await.unwrap();
        let err = s.get("a").unwrap_err().to_string();
        assert!(err.contains("upgrade the agent"), "{err}");
    }
}
