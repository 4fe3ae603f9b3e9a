//! Policy denies as audit events: a [`DenyHook`] for the policy layer (and
//! for the gateway's route policy) that turns each deny into a
//! `POLICY_DENY` event in the service's outbox.
//!
//! The hook runs on the request path and must not block, so it hands the
//! event to a writer task through a bounded queue; the writer commits the
//! events in batches. If the queue is full (a flood of denies faster than
//! the database), further denies are counted and logged, not queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use trustmesh_policy::{Decision, DenyHook, PolicyInput};

use crate::event::{Event, action};
use crate::outbox::Outbox;

/// How many denies may wait for the writer.
const QUEUE: usize = 10_000;

/// The `POLICY_DENY` event describing `input` and its `decision`.
pub fn deny_event(service: &str, input: &PolicyInput, decision: &Decision) -> Event {
    let mut event = Event::new(service, action::POLICY_DENY, &input.rpc)
        .failed()
        .request(Some(&input.context.request_id))
        .from_client(
            input.context.client_ip.as_deref(),
            input.context.user_agent.as_deref(),
        )
        .details(serde_json::json!({
            "reason": decision.reason,
            "method": input.method,
            "workload": input.peer.workload,
            "role": input.subject.as_ref().map(|s| s.role.clone()),
        }));
    if let Some(spiffe_id) = &input.peer.spiffe_id {
        event = event.by_workload(spiffe_id.clone());
    }
    if let Some(subject) = &input.subject {
        event = event.by_user(subject.sub.clone());
    }
    event
}

/// A deny hook recording every deny of `service` in `outbox`. Spawns the
/// writer task on the current tokio runtime.
pub fn deny_recorder(service: &str, outbox: Outbox) -> DenyHook {
    let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(256);
        while rx.recv_many(&mut batch, 256).await > 0 {
            if let Err(e) = outbox.record_now(&batch).await {
                tracing::error!(error = %e, lost = batch.len(), "cannot record policy denies");
            }
            batch.clear();
        }
    });
    let service = service.to_owned();
    Arc::new(move |input: &PolicyInput, decision: &Decision| {
        let event = deny_event(&service, input, decision);
        if tx.try_send(event).is_err() {
            let total = dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(total, "policy deny not recorded: the deny queue is full");
        }
    })
}
