//! The bounded export queue and its worker: sessions wait here (small, shared `Arc`s) until
//! the worker encodes a batch of them into one OTLP request ([`super::encode`]) and sends
//! it. Up to `max_concurrent_exports` requests are in flight at once, so that encoding the
//! next batch and the collector's work on the previous ones overlap. A failed request is
//! kept, bytes and all (the same trace ids go out again), and retried before anything new,
//! with exponential backoff or the wait the collector asked for (within the same bounds and
//! never past the shutdown deadline), unless the collector's answer says retrying cannot
//! help (the OTLP specification's non-retryable codes): then its spans are dropped and
//! counted. A success whose body is not an OTLP response is counted as unconfirmed, not
//! retried. Sessions arriving while the queue (waiting, in flight and retried together) is
//! full are dropped and counted. Memory stays bounded by the capacity, and every session is
//! either exported, unconfirmed, rejected by the collector, or counted as dropped.
//!
//! With a disk [`Spool`], what would be held or dropped goes to disk instead: a request that
//! fails (and may succeed later) is written there, not retried from memory; while requests
//! cannot go out (every request slot busy) and the queue is half full, or during a pause
//! after a failure as soon as a batch waits, waiting sessions are encoded and written
//! there, a batch per file; and at shutdown, what
//! the collector has not taken by the deadline (or at once, if it is failing) is written
//! there rather than dropped. Spooled requests go out oldest first, before anything new,
//! whenever requests can be sent (not while stopping: they stay for the next agent). With a
//! healthy collector nothing is written.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{
    sync::{Notify, watch},
    task::JoinSet,
    time::MissedTickBehavior,
};

use super::{
    config::BatchSettings,
    encode::RequestEncoder,
    spool::{Spool, SpoolStats},
    transport::{Accepted, SendError},
};
use crate::{log_text::Escaped, session::Session};

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
    pub lost_queue_full: AtomicU64,
    /// Sessions exported (the collector accepted their spans), from the spool included.
    pub exported: AtomicU64,
    /// Sessions of requests answered with a success that was not an OTLP response (an HTML
    /// page, garbage): not retried, not known to have arrived; counted apart from both
    /// `exported` and the losses.
    pub exported_unconfirmed: AtomicU64,
    /// Sessions whose spans the collector rejected: those a partial success names, and
    /// those of a request it refused with an error that retrying cannot fix.
    pub lost_rejected: AtomicU64,
    /// Sessions still queued or in flight when the shutdown deadline passed (dropped).
    pub lost_at_shutdown: AtomicU64,
    /// Requests that failed: retried, unless the error says retrying cannot help.
    pub export_errors: AtomicU64,
    /// The disk spool's counters (all zero without one).
    pub spool: Arc<SpoolStats>,
}

impl QueueStats {
    /// Counters for a queue with `spool` (sharing its counters) or without one.
    pub fn with_spool(spool: Option<&Spool>) -> Self {
        Self {
            spool: spool.map(Spool::stats).unwrap_or_default(),
            ..Self::default()
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Where a worker sends its encoded requests: the collector (or a test's stand-in).
pub trait Destination: Clone + Send + Sync + 'static {
    /// Sends one encoded `ExportTraceServiceRequest`.
    fn send(&self, request: Bytes) -> impl Future<Output = Result<Accepted, SendError>> + Send;
}

/// One encoded request and how many sessions it carries.
#[derive(Clone)]
struct Request {
    body: Bytes,
    sessions: usize,
    /// Read back from the spool: its file, and whether an earlier attempt may have reached
    /// the collector.
    spooled: Option<(u64, bool)>,
}

/// The producer side, used by the pipeline.
#[derive(Clone)]
pub struct ExportQueue {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    ready: Notify,
    settings: BatchSettings,
    stats: Arc<QueueStats>,
    /// With a spool: the depth (waiting, in flight, to be retried) from which the worker
    /// writes waiting sessions to it (half the capacity).
    spill_at: OnceLock<usize>,
}

struct State {
    waiting: VecDeque<Arc<Session>>,
    /// Sessions taken into requests that are in flight or waiting to be retried: they
    /// still count against the capacity.
    taken: usize,
}

impl Shared {
    /// The queue, even if a panic poisoned its lock: a session is never lost to that.
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ExportQueue {
    pub fn new(settings: BatchSettings, stats: Arc<QueueStats>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    waiting: VecDeque::with_capacity(settings.max_queue_size.min(65_536)),
                    taken: 0,
                }),
                ready: Notify::new(),
                settings,
                stats,
                spill_at: OnceLock::new(),
            }),
        }
    }

    /// Queues sessions under one lock; those that do not fit are counted as dropped.
    pub fn push(&self, batch: &[Arc<Session>]) {
        let shared = &self.shared;
        let (accepted, waiting, depth) = {
            let mut state = shared.state();
            let room = shared
                .settings
                .max_queue_size
                .saturating_sub(state.waiting.len() + state.taken);
            let accepted = batch.len().min(room);
            state.waiting.extend(batch[..accepted].iter().cloned());
            (
                accepted,
                state.waiting.len(),
                state.waiting.len() + state.taken,
            )
        };
        QueueStats::add(&shared.stats.enqueued, accepted as u64);
        QueueStats::add(
            &shared.stats.lost_queue_full,
            (batch.len() - accepted) as u64,
        );
        if waiting >= shared.settings.max_export_batch_size
            || shared.spill_at.get().is_some_and(|&at| depth >= at)
        {
            shared.ready.notify_one();
        }
    }

    /// Sessions neither exported nor dropped yet: waiting, in flight or to be retried.
    pub fn depth(&self) -> usize {
        let state = self.shared.state();
        state.waiting.len() + state.taken
    }

    /// Runs the worker until `stop` holds a deadline (the agent's one shutdown deadline),
    /// then keeps exporting until everything is out or that deadline passes; what is left
    /// then is written to the `spool`, if there is one, or counted as dropped. A closed
    /// `stop` is a deadline of now.
    pub async fn run<D: Destination>(
        self,
        destination: D,
        mut encoder: RequestEncoder,
        spool: Option<Spool>,
        mut stop: watch::Receiver<Option<Instant>>,
    ) {
        if spool.is_some() {
            let _ = self
                .shared
                .spill_at
                .set((self.shared.settings.max_queue_size / 2).max(1));
        }
        let mut worker = Worker {
            queue: &self,
            destination,
            in_flight: JoinSet::new(),
            sent: HashMap::new(),
            spool,
            spool_failing: false,
            retries: VecDeque::new(),
            backoff: FIRST_BACKOFF,
            paused_until: None,
            failing_since: None,
            refusing: false,
            unconfirmed: false,
        };
        let settings = self.shared.settings;
        let mut schedule = tokio::time::interval(settings.scheduled_delay);
        schedule.set_missed_tick_behavior(MissedTickBehavior::Delay);
        schedule.tick().await;
        let mut flush_due = false;
        let mut until: Option<Instant> = None;
        loop {
            let stopping = until.is_some();
            worker.launch(&mut encoder, flush_due || stopping, stopping);
            flush_due = false;
            // Stopping while the collector fails: to disk at once, not at the deadline.
            let failing = worker.paused_until.is_some() || worker.failing_since.is_some();
            worker.spill(&mut encoder, stopping && failing);
            if stopping && worker.is_idle() {
                break;
            }
            let pause = worker.paused_until;
            tokio::select! {
                Some(done) = worker.in_flight.join_next_with_id(), if !worker.in_flight.is_empty() => {
                    match done {
                        Ok((id, (request, outcome))) => {
                            worker.sent.remove(&id);
                            if let Some(sent) = worker.finished(request, outcome, until) {
                                encoder.recycle(sent);
                            }
                        }
                        // Its sessions stay counted as queued, and as dropped at the end.
                        Err(error) => tracing::error!(
                            error = %Escaped(&error.to_string()),
                            "an export request task failed"
                        ),
                    }
                }
                () = self.shared.ready.notified() => {}
                _ = schedule.tick() => flush_due = true,
                () = sleep_until(pause), if pause.is_some() => worker.paused_until = None,
                deadline = stop.wait_for(Option::is_some), if !stopping => {
                    until = Some(deadline.ok().and_then(|at| *at).unwrap_or_else(Instant::now));
                }
                () = sleep_until(until), if stopping => break,
            }
        }
        worker.abandon(&mut encoder);
    }

    /// Takes up to one batch of waiting sessions (a partial one only if `partial`).
    fn take(&self, partial: bool) -> Vec<Arc<Session>> {
        let batch = self.shared.settings.max_export_batch_size;
        let mut state = self.shared.state();
        let n = state.waiting.len().min(batch);
        if n == 0 || (n < batch && !partial) {
            return Vec::new();
        }
        state.taken += n;
        state.waiting.drain(..n).collect()
    }

    /// Sessions waiting (not yet in a request), and the depth.
    fn levels(&self) -> (usize, usize) {
        let state = self.shared.state();
        (state.waiting.len(), state.waiting.len() + state.taken)
    }

    /// Sessions of requests that are done with (exported, rejected, dropped or spooled).
    fn release(&self, n: usize) {
        let mut state = self.shared.state();
        state.taken = state.taken.saturating_sub(n);
    }
}

/// The worker's state between two wake-ups.
struct Worker<'q, D> {
    queue: &'q ExportQueue,
    destination: D,
    in_flight: JoinSet<(Request, Result<Accepted, SendError>)>,
    /// With a spool: the new requests in flight, by task, to be spooled if the shutdown
    /// deadline cuts them short.
    sent: HashMap<tokio::task::Id, Request>,
    spool: Option<Spool>,
    /// Writing to the spool failed and was logged (one warning per episode).
    spool_failing: bool,
    /// Failed requests, oldest first; sent again before anything new.
    retries: VecDeque<Request>,
    backoff: Duration,
    /// No request is sent before this, after a failure.
    paused_until: Option<Instant>,
    failing_since: Option<Instant>,
    /// A refusal was logged since the last accepted request (one warning per episode).
    refusing: bool,
    /// An unconfirmed answer was logged since the last confirmed one (one warning per
    /// episode).
    unconfirmed: bool,
}

impl<D: Destination> Worker<'_, D> {
    /// Sends requests while fewer than the limit are in flight: retries first, then the
    /// spool's oldest (unless `stopping`), then full batches, then (if `partial`) what is
    /// waiting.
    fn launch(&mut self, encoder: &mut RequestEncoder, partial: bool, stopping: bool) {
        let limit = self.queue.shared.settings.max_concurrent_exports;
        while self.in_flight.len() < limit && self.paused_until.is_none() {
            let spooled = || {
                let spool = self.spool.as_mut().filter(|_| !stopping)?;
                let claimed = on_disk(|| spool.claim())?;
                Some(Request {
                    body: claimed.body,
                    sessions: claimed.sessions,
                    spooled: Some((claimed.seq, claimed.maybe_delivered)),
                })
            };
            let request = match self.retries.pop_front().or_else(spooled) {
                Some(request) => request,
                None => {
                    let sessions = self.queue.take(partial);
                    if sessions.is_empty() {
                        break;
                    }
                    Request {
                        body: encoder.encode(&sessions),
                        sessions: sessions.len(),
                        spooled: None,
                    }
                }
            };
            let track =
                (self.spool.is_some() && request.spooled.is_none()).then(|| request.clone());
            let destination = self.destination.clone();
            let task = self.in_flight.spawn(async move {
                let outcome = destination.send(request.body.clone()).await;
                (request, outcome)
            });
            if let Some(request) = track {
                self.sent.insert(task.id(), request);
            }
        }
    }

    /// With a spool: writes batches of waiting sessions to it while the queue is at least
    /// half full (waiting, in flight and to be retried: what waits after [`Worker::launch`]
    /// cannot go out now), or, during a pause after a failure, while a full batch waits (so
    /// that an outage keeps less than a batch in memory); every waiting session if `all`.
    fn spill(&mut self, encoder: &mut RequestEncoder, all: bool) {
        let Some(&at) = self.queue.shared.spill_at.get() else {
            return;
        };
        let batch = self.queue.shared.settings.max_export_batch_size;
        loop {
            let (waiting, depth) = self.queue.levels();
            let paused = self.paused_until.is_some() && waiting >= batch;
            if waiting == 0 || !(all || paused || depth >= at) {
                break;
            }
            let sessions = self.queue.take(true);
            let request = Request {
                body: encoder.encode(&sessions),
                sessions: sessions.len(),
                spooled: None,
            };
            if let Err(request) = self.store(request, false) {
                self.retries.push_back(request);
                break;
            }
        }
    }

    /// Writes a new request to the spool, if there is one, and releases its sessions from
    /// the queue; gives it back if it could not be written (it is then held in memory, as
    /// without a spool).
    fn store(&mut self, request: Request, maybe_delivered: bool) -> Result<(), Request> {
        let Some(spool) = &mut self.spool else {
            return Err(request);
        };
        match on_disk(|| spool.append(&request.body, request.sessions, maybe_delivered)) {
            Ok(()) => {
                self.queue.release(request.sessions);
                self.spool_failing = false;
                Ok(())
            }
            Err(error) => {
                if !self.spool_failing {
                    self.spool_failing = true;
                    tracing::warn!(
                        %error,
                        sessions = request.sessions,
                        "cannot write to the spool: holding the request in memory, as without a \
                         spool (the queue's capacity bounds it)"
                    );
                }
                Err(request)
            }
        }
    }

    /// A request is done with (exported, unconfirmed or refused for good): its sessions
    /// leave the queue, or its spool file goes.
    fn done(&mut self, request: &Request) {
        match (request.spooled, &mut self.spool) {
            (Some((seq, _)), Some(spool)) => spool.remove(seq),
            _ => self.queue.release(request.sessions),
        }
    }

    /// Counts a finished request; a failed one is kept for a retry after the backoff (or
    /// the delay the collector asked for). Gives back the body of a request that is done
    /// with. `until` is the shutdown deadline, once stopping.
    fn finished(
        &mut self,
        request: Request,
        outcome: Result<Accepted, SendError>,
        until: Option<Instant>,
    ) -> Option<Bytes> {
        let queue = self.queue;
        let stats = &queue.shared.stats;
        match outcome {
            Ok(Accepted {
                unconfirmed: Some(answer),
                ..
            }) => {
                QueueStats::add(&stats.exported_unconfirmed, request.sessions as u64);
                self.done(&request);
                if !self.unconfirmed {
                    self.unconfirmed = true;
                    tracing::warn!(
                        answer = %Escaped(&answer),
                        sessions = request.sessions,
                        "the collector answered success but not with an OTLP response: its \
                         spans may not have arrived; not retried, counted as \
                         exported_unconfirmed"
                    );
                }
                self.resumed();
                None
            }
            Ok(accepted) => {
                let rejected = (accepted.rejected as usize).min(request.sessions);
                QueueStats::add(&stats.exported, (request.sessions - rejected) as u64);
                if let Some((_, maybe_delivered)) = request.spooled {
                    let spool = &stats.spool;
                    let delivered = (request.sessions - rejected) as u64;
                    QueueStats::add(&spool.delivered, delivered);
                    if maybe_delivered {
                        QueueStats::add(&spool.maybe_duplicated, request.sessions as u64);
                    }
                }
                if rejected > 0 {
                    QueueStats::add(&stats.lost_rejected, rejected as u64);
                    tracing::warn!(
                        rejected,
                        collector_message = %Escaped(&accepted.message),
                        "the collector rejected spans (partial success)"
                    );
                }
                self.done(&request);
                self.unconfirmed = false;
                self.resumed();
                request.spooled.is_none().then_some(request.body)
            }
            Err(error) if !error.is_retryable() => {
                QueueStats::add(&stats.export_errors, 1);
                QueueStats::add(&stats.lost_rejected, request.sessions as u64);
                self.done(&request);
                if !self.refusing {
                    self.refusing = true;
                    tracing::warn!(
                        %error,
                        dropped = request.sessions,
                        "the collector refused a request for good (retrying cannot help); \
                         its spans are dropped and counted as lost_rejected"
                    );
                }
                None
            }
            Err(error) => {
                QueueStats::add(&stats.export_errors, 1);
                let asked = error.retry_after();
                if self.failing_since.is_none() {
                    self.failing_since = Some(Instant::now());
                    tracing::warn!(
                        %error,
                        retry_after = ?asked,
                        queued = self.queue.depth(),
                        "exporting spans failed; keeping them queued and retrying with backoff"
                    );
                }
                match (request.spooled, &mut self.spool) {
                    (Some((seq, _)), Some(spool)) => spool.release(seq),
                    _ => {
                        if let Err(request) = self.store(request, false) {
                            self.retries.push_back(request);
                        }
                    }
                }
                // Requests that were in flight together fail together: one pause for them,
                // the longest any of them was asked for.
                let wait = retry_wait(asked, self.backoff, until.is_some());
                let mut resume = Instant::now() + wait;
                if let Some(until) = until {
                    resume = resume.min(until);
                }
                match self.paused_until {
                    None => {
                        self.paused_until = Some(resume);
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                    Some(paused) if asked.is_some() => {
                        self.paused_until = Some(paused.max(resume));
                    }
                    Some(_) => {}
                }
                None
            }
        }
    }

    /// A request got an answer: the failure episode, if any, is over.
    fn resumed(&mut self) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(after = ?since.elapsed(), "the collector accepts spans again");
        }
        self.refusing = false;
        self.backoff = FIRST_BACKOFF;
    }

    fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.retries.is_empty() && self.queue.depth() == 0
    }

    /// At the deadline: writes what is not exported to the spool, if there is one (the
    /// requests cut short in flight marked as possibly delivered), and counts the rest as
    /// dropped at shutdown.
    fn abandon(mut self, encoder: &mut RequestEncoder) {
        self.in_flight.abort_all();
        let cut_short: Vec<_> = self.sent.drain().map(|(_, request)| request).collect();
        for request in cut_short {
            let _ = self.store(request, true);
        }
        let retries = std::mem::take(&mut self.retries);
        for request in retries {
            let _ = self.store(request, false);
        }
        self.spill(encoder, true);
        if let Some(spool) = self.spool.take() {
            spool.close();
        }
        let left = self.queue.depth();
        if left > 0 {
            QueueStats::add(&self.queue.shared.stats.lost_at_shutdown, left as u64);
            tracing::warn!(
                dropped = left,
                "spans not exported before the shutdown deadline"
            );
            let mut state = self.queue.shared.state();
            state.waiting.clear();
            state.taken = 0;
        }
    }
}

/// How long to wait before sending again after a retryable failure: the delay the collector
/// asked for (HTTP `Retry-After`, gRPC `RetryInfo`), at most [`MAX_BACKOFF`]; else the
/// exponential backoff, or [`FIRST_BACKOFF`] while stopping (the caller never waits past
/// the shutdown deadline either way).
fn retry_wait(asked: Option<Duration>, backoff: Duration, stopping: bool) -> Duration {
    match asked {
        Some(asked) => asked.min(MAX_BACKOFF),
        None if stopping => FIRST_BACKOFF,
        None => backoff,
    }
}

/// Runs `io` (the spool's file reads and synced writes, a few milliseconds each) on this
/// thread, telling a multi-thread runtime to move its other tasks (the reader, the
/// pipeline) to another thread meanwhile.
fn on_disk<T>(io: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    });
    if multi_thread {
        tokio::task::block_in_place(io)
    } else {
        io()
    }
}

/// Sleeps until `at`, or forever without one (the `select!` branch is disabled then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value,
    };
    use opentelemetry_sdk::Resource;
    use prost::Message as _;

    use super::*;
    use crate::{
        export::{
            span,
            spool::{SpoolOptions, tests::Dir},
            workload::ResourceSettings,
        },
        session::tests::client_session,
    };

    /// A collector that fails its first `failures` requests, then accepts.
    fn failing(failures: usize) -> Shared {
        Shared(Arc::new(Flaky {
            failures,
            ..Flaky::default()
        }))
    }

    /// Fails its first `failures` requests, then records the local port of every span it
    /// receives; `rejects` spans of each accepted request are reported as rejected.
    #[derive(Debug, Default)]
    struct Flaky {
        failures: usize,
        /// Answer every failure with HTTP 400, which retrying cannot fix.
        refuse: bool,
        /// Answer every failure with HTTP 503 and this `Retry-After`.
        retry_after: Option<Duration>,
        /// Answer every accepted request with a success that is not an OTLP response.
        unconfirmed: bool,
        /// When each request arrived.
        times: Mutex<Vec<Instant>>,
        rejects: u64,
        /// How long each accepted request takes.
        latency: Duration,
        calls: AtomicUsize,
        /// Requests being answered now, and the most there ever were at once.
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
        exported: Mutex<Vec<i64>>,
    }

    #[derive(Debug, Clone, Default)]
    struct Shared(Arc<Flaky>);

    impl Destination for Shared {
        async fn send(&self, request: Bytes) -> Result<Accepted, SendError> {
            let flaky = &self.0;
            flaky.times.lock().unwrap().push(Instant::now());
            if flaky.calls.fetch_add(1, Ordering::SeqCst) < flaky.failures {
                return Err(if let Some(retry_after) = flaky.retry_after {
                    SendError::Http {
                        status: http::StatusCode::SERVICE_UNAVAILABLE,
                        body: "busy".into(),
                        retry_after: Some(retry_after),
                    }
                } else if flaky.refuse {
                    SendError::Http {
                        status: http::StatusCode::BAD_REQUEST,
                        body: "malformed".into(),
                        retry_after: None,
                    }
                } else {
                    SendError::NoAnswer("collector down".into())
                });
            }
            let now = flaky.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            flaky.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(flaky.latency).await;
            flaky.in_flight.fetch_sub(1, Ordering::SeqCst);
            let request = ExportTraceServiceRequest::decode(request).unwrap();
            let ports = request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .map(|span| {
                    span.attributes
                        .iter()
                        .find(|kv| kv.key == span::key::NETWORK_LOCAL_PORT)
                        .and_then(|kv| match kv.value.as_ref()?.value {
                            Some(any_value::Value::IntValue(port)) => Some(port),
                            _ => None,
                        })
                        .unwrap_or_default()
                });
            flaky.exported.lock().unwrap().extend(ports);
            Ok(Accepted {
                rejected: flaky.rejects,
                unconfirmed: flaky.unconfirmed.then(|| "<html>".to_owned()),
                ..Accepted::default()
            })
        }
    }

    fn settings(queue: usize, batch: usize, concurrent: usize) -> BatchSettings {
        BatchSettings {
            max_queue_size: queue,
            max_export_batch_size: batch,
            scheduled_delay: Duration::from_millis(10),
            max_concurrent_exports: concurrent,
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

    fn encoder() -> RequestEncoder {
        RequestEncoder::new(&Resource::builder_empty().build(), ResourceSettings::SINGLE)
    }

    /// Runs the worker until `done` holds (or 5 s), then stops it.
    async fn run_until(queue: &ExportQueue, destination: Shared, done: impl Fn() -> bool) {
        let worker = Worker::spawn(queue, &destination, None);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worker.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_drops_and_counts_and_the_rest_is_exported_in_order() {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings(3, 2, 1), stats.clone());
        let sessions: Vec<_> = (1..=5).map(session).collect();
        queue.push(&sessions);
        assert_eq!(get(&stats.lost_queue_full), 2);
        let destination = Shared::default();
        run_until(&queue, destination.clone(), || get(&stats.exported) >= 3).await;
        assert_eq!(*destination.0.exported.lock().unwrap(), vec![1, 2, 3]);
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
    async fn sessions_in_flight_count_against_the_capacity() {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings(4, 2, 2), stats.clone());
        queue.push(&[session(1), session(2), session(3), session(4)]);
        // Two requests taken, not finished: the queue is still full.
        assert_eq!(queue.take(false).len(), 2);
        assert_eq!(queue.take(false).len(), 2);
        queue.push(&[session(5)]);
        assert_eq!(get(&stats.lost_queue_full), 1);
        assert_eq!(queue.depth(), 4);
        queue.release(2);
        queue.push(&[session(6)]);
        assert_eq!((get(&stats.enqueued), queue.depth()), (5, 3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_overlap_up_to_the_limit_and_export_every_session_once() {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings(1_000, 10, 4), stats.clone());
        let sessions: Vec<_> = (1..=1_000).map(session).collect();
        queue.push(&sessions);
        let destination = Shared(Arc::new(Flaky {
            latency: Duration::from_millis(5),
            ..Flaky::default()
        }));
        run_until(&queue, destination.clone(), || {
            get(&stats.exported) >= 1_000
        })
        .await;
        // 100 requests of 5 ms each: four at a time, never more.
        assert_eq!(destination.0.most_in_flight.load(Ordering::SeqCst), 4);
        let mut ports = destination.0.exported.lock().unwrap().clone();
        ports.sort_unstable();
        assert_eq!(ports, (1..=1_000).collect::<Vec<_>>());
        assert_eq!(queue.depth(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_exports_keep_the_batch_and_deliver_it_when_the_collector_is_back() {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings(10, 10, 4), stats.clone());
        let destination = failing(2);
        queue.push(&[session(7), session(8), session(9)]);
        run_until(&queue, destination.clone(), || get(&stats.exported) >= 3).await;
        assert_eq!(
            *destination.0.exported.lock().unwrap(),
            vec![7, 8, 9],
            "delivered after two failures"
        );
        assert_eq!(get(&stats.export_errors), 2);
        assert_eq!(queue.depth(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_refused_for_good_is_dropped_and_counted_not_retried() {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings(10, 2, 1), stats.clone());
        let destination = Shared(Arc::new(Flaky {
            failures: 1,
            refuse: true,
            ..Flaky::default()
        }));
        queue.push(&[session(1), session(2), session(3), session(4)]);
        run_until(&queue, destination.clone(), || {
            get(&stats.exported) + get(&stats.lost_rejected) >= 4
        })
        .await;
        assert_eq!(*destination.0.exported.lock().unwrap(), vec![3, 4]);
        assert_eq!(
            (
                get(&stats.lost_rejected),
                get(&stats.exported),
                get(&stats.export_errors)
            ),
            (2, 2, 1)
        );
        assert_eq!(queue.depth(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_the_collector_rejects_are_counted_apart() {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings(10, 10, 1), stats.clone());
        let destination = Shared(Arc::new(Flaky {
            rejects: 1,
            ..Flaky::default()
        }));
        queue.push(&[session(1), session(2), session(3)]);
        run_until(&queue, destination, || {
            get(&stats.exported) + get(&stats.lost_rejected) >= 3
        })
        .await;
        assert_eq!((get(&stats.exported), get(&stats.lost_rejected)), (2, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_cannot_be_exported_by_the_deadline_is_counted_as_dropped() {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings(10, 2, 2), stats.clone());
        let destination = failing(usize::MAX);
        queue.push(&[session(1), session(2), session(3), session(4)]);
        let (_stop, stopped) = watch::channel(Some(Instant::now() + Duration::from_millis(200)));
        queue
            .clone()
            .run(destination, encoder(), None, stopped)
            .await;
        assert_eq!(get(&stats.lost_at_shutdown), 4);
        assert_eq!(get(&stats.exported), 0);
        assert_eq!(queue.depth(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_success_that_is_not_an_otlp_response_is_counted_unconfirmed_not_retried() {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings(10, 2, 1), stats.clone());
        let destination = Shared(Arc::new(Flaky {
            unconfirmed: true,
            ..Flaky::default()
        }));
        queue.push(&[session(1), session(2), session(3)]);
        run_until(&queue, destination.clone(), || {
            get(&stats.exported_unconfirmed) >= 3
        })
        .await;
        assert_eq!(
            (
                get(&stats.exported_unconfirmed),
                get(&stats.exported),
                get(&stats.export_errors),
                get(&stats.lost_rejected)
            ),
            (3, 0, 0, 0)
        );
        assert_eq!(
            destination.0.calls.load(Ordering::SeqCst),
            2,
            "sent once each"
        );
        assert_eq!(queue.depth(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wait_the_collector_asks_for_is_honoured() {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings(10, 10, 1), stats.clone());
        // 1.5 s asked for, where the backoff would wait 0.5 s.
        let destination = Shared(Arc::new(Flaky {
            failures: 1,
            retry_after: Some(Duration::from_millis(1_500)),
            ..Flaky::default()
        }));
        queue.push(&[session(1)]);
        run_until(&queue, destination.clone(), || get(&stats.exported) >= 1).await;
        let times = destination.0.times.lock().unwrap().clone();
        assert_eq!(times.len(), 2);
        let waited = times[1] - times[0];
        assert!(
            waited >= Duration::from_millis(1_500) && waited < Duration::from_millis(2_000),
            "waited {waited:?}"
        );
        assert_eq!((get(&stats.exported), get(&stats.export_errors)), (1, 1));
    }

    /// Waits until `done` holds, failing after 10 s.
    async fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The spool in `options` and counters that share its own.
    fn spool(options: &SpoolOptions) -> (Arc<QueueStats>, Option<Spool>) {
        let spool = Spool::open(options).unwrap();
        (Arc::new(QueueStats::with_spool(Some(&spool))), Some(spool))
    }

    /// A next agent's worker on the spool in `options`, with a collector that accepts
    /// everything, run until it has exported `sessions`; its counters and the collector.
    async fn next_agent(options: &SpoolOptions, sessions: u64) -> (Arc<QueueStats>, Shared) {
        let (stats, spool) = spool(options);
        let queue = ExportQueue::new(settings(10, 2, 2), stats.clone());
        let up = Shared::default();
        let worker = Worker::spawn(&queue, &up, spool);
        wait_for("the spool delivered", || get(&stats.exported) >= sessions).await;
        worker.stop().await;
        (stats, up)
    }

    /// A worker of a queue, running until [`Worker::stop`].
    struct Worker {
        stop: watch::Sender<Option<Instant>>,
        handle: tokio::task::JoinHandle<()>,
    }

    impl Worker {
        fn spawn(queue: &ExportQueue, destination: &Shared, spool: Option<Spool>) -> Self {
            let (stop, stopped) = watch::channel(None);
            let handle = tokio::spawn(queue.clone().run(
                destination.clone(),
                encoder(),
                spool,
                stopped,
            ));
            Self { stop, handle }
        }

        /// Stops it with a deadline one second away and waits for it.
        async fn stop(self) {
            self.stop
                .send_replace(Some(Instant::now() + Duration::from_secs(1)));
            self.handle.await.unwrap();
        }
    }

    /// The first request fails: it goes to the spool, and so do the sessions beyond half
    /// the capacity that arrive during the pause; once the collector answers, the spool
    /// goes first, then the rest: every session once, in order, and nothing left on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_goes_to_the_spool_and_comes_back_oldest_first_exactly_once() {
        let dir = Dir::new("queue-outage");
        let (stats, spool) = spool(&dir.options(1 << 20));
        let queue = ExportQueue::new(settings(10, 2, 1), stats.clone());
        let destination = failing(2);
        let worker = Worker::spawn(&queue, &destination, spool);
        queue.push(&[session(1), session(2)]);
        wait_for("a failure", || get(&stats.export_errors) >= 1).await;
        queue.push(&(3..=8).map(session).collect::<Vec<_>>());
        wait_for("everything exported", || get(&stats.exported) >= 8).await;
        worker.stop().await;
        assert_eq!(
            *destination.0.exported.lock().unwrap(),
            (1..=8).collect::<Vec<_>>()
        );
        let spool = &stats.spool;
        // [1, 2] failed, and the rest arrived during the pause.
        assert_eq!(
            [&spool.spooled, &spool.delivered, &spool.sessions].map(get),
            [8, 8, 0]
        );
        assert_eq!((get(&stats.lost_queue_full), queue.depth()), (0, 0));
        assert_eq!(dir.names(), Vec::<String>::new());
    }

    /// A spool that cannot be written (here: its directory removed) leaves the failed
    /// request in memory, retried as without a spool: delivered once the collector is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spool_that_cannot_be_written_keeps_the_request_in_memory() {
        let dir = Dir::new("queue-unwritable");
        let (stats, spool) = spool(&dir.options(1 << 20));
        std::fs::remove_dir_all(dir.path()).unwrap();
        let queue = ExportQueue::new(settings(10, 2, 1), stats.clone());
        let destination = failing(1);
        let worker = Worker::spawn(&queue, &destination, spool);
        queue.push(&[session(1), session(2)]);
        wait_for("delivered from memory", || get(&stats.exported) >= 2).await;
        worker.stop().await;
        assert_eq!(*destination.0.exported.lock().unwrap(), vec![1, 2]);
        assert_eq!(
            (
                get(&stats.spool.spooled),
                get(&stats.export_errors),
                queue.depth()
            ),
            (0, 1, 0)
        );
    }

    /// Stopping while the collector fails: what is queued goes to the spool at once, not
    /// dropped; the next agent, with a collector that answers, delivers it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_deadline_leaves_goes_to_the_spool_and_the_next_agent_delivers_it() {
        let dir = Dir::new("queue-deadline");
        let options = dir.options(1 << 20);
        let (stats, first) = spool(&options);
        let queue = ExportQueue::new(settings(10, 2, 2), stats.clone());
        let down = failing(usize::MAX);
        queue.push(&[session(1), session(2), session(3), session(4), session(5)]);
        let started = Instant::now();
        let (_stop, stopped) = watch::channel(Some(started + Duration::from_secs(3)));
        queue.clone().run(down, encoder(), first, stopped).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not held until the deadline"
        );
        assert_eq!(
            (get(&stats.lost_at_shutdown), get(&stats.spool.spooled)),
            (0, 5)
        );
        assert_eq!(dir.names().len(), 3);

        let (next, up) = next_agent(&options, 5).await;
        assert_eq!(get(&next.spool.found), 5);
        let mut ports = up.0.exported.lock().unwrap().clone();
        ports.sort_unstable();
        assert_eq!(ports, [1, 2, 3, 4, 5]);
        assert_eq!(get(&next.spool.delivered), 5);
        assert_eq!(get(&next.spool.maybe_duplicated), 0);
        assert_eq!(dir.names(), Vec::<String>::new());
    }

    /// A request still in flight at the deadline may have reached the collector: it is
    /// spooled marked so, and its delivery by the next agent is counted as a possible
    /// duplicate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_cut_short_at_the_deadline_is_spooled_as_a_possible_duplicate() {
        let dir = Dir::new("queue-cut-short");
        let options = dir.options(1 << 20);
        let (stats, first) = spool(&options);
        let queue = ExportQueue::new(settings(10, 2, 1), stats.clone());
        let slow = Shared(Arc::new(Flaky {
            latency: Duration::from_secs(60),
            ..Flaky::default()
        }));
        queue.push(&[session(1), session(2)]);
        let (_stop, stopped) = watch::channel(Some(Instant::now() + Duration::from_millis(300)));
        queue.clone().run(slow, encoder(), first, stopped).await;
        assert_eq!(dir.names(), ["00000000000000000000-2.sending"]);
        assert_eq!((get(&stats.spool.spooled), queue.depth()), (2, 0));

        let (next, _) = next_agent(&options, 2).await;
        assert_eq!(get(&next.spool.maybe_duplicated), 2);
    }

    #[test]
    fn the_wait_asked_for_stays_within_the_backoff_bounds() {
        let second = Duration::from_secs(1);
        assert_eq!(retry_wait(Some(3 * second), second, false), 3 * second);
        assert_eq!(retry_wait(Some(3_600 * second), second, false), MAX_BACKOFF);
        assert_eq!(retry_wait(Some(3 * second), second, true), 3 * second);
        assert_eq!(retry_wait(None, 8 * second, false), 8 * second);
        assert_eq!(retry_wait(None, 8 * second, true), FIRST_BACKOFF);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_asked_for_never_passes_the_shutdown_deadline() {
        let stats = Arc::new(QueueStats::default());
        let queue = ExportQueue::new(settings(10, 10, 1), stats.clone());
        let destination = Shared(Arc::new(Flaky {
            failures: usize::MAX,
            retry_after: Some(Duration::from_secs(3_600)),
            ..Flaky::default()
        }));
        queue.push(&[session(1), session(2)]);
        let started = Instant::now();
        let (_stop, stopped) = watch::channel(Some(started + Duration::from_millis(300)));
        queue
            .clone()
            .run(destination, encoder(), None, stopped)
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(get(&stats.lost_at_shutdown), 2);
    }
}
