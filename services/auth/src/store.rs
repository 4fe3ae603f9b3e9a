//! The auth service's tables. Secrets are never stored in the clear: the
//! TOTP seed is sealed with the key ring, enrolment tokens, MFA tickets,
//! refresh tokens and recovery codes are stored as SHA-256 hashes (they are
//! 256-bit random values, so a fast hash is enough), passwords as Argon2id.

use sqlx::Row;
use trustmesh_events::outbox::record;
use trustmesh_events::{Event, action};
use trustmesh_store::{Db, StoreError};

/// The current time in Unix seconds.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A stored account.
#[derive(Debug, Clone)]
pub struct Account {
    /// The user id.
    pub user_id: String,
    /// The normalised email.
    pub email: String,
    /// The Argon2id PHC string.
    pub password_hash: String,
    /// The sealed TOTP seed (base64).
    pub totp_sealed: String,
    /// The last TOTP time step accepted (replay guard), -1 if none.
    pub totp_last_step: i64,
    /// Whether the TOTP enrolment was confirmed.
    pub confirmed: bool,
}

/// A stored session.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// The session id.
    pub session_id: String,
    /// Its user.
    pub user_id: String,
    /// Created (Unix seconds).
    pub created_at: i64,
    /// Last refresh (Unix seconds).
    pub last_seen_at: i64,
    /// Absolute expiry (Unix seconds).
    pub absolute_expires_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// The client's IP at login.
    pub client_ip: String,
    /// The client's user agent at login.
    pub user_agent: String,
    /// How the user authenticated (`pwd,otp` or `pwd,recovery`).
    pub amr: String,
}

impl SessionRow {
    /// Whether the session may still be used at `now` with `idle` as the
    /// inactivity limit.
    pub fn is_active(&self, now: i64, idle: i64) -> bool {
        self.revoked_at.is_none()
            && now < self.absolute_expires_at
            && now - self.last_seen_at < idle
    }
}

/// What happened to a presented refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// Unknown token.
    Unknown,
    /// First use: the token is now spent; the session it belongs to.
    Fresh(String),
    /// Already used: theft suspected; the session it belongs to.
    Reused(String),
}

const ACCOUNT_COLUMNS: &str =
    "user_id, email, password_hash, totp_sealed, totp_last_step, confirmed";
const SESSION_COLUMNS: &str = "session_id, user_id, created_at, last_seen_at, \
     absolute_expires_at, revoked_at, client_ip, user_agent, amr";

fn account(row: &sqlx::any::AnyRow) -> Result<Account, sqlx::Error> {
    Ok(Account {
        user_id: row.try_get("user_id")?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        totp_sealed: row.try_get("totp_sealed")?,
        totp_last_step: row.try_get("totp_last_step")?,
        confirmed: row.try_get::<i64, _>("confirmed")? == 1,
    })
}

fn session(row: &sqlx::any::AnyRow) -> Result<SessionRow, sqlx::Error> {
    Ok(SessionRow {
        session_id: row.try_get("session_id")?,
        user_id: row.try_get("user_id")?,
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        absolute_expires_at: row.try_get("absolute_expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        client_ip: row.try_get("client_ip")?,
        user_agent: row.try_get("user_agent")?,
        amr: row.try_get("amr")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// Queries over an auth database.
#[derive(Debug, Clone)]
pub struct AuthStore {
    db: Db,
}

impl AuthStore {
    /// Wraps an open (migrated) database.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Creates an unconfirmed account and its enrolment token. `Ok(false)`
    /// when the email is taken (exactly one of concurrent registrations of
    /// one email wins, by the unique index).
    pub async fn create_account(
        &self,
        account: &Account,
        enrollment_hash: &str,
        enrollment_expires_at: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO accounts (user_id, email, password_hash, totp_sealed, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&account.user_id)
        .bind(&account.email)
        .bind(&account.password_hash)
        .bind(&account.totp_sealed)
        .bind(unix_now())
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        sqlx::query(
            "INSERT INTO enrollments (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(enrollment_hash)
        .bind(&account.user_id)
        .bind(enrollment_expires_at)
        .execute(&mut *tx)
        .await?;
        record(
            &mut tx,
            &Event::new("auth", "REGISTER", &account.user_id).by_user(&account.user_id),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The account with this id.
    pub async fn account(&self, user_id: &str) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE user_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.as_ref().map(account).transpose()?)
    }

    /// The account with this (normalised) email.
    pub async fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE email = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(email)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.as_ref().map(account).transpose()?)
    }

    /// Counts an attempt on an enrolment and returns its account if the
    /// enrolment is live and under `max_attempts`.
    pub async fn enrollment_attempt(
        &self,
        token_hash: &str,
        max_attempts: i64,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "UPDATE enrollments SET attempts = attempts + 1 \
             WHERE token_hash = $1 AND expires_at > $2 AND attempts < $3 RETURNING user_id",
        )
        .bind(token_hash)
        .bind(unix_now())
        .bind(max_attempts)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| r.try_get("user_id")).transpose()?)
    }

    /// Confirms an account: records the accepted TOTP step, stores the
    /// recovery code hashes and removes the enrolment, in one transaction.
    pub async fn confirm(
        &self,
        user_id: &str,
        token_hash: &str,
        step: i64,
        recovery_hashes: &[String],
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE accounts SET confirmed = 1, totp_last_step = $1 \
             WHERE user_id = $2 AND confirmed = 0 AND totp_last_step < $1",
        )
        .bind(step)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        for hash in recovery_hashes {
            sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
                .bind(user_id)
                .bind(hash)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM enrollments WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&mut *tx)
            .await?;
        record(
            &mut tx,
            &Event::new("auth", "MFA_ENROLLED", user_id).by_user(user_id),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records `step` as the last TOTP step used, only if it is newer than
    /// the stored one: `false` means the code was already used (replay).
    pub async fn use_totp_step(&self, user_id: &str, step: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE accounts SET totp_last_step = $1 WHERE user_id = $2 AND totp_last_step < $1",
        )
        .bind(step)
        .bind(user_id)
        .execute(self.db.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Spends a recovery code (by hash): `false` if unknown or already used.
    pub async fn use_recovery_code(
        &self,
        user_id: &str,
        code_hash: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 \
             WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(unix_now())
        .bind(user_id)
        .bind(code_hash)
        .execute(self.db.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Changes the email and records `EMAIL_CHANGED`; `Ok(false)` when the
    /// new email belongs to another account.
    pub async fn set_email(&self, user_id: &str, email: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.pool().begin().await?;
        let updated = sqlx::query("UPDATE accounts SET email = $1 WHERE user_id = $2")
            .bind(email)
            .bind(user_id)
            .execute(&mut *tx)
            .await;
        match updated {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        record(
            &mut tx,
            &Event::new("auth", "EMAIL_CHANGED", user_id).by_user(user_id),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Replaces the password hash.
    pub async fn set_password_hash(&self, user_id: &str, phc: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE accounts SET password_hash = $1 WHERE user_id = $2")
            .bind(phc)
            .bind(user_id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Records a failed login (for the account if known, and the IP).
    pub async fn record_failure(
        &self,
        account: Option<&Account>,
        client_ip: &str,
        user_agent: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let user_id = account.map(|a| a.user_id.as_str());
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(
            "INSERT INTO login_failures (id, user_id, client_ip, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(user_id)
        .bind(client_ip)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
        let mut event = Event::new("auth", action::LOGIN_FAILED, user_id.unwrap_or("unknown"))
            .failed()
            .from_client(Some(client_ip), Some(user_agent))
            .details(serde_json::json!({ "reason": reason }));
        if let Some(account) = account {
            // The address lets audit warn the account's owner.
            event = event
                .by_user(&account.user_id)
                .details(serde_json::json!({ "reason": reason, "email": account.email }));
        }
        record(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Failed logins of an account since `since`.
    pub async fn failures_for_user(&self, user_id: &str, since: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM login_failures WHERE user_id = $1 AND at >= $2",
        )
        .bind(user_id)
        .bind(since)
        .fetch_one(self.db.pool())
        .await?)
    }

    /// Failed logins from an IP since `since`, across accounts.
    pub async fn failures_for_ip(&self, client_ip: &str, since: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM login_failures WHERE client_ip = $1 AND at >= $2",
        )
        .bind(client_ip)
        .bind(since)
        .fetch_one(self.db.pool())
        .await?)
    }

    /// Forgets an account's failures (after a successful login).
    pub async fn clear_failures(&self, user_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM login_failures WHERE user_id = $1")
            .bind(user_id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Until when the account is locked, if it is at `now`.
    pub async fn locked_until(&self, user_id: &str, now: i64) -> Result<Option<i64>, StoreError> {
        let until: Option<i64> =
            sqlx::query_scalar("SELECT locked_until FROM lockouts WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(until.filter(|until| *until > now))
    }

    /// Locks the account until `until` and records `ACCOUNT_LOCKED`.
    pub async fn lock(&self, user_id: &str, until: i64, client_ip: &str) -> Result<(), StoreError> {
        let mut tx = self.db.pool().begin().await?;
        sqlx::query("DELETE FROM lockouts WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO lockouts (user_id, locked_until) VALUES ($1, $2)")
            .bind(user_id)
            .bind(until)
            .execute(&mut *tx)
            .await?;
        record(
            &mut tx,
            &Event::new("auth", action::ACCOUNT_LOCKED, user_id)
                .from_client(Some(client_ip), None)
                .details(serde_json::json!({"locked_until": until})),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores an MFA ticket (by hash).
    pub async fn create_ticket(
        &self,
        hash: &str,
        user_id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO mfa_tickets (ticket_hash, user_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(hash)
        .bind(user_id)
        .bind(expires_at)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Counts an attempt on a ticket; its user if live and under the limit.
    pub async fn ticket_attempt(
        &self,
        hash: &str,
        max_attempts: i64,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "UPDATE mfa_tickets SET attempts = attempts + 1 \
             WHERE ticket_hash = $1 AND expires_at > $2 AND attempts < $3 RETURNING user_id",
        )
        .bind(hash)
        .bind(unix_now())
        .bind(max_attempts)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| r.try_get("user_id")).transpose()?)
    }

    /// Removes a ticket (used once).
    pub async fn delete_ticket(&self, hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM mfa_tickets WHERE ticket_hash = $1")
            .bind(hash)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Opens a session with its first refresh token and records `LOGIN`.
    pub async fn create_session(
        &self,
        row: &SessionRow,
        email: &str,
        refresh_hash: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(
            "INSERT INTO sessions (session_id, user_id, created_at, last_seen_at, \
             absolute_expires_at, client_ip, user_agent, amr) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&row.session_id)
        .bind(&row.user_id)
        .bind(row.created_at)
        .bind(row.last_seen_at)
        .bind(row.absolute_expires_at)
        .bind(&row.client_ip)
        .bind(&row.user_agent)
        .bind(&row.amr)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES ($1, $2, $3)",
        )
        .bind(refresh_hash)
        .bind(&row.session_id)
        .bind(row.created_at)
        .execute(&mut *tx)
        .await?;
        record(
            &mut tx,
            &Event::new("auth", action::LOGIN, &row.user_id)
                .by_user(&row.user_id)
                .from_client(Some(&row.client_ip), Some(&row.user_agent))
                .details(serde_json::json!({
                    "session_id": row.session_id,
                    "amr": row.amr,
                    "email": email,
                })),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A session by id.
    pub async fn session(&self, session_id: &str) -> Result<Option<SessionRow>, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(session_id)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.as_ref().map(session).transpose()?)
    }

    /// A user's sessions, newest first.
    pub async fn sessions_of(&self, user_id: &str) -> Result<Vec<SessionRow>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $1 ORDER BY created_at DESC"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows.iter().map(session).collect::<Result<_, _>>()?)
    }

    /// Spends a refresh token: marks it used if it was fresh.
    pub async fn use_refresh_token(&self, hash: &str) -> Result<RefreshUse, StoreError> {
        let Some(row) =
            sqlx::query("SELECT session_id, used_at FROM refresh_tokens WHERE token_hash = $1")
                .bind(hash)
                .fetch_optional(self.db.pool())
                .await?
        else {
            return Ok(RefreshUse::Unknown);
        };
        let session_id: String = row.try_get("session_id")?;
        let used_at: Option<i64> = row.try_get("used_at")?;
        if used_at.is_some() {
            return Ok(RefreshUse::Reused(session_id));
        }
        let done = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
        )
        .bind(unix_now())
        .bind(hash)
        .execute(self.db.pool())
        .await?;
        // Lost a race with a concurrent use of the same token: that is reuse.
        Ok(if done.rows_affected() == 1 {
            RefreshUse::Fresh(session_id)
        } else {
            RefreshUse::Reused(session_id)
        })
    }

    /// Issues the next refresh token of a session and marks it seen now.
    pub async fn rotate_refresh(&self, session_id: &str, new_hash: &str) -> Result<(), StoreError> {
        let now = unix_now();
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES ($1, $2, $3)",
        )
        .bind(new_hash)
        .bind(session_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE session_id = $2")
            .bind(now)
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Revokes one session (no-op if already revoked) and records why.
    pub async fn revoke_session(&self, session_id: &str, reason: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
             WHERE session_id = $3 AND revoked_at IS NULL",
        )
        .bind(unix_now())
        .bind(reason)
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            let action = if reason == "logout" {
                "LOGOUT"
            } else {
                "SESSION_REVOKED"
            };
            let user_id: String =
                sqlx::query_scalar("SELECT user_id FROM sessions WHERE session_id = $1")
                    .bind(session_id)
                    .fetch_one(&mut *tx)
                    .await?;
            record(
                &mut tx,
                &Event::new("auth", action, session_id)
                    .by_user(user_id)
                    .details(serde_json::json!({"reason": reason})),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Changes the password and revokes every other session of the user,
    /// in one transaction.
    pub async fn change_password(
        &self,
        user_id: &str,
        phc: &str,
        keep_session: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool().begin().await?;
        sqlx::query("UPDATE accounts SET password_hash = $1 WHERE user_id = $2")
            .bind(phc)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = 'password_change' \
             WHERE user_id = $2 AND session_id <> $3 AND revoked_at IS NULL",
        )
        .bind(unix_now())
        .bind(user_id)
        .bind(keep_session)
        .execute(&mut *tx)
        .await?;
        record(
            &mut tx,
            &Event::new("auth", "PASSWORD_CHANGE", user_id).by_user(user_id),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes an account with all it owns; its sessions end at once.
    pub async fn delete_account(&self, user_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = 'account_deleted' \
             WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(unix_now())
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        for sql in [
            "DELETE FROM recovery_codes WHERE user_id = $1",
            "DELETE FROM enrollments WHERE user_id = $1",
            "DELETE FROM mfa_tickets WHERE user_id = $1",
            "DELETE FROM lockouts WHERE user_id = $1",
            "DELETE FROM login_failures WHERE user_id = $1",
        ] {
            sqlx::query(sql).bind(user_id).execute(&mut *tx).await?;
        }
        let done = sqlx::query("DELETE FROM accounts WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        record(
            &mut tx,
            &Event::new("auth", "ACCOUNT_DELETED", user_id).by_user(user_id),
        )
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}
