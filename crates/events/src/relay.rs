//! The relay: ships a service's outbox to audit, at least once, oldest
//! first. A row leaves the outbox only after the destination confirmed it
//! (RabbitMQ publisher confirms, or audit's reply to `Append`, which comes
//! after audit committed). While the destination is down the rows wait in
//! the outbox and the relay retries with a capped backoff.
//!
//! To RabbitMQ the relay keeps up to [`AMQP_IN_FLIGHT`] batches in flight
//! on its channel: it sends the next batches while the broker is still
//! persisting the earlier ones, and removes each batch from the outbox, in
//! order, once its confirms are in. The rows in flight are not read again:
//! the relay reads on from the last id it sent. A row that commits late
//! with an older id (ids are UUID v7, taken when the event was made) is
//! picked up when the relay starts again from the oldest unsent row, which
//! it does whenever nothing is in flight, and at least every [`RESCAN`]
//! (it then lets the batches in flight drain first). Batches reach the
//! broker in order on the one channel; after a failure the relay starts
//! again from the oldest unsent row, so a batch that was in flight may
//! arrive before the one retried (audit skips what it already holds).
//! Several events travel in one message ([`crate::amqp`]). `Append` over
//! mTLS keeps one batch in flight, so audit stores each service's events
//! in outbox order.
//!
//! Metrics: `events_relayed_total`, `events_relay_failures_total`,
//! `events_outbox_depth` and `events_relay_lag_seconds` (from the event's
//! time to its confirmed delivery).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::task::JoinHandle;
use trustmesh_proto::trustmesh::audit::v1::AppendRequest;
use trustmesh_proto::trustmesh::audit::v1::audit_client::AuditClient;
use trustmesh_runtime::{MeshChannel, Shutdown};
use trustmesh_telemetry::MetricsRegistry;

use crate::amqp::{AmqpError, AmqpPublisher};
use crate::event::Event;
use crate::outbox::Outbox;

/// The most events shipped in one batch.
pub const BATCH: usize = 500;
/// The most batches a relay keeps in flight to RabbitMQ (sent, awaiting
/// their publisher confirms).
pub const AMQP_IN_FLIGHT: usize = 8;
/// How often, at least, the relay starts again from the oldest unsent row
/// (to pick up rows that committed late with an older id).
pub const RESCAN: Duration = Duration::from_secs(1);
/// How often the relay looks at the outbox when nobody woke it.
const POLL: Duration = Duration::from_millis(100);
/// The longest pause between attempts while the destination is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Rows that versions before 2026-12-07 marked sent, instead of removing
/// them, are purged once they are this old.
const KEEP_SENT: time::Duration = time::Duration::hours(1);

/// Where a relay delivers.
#[derive(Debug)]
pub enum Destination {
    /// RabbitMQ (`AMQP_URL`), with publisher confirms.
    Amqp(AmqpPublisher),
    /// The audit service's `Append` over mTLS.
    Audit(AuditClient<MeshChannel>),
}

/// A delivery failure.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// RabbitMQ failed.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// The audit service refused or could not be reached.
    #[error("audit.Append: {0}")]
    Audit(#[from] tonic::Status),
}

impl Destination {
    /// RabbitMQ at `url`.
    pub fn amqp(url: &str) -> Destination {
        Destination::Amqp(AmqpPublisher::new(url))
    }

    /// The audit service over `channel`.
    pub fn audit(channel: MeshChannel) -> Destination {
        Destination::Audit(AuditClient::new(channel))
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Destination::Amqp(_) => "rabbitmq",
            Destination::Audit(_) => "audit",
        }
    }

    /// Delivers `events`; `Ok` means the destination has them durably.
    pub async fn deliver(&mut self, events: &[Event]) -> Result<(), DeliveryError> {
        self.start(events).await?.await
    }

    /// Starts delivering `events` and returns what completes the delivery:
    /// `Ok` from it means the destination has them durably. Batches
    /// started one after the other arrive in that order.
    pub async fn start(&mut self, events: &[Event]) -> Result<Delivery, DeliveryError> {
        match self {
            Destination::Amqp(publisher) => {
                let confirms = publisher.send(events).await?;
                Ok(Box::pin(async move { Ok(confirms.wait().await?) }))
            }
            Destination::Audit(client) => {
                let mut client = client.clone();
                let request = AppendRequest {
                    events: events.iter().map(Event::to_proto).collect(),
                };
                Ok(Box::pin(async move {
                    client.append(request).await?;
                    Ok(())
                }))
            }
        }
    }

    /// How many batches may be in flight at once.
    pub fn max_in_flight(&self) -> usize {
        match self {
            Destination::Amqp(_) => AMQP_IN_FLIGHT,
            Destination::Audit(_) => 1,
        }
    }

    /// Forgets the connection after a failure, so the next delivery starts
    /// afresh.
    fn reset(&mut self) {
        if let Destination::Amqp(publisher) = self {
            publisher.reset();
        }
    }
}

/// A delivery under way (see [`Destination::start`]).
pub type Delivery = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send>>;

/// The relay's metrics.
#[derive(Clone, Debug)]
struct RelayMetrics {
    relayed: Counter,
    failures: Counter,
    depth: Gauge,
    lag: Histogram,
}

impl RelayMetrics {
    fn register(metrics: &MetricsRegistry) -> RelayMetrics {
        metrics.register(|registry| {
            let m = RelayMetrics {
                relayed: Counter::default(),
                failures: Counter::default(),
                depth: Gauge::default(),
                lag: Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            };
            registry.register(
                "events_relayed",
                "Outbox events delivered to audit",
                m.relayed.clone(),
            );
            registry.register(
                "events_relay_failures",
                "Failed delivery attempts of outbox batches",
                m.failures.clone(),
            );
            registry.register(
                "events_outbox_depth",
                "Outbox events waiting for delivery",
                m.depth.clone(),
            );
            registry.register(
                "events_relay_lag_seconds",
                "Time from an event to its confirmed delivery",
                m.lag.clone(),
            );
            m
        })
    }
}

/// Ships one outbox to one destination.
#[derive(Debug)]
pub struct Relay {
    outbox: Outbox,
    destination: Destination,
    metrics: RelayMetrics,
    housekeeping_runs: u64,
}

/// A batch in flight: its events and how its delivery ended.
type Shipped = (Vec<Event>, Result<(), DeliveryError>);

/// The batches in flight, oldest first, and where reading goes on.
struct Pipeline {
    in_flight: FuturesOrdered<Pin<Box<dyn Future<Output = Shipped> + Send>>>,
    /// The id of the newest row sent; `None`: read from the oldest unsent.
    cursor: Option<String>,
    /// When reading last started from the oldest unsent row.
    rescanned: tokio::time::Instant,
}

impl Pipeline {
    fn new() -> Pipeline {
        Pipeline {
            in_flight: FuturesOrdered::new(),
            cursor: None,
            rescanned: tokio::time::Instant::now(),
        }
    }

    /// Abandons the batches in flight (they stay unsent in the outbox and
    /// go again) and reads from the oldest unsent row.
    fn clear(&mut self) {
        self.in_flight = FuturesOrdered::new();
        self.restart();
    }

    fn restart(&mut self) {
        self.cursor = None;
        self.rescanned = tokio::time::Instant::now();
    }
}

/// What one step of the relay did.
enum Step {
    /// Events were delivered or are in flight: go on at once.
    Busy,
    /// Nothing to ship.
    Idle,
    /// A failure (already logged): back off.
    Failed,
}

impl Relay {
    /// A relay from `outbox` to `destination`, publishing its metrics in `metrics`.
    pub fn new(outbox: Outbox, destination: Destination, metrics: &MetricsRegistry) -> Relay {
        Relay {
            outbox,
            destination,
            metrics: RelayMetrics::register(metrics),
            housekeeping_runs: 0,
        }
    }

    /// Runs the relay until `shutdown`; then makes one last attempt (for at
    /// most two seconds) to ship what is left.
    pub fn spawn(mut self, shutdown: Shutdown) -> JoinHandle<()> {
        tokio::spawn(async move {
            tracing::info!(destination = self.destination.name(), "event relay started");
            let mut pipeline = Pipeline::new();
            let mut backoff = Duration::ZERO;
            let mut last_housekeeping = tokio::time::Instant::now() - Duration::from_secs(60);
            loop {
                if last_housekeeping.elapsed() >= Duration::from_secs(1) {
                    self.housekeeping().await;
                    last_housekeeping = tokio::time::Instant::now();
                }
                let pause = match self.step(&mut pipeline).await {
                    Step::Busy => {
                        backoff = Duration::ZERO;
                        if shutdown.is_triggered() {
                            break;
                        }
                        continue;
                    }
                    Step::Idle => {
                        backoff = Duration::ZERO;
                        POLL
                    }
                    Step::Failed => {
                        backoff = (backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF);
                        backoff
                    }
                };
                tokio::select! {
                    () = shutdown.wait() => break,
                    () = self.outbox.woken(), if backoff.is_zero() => {}
                    () = tokio::time::sleep(pause) => {}
                }
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while tokio::time::Instant::now() < deadline {
                match tokio::time::timeout_at(deadline, self.step(&mut pipeline)).await {
                    Ok(Step::Busy) => continue,
                    _ => break,
                }
            }
            tracing::info!("event relay stopped");
        })
    }

    /// Fills the pipeline from the outbox, then waits for the oldest batch
    /// in flight and removes it from the outbox.
    async fn step(&mut self, pipeline: &mut Pipeline) -> Step {
        // With nothing in flight, read from the oldest unsent row; and every
        // RESCAN, stop sending until what is in flight drained, to do so.
        if pipeline.in_flight.is_empty() {
            pipeline.restart();
        }
        let draining = pipeline.rescanned.elapsed() >= RESCAN;
        while !draining && pipeline.in_flight.len() < self.destination.max_in_flight() {
            let events = match self
                .outbox
                .pending_after(pipeline.cursor.as_deref(), BATCH)
                .await
            {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox");
                    pipeline.clear();
                    return Step::Failed;
                }
            };
            let Some(last) = events.last() else {
                break;
            };
            pipeline.cursor = Some(last.id.clone());
            // A short batch took everything there was.
            let drained = events.len() < BATCH;
            match self.destination.start(&events).await {
                Ok(delivery) => pipeline
                    .in_flight
                    .push_back(Box::pin(async move { (events, delivery.await) })),
                Err(e) => {
                    self.failed(&events, &e);
                    pipeline.clear();
                    return Step::Failed;
                }
            }
            if drained {
                break;
            }
        }
        let Some((events, result)) = pipeline.in_flight.next().await else {
            return Step::Idle;
        };
        if let Err(e) = result {
            self.failed(&events, &e);
            pipeline.clear();
            return Step::Failed;
        }
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        if let Err(e) = self.outbox.remove_delivered(&ids).await {
            // Delivered but still in the outbox: they will be delivered
            // again, and audit ignores the duplicates.
            tracing::warn!(error = %e, "cannot remove delivered events from the outbox");
            pipeline.clear();
            return Step::Failed;
        }
        let now = OffsetDateTime::now_utc();
        for event in &events {
            if let Ok(at) = OffsetDateTime::parse(&event.time, &Rfc3339) {
                self.metrics
                    .lag
                    .observe((now - at).as_seconds_f64().max(0.0));
            }
        }
        self.metrics.relayed.inc_by(events.len() as u64);
        Step::Busy
    }

    fn failed(&mut self, events: &[Event], e: &DeliveryError) {
        self.metrics.failures.inc();
        self.destination.reset();
        tracing::warn!(
            destination = self.destination.name(),
            pending = events.len(),
            error = %e,
            "event delivery failed; the events stay in the outbox"
        );
    }

    /// Updates the depth gauge; once a minute also purges rows an older
    /// version marked sent.
    async fn housekeeping(&mut self) {
        if let Ok(depth) = self.outbox.depth().await {
            self.metrics.depth.set(depth);
        }
        self.housekeeping_runs = self.housekeeping_runs.wrapping_add(1);
        if self.housekeeping_runs % 60 != 1 {
            return;
        }
        let before = (OffsetDateTime::now_utc() - KEEP_SENT)
            .format(&Rfc3339)
            .unwrap_or_default();
        if let Err(e) = self.outbox.purge_sent(&before).await {
            tracing::warn!(error = %e, "cannot purge delivered events");
        }
    }
}
