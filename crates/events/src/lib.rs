//! Events of the mesh: one [`Event`] type, the transactional [`outbox`] every
//! service writes in the same database transaction as the change it
//! records, and the [`relay`] that ships outbox rows at least once — to
//! RabbitMQ ([`amqp`], when `AMQP_URL` is set) or straight to the audit
//! service's `Append` over mTLS.
//!
//! ```no_run
//! # async fn demo(db: trustmesh_store::Db) -> Result<(), Box<dyn std::error::Error>> {
//! use trustmesh_events::{Event, action, outbox};
//! let mut tx = db.pool().begin().await?;
//! // ... the change itself, then its event, in the same transaction:
//! let event = Event::new("wallet", action::DEPOSIT, "user-id")
//!     .by_workload("spiffe://trustmesh.local/agent/bank")
//!     .details(serde_json::json!({"amount": 1000, "currency": "EUR"}));
//! outbox::record(&mut tx, &event).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! Secrets never enter an event: [`Event::details`] scrubs any field whose
//! name says it holds a password, token, code or key.

pub mod amqp;
pub mod deny;
pub mod event;
pub mod outbox;
pub mod relay;

pub use deny::{deny_event, deny_recorder};
pub use event::{Actor, Event, InvalidEvent, Status, action};
pub use outbox::Outbox;
pub use relay::{Destination, Relay};

/// Where this process's relay should deliver: RabbitMQ when `amqp_url` is
/// given, else the audit service over the mesh.
pub fn destination(
    amqp_url: Option<&str>,
    mesh: &trustmesh_runtime::MeshClient,
    directory: &trustmesh_runtime::Directory,
) -> Result<Destination, trustmesh_runtime::RuntimeError> {
    match amqp_url.filter(|url| !url.is_empty()) {
        Some(url) => Ok(Destination::amqp(url)),
        None => Ok(Destination::audit(
            mesh.service_channel(directory, "audit")?,
        )),
    }
}

/// A service's events pipeline: its outbox, the relay shipping it, and the
/// hook that turns policy denies into events.
#[derive(Debug)]
pub struct Pipeline {
    /// The service's outbox.
    pub outbox: Outbox,
    /// The running relay.
    pub relay: tokio::task::JoinHandle<()>,
}

impl Pipeline {
    /// Starts the relay of `service`'s outbox in `db`: to RabbitMQ when
    /// `AMQP_URL` is set, else to the audit service over the mesh.
    pub fn start(
        db: &trustmesh_store::Db,
        mesh: &trustmesh_runtime::MeshClient,
        directory: &trustmesh_runtime::Directory,
        metrics: &trustmesh_telemetry::MetricsRegistry,
        shutdown: &trustmesh_runtime::Shutdown,
    ) -> Result<Pipeline, trustmesh_runtime::RuntimeError> {
        Self::start_with(Outbox::new(db.clone()), mesh, directory, metrics, shutdown)
    }

    /// Starts the relay of `outbox` (see [`Pipeline::start`]); for an outbox
    /// whose writes go through the service's writer
    /// ([`Outbox::with_writer`]).
    pub fn start_with(
        outbox: Outbox,
        mesh: &trustmesh_runtime::MeshClient,
        directory: &trustmesh_runtime::Directory,
        metrics: &trustmesh_telemetry::MetricsRegistry,
        shutdown: &trustmesh_runtime::Shutdown,
    ) -> Result<Pipeline, trustmesh_runtime::RuntimeError> {
        let amqp_url = std::env::var("AMQP_URL").ok();
        let destination = destination(amqp_url.as_deref(), mesh, directory)?;
        let relay = Relay::new(outbox.clone(), destination, metrics).spawn(shutdown.clone());
        Ok(Pipeline { outbox, relay })
    }

    /// The deny hook recording `service`'s policy denies in the outbox.
    pub fn deny_hook(&self, service: &str) -> trustmesh_policy::DenyHook {
        deny_recorder(service, self.outbox.clone())
    }
}
