//! Ingestion from RabbitMQ: consume the audit queue, append each batch to
//! the log, and acknowledge it only after the append committed. A batch that
//! fails is not acknowledged; the broker redelivers it and the log skips
//! what it already holds (idempotent on event id), so every event is stored
//! exactly once.

use std::time::Duration;

use trustmesh_events::amqp::AmqpConsumer;
use trustmesh_runtime::Shutdown;

use crate::Ingest;

/// Most events in one append (a message may carry several, so a batch can
/// end a little above). One append is one commit — an `fsync`, plus the
/// SQLite WAL checkpoints it triggers — whatever its size: under load, large
/// batches spread that cost (1,000 events a batch stored about 21,000
/// events/s on 2 cores, 4,000 about 29,000).
const BATCH: usize = 4000;
/// Unacknowledged messages the broker may send ahead. A relay puts up to
/// [`trustmesh_events::amqp::EVENTS_PER_MESSAGE`] (100) events in a
/// message, so this is at most 50,000 events in memory; from publishers of
/// one event per message, batches of 500 events.
const PREFETCH: u16 = 500;
/// How long a batch waits for more messages once it has one.
const LINGER: Duration = Duration::from_millis(10);

/// Consumes `url`'s audit queue into `ingest` until `shutdown`, reconnecting
/// with a capped backoff while the broker is away.
pub fn spawn_consumer(
    url: String,
    ingest: Ingest,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_triggered() {
            match AmqpConsumer::connect(&url, PREFETCH).await {
                Ok(mut consumer) => {
                    tracing::info!("consuming audit events from RabbitMQ");
                    backoff = Duration::from_millis(100);
                    tokio::select! {
                        () = shutdown.wait() => break,
                        e = consume(&mut consumer, &ingest) => {
                            tracing::warn!(error = %e, "RabbitMQ consumer stopped; reconnecting");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot consume from RabbitMQ; retrying"),
            }
            tokio::select! {
                () = shutdown.wait() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    })
}

/// Appends batches until an error; returns it.
async fn consume(consumer: &mut AmqpConsumer, ingest: &Ingest) -> String {
    loop {
        let batch = match consumer.next_batch(BATCH, LINGER).await {
            Ok(batch) => batch,
            Err(e) => return e.to_string(),
        };
        let mut events = Vec::with_capacity(batch.events.len());
        for event in &batch.events {
            match event {
                Ok(event) => events.push(event.clone()),
                // A message that is not an event cannot be stored; it is
                // acknowledged (else it would come back forever) and logged.
                Err(problem) => tracing::error!(%problem, "dropping a malformed audit message"),
            }
        }
        if let Err(e) = ingest.ingest(events).await {
            // Not acknowledged: the broker redelivers after reconnecting.
            return format!("append failed: {e}");
        }
        if let Err(e) = consumer.ack(&batch).await {
            return e.to_string();
        }
    }
}
