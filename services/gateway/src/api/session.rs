//! Who is calling and from where: session cookies and the CSRF double
//! submit, the caller's access token (verified here, then authorized per
//! route by the gateway's Rego package), the client's IP address behind
//! trusted proxies, and the metadata every forwarded gRPC call carries.
//!
//! [`guard`] runs before every REST route:
//!
//! 1. **CSRF.** A state-changing request (anything but `GET`, `HEAD`,
//!    `OPTIONS`, `TRACE`) that carries any of the gateway's cookies
//!    (`tm_access`, `tm_refresh`, `tm_csrf`) must send `x-csrf-token` equal
//!    to the `tm_csrf` cookie (compared in constant time), else 403
//!    `csrf_required`. A request authenticated by `Authorization: Bearer`
//!    alone needs no CSRF token.
//! 2. **Token.** Routes that act for a user need an access token:
//!    `Authorization: Bearer <jwt>` or the `tm_access` cookie. It is verified
//!    here (signature, claims, session still active); a missing or refused
//!    token is 401 with the [`TokenError::code`] (`token_missing` when there
//!    is none).
//! 3. **Policy.** `data.trustmesh.gateway.decision` for the route
//!    (`"POST /api/v1/users/{id}/role"`), the subject of the token and the
//!    path parameters; a deny is 403 with the policy's reason code.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use trustmesh_policy::{Peer, PolicyInput, RequestContext, Subject};
use trustmesh_tokens::{AccessClaims, TokenError};

use super::Api;
use super::errors::{ApiError, after_reading_body};

/// The access token cookie (`Path=/api`, 15 minutes).
pub const ACCESS_COOKIE: &str = "tm_access";
/// The refresh token cookie (`Path=/api/v1/auth`, 12 hours).
pub const REFRESH_COOKIE: &str = "tm_refresh";
/// The CSRF cookie, readable by the page's script (`Path=/`, 12 hours).
pub const CSRF_COOKIE: &str = "tm_csrf";
/// The header a browser echoes the CSRF cookie in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The header by which a browser asks for cookies instead of tokens in the
/// body (`x-trustmesh-client: web`).
pub const CLIENT_HEADER: &str = "x-trustmesh-client";
/// The request id header (accepted from the client when well formed,
/// generated otherwise, returned on every answer, forwarded to services).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The environment variable listing the proxies whose `X-Forwarded-For` is
/// believed (comma-separated CIDRs or addresses).
pub const TRUSTED_PROXIES_ENV: &str = "TRUSTMESH_TRUSTED_PROXIES";

/// Lifetime of the access cookie when the token's own is unknown (15 min).
const ACCESS_MAX_AGE: i64 = 15 * 60;
/// Lifetime of the refresh and CSRF cookies (12 h, the sessions' absolute limit).
const REFRESH_MAX_AGE: i64 = 12 * 60 * 60;
/// Longest user agent forwarded.
const MAX_USER_AGENT: usize = 256;

/// The routes anyone may call without a token (the policy allows them
/// without a subject, and they need none).
pub(crate) const PUBLIC_ROUTES: &[&str] = &[
    "/api/v1/auth/register",
    "/api/v1/auth/register/confirm",
    "/api/v1/auth/login",
    "/api/v1/auth/login/mfa",
    "/api/v1/auth/refresh",
    "/.well-known/jwks.json",
    "/api/v1/openapi.json",
];

// ---------------------------------------------------------------------------
// Cookies and CSRF

/// The values of every cookie `name` the request carries, in order.
pub fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, v) = pair.split_once('=')?;
            (n.trim() == name).then(|| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
}

/// The first non-empty cookie `name`, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &'a str) -> Option<&'a str> {
    cookie_values(headers, name).find(|v| !v.is_empty())
}

/// Whether the request carries any of the gateway's session cookies.
pub fn carries_session_cookie(headers: &HeaderMap) -> bool {
    [ACCESS_COOKIE, REFRESH_COOKIE, CSRF_COOKIE]
        .iter()
        .any(|name| cookie_values(headers, name).next().is_some())
}

/// Whether `x-csrf-token` equals the `tm_csrf` cookie (constant time). Two
/// different `tm_csrf` cookies (one planted by a sibling domain) or two
/// headers fail.
pub fn csrf_token_matches(headers: &HeaderMap) -> bool {
    let mut cookies = cookie_values(headers, CSRF_COOKIE);
    let Some(expected) = cookies.next() else {
        return false;
    };
    if expected.is_empty() || cookies.any(|other| other != expected) {
        return false;
    }
    let mut sent = headers.get_all(CSRF_HEADER).iter();
    let (Some(given), None) = (sent.next(), sent.next()) else {
        return false;
    };
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// Whether the method changes state (everything but the safe methods).
pub fn is_state_changing(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Whether the client asked for browser mode (`x-trustmesh-client: web`).
pub fn is_web_client(headers: &HeaderMap) -> bool {
    headers
        .get(CLIENT_HEADER)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"web"))
}

/// A fresh CSRF token: 256 random bits, base64url.
pub fn new_csrf_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// RFC 6265 `cookie-octet`s only (what tokens must be made of to travel in
/// a cookie).
fn is_cookie_value(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e))
}

fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
    http_only: bool,
) -> Result<HeaderValue, ApiError> {
    if !value.is_empty() && !is_cookie_value(value) {
        tracing::error!(cookie = name, "a token cannot be stored in a cookie");
        return Err(ApiError::upstream(
            "the session could not be stored in a cookie",
        ));
    }
    let http_only = if http_only { "; HttpOnly" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}{http_only}; Secure; SameSite=Strict"
    ))
    .map_err(|_| ApiError::upstream("the session could not be stored in a cookie"))
}

/// Adds the `Set-Cookie` headers of a browser session: the access and
/// refresh tokens (HttpOnly) and the CSRF token (readable by the page).
pub fn set_session_cookies(
    headers: &mut HeaderMap,
    access_token: &str,
    access_ttl: i64,
    refresh_token: &str,
    csrf_token: &str,
) -> Result<(), ApiError> {
    let access_ttl = if access_ttl > 0 {
        access_ttl.min(ACCESS_MAX_AGE)
    } else {
        ACCESS_MAX_AGE
    };
    let cookies = [
        set_cookie(ACCESS_COOKIE, access_token, "/api", access_ttl, true)?,
        set_cookie(
            REFRESH_COOKIE,
            refresh_token,
            "/api/v1/auth",
            REFRESH_MAX_AGE,
            true,
        )?,
        set_cookie(CSRF_COOKIE, csrf_token, "/", REFRESH_MAX_AGE, false)?,
    ];
    for cookie in cookies {
        headers.append(header::SET_COOKIE, cookie);
    }
    Ok(())
}

/// Adds `Set-Cookie` headers that delete the three session cookies.
pub fn clear_session_cookies(headers: &mut HeaderMap) {
    for (name, path, http_only) in [
        (ACCESS_COOKIE, "/api", true),
        (REFRESH_COOKIE, "/api/v1/auth", true),
        (CSRF_COOKIE, "/", false),
    ] {
        if let Ok(value) = set_cookie(name, "", path, 0, http_only) {
            headers.append(header::SET_COOKIE, value);
        }
    }
}

// ---------------------------------------------------------------------------
// Client address

/// The proxies whose `X-Forwarded-For` the gateway believes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<Cidr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
        };
        Ok(Self { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl TrustedProxies {
    /// No trusted proxy: the client is always the TCP peer.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses a comma-separated list of CIDRs (`10.0.0.0/8`) or addresses
    /// (`127.0.0.1`, `::1`); blanks are ignored.
    pub fn parse(list: &str) -> Result<Self, String> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Cidr::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{TRUSTED_PROXIES_ENV}: {e}"))?;
        Ok(Self { nets })
    }

    /// [`TrustedProxies::parse`] of `TRUSTMESH_TRUSTED_PROXIES` (none when unset).
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(TRUSTED_PROXIES_ENV) {
            Ok(list) => Self::parse(&list),
            Err(std::env::VarError::NotPresent) => Ok(Self::none()),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("{TRUSTED_PROXIES_ENV} is not valid UTF-8"))
            }
        }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(ip))
    }
}

/// The client's address: the TCP `peer`, or, when the peer is a trusted
/// proxy, the last `X-Forwarded-For` hop that is not a trusted proxy
/// (walking from the right; an unparsable hop stops the walk).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &TrustedProxies) -> IpAddr {
    let mut client = peer.to_canonical();
    if !proxies.contains(client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.into_iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = ip.to_canonical();
        if !proxies.contains(client) {
            break;
        }
    }
    client
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

// ---------------------------------------------------------------------------
// Request facts and the caller

/// Facts about one REST request, forwarded to the services as metadata.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The client's address, when the connection's peer is known.
    pub client_ip: Option<IpAddr>,
    /// The client's `User-Agent` (printable ASCII, at most 256 characters).
    pub user_agent: Option<String>,
    /// The request id.
    pub request_id: String,
}

impl RequestInfo {
    /// Reads the facts of a request (the peer address from its
    /// [`ConnectInfo`] extension).
    pub fn of(headers: &HeaderMap, peer: Option<SocketAddr>, proxies: &TrustedProxies) -> Self {
        let user_agent = headers
            .get(header::USER_AGENT)
            .map(|v| {
                v.as_bytes()
                    .iter()
                    .filter(|b| (0x20..0x7f).contains(*b))
                    .take(MAX_USER_AGENT)
                    .map(|b| char::from(*b))
                    .collect::<String>()
            })
            .filter(|ua| !ua.trim().is_empty());
        let request_id = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|id| {
                (1..=128).contains(&id.len())
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            })
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        Self {
            client_ip: peer.map(|p| client_ip(p.ip(), headers, proxies)),
            user_agent,
            request_id,
        }
    }
}

/// The signed-in user of a request, after verification and authorization.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The access token (forwarded to the services, which verify it again).
    pub token: String,
    /// Its verified claims.
    pub claims: AccessClaims,
    /// Whether it came from the `tm_access` cookie (a browser).
    pub via_cookie: bool,
}

impl Caller {
    /// The policy subject of this caller.
    pub fn subject(&self) -> Subject {
        trustmesh_runtime::subject_from_claims(&self.claims)
    }
}

/// The access token of a request: `Authorization: Bearer` first, then the
/// `tm_access` cookie. `Err` for an `Authorization` header of another form.
fn access_token(headers: &HeaderMap) -> Result<Option<(String, bool)>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let bearer = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty());
        return match bearer {
            Some(token) => Ok(Some((token.to_owned(), false))),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                TokenError::Malformed.code(),
                "the Authorization header must be `Bearer <access token>`",
            )),
        };
    }
    Ok(cookie(headers, ACCESS_COOKIE).map(|t| (t.to_owned(), true)))
}

/// The REST guard: CSRF, access token, route policy (module documentation).
/// Puts [`RequestInfo`] (and [`Caller`] on user routes) in the request's
/// extensions and `x-request-id` on the answer.
pub async fn guard(State(api): State<Api>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let info = RequestInfo::of(&parts.headers, peer, api.proxies());
    let request_id = info.request_id.clone();
    let mut response = match admit(&api, &mut parts, &info).await {
        Ok(caller) => {
            parts.extensions.insert(info);
            if let Some(caller) = caller {
                parts.extensions.insert(caller);
            }
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) => after_reading_body(e.into_response(), &parts.headers, parts.version, body).await,
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    response
}

async fn admit(
    api: &Api,
    parts: &mut axum::http::request::Parts,
    info: &RequestInfo,
) -> Result<Option<Caller>, ApiError> {
    if is_state_changing(&parts.method)
        && carries_session_cookie(&parts.headers)
        && !csrf_token_matches(&parts.headers)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_required",
            "this request carries session cookies: send the tm_csrf cookie's value \
             in the x-csrf-token header",
        ));
    }
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or_else(|| parts.uri.path().to_owned(), |m| m.as_str().to_owned());

    let caller = if PUBLIC_ROUTES.contains(&route.as_str()) {
        None
    } else {
        let Some((token, via_cookie)) = access_token(&parts.headers)? else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_missing",
                "an access token is required (Authorization: Bearer, or the tm_access cookie)",
            ));
        };
        let claims = api.verifier().verify(&token).await.map_err(token_error)?;
        if api.ended().contains(&claims.sid) {
            return Err(token_error(TokenError::Revoked));
        }
        Some(Caller {
            token,
            claims,
            via_cookie,
        })
    };

    let params = RawPathParams::from_request_parts(parts, &())
        .await
        .map(|params| {
            params
                .iter()
                .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
                .collect::<serde_json::Map<_, _>>()
        })
        .unwrap_or_default();
    // HEAD is answered by the GET route.
    let method = if parts.method == Method::HEAD {
        Method::GET
    } else {
        parts.method.clone()
    };
    let operation = format!("{method} {route}");
    let input = PolicyInput {
        service: "gateway".to_owned(),
        method: operation.clone(),
        rpc: operation,
        peer: Peer {
            spiffe_id: None,
            workload: Some("client".to_owned()),
        },
        subject: caller.as_ref().map(Caller::subject),
        request: serde_json::Value::Object(params),
        context: RequestContext {
            client_ip: info.client_ip.map(|ip| ip.to_string()),
            user_agent: info.user_agent.clone(),
            request_id: info.request_id.clone(),
            ..RequestContext::now()
        },
    };
    match api.policy().authorize(&input) {
        Ok(decision) if decision.allow => Ok(caller),
        Ok(decision) => {
            tracing::info!(
                route = input.rpc,
                reason = decision.reason,
                request_id = info.request_id,
                "route denied by policy"
            );
            if let Some(hook) = api.deny_hook() {
                hook(&input, &decision);
            }
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                decision.reason.clone(),
                format!("not allowed: {}", decision.reason.replace('_', " ")),
            ))
        }
        Err(e) => {
            tracing::error!(route = input.rpc, error = %e, "route policy evaluation failed");
            Err(ApiError::internal())
        }
    }
}

/// 401 for a refused token, 503 when it could not be checked.
fn token_error(e: TokenError) -> ApiError {
    if e.is_rejection() {
        ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
    } else {
        tracing::warn!(error = %e, "cannot verify an access token");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.code(),
            "the access token cannot be checked right now; try again shortly",
        )
    }
}

// ---------------------------------------------------------------------------
// Sessions ended through this gateway

/// How long the gateway remembers a session it ended itself: longer than
/// the verifier's session cache, after which the auth service answers.
const REVOKED_MEMORY: Duration = Duration::from_secs(10);

/// Sessions this gateway has just ended (logout, revoke, account deletion),
/// refused at once rather than after the session cache expires.
#[derive(Debug, Default)]
pub(crate) struct RecentlyEnded {
    sessions: Mutex<HashMap<String, Instant>>,
}

impl RecentlyEnded {
    pub(crate) fn insert(&self, sid: &str) {
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|_, at| now.duration_since(*at) < REVOKED_MEMORY);
        sessions.insert(sid.to_owned(), now);
    }

    pub(crate) fn contains(&self, sid: &str) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions
            .get(sid)
            .is_some_and(|at| at.elapsed() < REVOKED_MEMORY)
    }
}

// ---------------------------------------------------------------------------
// Forwarding

/// A gRPC request carrying `message`, the client facts (`x-client-ip`,
/// `x-client-user-agent`, `x-request-id`) and, for a signed-in caller, its
/// access token (`authorization: Bearer`).
pub fn grpc_request<T>(
    message: T,
    info: &RequestInfo,
    caller: Option<&Caller>,
    timeout: Duration,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    let metadata = request.metadata_mut();
    if let Some(caller) = caller
        && let Ok(value) = MetadataValue::try_from(format!("Bearer {}", caller.token))
    {
        metadata.insert("authorization", value);
    }
    if let Some(ip) = info.client_ip
        && let Ok(value) = MetadataValue::try_from(ip.to_string())
    {
        metadata.insert("x-client-ip", value);
    }
    if let Some(ua) = &info.user_agent
        && let Ok(value) = MetadataValue::try_from(ua.as_str())
    {
        metadata.insert("x-client-user-agent", value);
    }
    if let Ok(value) = MetadataValue::try_from(info.request_id.as_str()) {
        metadata.insert(REQUEST_ID_HEADER, value);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let net = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(net.contains("10.1.200.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.1.0.9".parse().expect("ip")));
        let all = Cidr::parse("0.0.0.0/0").expect("cidr");
        assert!(all.contains("203.0.113.1".parse().expect("ip")));
        assert!(!all.contains("::1".parse().expect("ip")));
        let v6 = Cidr::parse("fd00::/8").expect("cidr");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("fe80::1".parse().expect("ip")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn cookie_octets() {
        assert!(is_cookie_value("eyJhbGciOi.eyJzdWIi.sig-_"));
        assert!(!is_cookie_value("a b"));
        assert!(!is_cookie_value("a;b"));
        assert!(!is_cookie_value("a,b"));
        assert!(!is_cookie_value(""));
    }
}
