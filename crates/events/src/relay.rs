//! The relay: ships a service's outbox to audit, at least once, oldest
//! first. A row is marked sent only after the destination confirmed it
//! (RabbitMQ publisher confirms, or audit's reply to `Append`, which comes
//! after audit committed). While the destination is down the rows wait in
//! the outbox and the relay retries with a capped backoff.
//!
//! Metrics: `events_relayed_total`, `events_relay_failures_total`,
//! `events_outbox_depth` and `events_relay_lag_seconds` (from the event's
//! time to its confirmed delivery).

use std::time::Duration;

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
/// How often the relay looks at the outbox when nobody woke it.
const POLL: Duration = Duration::from_millis(100);
/// The longest pause between attempts while the destination is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Sent rows are kept this long (for inspection), then purged.
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
        match self {
            Destination::Amqp(publisher) => Ok(publisher.publish(events).await?),
            Destination::Audit(client) => {
                let request = AppendRequest {
                    events: events.iter().map(Event::to_proto).collect(),
                };
                client.append(request).await?;
                Ok(())
            }
        }
    }
}

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
            let mut backoff = Duration::ZERO;
            let mut last_housekeeping = tokio::time::Instant::now() - Duration::from_secs(60);
            loop {
                if last_housekeeping.elapsed() >= Duration::from_secs(1) {
                    self.housekeeping().await;
                    last_housekeeping = tokio::time::Instant::now();
                }
                let pause = match self.ship_once().await {
                    Ok(0) => {
                        backoff = Duration::ZERO;
                        POLL
                    }
                    Ok(_) => {
                        backoff = Duration::ZERO;
                        continue;
                    }
                    Err(()) => {
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
                match tokio::time::timeout_at(deadline, self.ship_once()).await {
                    Ok(Ok(n)) if n > 0 => continue,
                    _ => break,
                }
            }
            tracing::info!("event relay stopped");
        })
    }

    /// Ships one batch; the number of events delivered, or `Err` after a
    /// failure (already logged).
    async fn ship_once(&mut self) -> Result<usize, ()> {
        let events = match self.outbox.pending(BATCH).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox");
                return Err(());
            }
        };
        if events.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.destination.deliver(&events).await {
            self.metrics.failures.inc();
            tracing::warn!(
                destination = self.destination.name(),
                pending = events.len(),
                error = %e,
                "event delivery failed; the events stay in the outbox"
            );
            return Err(());
        }
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        if let Err(e) = self.outbox.mark_sent(&ids).await {
            // Delivered but not marked: they will be delivered again, and
            // audit ignores the duplicates.
            tracing::warn!(error = %e, "cannot mark delivered events");
            return Err(());
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
        Ok(events.len())
    }

    /// Updates the depth gauge; once a minute also purges old sent rows.
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
