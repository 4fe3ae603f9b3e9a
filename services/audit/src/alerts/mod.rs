//! Suspicious-login detection and alerts.
//!
//! A detector reads the log behind a cursor (so a restart re-reads what it
//! had not finished, and nothing appended is missed) and applies the rules
//! to auth's `LOGIN` and `LOGIN_FAILED` events:
//!
//! - `failures`: N consecutive failed logins (3 to 5, default 3) within a
//!   window (default 2 minutes);
//! - `new_ip`: a successful login from an address not seen before for that
//!   user (the first login only learns);
//! - `new_device`: a successful login with a user agent not seen before;
//! - `country_change`: the country (from a MaxMind `.mmdb`, when one is
//!   configured) differs from the previous successful login's.
//!
//! A detection appends a `SUSPICIOUS_LOGIN` event (its id derived from the
//! triggering event, so a re-read never duplicates it) and queues, in the
//! same transaction as the detector's state and cursor, a mail to the user
//! (and a copy to the security addresses): IP, country, date and time,
//! device, and the advice to change the password; never a secret. A weekly
//! report of suspicious attempts goes to the admins.

pub mod mail;
pub mod smtp;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sqlx::Row;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use trustmesh_events::{Event, action};
use trustmesh_runtime::Shutdown;
use trustmesh_store::Db;

use crate::Ingest;
use crate::log::{AuditLog, LogError};
use crate::record::{COLUMNS, Record};

pub use mail::{MailConfig, MailError, Mailer};

/// The language of alert mail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Language {
    /// French (the default).
    #[default]
    French,
    /// English.
    English,
}

impl std::str::FromStr for Language {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fr" => Ok(Language::French),
            "en" => Ok(Language::English),
            other => Err(format!("unknown alert language {other:?}: use fr or en")),
        }
    }
}

/// What the rules look for and where alerts go.
#[derive(Clone, Debug)]
pub struct AlertConfig {
    /// Consecutive failures that raise an alert (3 to 5).
    pub failures: u32,
    /// The window those failures must fall in.
    pub window: Duration,
    /// A MaxMind country database, for the country-change rule.
    pub geoip: Option<PathBuf>,
    /// The language of the mail.
    pub language: Language,
    /// Addresses that get a copy of every alert.
    pub security_copies: Vec<String>,
    /// Addresses that get the weekly report.
    pub admins: Vec<String>,
    /// How often the report is sent.
    pub report_every: Duration,
    /// How mail leaves.
    pub mail: MailConfig,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The failure count is out of range.
    #[error("the consecutive-failure threshold must be 3 to 5, not {0}")]
    Failures(u32),
    /// The GeoIP database cannot be read.
    #[error("the GeoIP database {path}: {problem}")]
    GeoIp {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Mail cannot be configured.
    #[error(transparent)]
    Mail(#[from] MailError),
}

/// Starts the detector, the mailer and the weekly report.
pub fn spawn(
    log: Arc<AuditLog>,
    ingest: Ingest,
    config: AlertConfig,
    shutdown: Shutdown,
) -> Result<(), AlertError> {
    if !(3..=5).contains(&config.failures) {
        return Err(AlertError::Failures(config.failures));
    }
    let geoip = match &config.geoip {
        Some(path) => Some(Arc::new(maxminddb::Reader::open_readfile(path).map_err(
            |e| AlertError::GeoIp {
                path: path.clone(),
                problem: e.to_string(),
            },
        )?)),
        None => None,
    };
    let mailer = Mailer::new(log.db().clone(), &config.mail)?;
    mailer.spawn(shutdown.clone());
    let detector = Detector {
        db: log.db().clone(),
        ingest,
        config: Arc::new(config),
        geoip,
    };
    let mut size = log.watch_size();
    let report = detector.clone();
    let report_shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = detector.run_once().await {
                tracing::error!(error = %e, "suspicious-login detection failed; retrying");
            }
            tokio::select! {
                () = shutdown.wait() => break,
                _ = size.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    tokio::spawn(async move {
        loop {
            if let Err(e) = report.weekly_report().await {
                tracing::error!(error = %e, "the weekly report failed; retrying");
            }
            let pause = report.config.report_every.min(Duration::from_secs(60)) / 2;
            tokio::select! {
                () = report_shutdown.wait() => break,
                () = tokio::time::sleep(pause.max(Duration::from_millis(200))) => {}
            }
        }
    });
    Ok(())
}

#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    country: Option<CountryName<'a>>,
}

#[derive(Deserialize)]
struct CountryName<'a> {
    iso_code: Option<&'a str>,
}

#[derive(Clone)]
struct Detector {
    db: Db,
    ingest: Ingest,
    config: Arc<AlertConfig>,
    geoip: Option<Arc<maxminddb::Reader<Vec<u8>>>>,
}

/// One detection: which rules fired for which login event.
struct Detection {
    event: Record,
    rules: Vec<&'static str>,
    country: Option<String>,
    email: Option<String>,
    failures: i64,
}

impl Detector {
    fn country(&self, ip: Option<&str>) -> Option<String> {
        let reader = self.geoip.as_ref()?;
        let ip: IpAddr = ip?.parse().ok()?;
        let found = reader.lookup(ip).ok()?;
        let record: CountryRecord<'_> = found.decode().ok()??;
        record.country?.iso_code.map(str::to_owned)
    }

    /// Reads the log after the cursor and handles up to 500 login events.
    async fn run_once(&self) -> Result<(), LogError> {
        let cursor: Option<i64> =
            sqlx::query_scalar("SELECT next_idx FROM alert_cursor WHERE id = 1")
                .fetch_optional(self.db.pool())
                .await?;
        let cursor = cursor.unwrap_or(0);
        let end: Option<i64> = sqlx::query_scalar("SELECT MAX(idx) FROM events")
            .fetch_one(self.db.pool())
            .await?;
        let Some(end) = end.filter(|end| *end >= cursor) else {
            return Ok(());
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE idx >= $1 AND idx <= $2 \
             AND action IN ('LOGIN', 'LOGIN_FAILED') ORDER BY idx LIMIT 500"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(cursor)
            .bind(end)
            .fetch_all(self.db.pool())
            .await?;
        let next = if rows.len() == 500 {
            let (last, _) = Record::from_row(&rows[rows.len() - 1])?;
            i64::try_from(last.idx).unwrap_or(i64::MAX) + 1
        } else {
            end + 1
        };
        // The log is written through its own transaction, which SQLite
        // cannot open while this one holds the write lock: the rules run
        // once to learn the alerts (rolled back), the alert events are
        // appended (idempotent: their ids derive from the login events),
        // then the rules run again for real with the mail and the cursor.
        let detections = self.process(&rows, None).await?;
        let events: Vec<Event> = detections.iter().map(alert_event).collect();
        if !events.is_empty() {
            self.ingest.ingest(events).await?;
        }
        self.process(&rows, Some(next)).await?;
        Ok(())
    }

    /// Applies the rules to `rows` in one transaction, committed with the
    /// mail and the cursor at `commit_at`, or rolled back when `None`.
    async fn process(
        &self,
        rows: &[sqlx::any::AnyRow],
        commit_at: Option<i64>,
    ) -> Result<Vec<Detection>, LogError> {
        let mut tx = self.db.pool().begin().await?;
        let mut detections = Vec::new();
        for row in rows {
            let (record, _) = Record::from_row(row)?;
            if let Some(detection) = self.apply_rules(&mut tx, record).await? {
                detections.push(detection);
            }
        }
        let Some(next) = commit_at else {
            tx.rollback().await?;
            return Ok(detections);
        };
        for detection in &detections {
            let mut recipients: Vec<String> = detection.email.iter().cloned().collect();
            recipients.extend(self.config.security_copies.iter().cloned());
            if recipients.is_empty() {
                continue;
            }
            let (subject, body) = compose(self.config.language, detection);
            mail::enqueue(
                &mut tx,
                &alert_id(&detection.event.id),
                &recipients,
                &subject,
                &body,
            )
            .await?;
        }
        sqlx::query("DELETE FROM alert_cursor WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO alert_cursor (id, next_idx) VALUES (1, $1)")
            .bind(next)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(detections)
    }

    async fn apply_rules(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        event: Record,
    ) -> Result<Option<Detection>, sqlx::Error> {
        let Some(user) = event.actor_user.clone() else {
            return Ok(None);
        };
        let details: serde_json::Value =
            serde_json::from_str(&event.details).unwrap_or(serde_json::Value::Null);
        let email = details["email"].as_str().map(str::to_owned);
        let streak = sqlx::query(
            "SELECT failures, first_at, last_country FROM login_streak WHERE user_id = $1",
        )
        .bind(&user)
        .fetch_optional(&mut **tx)
        .await?;
        let (failures, first_at, last_country) = match &streak {
            Some(row) => (
                row.try_get::<i64, _>("failures")?,
                row.try_get::<String, _>("first_at")?,
                row.try_get::<Option<String>, _>("last_country")?,
            ),
            None => (0, event.time.clone(), None),
        };
        let mut rules = Vec::new();
        let country = self.country(event.client_ip.as_deref());
        let (failures, first_at, last_country) = if event.action == action::LOGIN_FAILED {
            let window = time::Duration::try_from(self.config.window).unwrap_or_default();
            let within = match (
                OffsetDateTime::parse(&first_at, &Rfc3339),
                OffsetDateTime::parse(&event.time, &Rfc3339),
            ) {
                (Ok(first), Ok(now)) => failures > 0 && now - first <= window,
                _ => false,
            };
            let (failures, first_at) = if within {
                (failures + 1, first_at)
            } else {
                (1, event.time.clone())
            };
            if failures == i64::from(self.config.failures) {
                rules.push("failures");
            }
            (failures, first_at, last_country)
        } else {
            let known: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM login_seen WHERE user_id = $1")
                    .bind(&user)
                    .fetch_one(&mut **tx)
                    .await?;
            for (kind, value, rule) in [
                ("ip", event.client_ip.clone(), "new_ip"),
                ("device", event.user_agent.clone(), "new_device"),
                ("country", country.clone(), ""),
            ] {
                let Some(value) = value else { continue };
                let inserted = sqlx::query(
                    "INSERT INTO login_seen (user_id, kind, value, first_seen) \
                     SELECT $1, $2, $3, $4 WHERE NOT EXISTS \
                     (SELECT 1 FROM login_seen WHERE user_id = $5 AND kind = $6 AND value = $7)",
                )
                .bind(&user)
                .bind(kind)
                .bind(&value)
                .bind(&event.time)
                .bind(&user)
                .bind(kind)
                .bind(&value)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if inserted == 1 && known > 0 && !rule.is_empty() {
                    rules.push(rule);
                }
            }
            if let (Some(before), Some(now)) = (&last_country, &country)
                && before != now
            {
                rules.push("country_change");
            }
            (0, event.time.clone(), country.clone().or(last_country))
        };
        sqlx::query("DELETE FROM login_streak WHERE user_id = $1")
            .bind(&user)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO login_streak (user_id, failures, first_at, last_country) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&user)
        .bind(failures)
        .bind(&first_at)
        .bind(last_country.as_deref())
        .execute(&mut **tx)
        .await?;
        if rules.is_empty() {
            return Ok(None);
        }
        Ok(Some(Detection {
            event,
            rules,
            country,
            email,
            failures,
        }))
    }

    /// Queues the weekly report to the admins when it is due.
    async fn weekly_report(&self) -> Result<(), sqlx::Error> {
        let now = OffsetDateTime::now_utc();
        let last: Option<String> =
            sqlx::query_scalar("SELECT last_sent FROM report_state WHERE id = 1")
                .fetch_optional(self.db.pool())
                .await?;
        let Some(last) = last else {
            // The first period starts now.
            sqlx::query("INSERT INTO report_state (id, last_sent) VALUES (1, $1)")
                .bind(now.format(&Rfc3339).unwrap_or_default())
                .execute(self.db.pool())
                .await?;
            return Ok(());
        };
        let since = OffsetDateTime::parse(&last, &Rfc3339).unwrap_or(now);
        let every = time::Duration::try_from(self.config.report_every).unwrap_or_default();
        if now - since < every {
            return Ok(());
        }
        let rows = sqlx::query(
            "SELECT action, actor_user, client_ip, details FROM events \
             WHERE action IN ('SUSPICIOUS_LOGIN', 'LOGIN_FAILED', 'ACCOUNT_LOCKED') \
             AND time >= $1 ORDER BY idx",
        )
        .bind(&last)
        .fetch_all(self.db.pool())
        .await?;
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_ip: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_rule: BTreeMap<String, u64> = BTreeMap::new();
        for row in &rows {
            let action: String = row.try_get("action")?;
            *counts.entry(action.clone()).or_default() += 1;
            let ip: Option<String> = row.try_get("client_ip")?;
            *by_ip.entry(ip.unwrap_or_else(|| "-".into())).or_default() += 1;
            if action == action::SUSPICIOUS_LOGIN {
                let details: String = row.try_get("details")?;
                let details: serde_json::Value = serde_json::from_str(&details).unwrap_or_default();
                for rule in details["rules"].as_array().into_iter().flatten() {
                    *by_rule
                        .entry(rule.as_str().unwrap_or("?").to_owned())
                        .or_default() += 1;
                }
            }
        }
        let mut tx = self.db.pool().begin().await?;
        sqlx::query("UPDATE report_state SET last_sent = $1 WHERE id = 1")
            .bind(now.format(&Rfc3339).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        if !self.config.admins.is_empty() {
            let (subject, body) = report(
                self.config.language,
                &last,
                &now.format(&Rfc3339).unwrap_or_default(),
                &counts,
                &by_rule,
                &by_ip,
            );
            let id = uuid::Uuid::new_v4().to_string();
            mail::enqueue(&mut tx, &id, &self.config.admins, &subject, &body).await?;
        }
        tx.commit().await
    }
}

/// The id of the alert (event and mail) a login event raised.
fn alert_id(trigger: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("alert:{trigger}").as_bytes(),
    )
    .to_string()
}

fn alert_event(d: &Detection) -> Event {
    let mut event = Event::new("audit", action::SUSPICIOUS_LOGIN, &d.event.target)
        .from_client(d.event.client_ip.as_deref(), d.event.user_agent.as_deref())
        .details(serde_json::json!({
            "rules": d.rules,
            "country": d.country,
            "trigger": d.event.id,
            "failures": d.failures,
            "mailed": d.email.is_some(),
        }));
    event.id = alert_id(&d.event.id);
    if let Some(user) = &d.event.actor_user {
        event = event.by_user(user.clone());
    }
    event
}

fn describe(language: Language, rule: &str, failures: i64) -> String {
    match (language, rule) {
        (Language::French, "failures") => format!("{failures} échecs de connexion consécutifs"),
        (Language::French, "new_ip") => "connexion depuis une adresse IP inconnue".into(),
        (Language::French, "new_device") => "connexion depuis un nouvel appareil".into(),
        (Language::French, "country_change") => "connexion depuis un autre pays".into(),
        (Language::English, "failures") => format!("{failures} failed sign-ins in a row"),
        (Language::English, "new_ip") => "sign-in from an unknown IP address".into(),
        (Language::English, "new_device") => "sign-in from a new device".into(),
        (Language::English, "country_change") => "sign-in from another country".into(),
        (_, other) => other.to_owned(),
    }
}

fn compose(language: Language, d: &Detection) -> (String, String) {
    let reasons: Vec<String> = d
        .rules
        .iter()
        .map(|rule| describe(language, rule, d.failures))
        .collect();
    let ip = d.event.client_ip.as_deref().unwrap_or("?");
    let country = d.country.as_deref().unwrap_or("?");
    let device = d.event.user_agent.as_deref().unwrap_or("?");
    let when = d.event.time.replace('T', " ");
    match language {
        Language::French => (
            "Alerte de connexion suspecte à votre compte".to_owned(),
            format!(
                "Bonjour,\n\nUne activité inhabituelle a été détectée sur votre compte Trustmesh : {}.\n\n\
                 Adresse IP : {ip}\nPays : {country}\nDate et heure (UTC) : {when}\n\
                 Appareil / navigateur : {device}\n\n\
                 Si ce n'était pas vous, changez votre mot de passe dès maintenant et \
                 fermez les sessions que vous ne reconnaissez pas.\n\n— Trustmesh\n",
                reasons.join(", ")
            ),
        ),
        Language::English => (
            "Suspicious sign-in to your account".to_owned(),
            format!(
                "Hello,\n\nUnusual activity was detected on your Trustmesh account: {}.\n\n\
                 IP address: {ip}\nCountry: {country}\nDate and time (UTC): {when}\n\
                 Device / browser: {device}\n\n\
                 If this was not you, change your password now and end the sessions you \
                 do not recognise.\n\n— Trustmesh\n",
                reasons.join(", ")
            ),
        ),
    }
}

fn report(
    language: Language,
    from: &str,
    to: &str,
    counts: &BTreeMap<String, u64>,
    by_rule: &BTreeMap<String, u64>,
    by_ip: &BTreeMap<String, u64>,
) -> (String, String) {
    let mut ips: Vec<(&String, &u64)> = by_ip.iter().collect();
    ips.sort_by(|a, b| b.1.cmp(a.1));
    let list = |m: &mut dyn Iterator<Item = (&String, &u64)>| -> String {
        let lines: Vec<String> = m.map(|(k, v)| format!("  {k}: {v}")).collect();
        if lines.is_empty() {
            "  -".to_owned()
        } else {
            lines.join("\n")
        }
    };
    let (subject, headings) = match language {
        Language::French => (
            "Rapport hebdomadaire des tentatives suspectes",
            [
                "Période",
                "Événements",
                "Règles déclenchées",
                "Adresses IP les plus actives",
            ],
        ),
        Language::English => (
            "Weekly report of suspicious attempts",
            [
                "Period",
                "Events",
                "Rules fired",
                "Most active IP addresses",
            ],
        ),
    };
    let body = format!(
        "{}: {from} → {to}\n\n{}:\n{}\n\n{}:\n{}\n\n{}:\n{}\n",
        headings[0],
        headings[1],
        list(&mut counts.iter()),
        headings[2],
        list(&mut by_rule.iter()),
        headings[3],
        list(&mut ips.into_iter().take(10)),
    );
    (subject.to_owned(), body)
}
