//! RabbitMQ transport (`AMQP_URL`): a publisher with publisher confirms for
//! the relays and a consumer with manual acknowledgements for audit.
//!
//! Topology, declared by both sides so neither depends on the other having
//! run first: a durable topic exchange [`EXCHANGE`], a durable queue
//! [`AUDIT_QUEUE`] bound to it with `#`. Messages are persistent
//! (delivery mode 2) and routed by `<service>.<action>` (lower case).
//!
//! A message carries one event — body the protobuf
//! `trustmesh.audit.v1.Event`, `message_id` the event id — or, when a relay
//! ships several events in a row with the same routing key, up to
//! [`EVENTS_PER_MESSAGE`] of them: body the protobuf
//! `trustmesh.audit.v1.AppendRequest`, `type` [`BATCH_TYPE`], `message_id`
//! the first event's id. The broker's work is per message (routing,
//! persisting, confirming, delivering, acknowledging: about 100 µs of CPU
//! on a small machine), so one event per message would cap the whole mesh
//! at about 10,000 events/s; the consumer reads both forms.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use prost::Message;
use trustmesh_proto::trustmesh::audit::v1 as pb;

use crate::event::Event;

/// The exchange every service publishes its events to.
pub const EXCHANGE: &str = "trustmesh.events";
/// The queue audit consumes.
pub const AUDIT_QUEUE: &str = "trustmesh.audit";

/// The most events one message carries.
pub const EVENTS_PER_MESSAGE: usize = 100;
/// The `type` of a message carrying several events.
pub const BATCH_TYPE: &str = "trustmesh.audit.v1.AppendRequest";

/// A broker failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The client library reported an error.
    #[error("RabbitMQ: {doing}: {source}")]
    Broker {
        /// What was being done.
        doing: &'static str,
        /// The client's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker nacked or returned a message instead of storing it.
    #[error("RabbitMQ refused message {0} (nack or unroutable)")]
    Refused(String),
    /// The consumer's stream ended (connection or channel closed).
    #[error("RabbitMQ: the consumer stream ended")]
    ConsumerClosed,
}

fn amqp(doing: &'static str) -> impl FnOnce(lapin::Error) -> AmqpError {
    move |source| AmqpError::Broker { doing, source }
}

/// Opens a connection and a channel and declares the topology.
async fn open(url: &str) -> Result<(Connection, Channel), AmqpError> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(amqp("connecting"))?;
    let channel = conn
        .create_channel()
        .await
        .map_err(amqp("opening a channel"))?;
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp("declaring the exchange"))?;
    channel
        .queue_declare(
            AUDIT_QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp("declaring the audit queue"))?;
    channel
        .queue_bind(
            AUDIT_QUEUE.into(),
            EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("binding the audit queue"))?;
    Ok((conn, channel))
}

/// Publishes batches of events with publisher confirms.
///
/// [`AmqpPublisher::send`] hands a batch to the broker and returns at once
/// with its [`Confirms`], so a relay can keep several batches in flight on
/// the channel; [`AmqpPublisher::publish`] sends one batch and waits for its
/// confirms. Either way a batch counts as delivered only once the broker
/// confirmed every message of it (persisted to the durable queue).
#[derive(Debug)]
pub struct AmqpPublisher {
    url: String,
    open: Option<(Connection, Channel)>,
}

/// The broker's pending confirms of one batch sent by [`AmqpPublisher::send`].
#[derive(Debug)]
pub struct Confirms {
    pending: Vec<(lapin::PublisherConfirm, String)>,
}

impl Confirms {
    /// Waits until the broker confirmed every message of the batch; `Err`
    /// when one was refused or the channel failed (then nothing of the
    /// batch can be assumed delivered).
    pub async fn wait(self) -> Result<(), AmqpError> {
        for (confirm, id) in self.pending {
            let confirmation = confirm.await.map_err(amqp("awaiting a confirm"))?;
            if !confirmation.is_ack() || confirmation.take_message().is_some() {
                return Err(AmqpError::Refused(id));
            }
        }
        Ok(())
    }

    /// How many messages carry the batch.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when the batch was empty (no message).
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

impl AmqpPublisher {
    /// A publisher that connects on first use (and again after a failure).
    pub fn new(url: &str) -> AmqpPublisher {
        AmqpPublisher {
            url: url.to_owned(),
            open: None,
        }
    }

    async fn channel(&mut self) -> Result<&Channel, AmqpError> {
        let usable = self.open.as_ref().is_some_and(|(conn, channel)| {
            conn.status().connected() && channel.status().connected()
        });
        if !usable {
            self.open = None;
            let (conn, channel) = open(&self.url).await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(amqp("enabling publisher confirms"))?;
            self.open = Some((conn, channel));
        }
        match &self.open {
            Some((_, channel)) => Ok(channel),
            None => unreachable!("opened above"),
        }
    }

    /// Drops the connection: the next send opens a fresh one. Call it after
    /// a failed [`Confirms::wait`] (the channel may be closed or wedged).
    pub fn reset(&mut self) {
        self.open = None;
    }

    /// Publishes `events`; `Ok` means every one was confirmed by the broker.
    pub async fn publish(&mut self, events: &[Event]) -> Result<(), AmqpError> {
        let result = match self.send(events).await {
            Ok(confirms) => confirms.wait().await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.reset();
        }
        result
    }

    /// Hands `events` to the broker, in order, without waiting for their
    /// confirms: they are in the returned [`Confirms`]. Batches sent one
    /// after the other on this publisher reach the queue in that order.
    pub async fn send(&mut self, events: &[Event]) -> Result<Confirms, AmqpError> {
        let result = self.send_batch(events).await;
        if result.is_err() {
            self.reset();
        }
        result
    }

    async fn send_batch(&mut self, events: &[Event]) -> Result<Confirms, AmqpError> {
        let channel = self.channel().await?;
        let messages = messages(events);
        // Every publish is started before any is awaited: each one queues
        // its frames and registers its confirm when first polled (in order),
        // then waits for the I/O loop to write them; awaiting them one by one
        // would cost a round trip to the I/O loop per message.
        let publishes = messages.iter().map(|message| async move {
            channel
                .basic_publish(
                    EXCHANGE.into(),
                    message.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &message.body,
                    message.properties.clone(),
                )
                .await
        });
        let confirms = futures::future::try_join_all(publishes)
            .await
            .map_err(amqp("publishing"))?;
        Ok(Confirms {
            pending: confirms
                .into_iter()
                .zip(messages.into_iter().map(|m| m.first_id))
                .collect(),
        })
    }
}

/// One message to publish.
struct Outgoing {
    routing_key: String,
    properties: BasicProperties,
    body: Vec<u8>,
    first_id: String,
}

fn routing_key(event: &Event) -> String {
    format!("{}.{}", event.service, event.action.to_ascii_lowercase())
}

/// The messages carrying `events`, in order: each run of events with the
/// same routing key in one message (at most [`EVENTS_PER_MESSAGE`]).
fn messages(events: &[Event]) -> Vec<Outgoing> {
    let mut messages = Vec::new();
    let mut rest = events;
    while let Some(first) = rest.first() {
        let key = routing_key(first);
        let run = rest
            .iter()
            .take(EVENTS_PER_MESSAGE)
            .take_while(|e| routing_key(e) == key)
            .count();
        let (now, later) = rest.split_at(run.max(1));
        rest = later;
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(first.id.as_str().into())
            .with_content_type("application/x-protobuf".into());
        let (properties, body) = match now {
            [one] => (properties, one.to_proto().encode_to_vec()),
            several => (
                properties.with_type(BATCH_TYPE.into()),
                pb::AppendRequest {
                    events: several.iter().map(Event::to_proto).collect(),
                }
                .encode_to_vec(),
            ),
        };
        messages.push(Outgoing {
            routing_key: key,
            properties,
            body,
            first_id: first.id.clone(),
        });
    }
    messages
}

/// Consumes the audit queue with manual acknowledgements: audit acks a batch
/// only after it committed it.
pub struct AmqpConsumer {
    _conn: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
}

impl std::fmt::Debug for AmqpConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConsumer").finish_non_exhaustive()
    }
}

/// Deliveries taken together; [`AmqpConsumer::ack`] acknowledges all of them.
#[derive(Debug)]
pub struct Batch {
    /// The decoded events, or why a message could not be decoded.
    pub events: Vec<Result<Event, String>>,
    last_tag: u64,
}

impl AmqpConsumer {
    /// Connects, declares the topology and starts consuming with at most
    /// `prefetch` unacknowledged messages in flight.
    pub async fn connect(url: &str, prefetch: u16) -> Result<AmqpConsumer, AmqpError> {
        let (conn, channel) = open(url).await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(amqp("setting the prefetch"))?;
        let consumer = channel
            .basic_consume(
                AUDIT_QUEUE.into(),
                "trustmesh-audit".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp("consuming the audit queue"))?;
        Ok(AmqpConsumer {
            _conn: conn,
            channel,
            consumer,
        })
    }

    /// Waits for at least one delivery, then takes those that arrive within
    /// `linger` until the batch holds `max` events (a message may carry
    /// several). `Err` means the connection is gone: reconnect.
    pub async fn next_batch(&mut self, max: usize, linger: Duration) -> Result<Batch, AmqpError> {
        let mut batch = Batch {
            events: Vec::new(),
            last_tag: 0,
        };
        let first = self.consumer.next().await;
        self.take(first, &mut batch)?;
        let deadline = tokio::time::Instant::now() + linger;
        while batch.events.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer.next()).await {
                Ok(next) => self.take(next, &mut batch)?,
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    fn take(
        &self,
        next: Option<Result<lapin::message::Delivery, lapin::Error>>,
        batch: &mut Batch,
    ) -> Result<(), AmqpError> {
        let delivery = match next {
            Some(delivery) => delivery.map_err(amqp("receiving"))?,
            None => return Err(AmqpError::ConsumerClosed),
        };
        batch.last_tag = delivery.delivery_tag;
        decode(&delivery.properties, &delivery.data, &mut batch.events);
        Ok(())
    }

    /// Acknowledges every delivery of `batch` (and before it).
    pub async fn ack(&self, batch: &Batch) -> Result<(), AmqpError> {
        if batch.last_tag == 0 {
            return Ok(());
        }
        self.channel
            .basic_ack(batch.last_tag, BasicAckOptions { multiple: true })
            .await
            .map_err(amqp("acknowledging"))
    }
}

/// Appends the events of one message (`properties`, `body`) to `events`:
/// one, or several for a message of type [`BATCH_TYPE`]; an `Err` for what
/// cannot be decoded.
fn decode(properties: &BasicProperties, body: &[u8], events: &mut Vec<Result<Event, String>>) {
    let several = properties
        .kind()
        .as_ref()
        .is_some_and(|kind| kind.as_str() == BATCH_TYPE);
    if several {
        match pb::AppendRequest::decode(body) {
            Ok(request) => events.extend(
                request
                    .events
                    .into_iter()
                    .map(|msg| Event::from_proto(msg).map_err(|e| e.to_string())),
            ),
            Err(e) => events.push(Err(format!("not a protobuf batch of events: {e}"))),
        }
    } else {
        let event = pb::Event::decode(body)
            .map_err(|e| format!("not a protobuf event: {e}"))
            .and_then(|msg| Event::from_proto(msg).map_err(|e| e.to_string()));
        events.push(event);
    }
}

/// True when a broker answers at `url` (used by `up` to explain a bad URL early).
pub async fn reachable(url: &str) -> Result<(), AmqpError> {
    let (conn, _channel) = open(url).await?;
    let _ = conn.close(200, "probe".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::event::action;

    fn event(action: &str, n: usize) -> Event {
        Event::new("auth", action, &format!("user-{n}")).details(serde_json::json!({"n": n}))
    }

    #[test]
    fn runs_of_one_routing_key_share_a_message_and_decode_back() {
        let mut events: Vec<Event> = (0..250).map(|n| event(action::LOGIN_FAILED, n)).collect();
        events.push(event(action::LOGIN, 250));
        events.extend((251..254).map(|n| event(action::LOGIN_FAILED, n)));
        let messages = messages(&events);
        let shape: Vec<(&str, usize)> = messages
            .iter()
            .map(|m| {
                let mut decoded = Vec::new();
                decode(&m.properties, &m.body, &mut decoded);
                (m.routing_key.as_str(), decoded.len())
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("auth.login_failed", 100),
                ("auth.login_failed", 100),
                ("auth.login_failed", 50),
                ("auth.login", 1),
                ("auth.login_failed", 3),
            ]
        );
        // A lone event travels as before: an `Event` body, no type.
        assert_eq!(messages[3].properties.kind(), &None);
        assert_eq!(messages[0].first_id, events[0].id);
        let mut decoded = Vec::new();
        for m in &messages {
            decode(&m.properties, &m.body, &mut decoded);
        }
        let decoded: Vec<Event> = decoded.into_iter().map(|e| e.unwrap()).collect();
        assert_eq!(decoded, events);
    }

    #[test]
    fn a_bad_body_is_an_error_not_a_panic() {
        let mut decoded = Vec::new();
        let batch = BasicProperties::default().with_type(BATCH_TYPE.into());
        decode(&batch, b"\xff\xff", &mut decoded);
        decode(&BasicProperties::default(), b"\xff\xff", &mut decoded);
        assert_eq!(decoded.len(), 2);
        assert!(decoded.iter().all(Result::is_err));
    }
}
