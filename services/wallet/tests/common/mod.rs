//! Shared helpers of the wallet's integration tests: a fresh database per
//! test on either back-end (`trustmesh_store::testing`) and small builders.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use sqlx::Connection;
use trustmesh_store::Db;
use trustmesh_store::group_commit::BatchHandler;
use trustmesh_wallet::batch::TransferBatch;
use trustmesh_wallet::ledger::{LedgerError, NewDeposit, NewTransfer, Posted, TransferKind};
use trustmesh_wallet::{MIGRATIONS, WalletStore};

/// The agent the tests deposit as (listed in `policies/data.json`).
pub const TEST_AGENT: &str = "spiffe://trustmesh.local/agent/test-agent";

pub use trustmesh_store::Backend;

/// A test's wallet database (a fresh one per test, see
/// `trustmesh_store::testing`); removed when dropped.
pub struct TestDb {
    /// The open, migrated database.
    pub db: Db,
    /// The backend.
    pub backend: Backend,
    _guard: trustmesh_store::testing::TestDb,
}

impl TestDb {
    /// A fresh, migrated database on `backend` with a pool of `connections`.
    pub async fn open(backend: Backend, connections: u32) -> Self {
        let guard =
            trustmesh_store::testing::TestDb::open("wallet", backend, connections, &MIGRATIONS)
                .await;
        Self::wrap(guard, backend)
    }

    /// A fresh, migrated database on `backend` with a pool of one
    /// connection that a query waits for at most 200 ms (a busy pool).
    pub async fn open_single(backend: Backend) -> Self {
        let guard = trustmesh_store::testing::TestDb::open_with_timeout(
            "wallet",
            backend,
            1,
            std::time::Duration::from_millis(200),
            &MIGRATIONS,
        )
        .await;
        Self::wrap(guard, backend)
    }

    /// Wraps a test database opened with other migrations.
    pub fn wrap(guard: trustmesh_store::testing::TestDb, backend: Backend) -> Self {
        Self {
            db: guard.db.clone(),
            backend,
            _guard: guard,
        }
    }

    /// A store over this database.
    pub fn store(&self) -> WalletStore {
        WalletStore::new(self.db.clone())
    }
}

/// A fresh user id.
pub fn user() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A deposit by the test agent.
pub fn deposit(to: &str, amount: i64, reference: &str) -> NewDeposit {
    NewDeposit {
        agent: TEST_AGENT.to_owned(),
        to_user: to.to_owned(),
        amount,
        currency: "EUR".to_owned(),
        reference: reference.to_owned(),
    }
}

/// A payment of `amount` EUR from `from` to `to` with a fresh id.
pub fn payment(from: &str, to: &str, amount: i64) -> NewTransfer {
    NewTransfer {
        transfer_id: uuid::Uuid::new_v4().to_string(),
        from_user: from.to_owned(),
        to_user: to.to_owned(),
        amount,
        currency: "EUR".to_owned(),
        kind: TransferKind::Payment,
        reference: format!("pay-{amount}"),
        outgoing_limit_24h: None,
    }
}

/// Deposits `amount` EUR into `to`'s wallet with no limit check.
pub async fn fund(store: &WalletStore, to: &str, amount: i64) {
    store
        .deposit(
            &deposit(to, amount, &uuid::Uuid::new_v4().to_string()),
            |_| Ok(()),
        )
        .await
        .unwrap();
}

/// The EUR balance of `user` (0 without a wallet).
pub async fn eur(store: &WalletStore, user: &str) -> i64 {
    store
        .balances(user)
        .await
        .unwrap()
        .into_iter()
        .find(|(c, _)| c == "EUR")
        .map_or(0, |(_, b)| b)
}

/// The repository's policies, loaded from the working tree, with
/// [`TEST_AGENT`] listed (no agent ships in the default data).
pub fn policies() -> trustmesh_policy::PolicyEngine {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let agents = r#"{"agents": {"/agent/test-agent":
        {"max_deposit": 1000000, "daily_limit": 5000000, "currencies": ["EUR", "USD"]}}}"#;
    trustmesh_policy::PolicyEngine::from_dir(&dir)
        .unwrap()
        .with_extra_data(&[("tests/agents.json".to_owned(), agents.to_owned())])
        .unwrap()
}

/// A deny hook that counts its calls and remembers the reasons.
pub fn recording_hook() -> (
    trustmesh_policy::DenyHook,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let hook: trustmesh_policy::DenyHook = Arc::new(move |_input, decision| {
        sink.lock().unwrap().push(decision.reason.clone());
    });
    (hook, seen)
}

/// The outcome of each of `items` posted one by one through the per-posting
/// fallback of [`TransferBatch`], each in a savepoint of one transaction,
/// committed.
pub async fn post_one_by_one(
    db: &TestDb,
    items: &[NewTransfer],
) -> Vec<Result<Posted, LedgerError>> {
    let mut conn = db.db.pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let mut outcomes = Vec::new();
    for t in items {
        let mut savepoint = tx.begin().await.unwrap();
        let outcome = TransferBatch.run_one(&mut savepoint, t).await;
        if outcome.is_ok() {
            savepoint.commit().await.unwrap();
        } else {
            savepoint.rollback().await.unwrap();
        }
        outcomes.push(outcome);
    }
    tx.commit().await.unwrap();
    outcomes
}
