//! The verifier's cache of verified tokens: a token is checked once per
//! JWKS, yet a cached token still expires, and a key dropped from the JWKS
//! refuses the tokens it verified once the JWKS is refetched. (A revoked
//! session refuses a cached token: `sessions.rs`.)

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{AUD, ISS, Setup, token_from_unknown_key};
use serde_json::json;
use trustmesh_tokens::{FnJwksFetcher, JwkSet, TokenError, TokenIssuer, Verifier};

#[tokio::test]
async fn a_cached_token_still_expires() {
    let s = Setup::new();
    let issuer = TokenIssuer::new(s.ring.clone(), ISS, AUD, Duration::from_secs(1));
    let verifier = s.verifier().with_leeway(Duration::ZERO);
    let (token, _) = issuer.issue("u", "user", "s", &[]).unwrap();
    let claims = verifier.verify(&token).await.unwrap();
    assert_eq!(verifier.verify(&token).await.unwrap(), claims);
    // `exp` is in whole seconds: two seconds are past it.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(verifier.verify(&token).await, Err(TokenError::Expired));
}

#[tokio::test]
async fn a_key_dropped_from_the_jwks_refuses_the_tokens_it_verified() {
    let s = Setup::new();
    let publish = Arc::new(AtomicBool::new(true));
    let fetcher = {
        let (ring, publish) = (s.ring.clone(), publish.clone());
        FnJwksFetcher::new(move || {
            let set = if publish.load(Ordering::SeqCst) {
                ring.jwks()
            } else {
                JwkSet { keys: vec![] }
            };
            async move { Ok(set) }
        })
    };
    let max_age = Duration::from_millis(200);
    let verifier = Verifier::new(ISS, AUD, Arc::new(fetcher))
        .with_jwks_max_age(max_age)
        .with_refetch_interval(Duration::ZERO);
    let (token, _) = s.issuer.issue("u", "user", "s", &[]).unwrap();
    verifier.verify(&token).await.unwrap();
    verifier.verify(&token).await.unwrap();

    // The issuer drops the key. A token naming an unknown key makes the
    // verifier refetch its JWKS at once: from then on the cached token goes
    // through the signature check again, and is refused.
    publish.store(false, Ordering::SeqCst);
    assert!(matches!(
        verifier.verify(&token_from_unknown_key("other")).await,
        Err(TokenError::UnknownKey(_))
    ));
    assert!(
        matches!(
            verifier.verify(&token).await,
            Err(TokenError::UnknownKey(_))
        ),
        "a token of a dropped key must be refused after a refetch"
    );

    // Without a token to prompt it, the refetch comes when the JWKS is
    // older than its maximum age.
    publish.store(true, Ordering::SeqCst);
    tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    verifier.verify(&token).await.unwrap();
    publish.store(false, Ordering::SeqCst);
    tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    assert!(
        matches!(
            verifier.verify(&token).await,
            Err(TokenError::UnknownKey(_))
        ),
        "a token of a dropped key must be refused once the JWKS is stale"
    );
}

#[tokio::test]
async fn a_token_differing_in_one_byte_is_not_a_cache_hit() {
    let s = Setup::new();
    let verifier = s.verifier();
    let (token, _) = s.issuer.issue("u", "user", "s", &[]).unwrap();
    verifier.verify(&token).await.unwrap();
    // The same header and claims with the signature's last character
    // changed.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'Q' } else { 'A' });
    assert_eq!(
        verifier.verify(&forged).await,
        Err(TokenError::BadSignature)
    );
    verifier.verify(&token).await.unwrap();
}

#[tokio::test]
async fn a_stricter_clone_does_not_take_a_lenient_ones_verdict() {
    let s = Setup::new();
    let lenient = s.verifier();
    let strict = lenient.clone().with_leeway(Duration::ZERO);
    let now = common::now();
    for start in ["iat", "nbf"] {
        // Starts 20 s from now: within the default 30 s leeway, beyond none.
        let mut c = common::claims();
        c["iat"] = json!(now);
        c[start] = json!(now + 20);
        let token = s.sign(&s.header(), &c);
        lenient.verify(&token).await.unwrap();
        assert_eq!(
            strict.verify(&token).await,
            Err(TokenError::NotYetValid),
            "{start}"
        );
    }
}
