//! The auth service's tables. Secrets are never stored in the clear: the
//! TOTP seed is sealed with the key ring, enrolment tokens, MFA tickets,
//! refresh tokens and recovery codes are stored as SHA-256 hashes (they are
//! 256-bit random values, so a fast hash is enough), passwords as Argon2id.

use std::future::Future;
use std::pin::Pin;

use sqlx::{AnyConnection, Row};
use trustmesh_events::outbox::record_on;
use trustmesh_events::{Event, action};
use trustmesh_store::group_commit::Writer;
use trustmesh_store::sql::backend_of;
use trustmesh_store::{Backend, Db, StoreError};

use crate::lockout::LockoutPolicy;

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
    /// How many times every session of the user was ended at once (a role
    /// change, see [`AuthStore::revoke_user_sessions`]); a login step
    /// carries the count it read into [`AuthStore::create_ticket`].
    pub revocations: i64,
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

/// A failed login attempt, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// The account, when the attempt named an existing one.
    pub account: Option<&'a Account>,
    /// The client's IP.
    pub client_ip: &'a str,
    /// The client's user agent.
    pub user_agent: &'a str,
    /// The reason code of the `LOGIN_FAILED` event (`wrong_password`, …).
    pub reason: &'a str,
}

/// A [`Failure`] that owns its data, to hand to the writer.
struct OwnedFailure {
    account: Option<Account>,
    client_ip: String,
    user_agent: String,
    reason: String,
}

impl From<&Failure<'_>> for OwnedFailure {
    fn from(failure: &Failure<'_>) -> Self {
        Self {
            account: failure.account.cloned(),
            client_ip: failure.client_ip.to_owned(),
            user_agent: failure.user_agent.to_owned(),
            reason: failure.reason.to_owned(),
        }
    }
}

impl OwnedFailure {
    fn borrowed(&self) -> Failure<'_> {
        Failure {
            account: self.account.as_ref(),
            client_ip: &self.client_ip,
            user_agent: &self.user_agent,
            reason: &self.reason,
        }
    }
}

/// The inputs of [`AuthStore::login_mfa`].
#[derive(Debug, Clone)]
pub struct MfaStep {
    /// The hash of the presented MFA ticket.
    pub ticket_hash: String,
    /// Codes allowed per ticket.
    pub max_attempts: i64,
    /// The role to use when the ticket carries none (a ticket stored before
    /// tickets carried the role); `None` makes such a ticket
    /// [`MfaOutcome::RoleMissing`].
    pub fallback_role: Option<String>,
    /// The id of the session to open.
    pub session_id: String,
    /// The hash of its first refresh token.
    pub refresh_hash: String,
    /// Its absolute lifetime in seconds.
    pub session_max: i64,
    /// The client's IP.
    pub client_ip: String,
    /// The client's user agent.
    pub user_agent: String,
    /// When a refused code locks the account.
    pub lockout: LockoutPolicy,
}

/// What the caller of [`AuthStore::login_mfa`] made of the code, given the
/// account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeCheck {
    /// A right TOTP code of this time step: spent unless a step at or after
    /// it was already used (then refused as `code_replayed`).
    TotpStep(i64),
    /// A recovery code with this hash: spent if it exists unused, else
    /// refused as `invalid_code`.
    Recovery(String),
    /// Refused without looking further, with this reason code
    /// (`invalid_code`, `code_replayed`).
    Refused(&'static str),
    /// The code cannot be checked (the seed cannot be unsealed): the
    /// transaction is rolled back.
    Unavailable,
}

/// What [`AuthStore::login_mfa`] did.
#[derive(Debug, Clone)]
pub enum MfaOutcome {
    /// The ticket is unknown, expired or out of attempts; nothing written.
    TicketInvalid,
    /// The ticket carries no role and no fallback was given; nothing
    /// written. The ticket's user.
    RoleMissing(String),
    /// The account is locked until this instant; the attempt on the ticket
    /// is counted.
    Locked(i64),
    /// The code was refused; the failure is recorded.
    Refused {
        /// The reason code (`invalid_code` or `code_replayed`).
        reason: &'static str,
        /// When this failure locked the account: until when.
        locked_until: Option<i64>,
    },
    /// The code cannot be checked; nothing written.
    Unavailable,
    /// The session is open, with this role for its access tokens.
    Opened {
        /// The new session.
        session: SessionRow,
        /// The role the ticket carried.
        role: String,
    },
}

/// The columns of [`Account`], from `accounts a`.
const ACCOUNT_COLUMNS: &str = "a.user_id AS user_id, a.email AS email, \
     a.password_hash AS password_hash, a.totp_sealed AS totp_sealed, \
     a.totp_last_step AS totp_last_step, a.confirmed AS confirmed, \
     COALESCE((SELECT r.revocations FROM session_revocations r WHERE r.user_id = a.user_id), 0) \
     AS revocations";
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
        revocations: row.try_get("revocations")?,
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

/// Records a failure and its `LOGIN_FAILED` event on `conn` (inside a
/// transaction); when the
/// account reaches `lockout.max_failures` within the window, locks it and
/// records `ACCOUNT_LOCKED`. Until when this failure locked the account.
async fn record_failure_in(
    conn: &mut AnyConnection,
    failure: &Failure<'_>,
    lockout: &LockoutPolicy,
    now: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let user_id = failure.account.map(|a| a.user_id.as_str());
    if let Some(user_id) = user_id
        && backend_of(conn) == Some(Backend::Postgres)
    {
        // One failure of an account at a time: concurrent attempts would
        // each count only the failures committed before their own
        // statement, and together pass the limit without a lock. (SQLite
        // runs every write of the auth store in one writer, in turn.)
        sqlx::query("SELECT user_id FROM accounts WHERE user_id = $1 FOR UPDATE")
            .bind(user_id)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("INSERT INTO login_failures (id, user_id, client_ip, at) VALUES ($1, $2, $3, $4)")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(user_id)
        .bind(failure.client_ip)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    let mut event = Event::new("auth", action::LOGIN_FAILED, user_id.unwrap_or("unknown"))
        .failed()
        .from_client(Some(failure.client_ip), Some(failure.user_agent))
        .details(serde_json::json!({ "reason": failure.reason }));
    if let Some(account) = failure.account {
        // The address lets audit warn the account's owner.
        event = event
            .by_user(&account.user_id)
            .details(serde_json::json!({ "reason": failure.reason, "email": account.email }));
    }
    record_on(conn, &event).await?;
    let (Some(user_id), limit) = (user_id, lockout.max_failures) else {
        return Ok(None);
    };
    if limit == 0 {
        return Ok(None);
    }
    let window = i64::try_from(lockout.window.as_secs()).unwrap_or(i64::MAX);
    let failures: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM login_failures WHERE user_id = $1 AND at >= $2")
            .bind(user_id)
            .bind(now.saturating_sub(window))
            .fetch_one(&mut *conn)
            .await?;
    if failures < i64::from(limit) {
        return Ok(None);
    }
    let until = now.saturating_add(i64::try_from(lockout.lock_for.as_secs()).unwrap_or(i64::MAX));
    // An upsert: two failures locking the account at once both succeed.
    sqlx::query(
        "INSERT INTO lockouts (user_id, locked_until) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE SET locked_until = excluded.locked_until",
    )
    .bind(user_id)
    .bind(until)
    .execute(&mut *conn)
    .await?;
    record_on(
        conn,
        &Event::new("auth", action::ACCOUNT_LOCKED, user_id)
            .from_client(Some(failure.client_ip), None)
            .details(serde_json::json!({"locked_until": until})),
    )
    .await?;
    Ok(Some(until))
}

/// On PostgreSQL, holds the user's ticket-and-revocation lock until the
/// transaction ends, so that a ticket written while the user's sessions are
/// revoked either sees the revocation or is seen (and deleted) by it: each
/// statement of READ COMMITTED sees only what was committed when it began.
/// (SQLite runs every write of the auth store in one writer, in turn.)
async fn lock_users_sessions(conn: &mut AnyConnection, user_id: &str) -> Result<(), sqlx::Error> {
    if backend_of(conn) == Some(Backend::Postgres) {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(user_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Ends every active session of `user_id` but `keep` (the caller's own,
/// if any), recording `reason` on each; how many ended.
async fn end_sessions_in(
    conn: &mut AnyConnection,
    user_id: &str,
    reason: &str,
    keep: Option<&str>,
) -> Result<u64, sqlx::Error> {
    // Session ids are UUIDs, never empty: `<> ''` keeps none.
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
         WHERE user_id = $3 AND session_id <> $4 AND revoked_at IS NULL",
    )
    .bind(unix_now())
    .bind(reason)
    .bind(user_id)
    .bind(keep.unwrap_or_default())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Inserts a session with its first refresh token and records `LOGIN`.
async fn insert_session(
    conn: &mut AnyConnection,
    row: &SessionRow,
    email: &str,
    refresh_hash: &str,
) -> Result<(), sqlx::Error> {
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
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES ($1, $2, $3)",
    )
    .bind(refresh_hash)
    .bind(&row.session_id)
    .bind(row.created_at)
    .execute(&mut *conn)
    .await?;
    record_on(
        conn,
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
    Ok(())
}

/// A unit of work's early end (see [`AuthStore::write`]).
enum Undo<T> {
    /// Undo what the unit wrote, and answer this.
    Rollback(T),
    /// The database failed.
    Store(StoreError),
}

impl<T> From<StoreError> for Undo<T> {
    fn from(e: StoreError) -> Self {
        Undo::Store(e)
    }
}

impl<T> From<sqlx::Error> for Undo<T> {
    fn from(e: sqlx::Error) -> Self {
        Undo::Store(e.into())
    }
}

/// What a unit of work given to [`AuthStore::write`] returns.
type Unit<'c, T> = Pin<Box<dyn Future<Output = Result<T, Undo<T>>> + Send + 'c>>;

/// Queries over an auth database.
///
/// Every write goes through one [`Writer`]. On SQLite, which has a single
/// writer and makes each commit durable with an `fsync` of its log
/// (`synchronous = FULL`), the writes that arrive together (MFA steps,
/// tickets, registrations, failures) share one transaction and one
/// `fsync`, each in a savepoint of its own, and nobody hears back before
/// the commit. Nor do this service's writes meet each other in SQLite's
/// busy handler any more, which polls a locked database with sleeps of 1,
/// 2, 5, 10… ms and made most of a write's latency under a burst of logins
/// (the outbox relay's writes, which do not go through this writer, still
/// can). On PostgreSQL each write is a transaction of its own, serialised
/// by the rows it locks.
///
/// A unit of work that starts by reading and then writes could find, on
/// SQLite, that another connection (the relay) wrote in between, and fail
/// with its whole batch; so every unit starts with a write.
#[derive(Debug, Clone)]
pub struct AuthStore {
    db: Db,
    writer: Writer,
}

impl AuthStore {
    /// Wraps an open (migrated) database.
    pub fn new(db: Db) -> Self {
        let writer = Writer::new(&db);
        Self { db, writer }
    }

    /// The writer every write of this store goes through.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Runs `work` as one unit of the writer: its writes are committed when
    /// it returns `Ok`, undone when it returns [`Undo::Rollback`] (whose
    /// answer is returned) or fails.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(&'c mut AnyConnection) -> Unit<'c, T> + Send + 'static,
        T: Send + 'static,
    {
        match self.writer.run(work).await {
            Ok(answer) | Err(Undo::Rollback(answer)) => Ok(answer),
            Err(Undo::Store(e)) => Err(e),
        }
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
        let account = account.clone();
        let enrollment_hash = enrollment_hash.to_owned();
        self.write(move |conn| {
            Box::pin(async move {
                let inserted = sqlx::query(
                    "INSERT INTO accounts (user_id, email, password_hash, totp_sealed, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&account.user_id)
                .bind(&account.email)
                .bind(&account.password_hash)
                .bind(&account.totp_sealed)
                .bind(unix_now())
                .execute(&mut *conn)
                .await;
                match inserted {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => return Err(Undo::Rollback(false)),
                    Err(e) => return Err(e.into()),
                }
                sqlx::query(
                    "INSERT INTO enrollments (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
                )
                .bind(&enrollment_hash)
                .bind(&account.user_id)
                .bind(enrollment_expires_at)
                .execute(&mut *conn)
                .await?;
                record_on(
                    conn,
                    &Event::new("auth", "REGISTER", &account.user_id).by_user(&account.user_id),
                )
                .await?;
                Ok(true)
            })
        })
        .await
    }

    /// The account with this id.
    pub async fn account(&self, user_id: &str) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts a WHERE a.user_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.as_ref().map(account).transpose()?)
    }

    /// The account with this (normalised) email.
    pub async fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts a WHERE a.email = $1");
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
        let token_hash = token_hash.to_owned();
        self.write(move |conn| {
            Box::pin(async move {
                let row = sqlx::query(
                    "UPDATE enrollments SET attempts = attempts + 1 \
                     WHERE token_hash = $1 AND expires_at > $2 AND attempts < $3 RETURNING user_id",
                )
                .bind(&token_hash)
                .bind(unix_now())
                .bind(max_attempts)
                .fetch_optional(&mut *conn)
                .await?;
                Ok(row.map(|r| r.try_get("user_id")).transpose()?)
            })
        })
        .await
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
        let (user_id, token_hash) = (user_id.to_owned(), token_hash.to_owned());
        let recovery_hashes = recovery_hashes.to_vec();
        self.write(move |conn| {
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE accounts SET confirmed = 1, totp_last_step = $1 \
                     WHERE user_id = $2 AND confirmed = 0 AND totp_last_step < $1",
                )
                .bind(step)
                .bind(&user_id)
                .execute(&mut *conn)
                .await?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                for hash in &recovery_hashes {
                    sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
                        .bind(&user_id)
                        .bind(hash)
                        .execute(&mut *conn)
                        .await?;
                }
                sqlx::query("DELETE FROM enrollments WHERE token_hash = $1")
                    .bind(&token_hash)
                    .execute(&mut *conn)
                    .await?;
                record_on(
                    conn,
                    &Event::new("auth", "MFA_ENROLLED", &user_id).by_user(&user_id),
                )
                .await?;
                Ok(true)
            })
        })
        .await
    }

    /// Changes the email and records `EMAIL_CHANGED`; `Ok(false)` when the
    /// new email belongs to another account.
    pub async fn set_email(&self, user_id: &str, email: &str) -> Result<bool, StoreError> {
        let (user_id, email) = (user_id.to_owned(), email.to_owned());
        self.write(move |conn| {
            Box::pin(async move {
                let updated = sqlx::query("UPDATE accounts SET email = $1 WHERE user_id = $2")
                    .bind(&email)
                    .bind(&user_id)
                    .execute(&mut *conn)
                    .await;
                match updated {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => return Err(Undo::Rollback(false)),
                    Err(e) => return Err(e.into()),
                }
                record_on(
                    conn,
                    &Event::new("auth", "EMAIL_CHANGED", &user_id).by_user(&user_id),
                )
                .await?;
                Ok(true)
            })
        })
        .await
    }

    /// Replaces the password hash.
    pub async fn set_password_hash(&self, user_id: &str, phc: &str) -> Result<(), StoreError> {
        let (user_id, phc) = (user_id.to_owned(), phc.to_owned());
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query("UPDATE accounts SET password_hash = $1 WHERE user_id = $2")
                    .bind(&phc)
                    .bind(&user_id)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    /// Records a failed login (for the account if known, and the IP) with
    /// its `LOGIN_FAILED` event and, when the account reaches the lockout
    /// limit, locks it (`ACCOUNT_LOCKED`), in one transaction. The instant
    /// the account is locked until, if this failure locked it.
    pub async fn record_failure(
        &self,
        failure: &Failure<'_>,
        lockout: &LockoutPolicy,
    ) -> Result<Option<i64>, StoreError> {
        let failure = OwnedFailure::from(failure);
        let lockout = *lockout;
        self.write(move |conn| {
            Box::pin(async move {
                Ok(record_failure_in(conn, &failure.borrowed(), &lockout, unix_now()).await?)
            })
        })
        .await
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

    /// Until when the account is locked, if it is at `now`.
    pub async fn locked_until(&self, user_id: &str, now: i64) -> Result<Option<i64>, StoreError> {
        let until: Option<i64> =
            sqlx::query_scalar("SELECT locked_until FROM lockouts WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(until.filter(|until| *until > now))
    }

    /// Stores an MFA ticket (by hash) with the role its session will carry
    /// (see [`Self::login_mfa`]), read from the user service after the
    /// account was read with `revocations_seen` (its
    /// [`Account::revocations`]). When the user's sessions were revoked
    /// since (a role change, see [`Self::revoke_user_sessions`]), that role
    /// may be the old one: the ticket is stored without it, and the MFA step
    /// asks for the current role.
    pub async fn create_ticket(
        &self,
        hash: &str,
        user_id: &str,
        role: &str,
        revocations_seen: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let (hash, user_id, role) = (hash.to_owned(), user_id.to_owned(), role.to_owned());
        self.write(move |conn| {
            Box::pin(async move {
                lock_users_sessions(conn, &user_id).await?;
                sqlx::query(
                    "INSERT INTO mfa_tickets (ticket_hash, user_id, expires_at, role) \
                     VALUES ($1, $2, $3, CASE WHEN COALESCE((SELECT r.revocations \
                     FROM session_revocations r WHERE r.user_id = $2), 0) > $5 \
                     THEN '' ELSE $4 END)",
                )
                .bind(&hash)
                .bind(&user_id)
                .bind(expires_at)
                .bind(&role)
                .bind(revocations_seen)
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// The second login step, in one transaction: counts an attempt on the
    /// ticket, reads the account and its lock, asks `check` about the code,
    /// spends the TOTP step or recovery code, and then either opens the
    /// session (ticket consumed, failures forgotten, session, first refresh
    /// token and `LOGIN` event) or records the failure (`LOGIN_FAILED`, and
    /// the lock when it is the last one allowed). The outcome exists if and
    /// only if the transaction committed.
    ///
    /// Concurrent steps are serialised by the rows they change: the ticket
    /// row (one ticket opens at most one session), the account's last TOTP
    /// step and the recovery code (a code opens at most one session; the
    /// loser is refused as a replay). On SQLite the steps run one after the
    /// other in the writer; on PostgreSQL the ticket row is locked by the
    /// first statement, and a step waiting for it sees what the first one
    /// did (ticket gone, or one attempt more).
    pub async fn login_mfa<F>(&self, step: &MfaStep, check: F) -> Result<MfaOutcome, StoreError>
    where
        F: FnOnce(&Account) -> CodeCheck + Send + 'static,
    {
        let step = step.clone();
        self.write(move |conn| Box::pin(async move { mfa_in(conn, &step, check).await }))
            .await
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
        let hash = hash.to_owned();
        self.write(move |conn| {
            Box::pin(async move {
                // Spend it first (a write first: see the type's documentation).
                let spent = sqlx::query(
                    "UPDATE refresh_tokens SET used_at = $1 \
                     WHERE token_hash = $2 AND used_at IS NULL RETURNING session_id",
                )
                .bind(unix_now())
                .bind(&hash)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(row) = spent {
                    return Ok(RefreshUse::Fresh(row.try_get("session_id")?));
                }
                // Already spent (also when a concurrent use of the same token
                // won the race: that is reuse too), or unknown.
                let session_id: Option<String> = sqlx::query_scalar(
                    "SELECT session_id FROM refresh_tokens WHERE token_hash = $1",
                )
                .bind(&hash)
                .fetch_optional(&mut *conn)
                .await?;
                Ok(session_id.map_or(RefreshUse::Unknown, RefreshUse::Reused))
            })
        })
        .await
    }

    /// Issues the next refresh token of a session and marks it seen now.
    pub async fn rotate_refresh(&self, session_id: &str, new_hash: &str) -> Result<(), StoreError> {
        let (session_id, new_hash) = (session_id.to_owned(), new_hash.to_owned());
        self.write(move |conn| {
            Box::pin(async move {
                let now = unix_now();
                sqlx::query(
                    "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) \
                     VALUES ($1, $2, $3)",
                )
                .bind(&new_hash)
                .bind(&session_id)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE session_id = $2")
                    .bind(now)
                    .bind(&session_id)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    /// Revokes one session (no-op if already revoked) and records why.
    pub async fn revoke_session(&self, session_id: &str, reason: &str) -> Result<bool, StoreError> {
        let (session_id, reason) = (session_id.to_owned(), reason.to_owned());
        self.write(move |conn| {
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
                     WHERE session_id = $3 AND revoked_at IS NULL",
                )
                .bind(unix_now())
                .bind(&reason)
                .bind(&session_id)
                .execute(&mut *conn)
                .await?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                let action = if reason == "logout" {
                    "LOGOUT"
                } else {
                    "SESSION_REVOKED"
                };
                let user_id: String =
                    sqlx::query_scalar("SELECT user_id FROM sessions WHERE session_id = $1")
                        .bind(&session_id)
                        .fetch_one(&mut *conn)
                        .await?;
                record_on(
                    conn,
                    &Event::new("auth", action, &session_id)
                        .by_user(user_id)
                        .details(serde_json::json!({"reason": reason})),
                )
                .await?;
                Ok(true)
            })
        })
        .await
    }

    /// Ends every active session of `user_id` (recording `reason` on each),
    /// deletes their pending MFA tickets and counts the revocation (see
    /// [`Self::create_ticket`]), with one `SESSIONS_REVOKED` event naming
    /// `requested_by` (who made the change) as its actor, in one
    /// transaction. Returns how many sessions ended.
    ///
    /// On PostgreSQL the tickets go first: an MFA step that holds a ticket
    /// has this delete wait for its commit, and the sessions' update, a
    /// statement of its own, then sees (and ends) the session it opened.
    pub async fn revoke_user_sessions(
        &self,
        user_id: &str,
        reason: &str,
        requested_by: Option<&str>,
    ) -> Result<u64, StoreError> {
        let (user_id, reason) = (user_id.to_owned(), reason.to_owned());
        let requested_by = requested_by.map(str::to_owned);
        self.write(move |conn| {
            Box::pin(async move {
                lock_users_sessions(conn, &user_id).await?;
                sqlx::query(
                    "INSERT INTO session_revocations (user_id, revocations) VALUES ($1, 1) \
                     ON CONFLICT (user_id) DO UPDATE \
                     SET revocations = session_revocations.revocations + 1",
                )
                .bind(&user_id)
                .execute(&mut *conn)
                .await?;
                let tickets = sqlx::query("DELETE FROM mfa_tickets WHERE user_id = $1")
                    .bind(&user_id)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                let ended = end_sessions_in(conn, &user_id, &reason, None).await?;
                let mut event = Event::new("auth", action::SESSIONS_REVOKED, &user_id).details(
                    serde_json::json!({
                        "reason": reason,
                        "sessions": ended,
                        "mfa_tickets": tickets,
                        "requested_by": requested_by,
                    }),
                );
                if let Some(by) = &requested_by {
                    event = event.by_user(by.clone());
                }
                record_on(conn, &event).await?;
                Ok(ended)
            })
        })
        .await
    }

    /// Changes the password and revokes every other session of the user,
    /// in one transaction.
    pub async fn change_password(
        &self,
        user_id: &str,
        phc: &str,
        keep_session: &str,
    ) -> Result<(), StoreError> {
        let (user_id, phc) = (user_id.to_owned(), phc.to_owned());
        let keep_session = keep_session.to_owned();
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query("UPDATE accounts SET password_hash = $1 WHERE user_id = $2")
                    .bind(&phc)
                    .bind(&user_id)
                    .execute(&mut *conn)
                    .await?;
                end_sessions_in(conn, &user_id, "password_change", Some(&keep_session)).await?;
                record_on(
                    conn,
                    &Event::new("auth", "PASSWORD_CHANGE", &user_id).by_user(&user_id),
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Deletes an account with all it owns; its sessions end at once.
    pub async fn delete_account(&self, user_id: &str) -> Result<bool, StoreError> {
        let user_id = user_id.to_owned();
        self.write(move |conn| {
            Box::pin(async move {
                end_sessions_in(conn, &user_id, "account_deleted", None).await?;
                for sql in [
                    "DELETE FROM recovery_codes WHERE user_id = $1",
                    "DELETE FROM enrollments WHERE user_id = $1",
                    "DELETE FROM mfa_tickets WHERE user_id = $1",
                    "DELETE FROM lockouts WHERE user_id = $1",
                    "DELETE FROM login_failures WHERE user_id = $1",
                    "DELETE FROM session_revocations WHERE user_id = $1",
                ] {
                    sqlx::query(sql).bind(&user_id).execute(&mut *conn).await?;
                }
                let done = sqlx::query("DELETE FROM accounts WHERE user_id = $1")
                    .bind(&user_id)
                    .execute(&mut *conn)
                    .await?;
                record_on(
                    conn,
                    &Event::new("auth", "ACCOUNT_DELETED", &user_id).by_user(&user_id),
                )
                .await?;
                Ok(done.rows_affected() == 1)
            })
        })
        .await
    }
}

/// The MFA step inside the writer's transaction (see [`AuthStore::login_mfa`]).
async fn mfa_in<F>(
    conn: &mut AnyConnection,
    step: &MfaStep,
    check: F,
) -> Result<MfaOutcome, Undo<MfaOutcome>>
where
    F: FnOnce(&Account) -> CodeCheck,
{
    let now = unix_now();
    let Some(ticket) = sqlx::query(
        "UPDATE mfa_tickets SET attempts = attempts + 1 \
         WHERE ticket_hash = $1 AND expires_at > $2 AND attempts < $3 \
         RETURNING user_id, role",
    )
    .bind(&step.ticket_hash)
    .bind(now)
    .bind(step.max_attempts)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(MfaOutcome::TicketInvalid);
    };
    let user_id: String = ticket.try_get("user_id")?;
    let mut role: String = ticket.try_get("role")?;
    if role.is_empty() {
        match &step.fallback_role {
            Some(fallback) => fallback.clone_into(&mut role),
            // The caller asks for the role and comes back.
            None => return Err(Undo::Rollback(MfaOutcome::RoleMissing(user_id))),
        }
    }
    // The account, its lock and whether it has failures to forget, in one
    // statement.
    let sql = format!(
        "SELECT {ACCOUNT_COLUMNS}, \
         (SELECT locked_until FROM lockouts l WHERE l.user_id = a.user_id) AS locked_until, \
         (SELECT COUNT(*) FROM login_failures f WHERE f.user_id = a.user_id) AS failures \
         FROM accounts a WHERE a.user_id = $1"
    );
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&user_id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Err(Undo::Rollback(MfaOutcome::TicketInvalid));
    };
    let account = account(&row)?;
    let locked_until: Option<i64> = row.try_get("locked_until")?;
    let failures: i64 = row.try_get("failures")?;
    if let Some(until) = locked_until.filter(|until| *until > now) {
        // The attempt on the ticket still counts.
        return Ok(MfaOutcome::Locked(until));
    }
    let (spent, amr, refused_as) = match check(&account) {
        CodeCheck::TotpStep(totp_step) => {
            let done = sqlx::query(
                "UPDATE accounts SET totp_last_step = $1 \
                 WHERE user_id = $2 AND totp_last_step < $1",
            )
            .bind(totp_step)
            .bind(&user_id)
            .execute(&mut *conn)
            .await?;
            (done.rows_affected() == 1, "pwd,otp", "code_replayed")
        }
        CodeCheck::Recovery(code_hash) => {
            let done = sqlx::query(
                "UPDATE recovery_codes SET used_at = $1 \
                 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
            )
            .bind(now)
            .bind(&user_id)
            .bind(&code_hash)
            .execute(&mut *conn)
            .await?;
            (done.rows_affected() == 1, "pwd,recovery", "invalid_code")
        }
        CodeCheck::Refused(reason) => (false, "", reason),
        CodeCheck::Unavailable => return Err(Undo::Rollback(MfaOutcome::Unavailable)),
    };
    if !spent {
        let failure = Failure {
            account: Some(&account),
            client_ip: &step.client_ip,
            user_agent: &step.user_agent,
            reason: refused_as,
        };
        let locked = record_failure_in(conn, &failure, &step.lockout, now).await?;
        return Ok(MfaOutcome::Refused {
            reason: refused_as,
            locked_until: locked,
        });
    }
    sqlx::query("DELETE FROM mfa_tickets WHERE ticket_hash = $1")
        .bind(&step.ticket_hash)
        .execute(&mut *conn)
        .await?;
    if failures > 0 {
        sqlx::query("DELETE FROM login_failures WHERE user_id = $1")
            .bind(&user_id)
            .execute(&mut *conn)
            .await?;
    }
    let session = SessionRow {
        session_id: step.session_id.clone(),
        user_id,
        created_at: now,
        last_seen_at: now,
        absolute_expires_at: now + step.session_max,
        revoked_at: None,
        client_ip: step.client_ip.clone(),
        user_agent: step.user_agent.clone(),
        amr: amr.to_owned(),
    };
    insert_session(conn, &session, &account.email, &step.refresh_hash).await?;
    Ok(MfaOutcome::Opened { session, role })
}
