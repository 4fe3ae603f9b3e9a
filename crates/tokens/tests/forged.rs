//! Forged and invalid tokens, each refused with the right error.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{AUD, ISS, Setup, b64, claims, now, sign_hs256, token_from_unknown_key};
use serde_json::{Value, json};
use trustmesh_tokens::{AccessClaims, TokenError, TokenIssuer};

/// The raw public key and the JWK (as JSON) of the ring's current key.
fn public_key(s: &Setup) -> (Vec<u8>, String) {
    let jwks = s.ring.jwks();
    let jwk = jwks.find(&s.ring.current_kid()).unwrap();
    let jwk_json = serde_json::to_string(jwk).unwrap();
    let value: Value = serde_json::from_str(&jwk_json).unwrap();
    let raw = URL_SAFE_NO_PAD
        .decode(value["x"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw.len(), 32);
    (raw, jwk_json)
}

#[tokio::test]
async fn sanity_hand_signed_token_is_accepted() {
    // The helpers below produce tokens the verifier accepts when nothing is
    // wrong, so each refusal is caused by the one thing changed.
    let s = Setup::new();
    let token = s.sign(&s.header(), &claims());
    let verified = s.verifier().verify(&token).await.unwrap();
    assert_eq!(verified.sub, "user-1");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let s = Setup::new();
    let v = s.verifier();
    let kid = s.ring.current_kid();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
        let unsigned = format!("{}.", common::signing_input(&header, &claims()));
        assert_eq!(
            v.verify(&unsigned).await,
            Err(TokenError::UnsupportedAlgorithm(alg.to_owned()))
        );
        // Even with a signature part copied from a valid token.
        let (valid, _) = s.issuer.issue("u", "user", "s", &[]).unwrap();
        let sig = valid.rsplit('.').next().unwrap();
        assert_eq!(
            v.verify(&format!("{unsigned}{sig}")).await,
            Err(TokenError::UnsupportedAlgorithm(alg.to_owned()))
        );
    }
    // No fetch was even needed to refuse them.
    assert_eq!(s.fetch_count(), 0);
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let s = Setup::new();
    let v = s.verifier();
    let (raw, jwk_json) = public_key(&s);
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": s.ring.current_kid()});
    let secrets: Vec<Vec<u8>> = vec![
        raw.clone(),
        b64(&raw).into_bytes(),
        jwk_json.into_bytes(),
        s.ring.jwks_json().into_bytes(),
    ];
    for secret in secrets {
        let forged = sign_hs256(&secret, &header, &claims());
        assert_eq!(
            v.verify(&forged).await,
            Err(TokenError::UnsupportedAlgorithm("HS256".to_owned()))
        );
    }
    for alg in [
        "HS384", "HS512", "RS256", "PS256", "ES256", "ES384", "Ed25519", "eddsa", "",
    ] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": s.ring.current_kid()});
        let forged = sign_hs256(&raw, &header, &claims());
        assert_eq!(
            v.verify(&forged).await,
            Err(TokenError::UnsupportedAlgorithm(alg.to_owned())),
            "{alg}"
        );
    }
}

#[tokio::test]
async fn wrong_audience_and_issuer_are_refused() {
    let s = Setup::new();
    let v = s.verifier();
    let ttl = Duration::from_secs(900);

    let other_aud = TokenIssuer::new(s.ring.clone(), ISS, "billing", ttl);
    let (token, _) = other_aud.issue("u", "user", "s", &[]).unwrap();
    assert_eq!(v.verify(&token).await, Err(TokenError::WrongAudience));

    let other_iss = TokenIssuer::new(s.ring.clone(), "https://evil.example", AUD, ttl);
    let (token, _) = other_iss.issue("u", "user", "s", &[]).unwrap();
    assert_eq!(v.verify(&token).await, Err(TokenError::WrongIssuer));

    // An audience list naming someone else.
    let mut c = claims();
    c["aud"] = json!(["billing", "reports"]);
    assert_eq!(
        v.verify(&s.sign(&s.header(), &c)).await,
        Err(TokenError::WrongAudience)
    );
}

#[tokio::test]
async fn expired_and_future_tokens_are_refused() {
    let s = Setup::new();
    let v = s.verifier();
    let now = now();

    let mut c = claims();
    c["iat"] = json!(now - 2000);
    c["exp"] = json!(now - 100);
    assert_eq!(
        v.verify(&s.sign(&s.header(), &c)).await,
        Err(TokenError::Expired)
    );

    // Beyond the 30 s maximum leeway.
    c["exp"] = json!(now - 45);
    assert_eq!(
        v.verify(&s.sign(&s.header(), &c)).await,
        Err(TokenError::Expired)
    );

    // Within it: accepted, unless the leeway is lowered.
    c["exp"] = json!(now - 5);
    let token = s.sign(&s.header(), &c);
    v.verify(&token).await.unwrap();
    let strict = v.clone().with_leeway(Duration::ZERO);
    assert_eq!(strict.verify(&token).await, Err(TokenError::Expired));
    // A larger leeway is capped at 30 s.
    c["exp"] = json!(now - 100);
    let lenient = v.clone().with_leeway(Duration::from_secs(3600));
    assert_eq!(
        lenient.verify(&s.sign(&s.header(), &c)).await,
        Err(TokenError::Expired)
    );

    let mut c = claims();
    c["iat"] = json!(now + 600);
    c["exp"] = json!(now + 1500);
    assert_eq!(
        v.verify(&s.sign(&s.header(), &c)).await,
        Err(TokenError::NotYetValid)
    );

    let mut c = claims();
    c["nbf"] = json!(now + 600);
    assert_eq!(
        v.verify(&s.sign(&s.header(), &c)).await,
        Err(TokenError::NotYetValid)
    );
}

#[tokio::test]
async fn unknown_kid_and_foreign_key_are_refused() {
    let s = Setup::new();
    let v = s.verifier();
    assert_eq!(
        v.verify(&token_from_unknown_key("attacker-key")).await,
        Err(TokenError::UnknownKey("attacker-key".to_owned()))
    );
    // A known kid on a token signed by another key.
    let forged = token_from_unknown_key(&s.ring.current_kid());
    assert_eq!(v.verify(&forged).await, Err(TokenError::BadSignature));
}

#[tokio::test]
async fn tampered_tokens_are_refused() {
    let s = Setup::new();
    let v = s.verifier();
    let (token, issued) = s.issuer.issue("user-1", "user", "sid-1", &["pwd"]).unwrap();
    v.verify(&token).await.unwrap();
    let parts: Vec<&str> = token.split('.').collect();

    // Payload: promote to admin.
    let mut claims = serde_json::to_value(&issued).unwrap();
    claims["role"] = json!("admin");
    let payload = b64(&serde_json::to_vec(&claims).unwrap());
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    assert_eq!(v.verify(&tampered).await, Err(TokenError::BadSignature));

    // Payload: extend the expiry.
    claims["role"] = json!("user");
    claims["exp"] = json!(issued.exp + 86_400);
    let payload = b64(&serde_json::to_vec(&claims).unwrap());
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    assert_eq!(v.verify(&tampered).await, Err(TokenError::BadSignature));

    // Header: point at the other published key.
    let next = s
        .ring
        .jwks()
        .keys
        .iter()
        .map(|k| k.common.key_id.clone().unwrap())
        .find(|k| *k != s.ring.current_kid())
        .unwrap();
    let header =
        b64(&serde_json::to_vec(&json!({"alg": "EdDSA", "typ": "JWT", "kid": next})).unwrap());
    let tampered = format!("{header}.{}.{}", parts[1], parts[2]);
    assert_eq!(v.verify(&tampered).await, Err(TokenError::BadSignature));

    // Signature: flipped bit, truncated, empty.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let tampered = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    assert_eq!(v.verify(&tampered).await, Err(TokenError::BadSignature));
    let tampered = format!("{}.{}.{}", parts[0], parts[1], b64(&sig[..32]));
    assert_eq!(v.verify(&tampered).await, Err(TokenError::BadSignature));
    let tampered = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(v.verify(&tampered).await, Err(TokenError::BadSignature));
}

#[tokio::test]
async fn missing_claims_are_refused() {
    let s = Setup::new();
    let v = s.verifier();
    for name in AccessClaims::REQUIRED {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(name);
        assert_eq!(
            v.verify(&s.sign(&s.header(), &c)).await,
            Err(TokenError::MissingClaim(name.to_owned())),
            "without {name}"
        );
        let mut c = claims();
        c[name] = Value::Null;
        assert_eq!(
            v.verify(&s.sign(&s.header(), &c)).await,
            Err(TokenError::Malformed),
            "with {name}: null"
        );
    }
    // Wrong types and empty identifiers.
    for (name, value) in [
        ("role", json!(7)),
        ("amr", json!("pwd")),
        ("exp", json!("tomorrow")),
        ("exp", json!(-5)),
        ("iat", json!(1.5)),
        ("sid", json!("")),
        ("sub", json!("")),
        ("jti", json!("")),
    ] {
        let mut c = claims();
        c[name] = value.clone();
        assert_eq!(
            v.verify(&s.sign(&s.header(), &c)).await,
            Err(TokenError::Malformed),
            "{name}: {value}"
        );
    }
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let s = Setup::new();
    let v = s.verifier();
    let kid = s.ring.current_kid();
    let (valid, _) = s.issuer.issue("u", "user", "s", &[]).unwrap();
    let parts: Vec<&str> = valid.split('.').collect();

    let garbage = [
        String::new(),
        "a".to_owned(),
        "a.b".to_owned(),
        "a.b.c".to_owned(),
        format!("{valid}.extra"),
        format!("{} {}", parts[0], valid),
        format!("Bearer {valid}"),
        "x".repeat(20_000),
        format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
        format!("{}.{}.{}", "%%%", parts[1], parts[2]),
    ];
    for token in &garbage {
        assert_eq!(
            v.verify(token).await,
            Err(TokenError::Malformed),
            "{token:.60}"
        );
    }

    let headers = [
        json!({"alg": "EdDSA", "typ": "JWT"}),
        json!({"alg": "EdDSA", "typ": "JWT", "kid": ""}),
        json!({"alg": "EdDSA", "typ": "JWT", "kid": 42}),
        json!({"alg": "EdDSA", "typ": "JWT", "kid": "k".repeat(500)}),
        json!({"typ": "JWT", "kid": kid}),
        json!({"alg": ["EdDSA"], "typ": "JWT", "kid": kid}),
        json!({"alg": "EdDSA", "typ": "JWT", "kid": kid, "crit": ["exp"]}),
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid}),
    ];
    for header in &headers {
        assert_eq!(
            v.verify(&s.sign(header, &claims())).await,
            Err(TokenError::Malformed),
            "{header}"
        );
    }

    // A header with `alg` twice: refused whichever value would be read.
    let header = format!(r#"{{"alg":"none","alg":"EdDSA","kid":"{kid}"}}"#);
    let input = format!("{}.{}", b64(header.as_bytes()), parts[1]);
    let pkcs8 = s.current_pkcs8();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
    let token = format!("{input}.{}", b64(pair.sign(input.as_bytes()).as_ref()));
    assert!(v.verify(&token).await.is_err());

    // Sanity: the same construction with a single `alg` is accepted.
    let header = format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#);
    let input = format!("{}.{}", b64(header.as_bytes()), parts[1]);
    let token = format!("{input}.{}", b64(pair.sign(input.as_bytes()).as_ref()));
    v.verify(&token).await.unwrap();

    // Properly signed, but the payload is not a JSON object.
    for payload in [&b"not json"[..], b"[1,2]", b"\"claims\""] {
        let input = format!("{}.{}", parts[0], b64(payload));
        let token = format!("{input}.{}", b64(pair.sign(input.as_bytes()).as_ref()));
        assert_eq!(v.verify(&token).await, Err(TokenError::Malformed));
    }
    // Unsigned garbage in the payload fails the signature first.
    let token = format!("{}.{}.{}", parts[0], "%%%", parts[2]);
    assert_eq!(v.verify(&token).await, Err(TokenError::BadSignature));
}
