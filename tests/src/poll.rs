//! Waiting for a condition with a deadline, the only way tests wait.
//!
//! A test never sleeps for a guessed time: it polls what it wants to see with
//! [`wait_for`], which returns as soon as the condition holds and, when it does
//! not hold in time, fails with what was seen last. A timeout then reads like
//! `timed out after 10s waiting for brain-experiment@smoke.service to exit;
//! last observed: ActiveState=activating SubState=auto-restart`.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// First pause between two polls; it doubles up to [`MAX_INTERVAL`].
const FIRST_INTERVAL: Duration = Duration::from_millis(20);
/// Longest pause between two polls.
const MAX_INTERVAL: Duration = Duration::from_millis(250);

/// What one poll saw.
#[derive(Debug)]
pub enum Check<T> {
    /// The condition holds; `wait_for` returns the value.
    Ready(T),
    /// Not yet; the text describes what was observed, for the timeout error.
    NotYet(String),
}

impl<T> Check<T> {
    /// Not yet, with what was observed.
    pub fn not_yet(observed: impl Display) -> Self {
        Check::NotYet(observed.to_string())
    }
}

impl<T> From<Option<T>> for Check<T> {
    /// `Some` is ready; `None` is not yet, with nothing more to say.
    fn from(value: Option<T>) -> Self {
        match value {
            Some(value) => Check::Ready(value),
            None => Check::NotYet("condition not met".to_owned()),
        }
    }
}

/// Why [`wait_for`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The deadline passed; `last` is the state the last poll observed.
    #[error("timed out after {waited:?} waiting for {what}; last observed: {last}")]
    TimedOut {
        what: String,
        waited: Duration,
        last: String,
    },
    /// A poll failed in a way that waiting cannot fix.
    #[error("gave up waiting for {what}")]
    Failed {
        what: String,
        #[source]
        source: anyhow::Error,
    },
}

/// Polls `check` until it reports [`Check::Ready`], for at most `timeout`.
///
/// `check` returns `Ok(Check::NotYet(observed))` to be polled again (so a
/// transient error such as "bus not up yet" belongs in `NotYet`), and `Err` for
/// a failure that waiting cannot fix, which ends the wait at once. Polls come
/// quickly at first (20 ms) and back off to one every 250 ms. The clock is
/// tokio's, so the helper also works on a paused test clock.
pub async fn wait_for<T, F, Fut>(
    what: impl Into<String>,
    timeout: Duration,
    mut check: F,
) -> Result<T, WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Check<T>>>,
{
    let what = what.into();
    let start = Instant::now();
    let deadline = start + timeout;
    let mut interval = FIRST_INTERVAL;
    loop {
        let last = match check().await {
            Ok(Check::Ready(value)) => return Ok(value),
            Ok(Check::NotYet(observed)) => observed,
            Err(source) => return Err(WaitError::Failed { what, source }),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitError::TimedOut {
                what,
                waited: now - start,
                last,
            });
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn returns_the_value_once_ready() {
        let polls = AtomicU32::new(0);
        let value = wait_for("the third poll", Duration::from_secs(5), || async {
            let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(if n == 3 {
                Check::Ready(n)
            } else {
                Check::not_yet(format!("poll {n}"))
            })
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_carries_the_last_observed_state() {
        let polls = AtomicU32::new(0);
        let err = wait_for(
            "a condition that never holds",
            Duration::from_secs(2),
            || async {
                let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(Check::<()>::not_yet(format!("poll {n}")))
            },
        )
        .await
        .unwrap_err();
        let n = polls.load(Ordering::SeqCst);
        let message = err.to_string();
        assert!(
            message.starts_with("timed out after 2s waiting for a condition that never holds"),
            "{message}"
        );
        assert!(
            message.ends_with(&format!("last observed: poll {n}")),
            "{message}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_ends_the_wait_at_once() {
        let start = Instant::now();
        let err = wait_for("a broken check", Duration::from_secs(60), || async {
            Err::<Check<()>, _>(anyhow::anyhow!("unit file is missing"))
        })
        .await
        .unwrap_err();
        assert!(matches!(err, WaitError::Failed { .. }));
        assert_eq!(
            format!("{:#}", anyhow::Error::from(err)),
            "gave up waiting for a broken check: unit file is missing"
        );
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn option_converts_into_a_check() {
        let polls = AtomicU32::new(0);
        let value = wait_for("Some", Duration::from_secs(5), || async {
            let n = polls.fetch_add(1, Ordering::SeqCst);
            Ok((n > 0).then_some(n).into())
        })
        .await
        .unwrap();
        assert_eq!(value, 1);
    }
}
