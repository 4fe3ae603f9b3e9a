//! Helpers shared by the integration tests: key rings in temporary
//! directories, counting JWKS fetchers and hand-made (forged) tokens.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::Ed25519KeyPair;
use serde_json::{Value, json};
use trustmesh_tokens::{FnJwksFetcher, KeyRing, RotationPolicy, TokenIssuer, Verifier};

pub const ISS: &str = "https://auth.trustmesh.local";
pub const AUD: &str = "trustmesh";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub ring: KeyRing,
    pub issuer: TokenIssuer,
    pub fetches: Arc<AtomicUsize>,
}

impl Setup {
    pub fn new() -> Self {
        Self::with_policy(RotationPolicy::default())
    }

    pub fn with_policy(policy: RotationPolicy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(&dir.path().join("keys"), policy).unwrap();
        let issuer = TokenIssuer::new(ring.clone(), ISS, AUD, policy.token_ttl);
        Self {
            dir,
            ring,
            issuer,
            fetches: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A verifier whose JWKS comes from the ring, counting fetches.
    pub fn verifier(&self) -> Verifier {
        self.slow_verifier(Duration::ZERO)
    }

    /// [`verifier`](Self::verifier), each fetch taking `delay`.
    pub fn slow_verifier(&self, delay: Duration) -> Verifier {
        let ring = self.ring.clone();
        let fetches = self.fetches.clone();
        let fetcher = FnJwksFetcher::new(move || {
            fetches.fetch_add(1, Ordering::SeqCst);
            let set = ring.jwks();
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(set)
            }
        });
        Verifier::new(ISS, AUD, Arc::new(fetcher))
    }

    pub fn fetch_count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// The PKCS#8 document of the ring's current key, read from its file.
    pub fn current_pkcs8(&self) -> Vec<u8> {
        let file: Value =
            serde_json::from_slice(&std::fs::read(self.ring.path()).unwrap()).unwrap();
        let kid = self.ring.current_kid();
        let key = file["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .unwrap();
        STANDARD.decode(key["pkcs8"].as_str().unwrap()).unwrap()
    }

    /// A token signed with the ring's current key, with any header and claims.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        sign_ed25519(&self.current_pkcs8(), header, claims)
    }

    /// The header the issuer would use.
    pub fn header(&self) -> Value {
        json!({"alg": "EdDSA", "typ": "JWT", "kid": self.ring.current_kid()})
    }
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(&serde_json::to_vec(header).unwrap()),
        b64(&serde_json::to_vec(claims).unwrap())
    )
}

pub fn sign_ed25519(pkcs8: &[u8], header: &Value, claims: &Value) -> String {
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8).unwrap();
    let input = signing_input(header, claims);
    let sig = pair.sign(input.as_bytes());
    format!("{input}.{}", b64(sig.as_ref()))
}

pub fn sign_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let input = signing_input(header, claims);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// Valid claims for [`ISS`] and [`AUD`], issued now for 15 minutes.
pub fn claims() -> Value {
    let now = now();
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "user-1",
        "role": "user",
        "sid": "session-1",
        "iat": now,
        "exp": now + 900,
        "jti": uuid::Uuid::new_v4().to_string(),
        "amr": ["pwd", "otp"],
    })
}

pub fn after(d: Duration) -> SystemTime {
    SystemTime::now() + d
}

/// A token signed by a key no JWKS has, under `kid`.
pub fn token_from_unknown_key(kid: &str) -> String {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    sign_ed25519(
        pkcs8.as_ref(),
        &json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
        &claims(),
    )
}
