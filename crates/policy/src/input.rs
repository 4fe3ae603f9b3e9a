//! The input document of every decision and the decision itself.
//!
//! The shape is documented in `policies/README.md`; [`PolicyInput`] serializes
//! to exactly that JSON, and [`PolicyInput::to_value`] builds the same
//! document directly as a regorus value (no JSON text in between).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regorus::Value;
use serde::Serialize;

/// The input document of one authorization decision.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyInput {
    /// The logical name of the service evaluating (`wallet`, `gateway`, …): its
    /// policy package is `trustmesh.<service>`.
    pub service: String,
    /// The gRPC method name (`Transfer`).
    pub method: String,
    /// The full gRPC path (`/trustmesh.wallet.v1.Wallet/Transfer`).
    pub rpc: String,
    /// The calling workload, as authenticated by mTLS.
    pub peer: Peer,
    /// The end user on whose behalf the call is made, if any.
    pub subject: Option<Subject>,
    /// The decoded request message (proto3 JSON), or `{}`.
    pub request: serde_json::Value,
    /// Facts about the call.
    pub context: RequestContext,
}

/// The calling workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// The peer's SPIFFE ID (`spiffe://trustmesh.local/svc/gateway`), if the
    /// transport authenticated one.
    pub spiffe_id: Option<String>,
    /// The logical workload name from `data.workloads` (`gateway`), if known.
    pub workload: Option<String>,
}

/// The end user, from a JWT the service verified itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Subject {
    /// The user id (`sub` claim).
    pub sub: String,
    /// The user's role (`user`, `manager`, `admin`, `finance`, `audit`, …).
    pub role: String,
    /// The session id (`sid` claim).
    pub sid: String,
    /// Whether the session completed multi-factor authentication.
    pub mfa: bool,
}

impl Subject {
    /// The verified end user of a call, which the policy layer put in the
    /// request extensions; `UNAUTHENTICATED` (`token_missing`) without one.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Subject, tonic::Status> {
        request
            .extensions()
            .get::<Subject>()
            .cloned()
            .ok_or_else(|| {
                tonic::Status::unauthenticated("token_missing: an access token is required")
            })
    }
}

/// Facts about the call that are neither identity nor payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestContext {
    /// The time of the decision, RFC 3339, UTC.
    pub time: String,
    /// The end user's IP address as the edge saw it (`x-client-ip`), if given.
    pub client_ip: Option<String>,
    /// The end user's user agent (`x-client-user-agent`, else `user-agent`).
    pub user_agent: Option<String>,
    /// The request id (`x-request-id`, or a fresh UUID v4).
    pub request_id: String,
}

impl RequestContext {
    /// A context stamped now, with a fresh request id and no client facts.
    pub fn now() -> Self {
        Self {
            time: now_rfc3339(),
            client_ip: None,
            user_agent: None,
            request_id: uuid::Uuid::new_v4().to_string(),
        }
    }
}

/// The current time as RFC 3339 in UTC.
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the call may proceed.
    pub allow: bool,
    /// A stable snake_case reason code (`allowed`, `workload_not_allowed`, …).
    pub reason: String,
}

impl Decision {
    /// A deny with `reason`.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            allow: false,
            reason: reason.into(),
        }
    }
}

/// Pre-built object keys, so building an input allocates no key strings.
#[derive(Debug)]
pub(crate) struct Keys {
    service: Value,
    method: Value,
    rpc: Value,
    peer: Value,
    spiffe_id: Value,
    workload: Value,
    subject: Value,
    sub: Value,
    role: Value,
    sid: Value,
    mfa: Value,
    request: Value,
    context: Value,
    time: Value,
    client_ip: Value,
    user_agent: Value,
    request_id: Value,
    pub(crate) allow: Value,
    pub(crate) reason: Value,
}

impl Keys {
    pub(crate) fn new() -> Self {
        Self {
            service: Value::from("service"),
            method: Value::from("method"),
            rpc: Value::from("rpc"),
            peer: Value::from("peer"),
            spiffe_id: Value::from("spiffe_id"),
            workload: Value::from("workload"),
            subject: Value::from("subject"),
            sub: Value::from("sub"),
            role: Value::from("role"),
            sid: Value::from("sid"),
            mfa: Value::from("mfa"),
            request: Value::from("request"),
            context: Value::from("context"),
            time: Value::from("time"),
            client_ip: Value::from("client_ip"),
            user_agent: Value::from("user_agent"),
            request_id: Value::from("request_id"),
            allow: Value::from("allow"),
            reason: Value::from("reason"),
        }
    }
}

fn opt_str(v: Option<&str>) -> Value {
    v.map_or(Value::Null, Value::from)
}

impl PolicyInput {
    /// The input as a regorus value, identical to its JSON serialization.
    pub fn to_value(&self) -> Value {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        self.to_value_with(KEYS.get_or_init(Keys::new))
    }

    pub(crate) fn to_value_with(&self, k: &Keys) -> Value {
        let mut peer = BTreeMap::new();
        peer.insert(k.spiffe_id.clone(), opt_str(self.peer.spiffe_id.as_deref()));
        peer.insert(k.workload.clone(), opt_str(self.peer.workload.as_deref()));

        let subject = match &self.subject {
            None => Value::Null,
            Some(s) => {
                let mut m = BTreeMap::new();
                m.insert(k.sub.clone(), Value::from(s.sub.as_str()));
                m.insert(k.role.clone(), Value::from(s.role.as_str()));
                m.insert(k.sid.clone(), Value::from(s.sid.as_str()));
                m.insert(k.mfa.clone(), Value::from(s.mfa));
                Value::from(m)
            }
        };

        let c = &self.context;
        let mut context = BTreeMap::new();
        context.insert(k.time.clone(), Value::from(c.time.as_str()));
        context.insert(k.client_ip.clone(), opt_str(c.client_ip.as_deref()));
        context.insert(k.user_agent.clone(), opt_str(c.user_agent.as_deref()));
        context.insert(k.request_id.clone(), Value::from(c.request_id.as_str()));

        let mut m = BTreeMap::new();
        m.insert(k.service.clone(), Value::from(self.service.as_str()));
        m.insert(k.method.clone(), Value::from(self.method.as_str()));
        m.insert(k.rpc.clone(), Value::from(self.rpc.as_str()));
        m.insert(k.peer.clone(), Value::from(peer));
        m.insert(k.subject.clone(), subject);
        m.insert(k.request.clone(), json_to_value(&self.request));
        m.insert(k.context.clone(), Value::from(context));
        Value::from(m)
    }
}

/// Converts JSON to a regorus value without a text round trip.
pub(crate) fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::from(a.iter().map(json_to_value).collect::<Vec<_>>()),
        serde_json::Value::Object(o) => Value::from(
            o.iter()
                .map(|(k, v)| (Value::from(k.as_str()), json_to_value(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PolicyInput {
        PolicyInput {
            service: "wallet".into(),
            method: "Transfer".into(),
            rpc: "/trustmesh.wallet.v1.Wallet/Transfer".into(),
            peer: Peer {
                spiffe_id: Some("spiffe://trustmesh.local/svc/gateway".into()),
                workload: Some("gateway".into()),
            },
            subject: Some(Subject {
                sub: "u1".into(),
                role: "user".into(),
                sid: "s1".into(),
                mfa: true,
            }),
            request: serde_json::json!({"amount": 12, "to": "u2", "tags": ["a", 1.5, null, true]}),
            context: RequestContext {
                time: "2025-01-01T00:00:00Z".into(),
                client_ip: None,
                user_agent: Some("curl".into()),
                request_id: "r1".into(),
            },
        }
    }

    #[test]
    fn value_matches_json_serialization() {
        let input = sample();
        let json = serde_json::to_string(&input).expect("serialize");
        let via_json = Value::from_json_str(&json).expect("parse");
        assert_eq!(input.to_value(), via_json);
        let mut anonymous = input;
        anonymous.subject = None;
        anonymous.peer = Peer::default();
        let json = serde_json::to_string(&anonymous).expect("serialize");
        assert_eq!(
            anonymous.to_value(),
            Value::from_json_str(&json).expect("parse")
        );
    }
}
