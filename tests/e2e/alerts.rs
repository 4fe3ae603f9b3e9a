//! Suspicious-login alerts end to end: `trustmesh up` with a real SMTP
//! server (aiosmtpd, STARTTLS with a test CA) that is down when the alerts
//! are raised — so the mail waits in the queue and is retried — then up.
//! Checks each rule (consecutive failures, new IP, new device, country
//! change with the MaxMind test database), the mail's content (French
//! subject, IP, country, time, device, the advice; no secret), the copy to
//! the security address and the report to the admins.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trustmesh_tests::rest::{Api, PASSWORD, json_of, now, register, totp_code, unique_email};
use trustmesh_tests::{Mesh, repo_root};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl must be installed (scripts/services.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a certificate for 127.0.0.1 signed by it.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Trustmesh test SMTP CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "smtp.key",
            "-out",
            "smtp.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "smtp.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "smtp.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// aiosmtpd with STARTTLS required, storing mail in a maildir.
struct SmtpServer {
    child: Child,
}

impl SmtpServer {
    fn start(dir: &Path, port: u16) -> SmtpServer {
        let child = Command::new("python3")
            .current_dir(dir)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["--tlscert", "smtp.pem", "--tlskey", "smtp.key"])
            .args(["-c", "aiosmtpd.handlers.Mailbox", "maildir"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (scripts/services.sh installs it)");
        SmtpServer { child }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The messages of the maildir, decoded by Python's `email` package.
fn messages(dir: &Path) -> Vec<Value> {
    let script = r#"
import email, email.policy, json, mailbox, sys
out = []
for msg in mailbox.Maildir(sys.argv[1], factory=None):
    m = email.message_from_bytes(bytes(msg), policy=email.policy.default)
    out.append({"subject": str(m["subject"]), "to": str(m["to"]),
                "body": m.get_body(("plain",)).get_content()})
print(json.dumps(out))
"#;
    if !dir.join("maildir").exists() {
        return Vec::new();
    }
    let out = Command::new("python3")
        .args(["-c", script, dir.join("maildir").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn login_from(api: &Api, email: &str, password: &str, ip: &str, agent: &str) -> u16 {
    api.call(
        "POST",
        "/api/v1/auth/login",
        &[("x-forwarded-for", ip), ("user-agent", agent)],
        Some(json!({"email": email, "password": password})),
    )
    .status
}

fn full_login(api: &Api, email: &str, second_factor: Value, ip: &str, agent: &str) {
    let first = api.call(
        "POST",
        "/api/v1/auth/login",
        &[("x-forwarded-for", ip), ("user-agent", agent)],
        Some(json!({"email": email, "password": PASSWORD})),
    );
    assert_eq!(first.status, 200, "{first:?}");
    let mut body = second_factor;
    body["mfa_ticket"] = json_of(&first)["mfa_ticket"].clone();
    let second = api.call(
        "POST",
        "/api/v1/auth/login/mfa",
        &[("x-forwarded-for", ip), ("user-agent", agent)],
        Some(body),
    );
    assert_eq!(second.status, 200, "{second:?}");
}

#[test]
fn suspicious_logins_are_mailed_with_retries() {
    let tmp = tempfile::tempdir().unwrap();
    certificates(tmp.path());
    let port = free_port();
    let smtp_url = format!("smtp://127.0.0.1:{port}?tls=starttls");
    let ca = tmp.path().join("ca.pem");
    let geoip = repo_root().join("tests/data/GeoLite2-Country-Test.mmdb");
    let mesh = Mesh::start_with_env(
        &[],
        &[
            ("TRUSTMESH_SMTP_URL", &smtp_url),
            ("TRUSTMESH_SMTP_CA", ca.to_str().unwrap()),
            ("TRUSTMESH_SMTP_FROM", "Trustmesh <security@trustmesh.test>"),
            ("TRUSTMESH_GEOIP_DB", geoip.to_str().unwrap()),
            ("TRUSTMESH_TRUSTED_PROXIES", "127.0.0.1/32"),
            ("TRUSTMESH_ALERT_COPIES", "soc@trustmesh.test"),
            ("TRUSTMESH_ALERT_ADMINS", "admin@trustmesh.test"),
            ("TRUSTMESH_ALERT_REPORT_EVERY", "4s"),
        ],
    );
    let api = Api::new(&mesh);
    let email = unique_email("alice");
    let alice = register(&api, &email);
    // The enrolment spent the current TOTP step: the next one, then a
    // recovery code.
    let next_code = totp_code(&alice.otpauth_uri, now() + 30);

    // A first login (from GB, Firefox) only teaches the baseline.
    full_login(
        &api,
        &email,
        json!({"code": next_code}),
        "81.2.69.142",
        "Firefox/120",
    );
    // Three wrong passwords in a row from Sweden.
    for _ in 0..3 {
        assert_eq!(
            login_from(
                &api,
                &email,
                "wrong password guess",
                "89.160.20.112",
                "curl/8"
            ),
            401
        );
    }
    // A login from the US with another browser: new IP, new device, new country.
    let recovery = json!({"recovery_code": alice.recovery_codes[0]});
    full_login(&api, &email, recovery, "216.160.83.56", "Chrome/131");

    // The SMTP server was down so far: the alerts wait, then go out.
    std::thread::sleep(Duration::from_secs(2));
    assert!(messages(tmp.path()).is_empty());
    let _smtp = SmtpServer::start(tmp.path(), port);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mail = loop {
        let mail = messages(tmp.path());
        let alerts = mail
            .iter()
            .filter(|m| m["to"].as_str().unwrap().contains(&email))
            .count();
        let report = mail.iter().any(|m| {
            m["to"] == "admin@trustmesh.test"
                && m["body"].as_str().unwrap().contains("SUSPICIOUS_LOGIN")
        });
        if alerts >= 2 && report {
            break mail;
        }
        assert!(
            Instant::now() < deadline,
            "mail never arrived: {mail:#?}\n{}",
            mesh.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };

    let alerts: Vec<&Value> = mail
        .iter()
        .filter(|m| m["to"].as_str().unwrap().contains(&email))
        .collect();
    for alert in &alerts {
        assert_eq!(
            alert["subject"],
            "Alerte de connexion suspecte à votre compte"
        );
        assert!(
            alert["to"].as_str().unwrap().contains("soc@trustmesh.test"),
            "{alert}"
        );
        let body = alert["body"].as_str().unwrap();
        assert!(body.contains("changez votre mot de passe"), "{body}");
        assert!(body.contains("Date et heure (UTC) : 20"), "{body}");
        for secret in [PASSWORD, "wrong password guess"] {
            assert!(!body.contains(secret), "a password in the mail: {body}");
        }
        for code in &alice.recovery_codes {
            assert!(!body.contains(code.as_str()));
        }
    }
    let failures = alerts
        .iter()
        .find(|m| {
            m["body"]
                .as_str()
                .unwrap()
                .contains("3 échecs de connexion consécutifs")
        })
        .unwrap_or_else(|| panic!("no failures alert: {alerts:#?}"));
    let failures = failures["body"].as_str().unwrap();
    assert!(
        failures.contains("Adresse IP : 89.160.20.112"),
        "{failures}"
    );
    assert!(failures.contains("Pays : SE"), "{failures}");
    let moved = alerts
        .iter()
        .find(|m| m["body"].as_str().unwrap().contains("autre pays"))
        .unwrap_or_else(|| panic!("no country-change alert: {alerts:#?}"));
    let moved = moved["body"].as_str().unwrap();
    for needle in [
        "adresse IP inconnue",
        "nouvel appareil",
        "Adresse IP : 216.160.83.56",
        "Pays : US",
        "Appareil / navigateur : Chrome/131",
    ] {
        assert!(moved.contains(needle), "{needle} missing in {moved}");
    }
    // The baseline login raised nothing; no alert was sent twice.
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    for report in mail.iter().filter(|m| m["to"] == "admin@trustmesh.test") {
        assert_eq!(
            report["subject"],
            "Rapport hebdomadaire des tentatives suspectes"
        );
    }
}
