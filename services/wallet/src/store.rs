//! The wallet's tables (accounts, transfers, entries, outbox) and the one
//! place money moves: [`WalletStore::transfer`] and [`WalletStore::deposit`]
//! post a transfer, its two entries, both cached balances and its event in
//! one database transaction.
//!
//! Transfers go through the wallet's
//! [`BatchWriter`](trustmesh_store::group_commit::BatchWriter): the
//! transfers that queue up together are posted set-based, a fixed handful of
//! statements for the whole batch ([`crate::batch`]), with the per-posting
//! path below as the fallback when a set-based batch fails as a whole.
//! Deposits, which run the deposit policy inside the transaction, always
//! take the per-posting path, as units of the same writer (on SQLite in
//! arrival order with the transfers, in the same transactions).
//!
//! # Correctness under concurrency
//!
//! Every posting of the per-posting path runs the same statements in the
//! same order:
//!
//! 1. insert the transfer row (`ON CONFLICT DO NOTHING`): the idempotency
//!    key is claimed first. On SQLite every posting of this process goes
//!    through one writer: postings that arrive together share one
//!    transaction and one `fsync` (group commit), each in a savepoint of its
//!    own, so a refused posting leaves no trace and the others are kept;
//!    nobody hears back before the commit. On PostgreSQL a deposit is a
//!    transaction of its own (a fallen-back transfer a savepoint of its
//!    batch's), and a concurrent retry with the same key waits on the
//!    unique index until the first commits or rolls back.
//! 2. create missing accounts (`ON CONFLICT DO NOTHING`, in key order);
//! 3. move the money with conditional updates, in `account_id` order so two
//!    transfers between the same accounts lock them in the same order (no
//!    deadlock): the debit is `balance = balance - amount WHERE balance >= amount`
//!    for a user wallet (an overdraw updates nothing and the transaction is
//!    dropped), and both sides are bounded so no balance leaves the `i64` range;
//! 4. after the debit locked the sender's account (so its concurrent
//!    postings are serialised): check the 24 h volume where asked — the
//!    sender's running total minus the total of its last counted transfer
//!    before the window (migration 0003); for a payment or deposit, stamp
//!    the transfer with the time (never before the sender's previous one)
//!    and the sender's running total after it, and raise that total;
//! 5. insert both entries and the outbox event, commit.
//!
//! Serialization failures and deadlocks (PostgreSQL `40001`/`40P01`) and
//! busy/locked SQLite errors are retried a bounded number of times.

use std::time::Duration;
use trustmesh_events::{Event, action};

use futures::TryStreamExt;

use std::sync::Arc;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use time::OffsetDateTime;
use trustmesh_store::group_commit::{BatchWriter, WriterStats};
use trustmesh_store::{Db, StoreError};

use crate::batch::TransferBatch;
use crate::ledger::{
    AccountKind, HistoryEntry, LedgerError, NewDeposit, NewTransfer, Posted, TransferKind,
    TransferRecord, VOLUME_WINDOW, timestamp,
};

/// How many times a posting is attempted when the database reports a
/// serialization failure, a deadlock or a busy lock.
pub const MAX_ATTEMPTS: u32 = 8;

/// The service name in outbox rows.
pub(crate) const SERVICE: &str = "wallet";

pub(crate) const TRANSFER_COLUMNS: &str = "transfer_id, kind, from_kind, from_owner, to_owner, amount, \
                                currency, reference, agent, created_at";

/// Queries over a wallet database.
#[derive(Debug, Clone)]
pub struct WalletStore {
    db: Db,
    /// Runs every posting: transfers set-based, batch by batch
    /// ([`TransferBatch`]); deposits as units of its writer (group commit
    /// on SQLite).
    postings: BatchWriter<TransferBatch>,
}

/// Which side of a posting an account is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Debit,
    Credit,
}

/// One posting, whatever its kind.
#[derive(Clone)]
pub(crate) struct Posting {
    transfer_id: String,
    kind: TransferKind,
    from_kind: AccountKind,
    from_owner: String,
    to_owner: String,
    amount: i64,
    currency: String,
    reference: String,
    agent: Option<String>,
}

/// A check run inside the transaction with the payer's volume of the last
/// 24 h (before this posting): `Err` refuses the posting.
pub(crate) type VolumeCheck = Arc<dyn Fn(i64) -> Result<(), LedgerError> + Send + Sync>;

impl WalletStore {
    /// Wraps an open (migrated) database.
    pub fn new(db: Db) -> Self {
        let postings = BatchWriter::new(&db, TransferBatch);
        Self { db, postings }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The writer every write of this store goes through (plain units share
    /// the postings' queue and transactions).
    pub fn writer(&self) -> &trustmesh_store::group_commit::Writer {
        self.postings.writer()
    }

    /// What the posting writer has committed so far: postings, batches,
    /// and set-based batches that fell back to one posting at a time.
    pub fn writer_stats(&self) -> WriterStats {
        self.postings.stats()
    }

    /// Moves `t.amount` from one user's wallet to another's. A retry with
    /// the same `transfer_id` and content returns the original record
    /// (`replayed`); with other content it is [`LedgerError::Conflict`].
    /// A refused transfer (overdraw, limit) leaves no trace, so its id may be
    /// used again.
    pub async fn transfer(&self, t: &NewTransfer) -> Result<Posted, LedgerError> {
        t.validate()?;
        self.with_retries(|| self.postings.submit(t.clone())).await
    }

    /// Moves `d.amount` from the agent's clearing account to the user's
    /// wallet. Idempotent on (agent, reference). `check` runs inside the
    /// transaction, after the agent's clearing account is locked, with the
    /// agent's deposits in this currency over the last 24 h (excluding this
    /// one): the daily limit. Its `Err` refuses the deposit.
    pub async fn deposit(
        &self,
        d: &NewDeposit,
        check: impl Fn(i64) -> Result<(), LedgerError> + Send + Sync + 'static,
    ) -> Result<Posted, LedgerError> {
        d.validate()?;
        let posting = Posting {
            transfer_id: uuid::Uuid::now_v7().to_string(),
            kind: TransferKind::Deposit,
            from_kind: AccountKind::Agent,
            from_owner: d.agent.clone(),
            to_owner: d.to_user.clone(),
            amount: d.amount,
            currency: d.currency.clone(),
            reference: d.reference.clone(),
            agent: Some(d.agent.clone()),
        };
        let check: VolumeCheck = Arc::new(check);
        self.with_retries(|| {
            self.post_once(&posting, Some(check.clone()), |r| r.matches_deposit(d))
        })
        .await
    }

    /// Runs `attempt` until it succeeds, fails for good, or has been tried
    /// [`MAX_ATTEMPTS`] times on transient database errors.
    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T, LedgerError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, LedgerError>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt().await {
                Err(e) if tries < MAX_ATTEMPTS && transient(&e) => {
                    tracing::debug!(error = %e, tries, "retrying a posting");
                    // Small, growing, jittered pause so that the contenders
                    // do not collide again in lockstep.
                    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 8);
                    tokio::time::sleep(Duration::from_millis(u64::from(tries) * 2 + jitter)).await;
                }
                other => return other,
            }
        }
    }

    /// One attempt at posting `p` in a single transaction.
    async fn post_once(
        &self,
        p: &Posting,
        check: Option<VolumeCheck>,
        same_request: impl Fn(&TransferRecord) -> bool,
    ) -> Result<Posted, LedgerError> {
        let posting = p.clone();
        let posted = self
            .postings
            .writer()
            .run(move |conn| Box::pin(async move { post_in(conn, &posting, check).await }))
            .await?;
        if let Some(record) = posted {
            return Ok(Posted {
                record,
                replayed: false,
            });
        }
        // The key was taken: a replay or a conflict.
        let existing = match &p.agent {
            Some(agent) => self.deposit_by_reference(agent, &p.reference).await?,
            None => self.transfer_by_id(&p.transfer_id).await?,
        };
        match existing {
            Some(record) if same_request(&record) => Ok(Posted {
                record,
                replayed: true,
            }),
            Some(_) => Err(LedgerError::Conflict),
            // Cannot happen (the conflicting row was committed); let the
            // retry loop try again rather than guess.
            None => Err(LedgerError::Store(StoreError::Query(
                sqlx::Error::RowNotFound,
            ))),
        }
    }
}

/// The posting and the 24 h volume check of transfer `t`.
pub(crate) fn transfer_posting(t: &NewTransfer) -> (Posting, Option<VolumeCheck>) {
    let posting = Posting {
        transfer_id: t.transfer_id.clone(),
        kind: t.kind,
        from_kind: AccountKind::User,
        from_owner: t.from_user.clone(),
        to_owner: t.to_user.clone(),
        amount: t.amount,
        currency: t.currency.clone(),
        reference: t.reference.clone(),
        agent: None,
    };
    let amount = t.amount;
    let check = t.outgoing_limit_24h.map(|limit| {
        Arc::new(move |volume: i64| volume_check(volume, amount, limit)) as VolumeCheck
    });
    (posting, check)
}

/// The 24 h limit of a transfer: `volume` (the payer's payments of the
/// last 24 h before this one) plus `amount` must not exceed `limit`.
pub(crate) fn volume_check(volume: i64, amount: i64, limit: i64) -> Result<(), LedgerError> {
    if volume.saturating_add(amount) > limit {
        Err(LedgerError::LimitExceeded)
    } else {
        Ok(())
    }
}

/// The outbox event of a posted transfer or deposit.
pub(crate) fn posting_event(record: &TransferRecord) -> Event {
    let (action, details) = match record.kind {
        TransferKind::Deposit => (
            action::DEPOSIT,
            serde_json::json!({
                "transfer_id": record.transfer_id,
                "agent": record.agent,
                "to_user_id": record.to_user,
                "amount": record.amount,
                "currency": record.currency,
                "reference": record.reference,
            }),
        ),
        _ => (
            "TRANSFER",
            serde_json::json!({
                "transfer_id": record.transfer_id,
                "kind": record.kind.as_str(),
                "from_user_id": record.from_user,
                "to_user_id": record.to_user,
                "amount": record.amount,
                "currency": record.currency,
                "reference": record.reference,
            }),
        ),
    };
    let mut event = Event::new(SERVICE, action, &record.transfer_id).details(details);
    if let Some(agent) = &record.agent {
        event = event.by_workload(agent.clone());
    }
    if let Some(payer) = &record.from_user {
        event = event.by_user(payer.clone());
    }
    event
}

/// The transfer with this id, read on `conn` (inside a transaction).
pub(crate) async fn transfer_on(
    conn: &mut AnyConnection,
    transfer_id: &str,
) -> Result<Option<TransferRecord>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE transfer_id = $1"
    )))
    .bind(transfer_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(transfer_record).transpose()
}

/// Posts `p` inside `tx` (see the module documentation for the order of
/// the statements). `Ok(None)`: its idempotency key is already taken.
pub(crate) async fn post_in(
    conn: &mut AnyConnection,
    p: &Posting,
    check: Option<VolumeCheck>,
) -> Result<Option<TransferRecord>, LedgerError> {
    let (from_owner, to_owner) = (p.from_owner.as_str(), p.to_owner.as_str());
    let (currency, reference) = (p.currency.as_str(), p.reference.as_str());
    let agent = p.agent.as_deref();
    let claimed_at = timestamp(OffsetDateTime::now_utc());

    // 1. Claim the idempotency key (and SQLite's write lock).
    let claimed = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO transfers ({TRANSFER_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING"
    )))
    .bind(&p.transfer_id)
    .bind(p.kind.as_str())
    .bind(p.from_kind.as_str())
    .bind(from_owner)
    .bind(to_owner)
    .bind(p.amount)
    .bind(currency)
    .bind(reference)
    .bind(agent)
    .bind(&claimed_at)
    .execute(&mut *conn)
    .await?;
    if claimed.rows_affected() == 0 {
        return Ok(None);
    }

    // 2. Accounts: the receiver's wallet and an agent's clearing account
    // are created on first use (looked up first: they exist but the first
    // time). A user who never received money has no wallet, which the
    // debit below treats as an empty one.
    let from_key = (p.from_kind, from_owner);
    let to_key = (AccountKind::User, to_owner);
    let (mut from_account, mut to_account) =
        find_accounts(conn, currency, from_key, to_key).await?;
    let mut create = Vec::new();
    if to_account.is_none() {
        create.push(to_key);
    }
    if from_account.is_none() && p.from_kind == AccountKind::Agent {
        create.push(from_key);
    }
    if !create.is_empty() {
        create.sort_unstable();
        for (kind, owner) in &create {
            sqlx::query(
                "INSERT INTO accounts (account_id, kind, owner, currency, balance, created_at) \
                     VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT DO NOTHING",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(kind.as_str())
            .bind(*owner)
            .bind(currency)
            .bind(&claimed_at)
            .execute(&mut *conn)
            .await?;
        }
        (from_account, to_account) = find_accounts(conn, currency, from_key, to_key).await?;
    }
    let Some(from_account) = from_account else {
        // A user without a wallet in this currency holds nothing.
        return Err(LedgerError::InsufficientFunds);
    };
    let to_account = to_account.ok_or(sqlx::Error::RowNotFound)?;

    // 3. Move the money, locking the two accounts in id order.
    let mut legs = [
        (Side::Debit, from_account.as_str()),
        (Side::Credit, to_account.as_str()),
    ];
    legs.sort_unstable_by(|a, b| a.1.cmp(b.1));
    let mut from_after = 0;
    let mut from_total = 0;
    let mut from_last_at: Option<String> = None;
    let mut to_after = 0;
    for (side, account) in legs {
        match side {
            Side::Debit => {
                // A user wallet never goes below zero; a clearing account
                // never below i64::MIN.
                let floor = match p.from_kind {
                    AccountKind::User => p.amount,
                    AccountKind::Agent => i64::MIN + p.amount,
                };
                let after: Option<(i64, i64, Option<String>)> = sqlx::query_as(
                    "UPDATE accounts SET balance = balance - $1 \
                         WHERE account_id = $2 AND balance >= $3 \
                         RETURNING balance, out_total, out_last_at",
                )
                .bind(p.amount)
                .bind(account)
                .bind(floor)
                .fetch_optional(&mut *conn)
                .await?;
                (from_after, from_total, from_last_at) = match (after, p.from_kind) {
                    (Some(after), _) => after,
                    (None, AccountKind::User) => return Err(LedgerError::InsufficientFunds),
                    (None, AccountKind::Agent) => return Err(LedgerError::Overflow),
                };
            }
            Side::Credit => {
                let after: Option<i64> = sqlx::query_scalar(
                    "UPDATE accounts SET balance = balance + $1 \
                         WHERE account_id = $2 AND balance <= $3 RETURNING balance",
                )
                .bind(p.amount)
                .bind(account)
                .bind(i64::MAX - p.amount)
                .fetch_optional(&mut *conn)
                .await?;
                to_after = after.ok_or(LedgerError::Overflow)?;
            }
        }
    }

    // 4. The sender's volume limit and running total, now that its account
    // is locked: a counted transfer is stamped after the lock and never
    // before the sender's previous one, so the sender's transfers are in
    // time order along its running total.
    let now = OffsetDateTime::now_utc();
    if let Some(check) = check {
        let counted = p.from_kind.counted_kind();
        let since = timestamp(now - VOLUME_WINDOW);
        let before = total_before(conn, from_owner, currency, counted, &since).await?;
        check(from_total - before)?;
    }
    let created_at = if p.kind.counts_toward_volume() {
        let created_at = not_before(timestamp(now), from_last_at.as_deref());
        let total_after = from_total
            .checked_add(p.amount)
            .ok_or(LedgerError::Overflow)?;
        sqlx::query("UPDATE accounts SET out_total = $1, out_last_at = $2 WHERE account_id = $3")
            .bind(total_after)
            .bind(&created_at)
            .bind(&from_account)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "UPDATE transfers SET out_total_after = $1, created_at = $2 WHERE transfer_id = $3",
        )
        .bind(total_after)
        .bind(&created_at)
        .bind(&p.transfer_id)
        .execute(&mut *conn)
        .await?;
        created_at
    } else {
        claimed_at
    };

    // 5. The entries (debit first: its v7 id is older) and the event.
    sqlx::query(
        "INSERT INTO entries (entry_id, transfer_id, account_id, owner, amount, \
             balance_after, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7), \
             ($8, $2, $9, $10, $11, $12, $7)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&p.transfer_id)
    .bind(&from_account)
    .bind(from_owner)
    .bind(-p.amount)
    .bind(from_after)
    .bind(&created_at)
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&to_account)
    .bind(to_owner)
    .bind(p.amount)
    .bind(to_after)
    .execute(&mut *conn)
    .await?;
    let record = TransferRecord {
        transfer_id: p.transfer_id.clone(),
        kind: p.kind,
        from_user: (p.from_kind == AccountKind::User).then(|| from_owner.to_owned()),
        to_user: to_owner.to_owned(),
        agent: agent.map(str::to_owned),
        amount: p.amount,
        currency: currency.to_owned(),
        reference: reference.to_owned(),
        created_at,
    };
    let event = posting_event(&record);
    trustmesh_events::outbox::record_on(conn, &event).await?;
    Ok(Some(record))
}

/// `now`, or the sender's last stamp when that is later (a replica whose
/// clock is behind, or a clock stepped back): a sender's stamps never go
/// back.
pub(crate) fn not_before(now: String, last: Option<&str>) -> String {
    match last {
        Some(last) if last > now.as_str() => last.to_owned(),
        _ => now,
    }
}

/// `SELECT` of the running total of the last transfer of a sender that
/// counts toward its volume, of one kind in one currency, stamped before a
/// time (no row: none, a total of 0). The arguments are SQL expressions:
/// placeholders, or columns of an outer query.
pub(crate) fn total_before_sql(owner: &str, currency: &str, kind: &str, since: &str) -> String {
    format!(
        "SELECT t.out_total_after FROM transfers t \
         WHERE t.from_owner = {owner} AND t.currency = {currency} AND t.kind = {kind} \
         AND t.created_at < {since} AND t.out_total_after IS NOT NULL \
         ORDER BY t.created_at DESC, t.out_total_after DESC LIMIT 1"
    )
}

/// The running total of `owner`'s last transfer of `kind` in `currency`
/// stamped before `since` (0 when there is none): its volume since then is
/// its current total minus this.
async fn total_before(
    conn: &mut AnyConnection,
    owner: &str,
    currency: &str,
    kind: TransferKind,
    since: &str,
) -> Result<i64, sqlx::Error> {
    let before: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(total_before_sql(
        "$1", "$2", "$3", "$4",
    )))
    .bind(owner)
    .bind(currency)
    .bind(kind.as_str())
    .bind(since)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(before.unwrap_or(0))
}

/// The ids of the `from` and `to` accounts in `currency`, where they exist.
async fn find_accounts(
    conn: &mut AnyConnection,
    currency: &str,
    from: (AccountKind, &str),
    to: (AccountKind, &str),
) -> Result<(Option<String>, Option<String>), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT account_id, kind, owner FROM accounts WHERE currency = $1 \
             AND ((kind = $2 AND owner = $3) OR (kind = $4 AND owner = $5))",
    )
    .bind(currency)
    .bind(from.0.as_str())
    .bind(from.1)
    .bind(to.0.as_str())
    .bind(to.1)
    .fetch_all(&mut *conn)
    .await?;
    let (mut from_account, mut to_account) = (None, None);
    for row in &rows {
        let id: String = row.try_get("account_id")?;
        let kind: String = row.try_get("kind")?;
        let owner: String = row.try_get("owner")?;
        if kind == from.0.as_str() && owner == from.1 {
            from_account = Some(id);
        } else if kind == to.0.as_str() && owner == to.1 {
            to_account = Some(id);
        }
    }
    Ok((from_account, to_account))
}

impl WalletStore {
    /// The transfer with this id.
    pub async fn transfer_by_id(
        &self,
        transfer_id: &str,
    ) -> Result<Option<TransferRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE transfer_id = $1"
        )))
        .bind(transfer_id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.as_ref().map(transfer_record).transpose()?)
    }

    /// The deposit `agent` made with `reference`.
    pub async fn deposit_by_reference(
        &self,
        agent: &str,
        reference: &str,
    ) -> Result<Option<TransferRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE agent = $1 AND reference = $2"
        )))
        .bind(agent)
        .bind(reference)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.as_ref().map(transfer_record).transpose()?)
    }

    /// The balances of `user_id`'s wallets, `(currency, minor units)`, by currency.
    pub async fn balances(&self, user_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT currency, balance FROM accounts WHERE kind = 'user' AND owner = $1 \
             ORDER BY currency",
        )
        .bind(user_id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get("currency")?, r.try_get("balance")?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Up to `limit` entries of `owner`'s wallets, newest first, older than
    /// the entry `before` (an entry id) when given.
    pub async fn history(
        &self,
        owner: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        const SELECT: &str = "SELECT e.entry_id, e.transfer_id, e.amount, e.balance_after, \
             e.created_at, t.kind, t.currency, t.from_owner, t.to_owner, t.reference \
             FROM entries e JOIN transfers t ON t.transfer_id = e.transfer_id";
        let rows = match before {
            Some(before) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{SELECT} WHERE e.owner = $1 AND e.entry_id < $2 \
                     ORDER BY e.entry_id DESC LIMIT $3"
                )))
                .bind(owner)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(self.db.pool())
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{SELECT} WHERE e.owner = $1 ORDER BY e.entry_id DESC LIMIT $2"
                )))
                .bind(owner)
                .bind(i64::from(limit))
                .fetch_all(self.db.pool())
                .await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| history_entry(r, owner))
            .collect::<Result<_, _>>()?)
    }

    /// The sum of `owner`'s outgoing transfers of `kind` in `currency` over
    /// the last 24 h (a user's payments, an agent's deposits; rollbacks
    /// count toward no volume: 0), and the start of that window. Read from
    /// the running totals in one statement (see migration 0003).
    pub async fn outgoing_volume(
        &self,
        owner: &str,
        currency: &str,
        kind: TransferKind,
    ) -> Result<(i64, String), StoreError> {
        let since = timestamp(OffsetDateTime::now_utc() - VOLUME_WINDOW);
        let Some(account_kind) = kind.volume_of() else {
            return Ok((0, since));
        };
        let volume: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT a.out_total - COALESCE(({}), 0) FROM accounts a \
             WHERE a.owner = $1 AND a.currency = $2 AND a.kind = $5",
            total_before_sql("$1", "$2", "$3", "$4")
        )))
        .bind(owner)
        .bind(currency)
        .bind(kind.as_str())
        .bind(&since)
        .bind(account_kind.as_str())
        .fetch_optional(self.db.pool())
        .await?;
        Ok((volume.unwrap_or(0), since))
    }

    /// Checks the ledger's invariants; see [`check_invariants`].
    pub async fn check_invariants(&self) -> Result<InvariantReport, StoreError> {
        check_invariants(&self.db).await
    }
}

/// Whether `e` is worth another attempt: a serialization failure or
/// deadlock (PostgreSQL), a busy or locked database (SQLite), or the
/// vanished-row race of a replay.
fn transient(e: &LedgerError) -> bool {
    let e = match e {
        LedgerError::Store(StoreError::Query(e)) => e,
        // The whole batch was rolled back: nothing of it was posted.
        LedgerError::Store(StoreError::GroupCommit(_)) => return true,
        _ => return false,
    };
    match e {
        sqlx::Error::RowNotFound => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some("40001" | "40P01" | "5" | "6" | "261" | "262" | "517")
        ),
        _ => false,
    }
}

pub(crate) fn transfer_record(row: &AnyRow) -> Result<TransferRecord, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    let from_kind: String = row.try_get("from_kind")?;
    let from_owner: String = row.try_get("from_owner")?;
    let kind = TransferKind::parse(&kind).ok_or_else(|| corrupt("transfers.kind", &kind))?;
    let from_user = match AccountKind::parse(&from_kind) {
        Some(AccountKind::User) => Some(from_owner),
        Some(AccountKind::Agent) => None,
        None => return Err(corrupt("transfers.from_kind", &from_kind)),
    };
    Ok(TransferRecord {
        transfer_id: row.try_get("transfer_id")?,
        kind,
        from_user,
        to_user: row.try_get("to_owner")?,
        agent: row.try_get("agent")?,
        amount: row.try_get("amount")?,
        currency: row.try_get("currency")?,
        reference: row.try_get("reference")?,
        created_at: row.try_get("created_at")?,
    })
}

fn history_entry(row: &AnyRow, owner: &str) -> Result<HistoryEntry, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    let from_owner: String = row.try_get("from_owner")?;
    let to_owner: String = row.try_get("to_owner")?;
    Ok(HistoryEntry {
        entry_id: row.try_get("entry_id")?,
        transfer_id: row.try_get("transfer_id")?,
        kind: TransferKind::parse(&kind).ok_or_else(|| corrupt("transfers.kind", &kind))?,
        currency: row.try_get("currency")?,
        amount: row.try_get("amount")?,
        balance_after: row.try_get("balance_after")?,
        counterparty: if from_owner == owner {
            to_owner
        } else {
            from_owner
        },
        reference: row.try_get("reference")?,
        created_at: row.try_get("created_at")?,
    })
}

fn corrupt(column: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unexpected {column} value {value:?}").into())
}

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The balances of a currency do not sum to zero.
    NonZeroSum {
        /// The currency.
        currency: String,
        /// The sum of its balances (exact).
        sum: i128,
    },
    /// An account's cached balance differs from the sum of its entries.
    CachedMismatch {
        /// The account.
        account_id: String,
        /// `user` or `agent`.
        kind: String,
        /// Its owner.
        owner: String,
        /// Its currency.
        currency: String,
        /// The cached balance.
        cached: i64,
        /// The sum of its entries.
        derived: i128,
    },
    /// A user wallet is negative.
    NegativeUser {
        /// The account.
        account_id: String,
        /// The user.
        owner: String,
        /// Its currency.
        currency: String,
        /// Its balance.
        balance: i64,
    },
    /// A transfer does not have exactly one debit and one credit of its amount.
    UnbalancedTransfer {
        /// The transfer.
        transfer_id: String,
    },
    /// An entry whose account does not exist.
    OrphanEntry {
        /// The entry.
        entry_id: String,
    },
    /// An account's running total differs from the sum of its transfers
    /// that count toward its volume (a user's payments, an agent's
    /// deposits).
    OutTotalMismatch {
        /// The account.
        account_id: String,
        /// The recorded running total.
        recorded: i64,
        /// The sum of its counted transfers.
        derived: i128,
    },
    /// A counted transfer whose running total is missing or does not rise
    /// by its amount over its sender's previous one (in time order).
    BrokenTotalChain {
        /// The transfer.
        transfer_id: String,
    },
}

/// The totals of one currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrencyTotals {
    /// The currency.
    pub currency: String,
    /// How many accounts hold it.
    pub accounts: u64,
    /// The sum of all their balances (zero when the ledger is sound).
    pub sum: i128,
    /// What user wallets hold in total (what agents brought in, net).
    pub user_total: i128,
}

/// What [`check_invariants`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InvariantReport {
    /// Per currency, sorted.
    pub currencies: Vec<CurrencyTotals>,
    /// The number of transfers checked.
    pub transfers: u64,
    /// The number of entries checked.
    pub entries: u64,
    /// Every violation found (at most 100 of each kind); empty when sound.
    pub violations: Vec<Violation>,
}

impl InvariantReport {
    /// Whether every invariant holds.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl std::fmt::Display for InvariantReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} transfers, {} entries", self.transfers, self.entries)?;
        for c in &self.currencies {
            writeln!(
                f,
                "{}: {} accounts, sum {}, in user wallets {}",
                c.currency, c.accounts, c.sum, c.user_total
            )?;
        }
        if self.violations.is_empty() {
            write!(f, "ok: every invariant holds")
        } else {
            for v in &self.violations {
                writeln!(f, "VIOLATION {v:?}")?;
            }
            write!(f, "{} violations", self.violations.len())
        }
    }
}

/// Checks the ledger of `db` (`trustmesh wallet check`): per currency the
/// balances of all accounts sum to zero; every cached balance equals the
/// sum of its account's entries; no user wallet is negative; every transfer
/// has exactly one debit and one credit of its amount; no entry lacks its
/// account; every account's running total equals the sum of its counted
/// transfers, and each counted transfer's total is its sender's previous
/// one plus its amount (what the 24 h volumes are read from). Read-only;
/// sums are exact (`i128`). On a live database, run it in a quiet moment
/// or accept that a posting committing between its queries may show up as
/// a transient mismatch.
pub async fn check_invariants(db: &Db) -> Result<InvariantReport, StoreError> {
    let mut report = InvariantReport::default();
    let pool = db.pool();

    // Accounts with their derived balances, in Rust to stay exact.
    let accounts = sqlx::query(
        "SELECT account_id, kind, owner, currency, balance, out_total FROM accounts \
         ORDER BY currency",
    )
    .fetch_all(pool)
    .await?;
    let mut derived: std::collections::HashMap<String, i128> = std::collections::HashMap::new();
    // Streamed: memory grows with the accounts, not with the entries.
    let mut entries = sqlx::query("SELECT account_id, amount FROM entries").fetch(pool);
    while let Some(row) = entries.try_next().await? {
        let account: String = row.try_get("account_id")?;
        let amount: i64 = row.try_get("amount")?;
        *derived.entry(account).or_default() += i128::from(amount);
        report.entries += 1;
    }
    drop(entries);
    // The running totals' sums, by (sender, currency, kind), also exact.
    let mut sent: std::collections::HashMap<(String, String, String), i128> =
        std::collections::HashMap::new();
    let mut counted = sqlx::query(
        "SELECT from_owner, currency, kind, amount FROM transfers \
         WHERE kind IN ('payment', 'deposit')",
    )
    .fetch(pool);
    while let Some(row) = counted.try_next().await? {
        let amount: i64 = row.try_get("amount")?;
        *sent
            .entry((
                row.try_get("from_owner")?,
                row.try_get("currency")?,
                row.try_get("kind")?,
            ))
            .or_default() += i128::from(amount);
    }
    drop(counted);
    let mut totals: std::collections::BTreeMap<String, CurrencyTotals> =
        std::collections::BTreeMap::new();
    for row in &accounts {
        let account_id: String = row.try_get("account_id")?;
        let kind: String = row.try_get("kind")?;
        let owner: String = row.try_get("owner")?;
        let currency: String = row.try_get("currency")?;
        let balance: i64 = row.try_get("balance")?;
        let out_total: i64 = row.try_get("out_total")?;
        let counted_kind = AccountKind::parse(&kind)
            .unwrap_or(AccountKind::User)
            .counted_kind();
        let sent_total = sent
            .remove(&(
                owner.clone(),
                currency.clone(),
                counted_kind.as_str().to_owned(),
            ))
            .unwrap_or_default();
        if sent_total != i128::from(out_total) {
            report.violations.push(Violation::OutTotalMismatch {
                account_id: account_id.clone(),
                recorded: out_total,
                derived: sent_total,
            });
        }
        let sum = derived.remove(&account_id).unwrap_or_default();
        if sum != i128::from(balance) {
            report.violations.push(Violation::CachedMismatch {
                account_id: account_id.clone(),
                kind: kind.clone(),
                owner: owner.clone(),
                currency: currency.clone(),
                cached: balance,
                derived: sum,
            });
        }
        if kind == "user" && balance < 0 {
            report.violations.push(Violation::NegativeUser {
                account_id,
                owner,
                currency: currency.clone(),
                balance,
            });
        }
        let t = totals
            .entry(currency.clone())
            .or_insert_with(|| CurrencyTotals {
                currency,
                accounts: 0,
                sum: 0,
                user_total: 0,
            });
        t.accounts += 1;
        t.sum += i128::from(balance);
        if kind == "user" {
            t.user_total += i128::from(balance);
        }
    }
    for t in totals.values() {
        if t.sum != 0 {
            report.violations.push(Violation::NonZeroSum {
                currency: t.currency.clone(),
                sum: t.sum,
            });
        }
    }
    report.currencies = totals.into_values().collect();

    // Entries of accounts that do not exist (the foreign key should make
    // this impossible; SQLite enforces it only with foreign_keys on).
    let orphans: Vec<String> = sqlx::query_scalar(
        "SELECT e.entry_id FROM entries e LEFT JOIN accounts a ON a.account_id = e.account_id \
         WHERE a.account_id IS NULL LIMIT 100",
    )
    .fetch_all(pool)
    .await?;
    report.violations.extend(
        orphans
            .into_iter()
            .map(|entry_id| Violation::OrphanEntry { entry_id }),
    );

    // Each transfer: exactly one debit of -amount and one credit of +amount.
    report.transfers = u64::try_from(
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM transfers")
            .fetch_one(pool)
            .await?,
    )
    .unwrap_or_default();
    let unbalanced: Vec<String> = sqlx::query_scalar(
        "SELECT t.transfer_id FROM transfers t \
         LEFT JOIN entries d ON d.transfer_id = t.transfer_id AND d.amount = -t.amount \
         LEFT JOIN entries c ON c.transfer_id = t.transfer_id AND c.amount = t.amount \
         WHERE d.entry_id IS NULL OR c.entry_id IS NULL \
         OR (SELECT COUNT(*) FROM entries x WHERE x.transfer_id = t.transfer_id) <> 2 \
         LIMIT 100",
    )
    .fetch_all(pool)
    .await?;
    report.violations.extend(
        unbalanced
            .into_iter()
            .map(|transfer_id| Violation::UnbalancedTransfer { transfer_id }),
    );

    // Each counted transfer's running total: its sender's previous one
    // (in the order the volume lookup walks) plus its amount.
    let broken: Vec<String> = sqlx::query_scalar(
        "SELECT transfer_id FROM (\
             SELECT transfer_id, created_at, amount, out_total_after, \
             LAG(out_total_after, 1, CAST(0 AS BIGINT)) OVER (\
                 PARTITION BY from_owner, currency, kind \
                 ORDER BY created_at, out_total_after) AS total_before \
             FROM transfers WHERE kind IN ('payment', 'deposit')) AS chain \
         WHERE total_before IS NULL OR out_total_after IS NULL \
         OR out_total_after - total_before <> amount \
         ORDER BY created_at, transfer_id LIMIT 100",
    )
    .fetch_all(pool)
    .await?;
    report.violations.extend(
        broken
            .into_iter()
            .map(|transfer_id| Violation::BrokenTotalChain { transfer_id }),
    );
    Ok(report)
}
