//! The verifier's JWKS cache: refetch on an unknown `kid` (once, shared by
//! concurrent callers, rate-limited), unknown keys refused, fetch failures.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{AUD, ISS, Setup, token_from_unknown_key};
use trustmesh_tokens::{FnJwksFetcher, TokenError, Verifier};

const INTERVAL: Duration = Duration::from_millis(300);

async fn verify_concurrently(
    verifier: &Verifier,
    token: &str,
    n: usize,
) -> Vec<Result<(), TokenError>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let verifier = verifier.clone();
            let token = token.to_owned();
            tokio::spawn(async move { verifier.verify(&token).await.map(|_| ()) })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_kid_triggers_one_shared_refetch_that_finds_the_rotated_key() {
    let s = Setup::new();
    let verifier = s
        .slow_verifier(Duration::from_millis(100))
        .with_refetch_interval(INTERVAL);
    let (first, _) = s.issuer.issue("u", "user", "s", &[]).unwrap();
    verifier.verify(&first).await.unwrap();
    assert_eq!(s.fetch_count(), 1);

    // Rotate twice at the issuer: the new current key was created after the
    // verifier's fetch, so the verifier does not know it.
    s.ring.rotate_now().unwrap();
    s.ring.rotate_now().unwrap();
    let (rotated, _) = s.issuer.issue("u", "user", "s", &[]).unwrap();
    tokio::time::sleep(INTERVAL + Duration::from_millis(100)).await;

    let results = verify_concurrently(&verifier, &rotated, 16).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(s.fetch_count(), 2, "exactly one refetch for all callers");

    // Known keys need no fetch.
    verifier.verify(&first).await.unwrap();
    verifier.verify(&rotated).await.unwrap();
    assert_eq!(s.fetch_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truly_unknown_kid_is_refused_after_at_most_one_refetch() {
    let s = Setup::new();
    let verifier = s
        .slow_verifier(Duration::from_millis(50))
        .with_refetch_interval(INTERVAL);
    let (token, _) = s.issuer.issue("u", "user", "s", &[]).unwrap();
    verifier.verify(&token).await.unwrap();
    assert_eq!(s.fetch_count(), 1);

    let forged = token_from_unknown_key("no-such-key");
    // Within the refetch interval: refused without fetching.
    assert_eq!(
        verifier.verify(&forged).await,
        Err(TokenError::UnknownKey("no-such-key".to_owned()))
    );
    assert_eq!(s.fetch_count(), 1);

    // After it: one refetch, shared by a burst of callers, then refused.
    tokio::time::sleep(INTERVAL + Duration::from_millis(100)).await;
    let results = verify_concurrently(&verifier, &forged, 32).await;
    assert!(
        results
            .iter()
            .all(|r| *r == Err(TokenError::UnknownKey("no-such-key".to_owned()))),
        "{results:?}"
    );
    assert_eq!(s.fetch_count(), 2);

    // A flood of random kids does not cause more fetches within the interval.
    for i in 0..50 {
        let forged = token_from_unknown_key(&format!("random-{i}"));
        assert!(matches!(
            verifier.verify(&forged).await,
            Err(TokenError::UnknownKey(_))
        ));
    }
    assert_eq!(s.fetch_count(), 2);
}

#[tokio::test]
async fn jwks_failure_is_not_a_token_rejection_and_recovers() {
    let s = Setup::new();
    let fail = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let fetcher = {
        let (ring, fail, calls) = (s.ring.clone(), fail.clone(), calls.clone());
        FnJwksFetcher::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let result = if fail.load(Ordering::SeqCst) {
                Err(TokenError::Jwks("auth service unreachable".to_owned()))
            } else {
                Ok(ring.jwks())
            };
            async move { result }
        })
    };
    let verifier = Verifier::new(ISS, AUD, Arc::new(fetcher)).with_refetch_interval(INTERVAL);
    let (token, _) = s.issuer.issue("u", "user", "s", &[]).unwrap();

    let error = verifier.verify(&token).await.unwrap_err();
    assert!(matches!(error, TokenError::Jwks(_)), "{error:?}");
    assert!(!error.is_rejection());
    // Rate-limited: no second attempt at once, still unavailable.
    assert!(matches!(
        verifier.verify(&token).await,
        Err(TokenError::Jwks(_))
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(INTERVAL + Duration::from_millis(50)).await;
    verifier.verify(&token).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A stale cache whose refresh fails keeps serving the cached keys.
    let verifier = verifier.with_jwks_max_age(Duration::ZERO);
    fail.store(true, Ordering::SeqCst);
    tokio::time::sleep(INTERVAL + Duration::from_millis(50)).await;
    verifier.verify(&token).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn hanging_fetch_times_out() {
    let fetcher = FnJwksFetcher::new(|| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(trustmesh_tokens::JwkSet { keys: vec![] })
    });
    let verifier =
        Verifier::new(ISS, AUD, Arc::new(fetcher)).with_fetch_timeout(Duration::from_millis(100));
    let s = Setup::new();
    let (token, _) = s.issuer.issue("u", "user", "s", &[]).unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(
        verifier.verify(&token).await,
        Err(TokenError::Jwks(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn refresh_jwks_fetches_up_front() {
    let s = Setup::new();
    let verifier = s.verifier();
    verifier.refresh_jwks().await.unwrap();
    assert_eq!(s.fetch_count(), 1);
    let (token, _) = s.issuer.issue("u", "user", "s", &[]).unwrap();
    verifier.verify(&token).await.unwrap();
    assert_eq!(s.fetch_count(), 1);
}
