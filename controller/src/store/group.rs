//! Group commit: writers that finish at about the same time share one
//! flush, and each still returns only once a flush that covers its write
//! has completed.
//!
//! Every write takes a ticket ([`GroupCommit::ticket`]) once it is in the
//! database, so tickets are handed out in an order consistent with the
//! writes. A flush records the last ticket handed out before it started
//! (`covers`); sled's `flush` makes durable everything written before it
//! started, so when it returns every ticket up to `covers` is durable.
//!
//! One flush runs at a time. A writer whose ticket is not yet covered
//! waits for the running flush (the lock), then flushes again only if that
//! flush did not cover it; the writers that arrived meanwhile are covered
//! by that one flush too.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) struct GroupCommit {
    /// The last ticket handed out.
    written: AtomicU64,
    /// Every ticket up to this one is durable.
    durable: AtomicU64,
    /// Flushes completed.
    flushes: AtomicU64,
    /// Held while a flush runs. tokio's mutex is fair: waiters go in order.
    flushing: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    pub(crate) fn new() -> Self {
        Self {
            written: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    /// A ticket for a write that is now in the database (not yet durable).
    pub(crate) fn ticket(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Every ticket up to this one is durable.
    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::SeqCst)
    }

    /// Flushes completed so far.
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// Tickets handed out so far.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Returns once `ticket` is durable: at once if a completed flush
    /// covered it, after the running flush if that one covers it, or after
    /// a flush of its own (with `flush`), which covers every write before
    /// it as well.
    ///
    /// A failed flush makes this caller fail and covers nothing; the next
    /// waiter flushes again. A caller dropped while its flush runs releases
    /// the lock; its flush may still complete, but only a flush awaited to
    /// the end moves `durable`, so the next waiter flushes again.
    pub(crate) async fn wait<F, Fut, E>(&self, ticket: u64, flush: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        if self.durable() >= ticket {
            return Ok(());
        }
        let _flushing = self.flushing.lock().await;
        if self.durable() >= ticket {
            return Ok(());
        }
        // Read before the flush starts: the tickets it will cover.
        let covers = self.written.load(Ordering::SeqCst);
        flush().await?;
        self.durable.fetch_max(covers, Ordering::SeqCst);
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// A flush the test drives: it announces its start (with the tickets
    /// handed out by then) and completes when the test says so.
    struct Flushes {
        started: mpsc::UnboundedReceiver<(u64, oneshot::Sender<Result<(), &'static str>>)>,
        tx: mpsc::UnboundedSender<(u64, oneshot::Sender<Result<(), &'static str>>)>,
    }

    impl Flushes {
        fn new() -> Self {
            let (tx, started) = mpsc::unbounded_channel();
            Self { started, tx }
        }

        /// A flush for `wait`.
        fn flush(
            &self,
            g: &Arc<GroupCommit>,
        ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send>>
        {
            let tx = self.tx.clone();
            let g = g.clone();
            move || {
                Box::pin(async move {
                    let (done_tx, done_rx) = oneshot::channel();
                    tx.send((g.written(), done_tx)).expect("test listens");
                    done_rx.await.expect("test answers")
                })
            }
        }

        /// The next flush to start: the tickets handed out when it started,
        /// and the switch that completes it.
        async fn next(&mut self) -> (u64, oneshot::Sender<Result<(), &'static str>>) {
            self.started.recv().await.expect("a flush starts")
        }
    }

    /// Waits for `ticket` on a task of its own.
    fn waiter(
        g: &Arc<GroupCommit>,
        flushes: &Flushes,
        ticket: u64,
    ) -> tokio::task::JoinHandle<Result<u64, &'static str>> {
        let g2 = g.clone();
        let flush = flushes.flush(g);
        tokio::spawn(async move {
            g2.wait(ticket, flush).await?;
            // What was durable when the caller got its answer.
            Ok(g2.durable())
        })
    }

    #[tokio::test]
    async fn writers_that_arrive_during_a_flush_share_the_next_one() {
        let g = Arc::new(GroupCommit::new());
        let mut flushes = Flushes::new();

        let t1 = g.ticket();
        let w1 = waiter(&g, &flushes, t1);
        let (covers, done1) = flushes.next().await;
        assert_eq!(covers, 1, "the first flush covers only the first write");

        // Three writes land while the first flush runs.
        let (t2, t3, t4) = (g.ticket(), g.ticket(), g.ticket());
        let w2 = waiter(&g, &flushes, t2);
        let w3 = waiter(&g, &flushes, t3);
        let w4 = waiter(&g, &flushes, t4);
        tokio::task::yield_now().await;
        assert!(!w2.is_finished() && !w3.is_finished() && !w4.is_finished());

        done1.send(Ok(())).unwrap();
        assert_eq!(w1.await.unwrap(), Ok(1));

        // One more flush, covering all three.
        let (covers, done2) = flushes.next().await;
        assert_eq!(covers, 4);
        tokio::task::yield_now().await;
        assert!(!w2.is_finished() && !w3.is_finished() && !w4.is_finished());
        done2.send(Ok(())).unwrap();
        for w in [w2, w3, w4] {
            let durable = w.await.unwrap().unwrap();
            assert!(durable >= 4, "answered before its write was durable");
        }
        assert_eq!(g.flushes(), 2, "four writes, two flushes");
        assert_eq!(g.durable(), 4);
        assert!(flushes.started.try_recv().is_err(), "no third flush");
    }

    #[tokio::test]
    async fn a_covered_write_does_not_flush_again() {
        let g = Arc::new(GroupCommit::new());
        let mut flushes = Flushes::new();
        let t1 = g.ticket();
        let t2 = g.ticket();
        let w1 = waiter(&g, &flushes, t1);
        let (covers, done) = flushes.next().await;
        assert_eq!(covers, 2, "the flush covers both writes");
        done.send(Ok(())).unwrap();
        assert_eq!(w1.await.unwrap(), Ok(2));
        // The second writer comes late: its write is durable already.
        assert_eq!(waiter(&g, &flushes, t2).await.unwrap(), Ok(2));
        assert_eq!(g.flushes(), 1);
        assert!(flushes.started.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_failed_flush_covers_nothing_and_the_next_writer_flushes_again() {
        let g = Arc::new(GroupCommit::new());
        let mut flushes = Flushes::new();
        let t1 = g.ticket();
        let w1 = waiter(&g, &flushes, t1);
        let (_, done1) = flushes.next().await;
        let t2 = g.ticket();
        let w2 = waiter(&g, &flushes, t2);
        done1.send(Err("disk full")).unwrap();
        assert_eq!(w1.await.unwrap(), Err("disk full"));
        assert_eq!(g.durable(), 0, "a failed flush makes nothing durable");

        let (covers, done2) = flushes.next().await;
        assert_eq!(covers, 2);
        done2.send(Ok(())).unwrap();
        assert_eq!(w2.await.unwrap(), Ok(2));
        assert_eq!(g.flushes(), 1);
    }

    #[tokio::test]
    async fn a_writer_dropped_mid_flush_does_not_count_its_flush() {
        let g = Arc::new(GroupCommit::new());
        let mut flushes = Flushes::new();
        let t1 = g.ticket();
        let w1 = waiter(&g, &flushes, t1);
        let (_, done1) = flushes.next().await;
        let t2 = g.ticket();
        let w2 = waiter(&g, &flushes, t2);
        // The first caller goes away (a cancelled request) mid-flush.
        w1.abort();
        assert!(w1.await.unwrap_err().is_cancelled());
        drop(done1);
        // The next writer does not rely on the abandoned flush.
        let (covers, done2) = flushes.next().await;
        assert_eq!(covers, 2);
        assert_eq!(g.durable(), 0);
        done2.send(Ok(())).unwrap();
        assert_eq!(w2.await.unwrap(), Ok(2));
    }
}
