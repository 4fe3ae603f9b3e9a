//! [`Verifier`]: checks access tokens against the issuer's JWKS (cached and
//! refetched on an unknown `kid`) and, optionally, that their session is
//! still active.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::error::sanitize;
use crate::{
    ALGORITHM, AccessClaims, BoxFuture, KeyRing, TokenError, duration_seconds, unix_seconds,
};

/// The largest clock-skew leeway a verifier accepts on `exp`, `nbf` and
/// `iat` (also its default).
pub const MAX_LEEWAY: Duration = Duration::from_secs(30);

/// Tokens longer than this are refused unparsed.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Key IDs longer than this are refused.
const MAX_KID_LEN: usize = 128;
/// The session cache is pruned when it reaches this many entries.
const MAX_SESSION_CACHE: usize = 100_000;
/// The verified-token cache is pruned when it reaches this many entries.
const MAX_VERIFIED_CACHE: usize = 20_000;

const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(5 * 60);
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a [`Verifier`] gets the issuer's JWKS (the auth service's `GetJwks`
/// RPC, an HTTP client for `/.well-known/jwks.json`, or a local
/// [`KeyRing`]).
pub trait JwksFetcher: Send + Sync + 'static {
    /// Fetches the issuer's current JWKS. Failures should be
    /// [`TokenError::Jwks`].
    fn fetch(&self) -> BoxFuture<'static, Result<JwkSet, TokenError>>;
}

/// Tells a [`Verifier`] whether a session is still active (not revoked, not
/// expired).
pub trait SessionChecker: Send + Sync + 'static {
    /// Whether session `sid` is active. Failures should be
    /// [`TokenError::SessionCheck`]; the token is then refused.
    fn is_active(&self, sid: &str) -> BoxFuture<'static, Result<bool, TokenError>>;
}

/// A [`JwksFetcher`] made of a closure returning a future.
///
/// ```
/// use std::sync::Arc;
/// use trustmesh_tokens::{FnJwksFetcher, JwkSet, JwksFetcher, TokenError, Verifier};
///
/// let fetcher: Arc<dyn JwksFetcher> = Arc::new(FnJwksFetcher::new(|| async {
///     // Ask the auth service's GetJwks RPC here.
///     Ok::<_, TokenError>(JwkSet { keys: vec![] })
/// }));
/// let verifier = Verifier::new("https://auth.example", "trustmesh", fetcher);
/// # let _ = verifier;
/// ```
pub struct FnJwksFetcher<F>(F);

impl<F> FnJwksFetcher<F> {
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        Self(f)
    }
}

impl<F> fmt::Debug for FnJwksFetcher<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnJwksFetcher")
    }
}

impl<F, Fut> JwksFetcher for FnJwksFetcher<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<JwkSet, TokenError>> + Send + 'static,
{
    fn fetch(&self) -> BoxFuture<'static, Result<JwkSet, TokenError>> {
        Box::pin((self.0)())
    }
}

/// A [`SessionChecker`] made of a closure taking the session ID.
///
/// ```
/// use std::sync::Arc;
/// use trustmesh_tokens::{FnSessionChecker, SessionChecker, TokenError};
///
/// let checker: Arc<dyn SessionChecker> = Arc::new(FnSessionChecker::new(|sid: String| async move {
///     // Look the session up in the session store here.
///     Ok::<_, TokenError>(!sid.is_empty())
/// }));
/// # let _ = checker;
/// ```
pub struct FnSessionChecker<F>(F);

impl<F> FnSessionChecker<F> {
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        Self(f)
    }
}

impl<F> fmt::Debug for FnSessionChecker<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnSessionChecker")
    }
}

impl<F, Fut> SessionChecker for FnSessionChecker<F>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<bool, TokenError>> + Send + 'static,
{
    fn is_active(&self, sid: &str) -> BoxFuture<'static, Result<bool, TokenError>> {
        Box::pin((self.0)(sid.to_owned()))
    }
}

/// A key ring is its own JWKS source (the auth service verifying the tokens
/// it issued).
impl JwksFetcher for KeyRing {
    fn fetch(&self) -> BoxFuture<'static, Result<JwkSet, TokenError>> {
        let set = self.jwks();
        Box::pin(async move { Ok(set) })
    }
}

/// Parses a JWKS document (for [`JwksFetcher`] implementations).
pub fn parse_jwks(json: &[u8]) -> Result<JwkSet, TokenError> {
    serde_json::from_slice(json).map_err(|e| TokenError::Jwks(format!("invalid JWKS: {e}")))
}

#[derive(Clone)]
struct Config {
    issuer: String,
    audience: String,
    leeway: Duration,
    validation: Validation,
    refetch_interval: Duration,
    jwks_max_age: Duration,
    fetch_timeout: Duration,
}

/// Verifies access tokens. Cheap to clone; clones share the JWKS and session
/// caches.
///
/// Accepts only `alg: EdDSA` tokens with a `kid` found in the issuer's JWKS,
/// then checks the signature, `exp` (with a leeway of at most
/// [`MAX_LEEWAY`]), `nbf` and `iat` (not in the future), `aud`, `iss`, the
/// presence of every claim of [`AccessClaims`] and, with a
/// [`SessionChecker`], that the session is active.
///
/// The JWKS is fetched on first use, refetched when a token names an unknown
/// `kid` (at most once per refetch interval, 5 s by default, one fetch
/// shared by concurrent callers) and when it is older than its maximum age
/// (5 min by default; if that refresh fails, the cached keys are kept).
///
/// A token that verified is remembered by its SHA-256 while the JWKS that
/// verified it stays current and fresh: the next requests with it skip the
/// signature check (not the expiry, nor the session check).
#[derive(Clone)]
pub struct Verifier {
    config: Arc<Config>,
    jwks: Arc<JwksCache>,
    verified: Arc<VerifiedCache>,
    sessions: Option<Arc<SessionCache>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .field("leeway", &self.config.leeway)
            .field("session_checker", &self.sessions.is_some())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier of tokens issued by `issuer` for `audience`, with the
    /// issuer's keys from `jwks`.
    pub fn new(issuer: &str, audience: &str, jwks: Arc<dyn JwksFetcher>) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = MAX_LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_audience(&[audience]);
        validation.set_issuer(&[issuer]);
        // Presence (of every claim, not only these) is checked by
        // `check_claims`, which tells a missing claim from one of the wrong
        // type; `jsonwebtoken` reports both as missing.
        validation.required_spec_claims.clear();
        Self {
            config: Arc::new(Config {
                issuer: issuer.to_owned(),
                audience: audience.to_owned(),
                leeway: MAX_LEEWAY,
                validation,
                refetch_interval: DEFAULT_REFETCH_INTERVAL,
                jwks_max_age: DEFAULT_JWKS_MAX_AGE,
                fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            }),
            jwks: Arc::new(JwksCache {
                fetcher: jwks,
                snapshot: RwLock::new(Arc::new(Snapshot::default())),
                last_attempt: tokio::sync::Mutex::new(None),
            }),
            verified: Arc::new(VerifiedCache::default()),
            sessions: None,
        }
    }

    /// Also checks that the token's session is active, remembering each
    /// answer for `cache_ttl` (a revocation reaches this verifier within that
    /// time; 2 s is a good value; zero asks every time).
    pub fn with_session_checker(
        mut self,
        checker: Arc<dyn SessionChecker>,
        cache_ttl: Duration,
    ) -> Self {
        self.sessions = Some(Arc::new(SessionCache {
            checker,
            ttl: cache_ttl,
            entries: Mutex::new(HashMap::new()),
        }));
        self
    }

    /// The clock-skew leeway on `exp`, `nbf` and `iat` (default and maximum
    /// [`MAX_LEEWAY`]; larger values are capped).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        let leeway = leeway.min(MAX_LEEWAY);
        let config = Arc::make_mut(&mut self.config);
        config.leeway = leeway;
        config.validation.leeway = leeway.as_secs();
        self
    }

    /// The minimum time between two JWKS fetches caused by unknown `kid`s
    /// or a stale cache (default 5 s).
    pub fn with_refetch_interval(mut self, interval: Duration) -> Self {
        Arc::make_mut(&mut self.config).refetch_interval = interval;
        self
    }

    /// How long a fetched JWKS is used before it is refreshed (default
    /// 5 min), so that keys the issuer dropped stop being trusted.
    pub fn with_jwks_max_age(mut self, max_age: Duration) -> Self {
        Arc::make_mut(&mut self.config).jwks_max_age = max_age;
        self
    }

    /// The time limit of a JWKS fetch or a session check (default 5 s).
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.config).fetch_timeout = timeout;
        self
    }

    /// Fetches the JWKS now unless it was fetched less than the refetch
    /// interval ago (at startup: fail fast if the issuer is unreachable).
    pub async fn refresh_jwks(&self) -> Result<(), TokenError> {
        let seen = self.jwks.current().generation;
        self.jwks.refresh(seen, &self.config).await.map(|_| ())
    }

    /// Verifies `token` (the compact JWT, without `Bearer `) and returns its
    /// claims.
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let result = self.verify_inner(token).await;
        if let Err(e) = &result {
            tracing::debug!(code = e.code(), error = %e, "access token refused");
        }
        result
    }

    async fn verify_inner(&self, token: &str) -> Result<AccessClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let digest = token_digest(token);
        let claims = match self
            .verified
            .get(&digest, &self.jwks.current(), &self.config)
        {
            Some(claims) => claims,
            None => {
                let kid = parse_header(token)?;
                let (key, generation) = self.jwks.key(&kid, &self.config).await?;
                let data = jsonwebtoken::decode::<Map<String, Value>>(
                    token,
                    &key,
                    &self.config.validation,
                )
                .map_err(map_jwt_error)?;
                let nbf = data.claims.get("nbf").and_then(Value::as_i64);
                let claims = check_claims(data.claims, &self.config)?;
                self.verified.insert(digest, &claims, nbf, generation);
                claims
            }
        };
        if let Some(sessions) = &self.sessions {
            sessions
                .check(&claims.sid, self.config.fetch_timeout)
                .await?;
        }
        Ok(claims)
    }
}

/// Checks the header; returns the `kid`. `verify_inner` has already
/// refused a token longer than [`MAX_TOKEN_LEN`].
fn parse_header(token: &str) -> Result<String, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err(TokenError::Malformed);
    };
    if alg != ALGORITHM {
        return Err(TokenError::UnsupportedAlgorithm(sanitize(alg, 32)));
    }
    // No extension is understood, so none may be critical (RFC 7515 4.1.11).
    if header.contains_key("crit") {
        return Err(TokenError::Malformed);
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if typ.eq_ignore_ascii_case("JWT") => {}
        Some(_) => return Err(TokenError::Malformed),
    }
    match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KID_LEN => Ok(kid.clone()),
        _ => Err(TokenError::Malformed),
    }
}

/// Checks the claims `jsonwebtoken` does not (presence of every claim, `iat`)
/// and, again, those it does, on the exact types of [`AccessClaims`].
fn check_claims(claims: Map<String, Value>, config: &Config) -> Result<AccessClaims, TokenError> {
    for name in AccessClaims::REQUIRED {
        if !claims.contains_key(name) {
            return Err(TokenError::MissingClaim(name.to_owned()));
        }
    }
    let claims: AccessClaims =
        serde_json::from_value(Value::Object(claims)).map_err(|_| TokenError::Malformed)?;
    let window = ValidityWindow::now(config);
    if claims.exp < window.oldest_exp {
        return Err(TokenError::Expired);
    }
    if claims.iat > window.latest_start {
        return Err(TokenError::NotYetValid);
    }
    if claims.aud != config.audience {
        return Err(TokenError::WrongAudience);
    }
    if claims.iss != config.issuer {
        return Err(TokenError::WrongIssuer);
    }
    if claims.exp < claims.iat
        || claims.sub.is_empty()
        || claims.sid.is_empty()
        || claims.jti.is_empty()
    {
        return Err(TokenError::Malformed);
    }
    Ok(claims)
}

/// The times a token may have now, with the verifier's clock-skew leeway.
struct ValidityWindow {
    /// The earliest `exp` still accepted.
    oldest_exp: i64,
    /// The latest `iat` (or `nbf`) already accepted.
    latest_start: i64,
}

impl ValidityWindow {
    fn now(config: &Config) -> Self {
        let now = unix_seconds(SystemTime::now());
        let leeway = duration_seconds(config.leeway);
        Self {
            oldest_exp: now.saturating_sub(leeway),
            latest_start: now.saturating_add(leeway),
        }
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => TokenError::BadSignature,
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidAudience => TokenError::WrongAudience,
        K::InvalidIssuer => TokenError::WrongIssuer,
        K::MissingRequiredClaim(claim) => TokenError::MissingClaim(sanitize(claim, 16)),
        K::InvalidEddsaKey | K::InvalidKeyFormat => {
            TokenError::Jwks("the published key is not a valid Ed25519 key".to_owned())
        }
        _ => TokenError::Malformed,
    }
}

/// The JWKS keys usable for verification, by `kid`.
#[derive(Default)]
struct Snapshot {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
    /// Incremented by each successful fetch.
    generation: u64,
}

impl Snapshot {
    /// Fetched, and younger than the JWKS's maximum age.
    fn is_fresh(&self, config: &Config) -> bool {
        self.fetched_at
            .is_some_and(|at| at.elapsed() < config.jwks_max_age)
    }
}

struct JwksCache {
    fetcher: Arc<dyn JwksFetcher>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// When the last fetch was attempted; held during a fetch, so that
    /// concurrent callers share it.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

impl JwksCache {
    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key for `kid`, refetching the JWKS if the `kid` is unknown or the
    /// cache is stale, with the generation of the JWKS it came from.
    async fn key(&self, kid: &str, config: &Config) -> Result<(DecodingKey, u64), TokenError> {
        let snapshot = self.current();
        let unknown = || TokenError::UnknownKey(sanitize(kid, MAX_KID_LEN));
        if let Some(key) = snapshot.keys.get(kid) {
            if snapshot.is_fresh(config) {
                return Ok((key.clone(), snapshot.generation));
            }
            return match self.refresh(snapshot.generation, config).await {
                Ok(new) => new
                    .keys
                    .get(kid)
                    .map(|key| (key.clone(), new.generation))
                    .ok_or_else(unknown),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot refresh the JWKS; keeping the cached keys");
                    Ok((key.clone(), snapshot.generation))
                }
            };
        }
        let new = self.refresh(snapshot.generation, config).await?;
        new.keys
            .get(kid)
            .map(|key| (key.clone(), new.generation))
            .ok_or_else(unknown)
    }

    /// Fetches the JWKS unless another caller did since `seen` was current,
    /// or a fetch was attempted less than the refetch interval ago.
    async fn refresh(&self, seen: u64, config: &Config) -> Result<Arc<Snapshot>, TokenError> {
        let mut last_attempt = self.last_attempt.lock().await;
        let current = self.current();
        if current.generation != seen {
            return Ok(current);
        }
        if let Some(at) = *last_attempt
            && at.elapsed() < config.refetch_interval
        {
            return if current.fetched_at.is_some() {
                Ok(current)
            } else {
                Err(TokenError::Jwks(
                    "not fetched yet (the last attempt failed)".to_owned(),
                ))
            };
        }
        *last_attempt = Some(Instant::now());
        let set = match tokio::time::timeout(config.fetch_timeout, self.fetcher.fetch()).await {
            Ok(Ok(set)) => set,
            Ok(Err(e @ TokenError::Jwks(_))) => return Err(e),
            Ok(Err(e)) => return Err(TokenError::Jwks(e.to_string())),
            Err(_) => return Err(TokenError::Jwks("fetch timed out".to_owned())),
        };
        let keys = import(&set);
        tracing::debug!(keys = keys.len(), "fetched the JWKS");
        let new = Arc::new(Snapshot {
            keys,
            fetched_at: Some(Instant::now()),
            generation: current.generation.wrapping_add(1),
        });
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = new.clone();
        Ok(new)
    }
}

/// The Ed25519 signature keys of `set`; any other key is ignored.
fn import(set: &JwkSet) -> HashMap<String, DecodingKey> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.as_deref() else {
            continue;
        };
        if kid.is_empty()
            || kid.len() > MAX_KID_LEN
            || jwk
                .common
                .key_algorithm
                .is_some_and(|alg| alg != KeyAlgorithm::EdDSA)
            || jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            tracing::debug!(kid = %sanitize(kid, MAX_KID_LEN), "ignoring a JWKS key not for EdDSA signatures");
            continue;
        }
        let AlgorithmParameters::OctetKeyPair(params) = &jwk.algorithm else {
            tracing::debug!(kid = %sanitize(kid, MAX_KID_LEN), "ignoring a non-OKP JWKS key");
            continue;
        };
        if params.curve != EllipticCurve::Ed25519 {
            continue;
        }
        match URL_SAFE_NO_PAD.decode(&params.x) {
            Ok(x) if x.len() == 32 => {
                keys.insert(kid.to_owned(), DecodingKey::from_ed_der(&x));
            }
            _ => {
                tracing::warn!(kid = %sanitize(kid, MAX_KID_LEN), "ignoring a JWKS key with an invalid Ed25519 public key");
            }
        }
    }
    keys
}

/// The SHA-256 of a compact token: the verified cache's key (the cache
/// keeps no bearer token).
fn token_digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A token whose signature and claims were verified.
struct Verified {
    claims: AccessClaims,
    /// The later of its `iat` and `nbf`: a hit is checked against it with
    /// the caller's leeway, as a miss is (clones of a verifier share the
    /// cache, and may have a smaller leeway).
    not_before: i64,
    /// The JWKS generation whose key verified it.
    generation: u64,
}

/// Tokens already verified, by [`token_digest`]: a client presents the
/// same access token on every request of its 15 minutes, and checking its
/// Ed25519 signature again each time was the largest single cost of a
/// verifier (about 50 µs). An entry counts only while the JWKS that
/// verified it is the current one and fresh (a refetch, which drops
/// removed keys, sends every token through the signature check again) and
/// the token has not expired nor starts later than the caller's leeway
/// allows; the session is checked on every request whatever the cache
/// says.
#[derive(Default)]
struct VerifiedCache {
    entries: Mutex<HashMap<[u8; 32], Verified>>,
}

impl VerifiedCache {
    /// The claims of a verified token that still count under `jwks`.
    fn get(&self, digest: &[u8; 32], jwks: &Snapshot, config: &Config) -> Option<AccessClaims> {
        if !jwks.is_fresh(config) {
            return None;
        }
        let window = ValidityWindow::now(config);
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(digest)
            .filter(|v| {
                v.generation == jwks.generation
                    && v.claims.exp >= window.oldest_exp
                    && v.not_before <= window.latest_start
            })
            .map(|v| v.claims.clone())
    }

    /// Remembers a token verified with a key of JWKS `generation`; expired
    /// entries are dropped when the cache is full.
    fn insert(&self, digest: [u8; 32], claims: &AccessClaims, nbf: Option<i64>, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_VERIFIED_CACHE {
            let now = unix_seconds(SystemTime::now());
            entries.retain(|_, v| v.claims.exp >= now);
            if entries.len() >= MAX_VERIFIED_CACHE {
                entries.clear();
            }
        }
        entries.insert(
            digest,
            Verified {
                claims: claims.clone(),
                not_before: nbf.map_or(claims.iat, |nbf| nbf.max(claims.iat)),
                generation,
            },
        );
    }
}

struct SessionCache {
    checker: Arc<dyn SessionChecker>,
    ttl: Duration,
    /// `sid` → (active, when asked).
    entries: Mutex<HashMap<String, (bool, Instant)>>,
}

impl SessionCache {
    fn cached(&self, sid: &str) -> Option<bool> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(sid)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(active, _)| *active)
    }

    async fn check(&self, sid: &str, timeout: Duration) -> Result<(), TokenError> {
        let active = match self.cached(sid) {
            Some(active) => active,
            None => {
                let active = match tokio::time::timeout(timeout, self.checker.is_active(sid)).await
                {
                    Ok(result) => result?,
                    Err(_) => {
                        return Err(TokenError::SessionCheck(
                            "session check timed out".to_owned(),
                        ));
                    }
                };
                if !self.ttl.is_zero() {
                    let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
                    if entries.len() >= MAX_SESSION_CACHE {
                        let ttl = self.ttl;
                        entries.retain(|_, (_, at)| at.elapsed() < ttl);
                        if entries.len() >= MAX_SESSION_CACHE {
                            entries.clear();
                        }
                    }
                    entries.insert(sid.to_owned(), (active, Instant::now()));
                }
                active
            }
        };
        if active {
            Ok(())
        } else {
            Err(TokenError::Revoked)
        }
    }
}
