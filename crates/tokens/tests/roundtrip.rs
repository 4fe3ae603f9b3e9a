//! Issue → verify round trip, the JWKS document and the issuer's rules.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{AUD, ISS, Setup, now};
use serde_json::Value;
use trustmesh_tokens::{RotationPolicy, TokenError, TokenIssuer, Verifier};

#[tokio::test]
async fn issued_token_verifies_with_its_claims() {
    let s = Setup::new();
    let (token, issued) = s
        .issuer
        .issue("user-42", "admin", "sid-7", &["pwd", "otp"])
        .unwrap();
    assert_eq!(issued.iss, ISS);
    assert_eq!(issued.aud, AUD);
    assert_eq!(issued.sub, "user-42");
    assert_eq!(issued.role, "admin");
    assert_eq!(issued.sid, "sid-7");
    assert_eq!(issued.amr, vec!["pwd".to_owned(), "otp".to_owned()]);
    assert!((issued.iat - now()).abs() <= 2);
    assert_eq!(issued.exp - issued.iat, 15 * 60);
    assert_eq!(
        uuid::Uuid::parse_str(&issued.jti)
            .unwrap()
            .get_version_num(),
        4
    );

    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some(s.ring.current_kid().as_str()));

    let verified = s.verifier().verify(&token).await.unwrap();
    assert_eq!(verified, issued);
    assert_eq!(s.fetch_count(), 1);
}

#[tokio::test]
async fn key_ring_is_its_own_jwks_source() {
    let s = Setup::new();
    let verifier = Verifier::new(ISS, AUD, Arc::new(s.ring.clone()));
    let (token, _) = s.issuer.issue("u", "user", "s", &["pwd"]).unwrap();
    assert_eq!(verifier.verify(&token).await.unwrap().sub, "u");
}

#[tokio::test]
async fn jti_is_unique() {
    let s = Setup::new();
    let (_, a) = s.issuer.issue("u", "user", "s", &[]).unwrap();
    let (_, b) = s.issuer.issue("u", "user", "s", &[]).unwrap();
    assert_ne!(a.jti, b.jti);
}

#[test]
fn jwks_publishes_ed25519_signature_keys_only() {
    let s = Setup::new();
    let doc: Value = serde_json::from_str(&s.ring.jwks_json()).unwrap();
    let keys = doc["keys"].as_array().unwrap();
    // The current key and the pre-published next key.
    assert_eq!(keys.len(), 2);
    for key in keys {
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(key["use"], "sig");
        assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));
        let x = key["x"].as_str().unwrap();
        assert_eq!(common::b64(&[0; 32]).len(), x.len());
        // Nothing private.
        assert!(key.get("d").is_none());
    }
    assert!(
        keys.iter()
            .any(|k| k["kid"] == s.ring.current_kid().as_str())
    );
    assert!(!s.ring.jwks_json().contains("pkcs8"));
    // The typed JWKS is the same document.
    assert_eq!(serde_json::to_value(s.ring.jwks()).unwrap(), doc);
    assert_eq!(
        trustmesh_tokens::parse_jwks(s.ring.jwks_json().as_bytes()).unwrap(),
        s.ring.jwks()
    );
}

#[test]
fn issuer_never_outlives_the_key_retirement() {
    let s = Setup::with_policy(RotationPolicy {
        rotate_every: Duration::from_secs(3600),
        token_ttl: Duration::from_secs(300),
    });
    let issuer = TokenIssuer::new(s.ring.clone(), ISS, AUD, Duration::from_secs(86_400));
    assert_eq!(issuer.ttl(), Duration::from_secs(300));
    let (_, claims) = issuer.issue("u", "user", "s", &[]).unwrap();
    assert_eq!(claims.exp - claims.iat, 300);
}

#[test]
fn issuer_refuses_empty_subject_or_session() {
    let s = Setup::new();
    assert!(matches!(
        s.issuer.issue("", "user", "s", &[]),
        Err(TokenError::Signing(_))
    ));
    assert!(matches!(
        s.issuer.issue("u", "user", "", &[]),
        Err(TokenError::Signing(_))
    ));
}

#[test]
fn error_codes_are_stable() {
    let cases = [
        (TokenError::Malformed, "token_malformed"),
        (
            TokenError::UnsupportedAlgorithm("none".into()),
            "token_algorithm",
        ),
        (TokenError::UnknownKey("k".into()), "token_unknown_key"),
        (TokenError::BadSignature, "token_signature"),
        (TokenError::Expired, "token_expired"),
        (TokenError::NotYetValid, "token_not_yet_valid"),
        (TokenError::WrongAudience, "token_audience"),
        (TokenError::WrongIssuer, "token_issuer"),
        (TokenError::MissingClaim("sid".into()), "token_claims"),
        (TokenError::Revoked, "session_revoked"),
        (
            TokenError::SessionCheck("x".into()),
            "session_check_unavailable",
        ),
        (TokenError::Jwks("x".into()), "jwks_unavailable"),
        (TokenError::Storage("x".into()), "key_storage"),
        (TokenError::Signing("x".into()), "token_signing"),
    ];
    for (error, code) in cases {
        assert_eq!(error.code(), code);
        let dependency = matches!(
            error,
            TokenError::SessionCheck(_)
                | TokenError::Jwks(_)
                | TokenError::Storage(_)
                | TokenError::Signing(_)
        );
        assert_eq!(error.is_rejection(), !dependency, "{error:?}");
    }
}
