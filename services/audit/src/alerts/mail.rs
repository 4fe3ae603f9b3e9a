//! Alert mail: a durable queue (the `mail_queue` table, written in the same
//! transaction as the detection that wants the mail) and a sender that
//! delivers it over SMTP with TLS ([`super::smtp`]), retrying with a capped
//! exponential backoff — a mail is never dropped. Without an SMTP URL, mail
//! is written as `.eml` files to `<data-dir>/outbox-mail/` instead.

use std::path::PathBuf;
use std::time::Duration;

use lettre::Message;
use lettre::message::{Mailbox, header::ContentType};
use sqlx::Row;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use trustmesh_runtime::Shutdown;
use trustmesh_store::Db;

/// How mail leaves.
#[derive(Clone, Debug, Default)]
pub struct MailConfig {
    /// `smtps://user:pass@host:465` or `smtp://user:pass@host:587?tls=starttls`;
    /// `None` writes files to `outbox_dir`.
    pub smtp_url: Option<String>,
    /// The sender (`Trustmesh <security@example.com>`).
    pub from: String,
    /// An extra CA certificate (PEM) to trust for the SMTP server, beside
    /// the public roots.
    pub ca_file: Option<PathBuf>,
    /// Where mail goes without SMTP.
    pub outbox_dir: PathBuf,
}

/// A mail configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The SMTP URL is unusable.
    #[error("TRUSTMESH_SMTP_URL: {0}")]
    Url(String),
    /// The sender address is not an address.
    #[error("TRUSTMESH_SMTP_FROM {0:?} is not a mail address")]
    From(String),
    /// The CA file cannot be used.
    #[error("TRUSTMESH_SMTP_CA {path}: {problem}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

enum Transport {
    Smtp(super::smtp::SmtpServer),
    Files(PathBuf),
}

/// Sends queued mail.
pub struct Mailer {
    db: Db,
    transport: Transport,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let transport = match &self.transport {
            Transport::Smtp(_) => "smtp",
            Transport::Files(_) => "files",
        };
        f.debug_struct("Mailer")
            .field("transport", &transport)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// A mailer for `config`, over `db`'s queue.
    pub fn new(db: Db, config: &MailConfig) -> Result<Mailer, MailError> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|_| MailError::From(config.from.clone()))?;
        let transport = match &config.smtp_url {
            None => Transport::Files(config.outbox_dir.clone()),
            Some(url) => Transport::Smtp(super::smtp::SmtpServer::from_url(
                url,
                config.ca_file.as_deref(),
            )?),
        };
        Ok(Mailer {
            db,
            transport,
            from,
        })
    }

    /// Sends what is due until `shutdown`.
    pub fn spawn(self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.send_due().await {
                    tracing::warn!(error = %e, "cannot read the mail queue");
                }
                tokio::select! {
                    () = shutdown.wait() => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        })
    }

    async fn send_due(&self) -> Result<(), sqlx::Error> {
        let now = now();
        let due = sqlx::query(
            "SELECT id, recipients, subject, body, attempts FROM mail_queue \
             WHERE sent_at IS NULL AND next_try_at <= $1 ORDER BY next_try_at LIMIT 20",
        )
        .bind(&now)
        .fetch_all(self.db.pool())
        .await?;
        for row in due {
            let id: String = row.try_get("id")?;
            let attempts: i64 = row.try_get("attempts")?;
            let recipients: String = row.try_get("recipients")?;
            let subject: String = row.try_get("subject")?;
            let body: String = row.try_get("body")?;
            match self.send(&id, &recipients, &subject, body).await {
                Ok(()) => {
                    sqlx::query("UPDATE mail_queue SET sent_at = $1, attempts = $2 WHERE id = $3")
                        .bind(self::now())
                        .bind(attempts + 1)
                        .bind(&id)
                        .execute(self.db.pool())
                        .await?;
                    tracing::info!(mail = %id, "alert mail sent");
                }
                Err(problem) => {
                    let wait = 2i64.saturating_pow(u32::try_from(attempts.min(10)).unwrap_or(10));
                    let next = (OffsetDateTime::now_utc() + time::Duration::seconds(wait.min(600)))
                        .format(&Rfc3339)
                        .unwrap_or_default();
                    tracing::warn!(mail = %id, attempts = attempts + 1, %problem, "alert mail not sent; will retry");
                    sqlx::query(
                        "UPDATE mail_queue SET attempts = $1, next_try_at = $2, last_error = $3 \
                         WHERE id = $4",
                    )
                    .bind(attempts + 1)
                    .bind(next)
                    .bind(problem)
                    .bind(&id)
                    .execute(self.db.pool())
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        id: &str,
        recipients: &str,
        subject: &str,
        body: String,
    ) -> Result<(), String> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(format!("<{id}@trustmesh>")))
            .header(ContentType::TEXT_PLAIN);
        let mut any = false;
        for to in recipients
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match to.parse::<Mailbox>() {
                Ok(mailbox) => {
                    builder = builder.to(mailbox);
                    any = true;
                }
                Err(_) => tracing::warn!(recipient = to, "skipping an invalid recipient"),
            }
        }
        if !any {
            return Err("no valid recipient".to_owned());
        }
        let message = builder.body(body).map_err(|e| e.to_string())?;
        match &self.transport {
            Transport::Smtp(smtp) => smtp.send(&message).await,
            Transport::Files(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                std::fs::write(dir.join(format!("{id}.eml")), message.formatted())
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Queues a mail to `recipients` inside `tx` (sent once `tx` commits).
pub async fn enqueue(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    recipients: &[String],
    subject: &str,
    body: &str,
) -> Result<(), sqlx::Error> {
    let now = now();
    sqlx::query(
        "INSERT INTO mail_queue (id, created_at, recipients, subject, body, next_try_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(&now)
    .bind(recipients.join(", "))
    .bind(subject)
    .bind(body)
    .bind(&now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}
