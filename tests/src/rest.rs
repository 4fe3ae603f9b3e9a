//! A REST client of one mesh's gateway and the steps every end-to-end
//! suite needs: register with TOTP, log in with a second factor.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::{HttpsResponse, Mesh, https_request};

/// A signed-in user: its id and access token.
pub struct SignedIn {
    /// The user's id.
    pub id: String,
    /// An access token of a session that passed MFA.
    pub token: String,
}

/// A new user named after `name`, given `role` by the operator (if any),
/// signed in with a recovery code.
pub fn signed_in(api: &Api, mesh: &Mesh, name: &str, role: Option<&str>) -> SignedIn {
    let address = unique_email(name);
    let registered = register(api, &address);
    if let Some(role) = role {
        mesh.grant_role(&address, role);
    }
    let session = login(
        api,
        &address,
        json!({"recovery_code": registered.recovery_codes[0]}),
    );
    SignedIn {
        id: registered.user_id,
        token: session["access_token"]
            .as_str()
            .expect("an access token")
            .to_owned(),
    }
}

/// An email address no other test uses, starting with `name`.
pub fn unique_email(name: &str) -> String {
    format!("{name}.{}@example.com", uuid::Uuid::new_v4().simple())
}

/// A client of one mesh's gateway.
pub struct Api {
    addr: SocketAddr,
    ca: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Api {
    /// A client of `mesh`'s gateway (trusting its local CA).
    pub fn new(mesh: &Mesh) -> Self {
        Self {
            addr: mesh.gateway_addr(),
            ca: mesh.gateway_ca(),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// Sends `method path` with `headers` and an optional JSON body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> HttpsResponse {
        let body = body.map(|b| b.to_string());
        self.rt
            .block_on(https_request(
                self.addr,
                &self.ca,
                method,
                path,
                headers,
                body.as_deref(),
            ))
            .unwrap()
    }

    /// Runs `future` on the client's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    /// The gateway's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gateway's CA certificate file.
    pub fn ca(&self) -> PathBuf {
        self.ca.clone()
    }

    /// POSTs a JSON body.
    pub fn post(&self, path: &str, body: Value) -> HttpsResponse {
        self.call("POST", path, &[], Some(body))
    }

    /// GETs with a bearer token.
    pub fn get_with(&self, path: &str, token: &str) -> HttpsResponse {
        let bearer = format!("Bearer {token}");
        self.call("GET", path, &[("authorization", &bearer)], None)
    }
}

/// The response body as JSON (`null` if it is not).
pub fn json_of(response: &HttpsResponse) -> Value {
    serde_json::from_str(&response.body).unwrap_or(Value::Null)
}

/// The `error.code` of an error response.
pub fn error_code(response: &HttpsResponse) -> String {
    json_of(response)["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Asserts the status and, unless empty, the error code.
#[track_caller]
pub fn expect(response: &HttpsResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "{response:?}");
    if !code.is_empty() {
        assert_eq!(error_code(response), code, "{response:?}");
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The TOTP code of the enrolment URI at `unix` time.
pub fn totp_code(otpauth_uri: &str, unix: u64) -> String {
    totp_rs::TOTP::from_url_unchecked(otpauth_uri)
        .unwrap()
        .generate(unix)
}

/// The password every test account uses.
pub const PASSWORD: &str = "correct horse battery staple 7";

/// A confirmed account.
pub struct Registered {
    /// The new account's id.
    pub user_id: String,
    /// The TOTP enrolment URI.
    pub otpauth_uri: String,
    /// The ten recovery codes.
    pub recovery_codes: Vec<String>,
}

/// Registers `email` with [`PASSWORD`] and confirms the TOTP enrolment.
pub fn register(api: &Api, email: &str) -> Registered {
    let reg = api.post(
        "/api/v1/auth/register",
        json!({"email": email, "password": PASSWORD}),
    );
    assert_eq!(reg.status, 201, "{reg:?}");
    let reg = json_of(&reg);
    let uri = reg["otpauth_uri"].as_str().unwrap().to_owned();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(reg["qr_svg"].as_str().unwrap().contains("<svg"));
    let confirmed = api.post(
        "/api/v1/auth/register/confirm",
        json!({"enrollment_token": reg["enrollment_token"], "code": totp_code(&uri, now())}),
    );
    assert_eq!(confirmed.status, 200, "{confirmed:?}");
    let codes: Vec<String> = json_of(&confirmed)["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    Registered {
        user_id: reg["user_id"].as_str().unwrap().to_owned(),
        otpauth_uri: uri,
        recovery_codes: codes,
    }
}

/// Logs in with the TOTP code of the next time step (the current one was
/// spent by the enrolment) or a recovery code.
pub fn login(api: &Api, email: &str, second_factor: Value) -> Value {
    let step1 = api.post(
        "/api/v1/auth/login",
        json!({"email": email, "password": PASSWORD}),
    );
    assert_eq!(step1.status, 200, "{step1:?}");
    let ticket = json_of(&step1)["mfa_ticket"].clone();
    assert!(
        json_of(&step1).get("access_token").is_none(),
        "the password step gives no session"
    );
    let mut body = second_factor;
    body["mfa_ticket"] = ticket;
    let step2 = api.post("/api/v1/auth/login/mfa", body);
    assert_eq!(step2.status, 200, "{step2:?}");
    json_of(&step2)
}

/// `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
