//! The bounded export queue and its worker: sessions wait here (small, shared `Arc`s) until
//! the worker turns a batch of them into spans and exports it. A failed export keeps the
//! batch at the front of the queue and is retried with exponential backoff, so that while
//! the collector is down the queue keeps the oldest sessions, in order, up to its capacity;
//! a session arriving at a full queue is dropped and counted. Memory stays bounded by the
//! capacity, and every session is either exported or counted as dropped.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::{RandomIdGenerator, SpanExporter};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::BatchSettings;
use crate::{session::Session, span};

/// First wait after a failed export; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two attempts while the collector fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What happened to the sessions given to one queue.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Sessions accepted into the queue.
    pub enqueued: AtomicU64,
    /// Sessions dropped because the queue was full (collector down or too slow).
    pub dropped_queue_full: AtomicU64,
    /// Sessions exported (the collector accepted their spans).
    pub exported: AtomicU64,
    /// Sessions still queued when the shutdown deadline passed (dropped).
    pub dropped_at_shutdown: AtomicU64,
    /// Export attempts that failed (each is retried).
    pub export_errors: AtomicU64,
}

impl QueueStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The producer side, used by the pipeline.
#[derive(Clone)]
pub struct ExportQueue {
    shared: Arc<Shared>,
}

struct Shared {
    sessions: Mutex<VecDeque<Arc<Session>>>,
    ready: Notify,
    settings: BatchSettings,
    stats: Arc<QueueStats>,
}

impl Shared {
    /// The queue, even if a panic poisoned its lock: a session is never lost to that.
    fn sessions(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Session>>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ExportQueue {
    pub fn new(settings: BatchSettings, stats: Arc<QueueStats>) -> Self {
        Self {
            shared: Arc::new(Shared {
                sessions: Mutex::new(VecDeque::with_capacity(settings.max_queue_size.min(65_536))),
                ready: Notify::new(),
                settings,
                stats,
            }),
        }
    }

    /// Queues sessions under one lock; those that do not fit are counted as dropped.
    pub fn push(&self, batch: &[Arc<Session>]) {
        let shared = &self.shared;
        let (accepted, len) = {
            let mut sessions = shared.sessions();
            let room = shared
                .settings
                .max_queue_size
                .saturating_sub(sessions.len());
            let accepted = batch.len().min(room);
            sessions.extend(batch[..accepted].iter().cloned());
            (accepted, sessions.len())
        };
        QueueStats::add(&shared.stats.enqueued, accepted as u64);
        QueueStats::add(
            &shared.stats.dropped_queue_full,
            (batch.len() - accepted) as u64,
        );
        if len >= shared.settings.max_export_batch_size {
            shared.ready.notify_one();
        }
    }

    /// Sessions waiting.
    pub fn depth(&self) -> usize {
        self.shared.sessions().len()
    }

    /// Runs the worker that exports through `exporter` until `stop` is cancelled, then keeps
    /// exporting until the queue is empty or `deadline` after the stop, and shuts the
    /// exporter down. What is left then is counted as dropped at shutdown.
    pub async fn run<E: SpanExporter>(
        self,
        exporter: E,
        stop: CancellationToken,
        deadline: Duration,
    ) {
        let shared = &self.shared;
        let ids = RandomIdGenerator::default();
        let scope = span::scope();
        let mut backoff = FIRST_BACKOFF;
        let mut failing_since: Option<Instant> = None;
        let mut retry = false;
        loop {
            // Wait for a full batch or the schedule delay, unless retrying a failed batch.
            if !retry && self.depth() < shared.settings.max_export_batch_size {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = shared.ready.notified() => {}
                    () = tokio::time::sleep(shared.settings.scheduled_delay) => {}
                }
            }
            retry = false;
            let batch = self.front_batch();
            if batch.is_empty() {
                continue;
            }
            match export_batch(&exporter, &batch, &ids, &scope).await {
                Ok(n) => {
                    self.pop(n);
                    QueueStats::add(&shared.stats.exported, n as u64);
                    if let Some(since) = failing_since.take() {
                        tracing::info!(after = ?since.elapsed(), "the collector accepts spans again");
                    }
                    backoff = FIRST_BACKOFF;
                }
                Err(error) => {
                    QueueStats::add(&shared.stats.export_errors, 1);
                    if failing_since.is_none() {
                        failing_since = Some(Instant::now());
                        tracing::warn!(
                            %error,
                            queued = self.depth(),
                            "exporting spans failed; keeping them queued and retrying with backoff"
                        );
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    retry = true;
                }
            }
        }
        self.drain(&exporter, &ids, &scope, deadline).await;
        if let Err(error) = exporter.shutdown() {
            tracing::debug!(%error, "the exporter did not shut down cleanly");
        }
    }

    /// After the stop: export what is left until the deadline, then count the rest.
    async fn drain<E: SpanExporter>(
        &self,
        exporter: &E,
        ids: &RandomIdGenerator,
        scope: &InstrumentationScope,
        deadline: Duration,
    ) {
        let stats = &self.shared.stats;
        let until = Instant::now() + deadline;
        loop {
            let batch = self.front_batch();
            let remaining = until.saturating_duration_since(Instant::now());
            if batch.is_empty() || remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(remaining, export_batch(exporter, &batch, ids, scope)).await
            {
                Ok(Ok(n)) => {
                    self.pop(n);
                    QueueStats::add(&stats.exported, n as u64);
                }
                Ok(Err(_)) => {
                    QueueStats::add(&stats.export_errors, 1);
                    tokio::time::sleep(FIRST_BACKOFF.min(remaining)).await;
                }
                Err(_elapsed) => break,
            }
        }
        let left = self.depth();
        if left > 0 {
            QueueStats::add(&stats.dropped_at_shutdown, left as u64);
            tracing::warn!(
                dropped = left,
                ?deadline,
                "spans not exported before the shutdown deadline"
            );
            self.shared.sessions().clear();
        }
    }

    /// A copy (of `Arc`s) of the first batch, left in the queue until it is exported.
    fn front_batch(&self) -> Vec<Arc<Session>> {
        let sessions = self.shared.sessions();
        let n = sessions
            .len()
            .min(self.shared.settings.max_export_batch_size);
        sessions.iter().take(n).cloned().collect()
    }

    fn pop(&self, n: usize) {
        let mut sessions = self.shared.sessions();
        let n = n.min(sessions.len());
        sessions.drain(..n);
    }
}

/// Builds the spans of `batch` and exports them; `Ok(n)` is the number exported.
async fn export_batch<E: SpanExporter>(
    exporter: &E,
    batch: &[Arc<Session>],
    ids: &RandomIdGenerator,
    scope: &InstrumentationScope,
) -> Result<usize, opentelemetry_sdk::error::OTelSdkError> {
    let spans = batch
        .iter()
        .map(|session| span::span_data(session, ids, scope))
        .collect();
    exporter.export(spans).await.map(|()| batch.len())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use opentelemetry_sdk::{
        error::{OTelSdkError, OTelSdkResult},
        trace::SpanData,
    };

    use super::*;
    use crate::session::tests::client_session;

    /// Fails its first `failures` exports, then records the ports of what it exports.
    #[derive(Debug, Default)]
    struct Flaky {
        failures: usize,
        calls: AtomicUsize,
        exported: Mutex<Vec<i64>>,
    }

    impl SpanExporter for Flaky {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(OTelSdkError::InternalFailure("collector down".into()));
            }
            let ports = batch.iter().map(|span| {
                span.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == span::key::NETWORK_LOCAL_PORT)
                    .and_then(|kv| match kv.value {
                        opentelemetry::Value::I64(port) => Some(port),
                        _ => None,
                    })
                    .unwrap_or_default()
            });
            self.exported.lock().unwrap().extend(ports);
            Ok(())
        }
    }

    fn settings(queue: usize, batch: usize) -> BatchSettings {
        BatchSettings {
            max_queue_size: queue,
            max_export_batch_size: batch,
            scheduled_delay: Duration::from_millis(10),
        }
    }

    fn session(port: u16) -> Arc<Session> {
        let mut session = client_session();
        session.local.set_port(port);
        Arc::new(session)
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_drops_and_counts_and_the_rest_is_exported_in_order() {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings(3, 2), stats.clone());
        let sessions: Vec<_> = (1..=5).map(session).collect();
        queue.push(&sessions);
        assert_eq!(get(&stats.dropped_queue_full), 2);
        let exporter = Arc::new(Flaky::default());
        let stop = CancellationToken::new();
        let worker = tokio::spawn(queue.clone().run(
            ArcExporter(exporter.clone()),
            stop.clone(),
            Duration::from_secs(1),
        ));
        while get(&stats.exported) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        worker.await.unwrap();
        assert_eq!(*exporter.exported.lock().unwrap(), vec![1, 2, 3]);
        assert_eq!(
            (
                get(&stats.enqueued),
                get(&stats.exported),
                get(&stats.export_errors)
            ),
            (3, 3, 0)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_exports_keep_the_batch_and_deliver_it_when_the_collector_is_back() {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings(10, 10), stats.clone());
        let exporter = Arc::new(Flaky {
            failures: 2,
            ..Flaky::default()
        });
        let stop = CancellationToken::new();
        let worker = tokio::spawn(queue.clone().run(
            ArcExporter(exporter.clone()),
            stop.clone(),
            Duration::from_secs(1),
        ));
        queue.push(&[session(7), session(8), session(9)]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while get(&stats.exported) < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        worker.await.unwrap();
        assert_eq!(
            *exporter.exported.lock().unwrap(),
            vec![7, 8, 9],
            "delivered after two failures"
        );
        assert_eq!(get(&stats.export_errors), 2);
        assert_eq!(queue.depth(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_cannot_be_exported_by_the_deadline_is_counted_as_dropped() {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings(10, 2), stats.clone());
        let exporter = Arc::new(Flaky {
            failures: usize::MAX,
            ..Flaky::default()
        });
        queue.push(&[session(1), session(2), session(3), session(4)]);
        let stop = CancellationToken::new();
        stop.cancel();
        queue
            .clone()
            .run(ArcExporter(exporter), stop, Duration::from_millis(200))
            .await;
        assert_eq!(get(&stats.dropped_at_shutdown), 4);
        assert_eq!(get(&stats.exported), 0);
        assert_eq!(queue.depth(), 0);
    }

    /// Lets a test keep a handle on the exporter it gives the worker.
    #[derive(Debug)]
    struct ArcExporter(Arc<Flaky>);

    impl SpanExporter for ArcExporter {
        fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
            self.0.export(batch)
        }
    }
}
