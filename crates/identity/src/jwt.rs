//! JWT-SVIDs: the ES256 signing key (`<data_dir>/ca/jwt.key`), signing,
//! validation and the JWKS bundle.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use spiffe::TrustDomain;

use crate::IdentityError;
use crate::ca::{generate_p256, load_p256_key};
use crate::util::{atomic_write, parse_workload_id};

/// Lifetime of a JWT-SVID (SPIRE's default).
pub(crate) const JWT_SVID_TTL: Duration = Duration::from_secs(5 * 60);

/// The JWT-SVID signing key, with its key ID and JWKS document.
pub(crate) struct JwtKey {
    pub(crate) kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// `{"keys":[...]}` with this key.
    pub(crate) jwks_json: Vec<u8>,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    aud: &'a [String],
    exp: u64,
    iat: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtKey {
    /// Loads the key at `path`, or creates it (mode 0600).
    pub(crate) fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        let key = if path.exists() {
            load_p256_key(path)?
        } else {
            let key = generate_p256()?;
            atomic_write(path, key.serialize_pem().as_bytes(), 0o600)?;
            tracing::info!(path = %path.display(), "created a new JWT-SVID signing key");
            key
        };
        let encoding = EncodingKey::from_ec_der(key.serialized_der());
        let decoding = DecodingKey::from_ec_der(key.public_key_raw());
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256)
            .map_err(|e| IdentityError::Jwt(format!("cannot build the JWK: {e}")))?;
        // A stable key ID: the RFC 7638 thumbprint of the public key.
        let kid = jwk.thumbprint(ThumbprintHash::SHA256);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Other("jwt-svid".to_owned()));
        let jwks_json = serde_json::to_vec(&JwkSet { keys: vec![jwk] })
            .map_err(|e| IdentityError::Jwt(format!("cannot encode the JWKS: {e}")))?;
        Ok(Self {
            kid,
            encoding,
            decoding,
            jwks_json,
        })
    }

    /// Signs a JWT-SVID for `sub` and `audience`, valid for [`JWT_SVID_TTL`].
    pub(crate) fn sign(&self, sub: &str, audience: &[String]) -> Result<String, IdentityError> {
        let iat = unix_now();
        let claims = Claims {
            sub,
            aud: audience,
            exp: iat + JWT_SVID_TTL.as_secs(),
            iat,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".to_owned());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| IdentityError::Jwt(format!("cannot sign a JWT-SVID: {e}")))
    }

    /// Validates a JWT-SVID signed by this key for `audience`; returns its
    /// SPIFFE ID and all its claims. The error is a message for the caller.
    pub(crate) fn validate(
        &self,
        token: &str,
        audience: &str,
        td: &TrustDomain,
    ) -> Result<(String, serde_json::Map<String, serde_json::Value>), String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed JWT-SVID: {e}"))?;
        if header.alg != Algorithm::ES256 {
            return Err(format!("unsupported JWT-SVID algorithm {:?}", header.alg));
        }
        match header.kid.as_deref() {
            Some(kid) if kid == self.kid => {}
            Some(kid) => return Err(format!("JWT-SVID signed by an unknown key {kid:?}")),
            None => return Err("JWT-SVID has no key ID (kid)".to_owned()),
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.decoding,
            &validation,
        )
        .map_err(|e| format!("invalid JWT-SVID: {e}"))?;
        let sub = data
            .claims
            .get("sub")
            .and_then(|v| v.as_str())
            .ok_or("JWT-SVID has no string sub claim")?;
        let id = parse_workload_id(sub, td).map_err(|e| e.to_string())?;
        Ok((id.to_string(), data.claims))
    }
}

/// Converts JSON claims to a protobuf `Struct`.
pub(crate) fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}
