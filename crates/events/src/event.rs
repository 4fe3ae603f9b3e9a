//! The one event type of the mesh: what happened, to whom, by whom, from
//! where, and whether it succeeded. Secrets never enter an event: the
//! details are scrubbed of any field whose name says it holds one.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use trustmesh_proto::trustmesh::audit::v1 as pb;

/// The actions services record (an event may carry another name, but these
/// are the ones the audit rules and dashboards know).
pub mod action {
    /// A successful login (MFA done, session created).
    pub const LOGIN: &str = "LOGIN";
    /// A refused login step (wrong password, wrong code, locked account).
    pub const LOGIN_FAILED: &str = "LOGIN_FAILED";
    /// A session ended by its owner.
    pub const LOGOUT: &str = "LOGOUT";
    /// A password changed.
    pub const PASSWORD_CHANGE: &str = "PASSWORD_CHANGE";
    /// Every session of a user ended at once (`reason`: `role_changed`).
    pub const SESSIONS_REVOKED: &str = "SESSIONS_REVOKED";
    /// An account locked after too many failures.
    pub const ACCOUNT_LOCKED: &str = "ACCOUNT_LOCKED";
    /// A role changed (`from`, `to`, `changed_by`).
    pub const ROLE_CHANGED: &str = "ROLE_CHANGED";
    /// A payment between two users.
    pub const PAYMENT: &str = "PAYMENT";
    /// A deposit by a payment agent.
    pub const DEPOSIT: &str = "DEPOSIT";
    /// A finance rollback of a payment.
    pub const ROLLBACK: &str = "ROLLBACK";
    /// A call refused by a policy.
    pub const POLICY_DENY: &str = "POLICY_DENY";
    /// A one-time file download.
    pub const FILE_DOWNLOADED: &str = "FILE_DOWNLOADED";
    /// A read of the audit log.
    pub const AUDIT_READ: &str = "AUDIT_READ";
    /// Suspicious activity detected by the audit rules.
    pub const SUSPICIOUS_LOGIN: &str = "SUSPICIOUS_LOGIN";
}

/// Whether the action succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// It happened.
    Success,
    /// It was refused or failed.
    Fail,
}

impl Status {
    /// `SUCCESS` or `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "SUCCESS",
            Status::Fail => "FAIL",
        }
    }

    /// Parses `SUCCESS` / `FAIL`.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "SUCCESS" => Some(Status::Success),
            "FAIL" => Some(Status::Fail),
            _ => None,
        }
    }
}

/// Who acted: an end user, a workload, or both (the gateway acting for a user).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The end user's id.
    pub user_id: Option<String>,
    /// The calling workload's SPIFFE ID.
    pub spiffe_id: Option<String>,
}

/// One audited fact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// A UUID v7 (time-ordered), chosen by the producer: the idempotency key
    /// of the whole pipeline.
    pub id: String,
    /// When it happened (RFC 3339, UTC).
    pub time: String,
    /// The producing service (`auth`, `wallet`, …).
    pub service: String,
    /// What happened ([`action`]).
    pub action: String,
    /// Whether it succeeded.
    pub status: Status,
    /// Who did it.
    pub actor: Actor,
    /// What it was done to (a user id, a payment id, an RPC, …).
    pub target: String,
    /// The end user's IP address, as the gateway saw it.
    pub client_ip: Option<String>,
    /// The end user's `User-Agent`.
    pub user_agent: Option<String>,
    /// The request id that ties the event to logs and traces.
    pub request_id: Option<String>,
    /// Action-specific facts, scrubbed of secrets.
    pub details: serde_json::Value,
}

/// Field names whose values are never kept in an event, whatever the action.
const SECRET_NAME_PARTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "totp",
    "cookie",
    "authorization",
    "private_key",
    "seed",
    "recovery",
];
/// Field names that hold a secret only when they are the whole name.
const SECRET_NAMES: &[&str] = &["code", "otp", "pin", "key", "csrf"];
/// What a scrubbed value becomes.
pub const REDACTED: &str = "[redacted]";

impl Event {
    /// A successful `action` of `service` on `target`, now, with a new id.
    pub fn new(service: &str, action: &str, target: &str) -> Event {
        Event {
            id: uuid::Uuid::now_v7().to_string(),
            time: now_rfc3339(),
            service: service.to_owned(),
            action: action.to_owned(),
            status: Status::Success,
            actor: Actor::default(),
            target: target.to_owned(),
            client_ip: None,
            user_agent: None,
            request_id: None,
            details: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// Marks the event as a failure.
    pub fn failed(mut self) -> Event {
        self.status = Status::Fail;
        self
    }

    /// Sets the status.
    pub fn status(mut self, status: Status) -> Event {
        self.status = status;
        self
    }

    /// Sets the acting end user.
    pub fn by_user(mut self, user_id: impl Into<String>) -> Event {
        self.actor.user_id = Some(user_id.into()).filter(|s: &String| !s.is_empty());
        self
    }

    /// Sets the acting workload.
    pub fn by_workload(mut self, spiffe_id: impl Into<String>) -> Event {
        self.actor.spiffe_id = Some(spiffe_id.into()).filter(|s: &String| !s.is_empty());
        self
    }

    /// Sets the client's IP address and user agent (empty means unknown).
    pub fn from_client(mut self, ip: Option<&str>, user_agent: Option<&str>) -> Event {
        self.client_ip = ip.filter(|s| !s.is_empty()).map(str::to_owned);
        self.user_agent = user_agent
            .filter(|s| !s.is_empty())
            .map(|s| s.chars().take(512).collect());
        self
    }

    /// Sets the request id.
    pub fn request(mut self, request_id: Option<&str>) -> Event {
        self.request_id = request_id.filter(|s| !s.is_empty()).map(str::to_owned);
        self
    }

    /// Sets the details, scrubbing every field whose name says it holds a
    /// secret (passwords, tokens, codes, keys) at any depth.
    pub fn details(mut self, details: serde_json::Value) -> Event {
        self.details = scrub(details);
        self
    }

    /// The event as a protobuf message.
    pub fn to_proto(&self) -> pb::Event {
        pb::Event {
            id: self.id.clone(),
            time: self.time.clone(),
            service: self.service.clone(),
            action: self.action.clone(),
            status: self.status.as_str().to_owned(),
            actor_user: self.actor.user_id.clone().unwrap_or_default(),
            actor_spiffe: self.actor.spiffe_id.clone().unwrap_or_default(),
            target: self.target.clone(),
            client_ip: self.client_ip.clone().unwrap_or_default(),
            user_agent: self.user_agent.clone().unwrap_or_default(),
            request_id: self.request_id.clone().unwrap_or_default(),
            details_json: self.details.to_string(),
        }
    }

    /// An event from its protobuf message, checked: a UUID id, an RFC 3339
    /// time, a known status, names within bounds and JSON details (scrubbed
    /// again, so a careless producer cannot store a secret).
    pub fn from_proto(msg: pb::Event) -> Result<Event, InvalidEvent> {
        uuid::Uuid::parse_str(&msg.id).map_err(|_| InvalidEvent::new("id", "not a UUID"))?;
        OffsetDateTime::parse(&msg.time, &Rfc3339)
            .map_err(|_| InvalidEvent::new("time", "not an RFC 3339 timestamp"))?;
        let status = Status::parse(&msg.status)
            .ok_or_else(|| InvalidEvent::new("status", "not SUCCESS or FAIL"))?;
        for (field, value, max) in [
            ("service", &msg.service, 64),
            ("action", &msg.action, 64),
            ("target", &msg.target, 512),
            ("actor_user", &msg.actor_user, 128),
            ("actor_spiffe", &msg.actor_spiffe, 2048),
            ("client_ip", &msg.client_ip, 64),
            ("user_agent", &msg.user_agent, 512),
            ("request_id", &msg.request_id, 128),
        ] {
            if value.len() > max {
                return Err(InvalidEvent::new(field, "too long"));
            }
        }
        if msg.service.is_empty() || msg.action.is_empty() {
            return Err(InvalidEvent::new("service/action", "empty"));
        }
        if msg.details_json.len() > 16 * 1024 {
            return Err(InvalidEvent::new("details_json", "larger than 16 KiB"));
        }
        let details = if msg.details_json.is_empty() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            serde_json::from_str(&msg.details_json)
                .map_err(|_| InvalidEvent::new("details_json", "not JSON"))?
        };
        let some = |s: String| Some(s).filter(|s| !s.is_empty());
        Ok(Event {
            id: msg.id,
            time: msg.time,
            service: msg.service,
            action: msg.action,
            status,
            actor: Actor {
                user_id: some(msg.actor_user),
                spiffe_id: some(msg.actor_spiffe),
            },
            target: msg.target,
            client_ip: some(msg.client_ip),
            user_agent: some(msg.user_agent),
            request_id: some(msg.request_id),
            details: scrub(details),
        })
    }
}

/// An event that cannot be accepted, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid event: {field}: {problem}")]
pub struct InvalidEvent {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl InvalidEvent {
    fn new(field: &'static str, problem: &'static str) -> Self {
        Self { field, problem }
    }
}

/// The current time as RFC 3339 UTC with microseconds.
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.microsecond() * 1000)
        .unwrap_or(now)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// True when a field called `name` may hold a secret.
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_NAME_PARTS.iter().any(|part| lower.contains(part))
        || SECRET_NAMES.iter().any(|whole| lower == *whole)
}

/// `value` with every secret-named field's value replaced by [`REDACTED`].
pub fn scrub(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    if is_secret_name(&k) {
                        (k, serde_json::Value::String(REDACTED.to_owned()))
                    } else {
                        (k, scrub(v))
                    }
                })
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(scrub).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn details_lose_their_secrets_at_any_depth() {
        let event = Event::new("auth", action::LOGIN, "u1").details(serde_json::json!({
            "password": "hunter2hunter2",
            "nested": {"refresh_token": "abc", "code": "123456", "amount": 5},
            "list": [{"Authorization": "Bearer x"}],
            "currency_code": "EUR",
        }));
        let text = event.details.to_string();
        for secret in ["hunter2hunter2", "abc", "123456", "Bearer x"] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
        assert_eq!(event.details["nested"]["amount"], 5);
        assert_eq!(event.details["currency_code"], "EUR");
    }

    #[test]
    fn proto_round_trip_and_checks() {
        let event = Event::new("wallet", action::DEPOSIT, "u2")
            .by_workload("spiffe://trustmesh.local/agent/a")
            .from_client(Some("10.0.0.1"), Some("curl/8"))
            .request(Some("r1"))
            .failed()
            .details(serde_json::json!({"amount": 100}));
        let back = Event::from_proto(event.to_proto()).unwrap();
        assert_eq!(back, event);

        let mut bad = event.to_proto();
        bad.id = "nope".into();
        assert_eq!(Event::from_proto(bad).unwrap_err().field, "id");
        let mut bad = event.to_proto();
        bad.status = "MAYBE".into();
        assert_eq!(Event::from_proto(bad).unwrap_err().field, "status");
        let mut bad = event.to_proto();
        bad.details_json = "{".into();
        assert_eq!(Event::from_proto(bad).unwrap_err().field, "details_json");
        let mut sneaky = event.to_proto();
        sneaky.details_json = r#"{"password":"x"}"#.into();
        let scrubbed = Event::from_proto(sneaky).unwrap();
        assert_eq!(scrubbed.details["password"], REDACTED);
    }
}
