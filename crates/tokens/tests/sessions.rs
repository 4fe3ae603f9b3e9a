//! Session revocation: refused once the per-session cache entry expires.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Setup;
use trustmesh_tokens::{FnSessionChecker, SessionChecker, TokenError};

#[derive(Default)]
struct Sessions {
    revoked: Mutex<HashSet<String>>,
    calls: AtomicUsize,
}

impl Sessions {
    fn revoke(&self, sid: &str) {
        self.revoked.lock().unwrap().insert(sid.to_owned());
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn checker(sessions: &Arc<Sessions>) -> Arc<dyn SessionChecker> {
    let sessions = sessions.clone();
    Arc::new(FnSessionChecker::new(move |sid: String| {
        sessions.calls.fetch_add(1, Ordering::SeqCst);
        let active = !sessions.revoked.lock().unwrap().contains(&sid);
        async move { Ok(active) }
    }))
}

#[tokio::test]
async fn revoked_session_is_refused_after_the_cache_ttl() {
    let s = Setup::new();
    let sessions = Arc::new(Sessions::default());
    let ttl = Duration::from_millis(300);
    let verifier = s.verifier().with_session_checker(checker(&sessions), ttl);
    let (token, _) = s.issuer.issue("u", "user", "sess-a", &["pwd"]).unwrap();
    let (other, _) = s.issuer.issue("u", "user", "sess-b", &["pwd"]).unwrap();

    verifier.verify(&token).await.unwrap();
    verifier.verify(&token).await.unwrap();
    assert_eq!(sessions.calls(), 1, "the answer is cached per session");

    sessions.revoke("sess-a");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(verifier.verify(&token).await, Err(TokenError::Revoked));
    assert_eq!(TokenError::Revoked.code(), "session_revoked");
    // Still refused (the negative answer is cached too), other sessions fine.
    assert_eq!(verifier.verify(&token).await, Err(TokenError::Revoked));
    verifier.verify(&other).await.unwrap();
    // Clones share the cache.
    assert_eq!(
        verifier.clone().verify(&token).await,
        Err(TokenError::Revoked)
    );
}

#[tokio::test]
async fn zero_ttl_checks_every_time() {
    let s = Setup::new();
    let sessions = Arc::new(Sessions::default());
    let verifier = s
        .verifier()
        .with_session_checker(checker(&sessions), Duration::ZERO);
    let (token, _) = s.issuer.issue("u", "user", "sess-a", &[]).unwrap();
    verifier.verify(&token).await.unwrap();
    sessions.revoke("sess-a");
    assert_eq!(verifier.verify(&token).await, Err(TokenError::Revoked));
    assert_eq!(sessions.calls(), 2);
}

#[tokio::test]
async fn session_store_failure_refuses_the_token() {
    let s = Setup::new();
    let failing = Arc::new(FnSessionChecker::new(|_sid: String| async {
        Err(TokenError::SessionCheck("store down".to_owned()))
    }));
    let verifier = s
        .verifier()
        .with_session_checker(failing, Duration::from_secs(2));
    let (token, _) = s.issuer.issue("u", "user", "sess-a", &[]).unwrap();
    let error = verifier.verify(&token).await.unwrap_err();
    assert_eq!(error, TokenError::SessionCheck("store down".to_owned()));
    assert!(!error.is_rejection());
}

#[tokio::test]
async fn session_is_not_asked_about_invalid_tokens() {
    let s = Setup::new();
    let sessions = Arc::new(Sessions::default());
    let verifier = s
        .verifier()
        .with_session_checker(checker(&sessions), Duration::from_secs(2));
    let forged = common::token_from_unknown_key(&s.ring.current_kid());
    assert_eq!(
        verifier.verify(&forged).await,
        Err(TokenError::BadSignature)
    );
    assert_eq!(sessions.calls(), 0);
}
