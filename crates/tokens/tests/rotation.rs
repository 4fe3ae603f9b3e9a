//! Key rotation with overlap: the next key is published before it signs,
//! the previous key verifies until all its tokens have expired, then it is
//! dropped and its tokens are refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Setup, after};
use trustmesh_tokens::{KeyRing, RETIRE_LEEWAY, RotationPolicy, TokenError};

const HOUR: Duration = Duration::from_secs(3600);
const TTL: Duration = Duration::from_secs(15 * 60);

fn kids(ring: &KeyRing) -> BTreeSet<String> {
    ring.jwks()
        .keys
        .iter()
        .map(|k| k.common.key_id.clone().unwrap())
        .collect()
}

#[tokio::test]
async fn previous_key_verifies_after_rotation_until_retired() {
    let s = Setup::new();
    // Refetch on every call, so the verifier sees exactly what is published.
    let verifier = s
        .verifier()
        .with_refetch_interval(Duration::ZERO)
        .with_jwks_max_age(Duration::ZERO);
    let old_kid = s.ring.current_kid();
    let (old_token, _) = s.issuer.issue("u", "user", "s", &["pwd"]).unwrap();

    s.ring.rotate_now().unwrap();
    let new_kid = s.ring.current_kid();
    assert_ne!(new_kid, old_kid);
    let (new_token, _) = s.issuer.issue("u", "user", "s", &["pwd"]).unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&new_token)
            .unwrap()
            .kid
            .unwrap(),
        new_kid
    );

    // Overlap: both verify.
    assert!(kids(&s.ring).contains(&old_kid));
    verifier.verify(&old_token).await.unwrap();
    verifier.verify(&new_token).await.unwrap();

    // Still published just before its retirement time.
    assert!(
        !s.ring
            .rotate_if_due_at(after(TTL + RETIRE_LEEWAY - Duration::from_secs(10)))
            .unwrap()
    );
    assert!(kids(&s.ring).contains(&old_kid));
    verifier.verify(&old_token).await.unwrap();

    // Retired: dropped from the JWKS, its tokens refused (this one's `exp`
    // is still in the future, so only the key's removal refuses it).
    assert!(
        !s.ring
            .rotate_if_due_at(after(TTL + RETIRE_LEEWAY + Duration::from_secs(10)))
            .unwrap()
    );
    assert!(!kids(&s.ring).contains(&old_kid));
    assert_eq!(
        verifier.verify(&old_token).await,
        Err(TokenError::UnknownKey(old_kid))
    );
    verifier.verify(&new_token).await.unwrap();
}

#[tokio::test]
async fn next_key_is_published_before_it_signs() {
    let s = Setup::new();
    let verifier = s.verifier();
    let (old_token, _) = s.issuer.issue("u", "user", "s", &[]).unwrap();
    verifier.verify(&old_token).await.unwrap();
    assert_eq!(s.fetch_count(), 1);
    let published = kids(&s.ring);

    s.ring.rotate_now().unwrap();
    assert!(published.contains(&s.ring.current_kid()));
    let (new_token, _) = s.issuer.issue("u", "user", "s", &[]).unwrap();
    // The verifier already had the new key: no refetch needed.
    verifier.verify(&new_token).await.unwrap();
    verifier.verify(&old_token).await.unwrap();
    assert_eq!(s.fetch_count(), 1);
}

#[test]
fn rotates_only_when_due_and_drops_retired_keys() {
    let s = Setup::with_policy(RotationPolicy {
        rotate_every: 24 * HOUR,
        token_ttl: TTL,
    });
    let first = s.ring.current_kid();
    let initial = kids(&s.ring);
    assert_eq!(initial.len(), 2);
    let next = initial.iter().find(|k| **k != first).unwrap().clone();

    assert!(!s.ring.rotate_if_due().unwrap());
    assert!(!s.ring.rotate_if_due_at(after(23 * HOUR)).unwrap());
    assert_eq!(s.ring.current_kid(), first);
    assert_eq!(kids(&s.ring), initial);

    let t = 24 * HOUR + Duration::from_secs(1);
    assert!(s.ring.rotate_if_due_at(after(t)).unwrap());
    assert_eq!(s.ring.current_kid(), next);
    let published = kids(&s.ring);
    assert_eq!(published.len(), 3);
    assert!(published.contains(&first));
    assert!(published.contains(&next));

    // Not due again right away (and the first key is still in its overlap).
    assert!(
        !s.ring
            .rotate_if_due_at(after(t + Duration::from_secs(300)))
            .unwrap()
    );
    assert_eq!(kids(&s.ring), published);

    // The first key is dropped once all its tokens have expired.
    let retired = t + TTL + RETIRE_LEEWAY + Duration::from_secs(1);
    assert!(!s.ring.rotate_if_due_at(after(retired)).unwrap());
    let remaining = kids(&s.ring);
    assert_eq!(remaining.len(), 2);
    assert!(!remaining.contains(&first));
    assert!(remaining.contains(&next));
}

#[test]
fn rotate_now_twice_keeps_both_previous_keys() {
    let s = Setup::new();
    let a = s.ring.current_kid();
    s.ring.rotate_now().unwrap();
    let b = s.ring.current_kid();
    s.ring.rotate_now().unwrap();
    let c = s.ring.current_kid();
    assert!(a != b && b != c && a != c);
    let published = kids(&s.ring);
    // a and b (previous), c (current), and a new next key.
    assert_eq!(published.len(), 4);
    assert!(published.contains(&a) && published.contains(&b) && published.contains(&c));
}
