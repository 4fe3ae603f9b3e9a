//! Who people are, end to end over HTTPS through `trustmesh up`: the whole
//! journey (register → TOTP → confirm → login → MFA → protected route →
//! refresh → logout → old tokens refused) and every refusal with its status
//! code, on the embedded SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use trustmesh_tests::rest::{
    Api, PASSWORD, bearer, expect, json_of, login, now, register, totp_code, unique_email,
};
use trustmesh_tests::{Mesh, PostgresDb, https_request};

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Forged access tokens, each of which the gateway must refuse.
fn forgeries(api: &Api, valid: &str) -> Vec<(&'static str, String)> {
    let claims_b64 = valid.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims_b64)
            .unwrap(),
    )
    .unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(valid.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    let kid = header["kid"].as_str().unwrap().to_owned();
    let jwks = api.call("GET", "/.well-known/jwks.json", &[], None);
    assert_eq!(jwks.status, 200, "{jwks:?}");
    let jwks: Value = serde_json::from_str(&jwks.body).unwrap();
    let public_x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
    let public_raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&public_x)
        .unwrap();

    let unsigned = |header: Value, claims: &Value| {
        format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    };
    let hs256 = |secret: &[u8], claims: &Value| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
    };
    let with = |key: &str, value: Value| {
        let mut c = claims.clone();
        c[key] = value;
        c
    };
    let resigned_payload = |c: &Value| {
        // Same header and signature, altered claims: the signature no longer fits.
        let parts: Vec<&str> = valid.split('.').collect();
        format!(
            "{}.{}.{}",
            parts[0],
            b64(c.to_string().as_bytes()),
            parts[2]
        )
    };
    vec![
        (
            "alg none",
            format!(
                "{}.",
                unsigned(json!({"alg": "none", "typ": "JWT", "kid": kid}), &claims)
            ),
        ),
        ("HS256 with the public key", hs256(&public_raw, &claims)),
        (
            "HS256 with the public key text",
            hs256(public_x.as_bytes(), &claims),
        ),
        (
            "wrong audience",
            resigned_payload(&with("aud", json!("someone-else"))),
        ),
        (
            "expired",
            resigned_payload(&with("exp", json!(1_600_000_000))),
        ),
        ("unknown kid", {
            let parts: Vec<&str> = valid.split('.').collect();
            let mut h = header.clone();
            h["kid"] = json!("no-such-key");
            format!(
                "{}.{}.{}",
                b64(h.to_string().as_bytes()),
                parts[1],
                parts[2]
            )
        }),
        (
            "role escalated",
            resigned_payload(&with("role", json!("admin"))),
        ),
    ]
}

fn journey(mesh: &Mesh) {
    let api = Api::new(mesh);
    let email = format!("Alice.{}@Example.COM", uuid::Uuid::new_v4().simple());

    // Weak, common and personal passwords are refused with the rule.
    for (password, code) in [
        ("short", "password_too_short"),
        ("password1234", "password_breached"),
        (
            &*format!("{}-and-more-text", email.split('@').next().unwrap()),
            "password_contains_email",
        ),
    ] {
        let r = api.post(
            "/api/v1/auth/register",
            json!({"email": email, "password": password}),
        );
        expect(&r, 422, code);
    }
    let r = api.post(
        "/api/v1/auth/register",
        json!({"email": "not-an-email", "password": PASSWORD}),
    );
    expect(&r, 422, "invalid_email");
    let r = api.call("POST", "/api/v1/auth/register", &[], None);
    assert_eq!(r.status, 400, "{r:?}");

    // Register; the account cannot log in before confirmation.
    let reg = api.post(
        "/api/v1/auth/register",
        json!({"email": email, "password": PASSWORD}),
    );
    assert_eq!(reg.status, 201, "{reg:?}");
    let reg = json_of(&reg);
    let uri = reg["otpauth_uri"].as_str().unwrap().to_owned();
    let dup = api.post(
        "/api/v1/auth/register",
        json!({"email": email.to_uppercase(), "password": PASSWORD}),
    );
    expect(&dup, 409, "email_taken");
    let early = api.post(
        "/api/v1/auth/login",
        json!({"email": email, "password": PASSWORD}),
    );
    expect(&early, 403, "account_not_confirmed");
    let wrong = api.post(
        "/api/v1/auth/register/confirm",
        json!({"enrollment_token": reg["enrollment_token"], "code": "000000"}),
    );
    expect(&wrong, 401, "invalid_code");
    let confirmed = api.post(
        "/api/v1/auth/register/confirm",
        json!({"enrollment_token": reg["enrollment_token"], "code": totp_code(&uri, now())}),
    );
    assert_eq!(confirmed.status, 200, "{confirmed:?}");
    let recovery: Vec<String> = json_of(&confirmed)["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);

    // Login: wrong code refused, then the next step's code opens a session;
    // the same code again is a replay.
    let step1 = api.post(
        "/api/v1/auth/login",
        json!({"email": email, "password": PASSWORD}),
    );
    let ticket = json_of(&step1)["mfa_ticket"].clone();
    let bad = api.post(
        "/api/v1/auth/login/mfa",
        json!({"mfa_ticket": ticket, "code": "123456"}),
    );
    expect(&bad, 401, "invalid_code");
    let code = totp_code(&uri, now() + 30);
    let session = api.post(
        "/api/v1/auth/login/mfa",
        json!({"mfa_ticket": ticket, "code": code}),
    );
    assert_eq!(session.status, 200, "{session:?}");
    let session = json_of(&session);
    let access = session["access_token"].as_str().unwrap().to_owned();
    let refresh = session["refresh_token"].as_str().unwrap().to_owned();
    let step1 = api.post(
        "/api/v1/auth/login",
        json!({"email": email, "password": PASSWORD}),
    );
    let replay = api.post(
        "/api/v1/auth/login/mfa",
        json!({"mfa_ticket": json_of(&step1)["mfa_ticket"], "code": code}),
    );
    expect(&replay, 401, "code_replayed");

    // A protected route with the access token.
    let me = api.get_with("/api/v1/users/me", &access);
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(
        json_of(&me)["email"].as_str().unwrap(),
        email.to_lowercase()
    );
    assert_eq!(json_of(&me)["role"], "user");

    // Forged tokens are refused.
    for (what, token) in forgeries(&api, &access) {
        let r = api.get_with("/api/v1/users/me", &token);
        assert_eq!(r.status, 401, "{what}: {r:?}");
    }

    // A user cannot change roles.
    let escalate = api.call(
        "POST",
        &format!(
            "/api/v1/users/{}/role",
            json_of(&me)["user_id"].as_str().unwrap()
        ),
        &[("authorization", &format!("Bearer {access}"))],
        Some(json!({"role": "admin"})),
    );
    expect(&escalate, 403, "role_required");

    // Refresh rotates; presenting the spent token revokes the session.
    let rotated = api.post("/api/v1/auth/refresh", json!({"refresh_token": refresh}));
    assert_eq!(rotated.status, 200, "{rotated:?}");
    let rotated = json_of(&rotated);
    let new_refresh = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(new_refresh, refresh);
    let reused = api.post("/api/v1/auth/refresh", json!({"refresh_token": refresh}));
    expect(&reused, 401, "refresh_reused");
    let after_theft = api.post(
        "/api/v1/auth/refresh",
        json!({"refresh_token": new_refresh}),
    );
    expect(&after_theft, 401, "");

    // A recovery code works once; logout ends that session and its tokens.
    let second = login(&api, &email, json!({"recovery_code": recovery[0]}));
    let access2 = second["access_token"].as_str().unwrap().to_owned();
    let refresh2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(api.get_with("/api/v1/users/me", &access2).status, 200);
    let step1 = api.post(
        "/api/v1/auth/login",
        json!({"email": email, "password": PASSWORD}),
    );
    let again = api.post(
        "/api/v1/auth/login/mfa",
        json!({"mfa_ticket": json_of(&step1)["mfa_ticket"], "recovery_code": recovery[0]}),
    );
    expect(&again, 401, "invalid_code");
    let bearer2 = format!("Bearer {access2}");
    let out = api.call(
        "POST",
        "/api/v1/auth/logout",
        &[("authorization", &bearer2)],
        None,
    );
    assert!(out.status == 200 || out.status == 204, "{out:?}");
    std::thread::sleep(Duration::from_millis(2500));
    let refused = api.get_with("/api/v1/users/me", &access2);
    expect(&refused, 401, "");
    let refused = api.post("/api/v1/auth/refresh", json!({"refresh_token": refresh2}));
    expect(&refused, 401, "");

    // A browser session: cookies, and CSRF required on state changes.
    let other = unique_email("bob");
    let bob = register(&api, &other);
    let step1 = api.post(
        "/api/v1/auth/login",
        json!({"email": other, "password": PASSWORD}),
    );
    let web = api.call(
        "POST",
        "/api/v1/auth/login/mfa",
        &[("x-trustmesh-client", "web")],
        Some(json!({"mfa_ticket": json_of(&step1)["mfa_ticket"], "code": totp_code(&bob.otpauth_uri, now() + 30)})),
    );
    assert_eq!(web.status, 200, "{web:?}");
    assert!(
        json_of(&web).get("access_token").is_none(),
        "browsers get cookies, not tokens"
    );
    let cookies: Vec<String> = web
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    for name in ["tm_access", "tm_refresh"] {
        let cookie = cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap();
        for attribute in ["HttpOnly", "Secure", "SameSite=Strict"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
    }
    let jar: Vec<String> = cookies
        .iter()
        .map(|c| c.split(';').next().unwrap().to_owned())
        .collect();
    let jar = jar.join("; ");
    let csrf = json_of(&web)["csrf_token"].as_str().unwrap().to_owned();
    let me = api.call("GET", "/api/v1/users/me", &[("cookie", &jar)], None);
    assert_eq!(me.status, 200, "{me:?}");
    let no_csrf = api.call(
        "PATCH",
        "/api/v1/users/me",
        &[("cookie", &jar)],
        Some(json!({"display_name": "Bob"})),
    );
    expect(&no_csrf, 403, "csrf_required");
    let with_csrf = api.call(
        "PATCH",
        "/api/v1/users/me",
        &[("cookie", &jar), ("x-csrf-token", &csrf)],
        Some(json!({"display_name": "Bob"})),
    );
    assert_eq!(with_csrf.status, 200, "{with_csrf:?}");
    assert_eq!(json_of(&with_csrf)["display_name"], "Bob");
    let _ = bob.user_id;
    let _ = bob.recovery_codes;

    // Brute force: five failures, then the account is locked (423).
    for attempt in 1..=5 {
        let r = api.post(
            "/api/v1/auth/login",
            json!({"email": other, "password": "wrong password !!"}),
        );
        expect(&r, 401, "invalid_credentials");
        let _ = attempt;
    }
    let locked = api.post(
        "/api/v1/auth/login",
        json!({"email": other, "password": PASSWORD}),
    );
    expect(&locked, 423, "account_locked");
    assert!(locked.headers.contains_key("retry-after"), "{locked:?}");

    // Unknown email and wrong password look the same.
    let unknown = api.post(
        "/api/v1/auth/login",
        json!({"email": "nobody@example.com", "password": PASSWORD}),
    );
    expect(&unknown, 401, "invalid_credentials");
}

fn concurrent_registrations(mesh: &Mesh) {
    let api = Api::new(mesh);
    let email = unique_email("race");
    let statuses: Vec<u16> = api.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (addr, ca, email) = (api.addr(), api.ca(), email.clone());
            tasks.push(tokio::spawn(async move {
                let body = json!({"email": email, "password": PASSWORD}).to_string();
                https_request(addr, &ca, "POST", "/api/v1/auth/register", &[], Some(&body))
                    .await
                    .unwrap()
                    .status
            }));
        }
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
}

#[test]
fn journey_on_sqlite() {
    let mesh = Mesh::start(&[]);
    journey(&mesh);
    concurrent_registrations(&mesh);
}

#[test]
fn journey_on_postgres() {
    let db = PostgresDb::create();
    let mesh = Mesh::start_with_env(&[], &[("DATABASE_URL", &db.url)]);
    journey(&mesh);
    concurrent_registrations(&mesh);
    drop(mesh);
}

#[test]
fn the_operator_makes_the_first_admin_who_manages_roles() {
    let mesh = Mesh::start(&[]);
    operator_and_roles(&mesh);
}

#[test]
fn the_operator_makes_the_first_admin_who_manages_roles_on_postgres() {
    let db = PostgresDb::create();
    let mesh = Mesh::start_with_env(&[], &[("DATABASE_URL", &db.url)]);
    operator_and_roles(&mesh);
    drop(mesh);
}

/// The first admin, role changes (each ends the user's sessions), email
/// change and account deletion, through the gateway.
fn operator_and_roles(mesh: &Mesh) {
    let api = Api::new(mesh);
    let alice_email = unique_email("alice");
    let bob_email = unique_email("bob");
    let alice = register(&api, &alice_email);
    let bob = register(&api, &bob_email);

    let out = mesh.grant_role(&alice_email, "admin");
    assert!(out.contains("is now admin"), "{out}");

    let admin = login(
        &api,
        &alice_email,
        json!({"recovery_code": alice.recovery_codes[0]}),
    );
    assert_eq!(admin["role"], "admin", "{admin}");
    let admin_token = admin["access_token"].as_str().unwrap().to_owned();
    let user = login(
        &api,
        &bob_email,
        json!({"recovery_code": bob.recovery_codes[0]}),
    );
    let user_token = user["access_token"].as_str().unwrap().to_owned();
    let user_refresh = user["refresh_token"].as_str().unwrap().to_owned();
    // Bob's session is in use (and in the verifiers' session caches).
    assert_eq!(api.get_with("/api/v1/users/me", &user_token).status, 200);

    // The admin promotes Bob; Bob cannot promote himself.
    let promote = api.call(
        "POST",
        &format!("/api/v1/users/{}/role", bob.user_id),
        &[("authorization", &bearer(&admin_token))],
        Some(json!({"role": "manager"})),
    );
    assert_eq!(promote.status, 200, "{promote:?}");
    assert_eq!(json_of(&promote)["role"], "manager");
    // The change ends Bob's sessions (no token keeps the old role, within
    // the verifiers' 2 s session cache); he signs in again as a manager.
    std::thread::sleep(Duration::from_millis(2500));
    expect(&api.get_with("/api/v1/users/me", &user_token), 401, "");
    expect(
        &api.post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": user_refresh}),
        ),
        401,
        "",
    );
    let user = login(
        &api,
        &bob_email,
        json!({"recovery_code": bob.recovery_codes[1]}),
    );
    assert_eq!(user["role"], "manager", "{user}");
    let user_token = user["access_token"].as_str().unwrap().to_owned();
    let self_promote = api.call(
        "POST",
        &format!("/api/v1/users/{}/role", bob.user_id),
        &[("authorization", &bearer(&user_token))],
        Some(json!({"role": "admin"})),
    );
    expect(&self_promote, 403, "role_required");
    let invalid = api.call(
        "POST",
        &format!("/api/v1/users/{}/role", bob.user_id),
        &[("authorization", &bearer(&admin_token))],
        Some(json!({"role": "emperor"})),
    );
    assert_eq!(invalid.status, 422, "{invalid:?}");

    // The last admin cannot step down.
    let demote = api.call(
        "POST",
        &format!("/api/v1/users/{}/role", alice.user_id),
        &[("authorization", &bearer(&admin_token))],
        Some(json!({"role": "user"})),
    );
    expect(&demote, 409, "last_admin");

    // Only admins list users.
    let list = api.get_with("/api/v1/users", &admin_token);
    assert_eq!(list.status, 200, "{list:?}");
    assert!(list.body.contains(&bob_email), "{}", list.body);
    expect(
        &api.get_with("/api/v1/users", &user_token),
        403,
        "role_required",
    );

    // Changing the email needs the password again; then the new one logs in.
    let new_email = unique_email("robert");
    let patch = |body: Value| {
        api.call(
            "PATCH",
            "/api/v1/users/me",
            &[("authorization", &bearer(&user_token))],
            Some(body),
        )
    };
    expect(
        &patch(json!({"email": new_email})),
        422,
        "password_required",
    );
    expect(
        &patch(json!({"email": new_email, "current_password": "not the password at all"})),
        403,
        "wrong_password",
    );
    // The wrong password counts as a failed login with Bob's address (the
    // user service passes the client's facts on to auth).
    let failures = format!(
        "/api/v1/audit/events?user={}&action=LOGIN_FAILED",
        bob.user_id
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let page = api.get_with(&failures, &admin_token);
        assert_eq!(page.status, 200, "{page:?}");
        let with_address = json_of(&page)["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["details"]["reason"] == "wrong_password" && e["client_ip"] == "127.0.0.1");
        if with_address {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no LOGIN_FAILED with the client's address: {}",
            page.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    expect(
        &patch(json!({"email": alice_email, "current_password": PASSWORD})),
        409,
        "email_taken",
    );
    let changed = patch(json!({"email": new_email.to_uppercase(), "current_password": PASSWORD}));
    assert_eq!(changed.status, 200, "{changed:?}");
    assert_eq!(json_of(&changed)["email"], new_email);
    let old = api.post(
        "/api/v1/auth/login",
        json!({"email": bob_email, "password": PASSWORD}),
    );
    expect(&old, 401, "invalid_credentials");
    let _ = login(
        &api,
        &new_email,
        json!({"recovery_code": bob.recovery_codes[2]}),
    );
    let bob_email = new_email;

    // A stolen access token cannot be used to guess the password: wrong
    // passwords on sensitive changes count toward the lockout.
    let carol_email = unique_email("carol");
    let carol = register(&api, &carol_email);
    let carol_session = login(
        &api,
        &carol_email,
        json!({"recovery_code": carol.recovery_codes[0]}),
    );
    let carol_token = carol_session["access_token"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        let guess = api.call(
            "DELETE",
            "/api/v1/users/me",
            &[("authorization", &bearer(&carol_token))],
            Some(json!({"password": "a guess that is wrong"})),
        );
        assert_eq!(guess.status, 403, "{guess:?}");
    }
    let locked = api.call(
        "DELETE",
        "/api/v1/users/me",
        &[("authorization", &bearer(&carol_token))],
        Some(json!({"password": PASSWORD})),
    );
    expect(&locked, 423, "account_locked");

    // Deleting an account needs the password; then its tokens are refused.
    let wrong = api.call(
        "DELETE",
        "/api/v1/users/me",
        &[("authorization", &bearer(&user_token))],
        Some(json!({"password": "not the password at all"})),
    );
    assert_eq!(wrong.status, 403, "{wrong:?}");
    let deleted = api.call(
        "DELETE",
        "/api/v1/users/me",
        &[("authorization", &bearer(&user_token))],
        Some(json!({"password": PASSWORD})),
    );
    assert!(
        deleted.status == 200 || deleted.status == 204,
        "{deleted:?}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    expect(&api.get_with("/api/v1/users/me", &user_token), 401, "");
    let relogin = api.post(
        "/api/v1/auth/login",
        json!({"email": bob_email, "password": PASSWORD}),
    );
    expect(&relogin, 401, "invalid_credentials");
}

/// Every hop rotates: with 4 s SVIDs, a signed-in user calling a protected
/// route in a loop for three TTLs (gateway → user → auth, all over mTLS with
/// SVIDs from the Workload API that rotate at half-life) sees no failure.
#[test]
fn rotation_across_the_mesh_fails_no_request() {
    let mesh = Mesh::start(&["--svid-ttl", "4s"]);
    let api = Api::new(&mesh);
    let email = unique_email("rotor");
    let reg = register(&api, &email);
    let session = login(
        &api,
        &email,
        json!({"recovery_code": reg.recovery_codes[0]}),
    );
    let mut token = session["access_token"].as_str().unwrap().to_owned();
    let mut refresh = session["refresh_token"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let (mut calls, mut failures) = (0, Vec::new());
    while started.elapsed() < Duration::from_secs(12) {
        let me = api.get_with("/api/v1/users/me", &token);
        calls += 1;
        if me.status != 200 {
            failures.push(format!(
                "{:?}: {} {}",
                started.elapsed(),
                me.status,
                me.body
            ));
        }
        if calls % 20 == 0 {
            let next = api.post("/api/v1/auth/refresh", json!({"refresh_token": refresh}));
            calls += 1;
            if next.status == 200 {
                let next = json_of(&next);
                token = next["access_token"].as_str().unwrap().to_owned();
                refresh = next["refresh_token"].as_str().unwrap().to_owned();
            } else {
                failures.push(format!("refresh: {} {}", next.status, next.body));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(calls > 50, "only {calls} calls");
    let log = mesh.log();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"ERROR\"") || l.contains("\"WARN\""))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed, first: {:?}\nwarnings and errors logged:\n{}",
        failures.len(),
        failures.iter().take(3).collect::<Vec<_>>(),
        problems.join("\n")
    );
}
