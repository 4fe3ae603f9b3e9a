//! The end user's client facts a call carries as metadata (the address and
//! user agent the gateway saw, the request id), and passing them on: a
//! service that calls another on the user's behalf forwards them, so that
//! what the second service records (a failed password check, a lockout, an
//! alert mail) names the user's address and not an empty one.

use tonic::metadata::MetadataMap;

/// The metadata keys of the client facts: `x-client-ip`,
/// `x-client-user-agent`, `x-request-id`.
pub const CLIENT_FACTS: [&str; 3] = ["x-client-ip", "x-client-user-agent", "x-request-id"];

/// A request carrying `message` and the client facts of the call being
/// served (`from`, its metadata); nothing else of that call (no token).
pub fn on_behalf_of<T>(from: &MetadataMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for key in CLIENT_FACTS {
        if let Some(value) = from.get(key) {
            request.metadata_mut().insert(key, value.clone());
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_facts_pass_on_and_nothing_else() {
        let mut from = MetadataMap::new();
        from.insert("x-client-ip", "203.0.113.7".parse().expect("ascii"));
        from.insert("x-request-id", "r-1".parse().expect("ascii"));
        from.insert("authorization", "Bearer t".parse().expect("ascii"));
        let request = on_behalf_of(&from, ());
        let metadata = request.metadata();
        assert_eq!(
            metadata.get("x-client-ip").and_then(|v| v.to_str().ok()),
            Some("203.0.113.7")
        );
        assert_eq!(
            metadata.get("x-request-id").and_then(|v| v.to_str().ok()),
            Some("r-1")
        );
        assert!(metadata.get("x-client-user-agent").is_none());
        assert!(metadata.get("authorization").is_none());
    }
}
