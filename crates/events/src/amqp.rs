//! RabbitMQ transport (`AMQP_URL`): a publisher with publisher confirms for
//! the relays and a consumer with manual acknowledgements for audit.
//!
//! Topology, declared by both sides so neither depends on the other having
//! run first: a durable topic exchange [`EXCHANGE`], a durable queue
//! [`AUDIT_QUEUE`] bound to it with `#`. Messages are persistent
//! (delivery mode 2), carry the event id as `message_id`, and their body is
//! the protobuf `trustmesh.audit.v1.Event`.

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

/// Publishes batches of events and returns only once the broker confirmed
/// every one of them (persisted to the durable queue).
#[derive(Debug)]
pub struct AmqpPublisher {
    url: String,
    open: Option<(Connection, Channel)>,
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

    /// Publishes `events`; `Ok` means every one was confirmed by the broker.
    pub async fn publish(&mut self, events: &[Event]) -> Result<(), AmqpError> {
        let result = self.publish_confirmed(events).await;
        if result.is_err() {
            // Start afresh next time: the channel may be closed or wedged.
            self.open = None;
        }
        result
    }

    async fn publish_confirmed(&mut self, events: &[Event]) -> Result<(), AmqpError> {
        let channel = self.channel().await?;
        let mut confirms = Vec::with_capacity(events.len());
        for event in events {
            let body = event.to_proto().encode_to_vec();
            let routing_key = format!("{}.{}", event.service, event.action.to_ascii_lowercase());
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(event.id.as_str().into())
                .with_content_type("application/x-protobuf".into());
            let confirm = channel
                .basic_publish(
                    EXCHANGE.into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    properties,
                )
                .await
                .map_err(amqp("publishing"))?;
            confirms.push(confirm);
        }
        for (confirm, event) in confirms.into_iter().zip(events) {
            let confirmation = confirm.await.map_err(amqp("awaiting a confirm"))?;
            if !confirmation.is_ack() || confirmation.take_message().is_some() {
                return Err(AmqpError::Refused(event.id.clone()));
            }
        }
        Ok(())
    }
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

/// Deliveries taken together; [`Batch::ack`] acknowledges all of them.
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

    /// Waits for at least one delivery, then takes up to `max` that arrive
    /// within `linger`. `Err` means the connection is gone: reconnect.
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
        let event = pb::Event::decode(delivery.data.as_slice())
            .map_err(|e| format!("not a protobuf event: {e}"))
            .and_then(|msg| Event::from_proto(msg).map_err(|e| e.to_string()));
        batch.events.push(event);
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

/// True when a broker answers at `url` (used by `up` to explain a bad URL early).
pub async fn reachable(url: &str) -> Result<(), AmqpError> {
    let (conn, _channel) = open(url).await?;
    let _ = conn.close(200, "probe".into()).await;
    Ok(())
}
