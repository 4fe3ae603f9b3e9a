//! The MFA login step's one transaction (`AuthStore::login_mfa`), on SQLite
//! and PostgreSQL: what it writes, what it refuses, and that concurrent steps
//! with one ticket or one code open at most one session.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use trustmesh_auth::lockout::LockoutPolicy;
use trustmesh_auth::store::{
    Account, AuthStore, CodeCheck, Failure, MfaOutcome, MfaStep, RefreshUse, SessionRow, unix_now,
};
use trustmesh_events::{Event, Outbox};
use trustmesh_store::testing::TestDb;
use trustmesh_store::{Backend, on_both_backends};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const CONCURRENT: usize = 8;

async fn open(backend: Backend) -> (TestDb, AuthStore) {
    let db = TestDb::open("auth", backend, CONCURRENT as u32 + 2, &MIGRATIONS).await;
    let store = AuthStore::new(db.db.clone());
    (db, store)
}

/// A confirmed account (TOTP step 100 used) with recovery codes `rc-0`…
async fn account(store: &AuthStore) -> Account {
    let user_id = uuid::Uuid::now_v7().to_string();
    let account = Account {
        user_id: user_id.clone(),
        email: format!("{user_id}@example.com"),
        password_hash: "$argon2id$unused".to_owned(),
        totp_sealed: String::new(),
        totp_last_step: -1,
        confirmed: false,
        revocations: 0,
    };
    assert!(
        store
            .create_account(&account, &format!("enrol-{user_id}"), unix_now() + 60)
            .await
            .unwrap()
    );
    let hashes: Vec<String> = (0..10).map(|i| format!("rc-{i}")).collect();
    assert!(
        store
            .confirm(&user_id, &format!("enrol-{user_id}"), 100, &hashes)
            .await
            .unwrap()
    );
    store.account(&user_id).await.unwrap().unwrap()
}

async fn ticket(store: &AuthStore, account: &Account, role: &str) -> String {
    let seen = revocations(store, account).await;
    ticket_seen(store, account, role, seen).await
}

/// The account's revocation count as a password step reads it.
async fn revocations(store: &AuthStore, account: &Account) -> i64 {
    store
        .account(&account.user_id)
        .await
        .unwrap()
        .unwrap()
        .revocations
}

/// A ticket whose role was read after an account read that saw
/// `revocations` revocations.
async fn ticket_seen(store: &AuthStore, account: &Account, role: &str, revocations: i64) -> String {
    let hash = format!("ticket-{}", uuid::Uuid::new_v4().simple());
    store
        .create_ticket(&hash, &account.user_id, role, revocations, unix_now() + 300)
        .await
        .unwrap();
    hash
}

const LOCKOUT: LockoutPolicy = LockoutPolicy {
    max_failures: 5,
    window: Duration::from_secs(900),
    lock_for: Duration::from_secs(900),
    per_ip_max_failures: 0,
};

/// One MFA step with `ticket`, the code judged `check`.
async fn step(store: &AuthStore, ticket: &str, check: CodeCheck) -> MfaOutcome {
    step_with(store, ticket, None, check).await
}

async fn step_with(
    store: &AuthStore,
    ticket: &str,
    fallback_role: Option<&str>,
    check: CodeCheck,
) -> MfaOutcome {
    let session_id = uuid::Uuid::now_v7().to_string();
    let step = MfaStep {
        ticket_hash: ticket.to_owned(),
        max_attempts: 5,
        fallback_role: fallback_role.map(str::to_owned),
        refresh_hash: format!("refresh-{session_id}"),
        session_id,
        session_max: 3600,
        client_ip: "192.0.2.1".to_owned(),
        user_agent: "test".to_owned(),
        lockout: LOCKOUT,
    };
    store.login_mfa(&step, move |_| check).await.unwrap()
}

fn opened(outcome: &MfaOutcome) -> Option<&SessionRow> {
    match outcome {
        MfaOutcome::Opened { session, .. } => Some(session),
        _ => None,
    }
}

async fn count(db: &TestDb, sql: &str, user_id: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(user_id)
        .fetch_one(db.db.pool())
        .await
        .unwrap()
}

async fn sessions(db: &TestDb, user_id: &str) -> i64 {
    count(
        db,
        "SELECT COUNT(*) FROM sessions WHERE user_id = $1",
        user_id,
    )
    .await
}

async fn events(db: &TestDb, action: &str, user_id: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM outbox WHERE action = '{action}' AND target = $1");
    count(db, &sql, user_id).await
}

async fn a_right_code_opens_one_session_with_the_tickets_role(backend: Backend) {
    let (db, store) = open(backend).await;
    let alice = account(&store).await;
    let ticket = ticket(&store, &alice, "finance").await;
    let outcome = step(&store, &ticket, CodeCheck::TotpStep(101)).await;
    let MfaOutcome::Opened { session, role } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(role, "finance");
    assert_eq!(session.user_id, alice.user_id);
    assert_eq!(session.amr, "pwd,otp");
    assert_eq!(sessions(&db, &alice.user_id).await, 1);
    assert_eq!(events(&db, "LOGIN", &alice.user_id).await, 1);
    let refresh: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM refresh_tokens WHERE session_id = $1")
            .bind(&session.session_id)
            .fetch_one(db.db.pool())
            .await
            .unwrap();
    assert_eq!(refresh, 1);
    assert_eq!(
        store
            .account(&alice.user_id)
            .await
            .unwrap()
            .unwrap()
            .totp_last_step,
        101
    );
    // The ticket is spent, and so is the step.
    assert!(matches!(
        step(&store, &ticket, CodeCheck::TotpStep(102)).await,
        MfaOutcome::TicketInvalid
    ));
    let again = ticket_for(&store, &alice).await;
    assert!(matches!(
        step(&store, &again, CodeCheck::TotpStep(101)).await,
        MfaOutcome::Refused {
            reason: "code_replayed",
            locked_until: None
        }
    ));
    assert_eq!(sessions(&db, &alice.user_id).await, 1);
    assert_eq!(events(&db, "LOGIN_FAILED", &alice.user_id).await, 1);
}

async fn ticket_for(store: &AuthStore, account: &Account) -> String {
    ticket(store, account, "user").await
}

async fn a_wrong_code_keeps_the_ticket_and_is_counted(backend: Backend) {
    let (db, store) = open(backend).await;
    let alice = account(&store).await;
    let ticket = ticket_for(&store, &alice).await;
    let refused = step(&store, &ticket, CodeCheck::Refused("invalid_code")).await;
    assert!(
        matches!(
            refused,
            MfaOutcome::Refused {
                reason: "invalid_code",
                locked_until: None
            }
        ),
        "{refused:?}"
    );
    let unknown = step(&store, &ticket, CodeCheck::Recovery("no-such-code".into())).await;
    assert!(matches!(
        unknown,
        MfaOutcome::Refused {
            reason: "invalid_code",
            ..
        }
    ));
    assert_eq!(events(&db, "LOGIN_FAILED", &alice.user_id).await, 2);
    // The same ticket then works with a right code; the failures are forgotten.
    let outcome = step(&store, &ticket, CodeCheck::Recovery("rc-3".into())).await;
    assert_eq!(opened(&outcome).unwrap().amr, "pwd,recovery");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM login_failures WHERE user_id = $1",
            &alice.user_id
        )
        .await,
        0
    );
    // A recovery code works once.
    let next = ticket_for(&store, &alice).await;
    assert!(matches!(
        step(&store, &next, CodeCheck::Recovery("rc-3".into())).await,
        MfaOutcome::Refused {
            reason: "invalid_code",
            ..
        }
    ));
}

async fn a_ticket_allows_a_few_codes_and_failures_lock_the_account(backend: Backend) {
    let (db, store) = open(backend).await;
    let alice = account(&store).await;
    let ticket = ticket_for(&store, &alice).await;
    for _ in 0..4 {
        let outcome = step(&store, &ticket, CodeCheck::Refused("invalid_code")).await;
        assert!(
            matches!(
                outcome,
                MfaOutcome::Refused {
                    locked_until: None,
                    ..
                }
            ),
            "{outcome:?}"
        );
    }
    // The fifth failure of the account locks it.
    let fifth = step(&store, &ticket, CodeCheck::Refused("invalid_code")).await;
    let MfaOutcome::Refused {
        locked_until: Some(until),
        ..
    } = fifth
    else {
        panic!("{fifth:?}");
    };
    assert!(until > unix_now());
    assert_eq!(events(&db, "ACCOUNT_LOCKED", &alice.user_id).await, 1);
    // That ticket has used its five attempts, even with a right code.
    assert!(matches!(
        step(&store, &ticket, CodeCheck::TotpStep(101)).await,
        MfaOutcome::TicketInvalid
    ));
    // Another ticket meets the lock, with a right code too.
    let other = ticket_for(&store, &alice).await;
    assert!(matches!(
        step(&store, &other, CodeCheck::TotpStep(101)).await,
        MfaOutcome::Locked(u) if u == until
    ));
    assert_eq!(sessions(&db, &alice.user_id).await, 0);
    assert_eq!(
        store
            .locked_until(&alice.user_id, unix_now())
            .await
            .unwrap(),
        Some(until)
    );
}

async fn nothing_is_written_when_the_code_cannot_be_checked(backend: Backend) {
    let (db, store) = open(backend).await;
    let alice = account(&store).await;
    let ticket = ticket_for(&store, &alice).await;
    for _ in 0..6 {
        assert!(matches!(
            step(&store, &ticket, CodeCheck::Unavailable).await,
            MfaOutcome::Unavailable
        ));
    }
    let attempts: i64 =
        sqlx::query_scalar("SELECT attempts FROM mfa_tickets WHERE ticket_hash = $1")
            .bind(&ticket)
            .fetch_one(db.db.pool())
            .await
            .unwrap();
    assert_eq!(attempts, 0);
    assert_eq!(events(&db, "LOGIN_FAILED", &alice.user_id).await, 0);
}

async fn a_ticket_without_a_role_needs_one(backend: Backend) {
    let (db, store) = open(backend).await;
    let alice = account(&store).await;
    let ticket = ticket(&store, &alice, "").await;
    let outcome = step(&store, &ticket, CodeCheck::TotpStep(101)).await;
    assert!(
        matches!(&outcome, MfaOutcome::RoleMissing(user) if *user == alice.user_id),
        "{outcome:?}"
    );
    let attempts: i64 =
        sqlx::query_scalar("SELECT attempts FROM mfa_tickets WHERE ticket_hash = $1")
            .bind(&ticket)
            .fetch_one(db.db.pool())
            .await
            .unwrap();
    assert_eq!(attempts, 0, "rolled back");
    let outcome = step_with(&store, &ticket, Some("admin"), CodeCheck::TotpStep(101)).await;
    assert!(matches!(&outcome, MfaOutcome::Opened { role, .. } if role == "admin"));
}

async fn revoking_a_users_sessions_voids_their_tokens_and_tickets(backend: Backend) {
    let (db, store) = open(backend).await;
    let alice = account(&store).await;
    let bob = account(&store).await;
    let first = ticket_for(&store, &alice).await;
    let first = step(&store, &first, CodeCheck::TotpStep(101)).await;
    let first = opened(&first).expect("a session").clone();
    let bobs = ticket_for(&store, &bob).await;
    let bobs = step(&store, &bobs, CodeCheck::TotpStep(101)).await;
    let bobs = opened(&bobs).expect("a session").clone();
    let pending = ticket(&store, &alice, "admin").await;
    assert_eq!(revocations(&store, &alice).await, 0);

    assert_eq!(
        store
            .revoke_user_sessions(&alice.user_id, "role_changed", None)
            .await
            .unwrap(),
        1
    );
    let session = store.session(&first.session_id).await.unwrap().unwrap();
    assert!(session.revoked_at.is_some(), "{session:?}");
    let revoked_reason: String =
        sqlx::query_scalar("SELECT revoked_reason FROM sessions WHERE session_id = $1")
            .bind(&first.session_id)
            .fetch_one(db.db.pool())
            .await
            .unwrap();
    assert_eq!(revoked_reason, "role_changed");
    let others = store.session(&bobs.session_id).await.unwrap().unwrap();
    assert!(others.revoked_at.is_none(), "another user's session stays");
    assert_eq!(events(&db, "SESSIONS_REVOKED", &alice.user_id).await, 1);

    // The ticket pending at the revocation is gone.
    let outcome = step(&store, &pending, CodeCheck::TotpStep(102)).await;
    assert!(matches!(outcome, MfaOutcome::TicketInvalid), "{outcome:?}");
    // A ticket written after it whose role was read before it carries none:
    // the MFA step asks for the current role.
    let stale = ticket_seen(&store, &alice, "admin", 0).await;
    let outcome = step(&store, &stale, CodeCheck::TotpStep(103)).await;
    assert!(
        matches!(&outcome, MfaOutcome::RoleMissing(user) if *user == alice.user_id),
        "{outcome:?}"
    );
    // One whose role was read after it keeps its role.
    assert_eq!(revocations(&store, &alice).await, 1);
    let fresh = ticket_seen(&store, &alice, "user", 1).await;
    let outcome = step(&store, &fresh, CodeCheck::TotpStep(103)).await;
    assert!(
        matches!(&outcome, MfaOutcome::Opened { role, .. } if role == "user"),
        "{outcome:?}"
    );
    // Nothing to end twice.
    for ended in [1, 0] {
        let revoked = store
            .revoke_user_sessions(&bob.user_id, "role_changed", None)
            .await
            .unwrap();
        assert_eq!(revoked, ended);
    }
}

/// A revocation racing an MFA step and a password step's ticket, many times
/// over: whichever commits first, no session stays open and no ticket keeps
/// the role read before the revocation (on PostgreSQL this needs the
/// tickets deleted before the sessions are ended, and the per-user lock).
async fn a_revocation_racing_logins_leaves_no_old_role(backend: Backend) {
    let (db, store) = open(backend).await;
    for round in 0..25 {
        let alice = account(&store).await;
        let pending = ticket(&store, &alice, "admin").await;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(3));
        let mfa = {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                step(&store, &pending, CodeCheck::TotpStep(101)).await
            })
        };
        let password_step = {
            let (store, barrier, alice) = (store.clone(), barrier.clone(), alice.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                ticket_seen(&store, &alice, "admin", 0).await
            })
        };
        barrier.wait().await;
        store
            .revoke_user_sessions(&alice.user_id, "role_changed", None)
            .await
            .unwrap();
        let outcome = mfa.await.unwrap();
        assert!(
            matches!(
                outcome,
                MfaOutcome::Opened { .. } | MfaOutcome::TicketInvalid
            ),
            "round {round}: {outcome:?}"
        );
        password_step.await.unwrap();
        let open = count(
            &db,
            "SELECT COUNT(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL",
            &alice.user_id,
        )
        .await;
        assert_eq!(open, 0, "round {round}: a session outlived the revocation");
        let with_role = count(
            &db,
            "SELECT COUNT(*) FROM mfa_tickets WHERE user_id = $1 AND role <> ''",
            &alice.user_id,
        )
        .await;
        assert_eq!(with_role, 0, "round {round}: a ticket kept the old role");
    }
}

/// Runs `CONCURRENT` steps at once, each with its ticket and code.
async fn race(store: &AuthStore, attempts: Vec<(String, CodeCheck)>) -> Vec<MfaOutcome> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(attempts.len()));
    let tasks: Vec<_> = attempts
        .into_iter()
        .map(|(ticket, check)| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                step(&store, &ticket, check).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

async fn one_ticket_opens_at_most_one_session(backend: Backend) {
    let (db, store) = open(backend).await;
    let alice = account(&store).await;
    let ticket = ticket_for(&store, &alice).await;
    // Different right codes, one ticket.
    let outcomes = race(
        &store,
        (0..CONCURRENT)
            .map(|i| (ticket.clone(), CodeCheck::Recovery(format!("rc-{i}"))))
            .collect(),
    )
    .await;
    assert_eq!(
        outcomes.iter().filter_map(opened).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, MfaOutcome::Opened { .. } | MfaOutcome::TicketInvalid)),
        "{outcomes:?}"
    );
    assert_eq!(sessions(&db, &alice.user_id).await, 1);
    assert_eq!(events(&db, "LOGIN", &alice.user_id).await, 1);
}

async fn one_code_opens_at_most_one_session(backend: Backend) {
    let (db, store) = open(backend).await;
    let alice = account(&store).await;
    // One TOTP step, many tickets.
    let mut attempts = Vec::new();
    for _ in 0..CONCURRENT {
        attempts.push((ticket_for(&store, &alice).await, CodeCheck::TotpStep(101)));
    }
    let outcomes = race(&store, attempts).await;
    assert_eq!(
        outcomes.iter().filter_map(opened).count(),
        1,
        "{outcomes:?}"
    );
    // The others are replays (or meet the lock five of them set).
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            MfaOutcome::Opened { .. }
                | MfaOutcome::Refused {
                    reason: "code_replayed",
                    ..
                }
                | MfaOutcome::Locked(_)
        )),
        "{outcomes:?}"
    );
    assert_eq!(sessions(&db, &alice.user_id).await, 1);
    // One recovery code, many tickets.
    let bob = account(&store).await;
    let mut attempts = Vec::new();
    for _ in 0..CONCURRENT {
        attempts.push((
            ticket_for(&store, &bob).await,
            CodeCheck::Recovery("rc-7".into()),
        ));
    }
    let outcomes = race(&store, attempts).await;
    assert_eq!(
        outcomes.iter().filter_map(opened).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(sessions(&db, &bob.user_id).await, 1);
    assert_eq!(events(&db, "LOGIN", &bob.user_id).await, 1);
}

async fn concurrent_failures_lock_the_account_without_errors(backend: Backend) {
    let (db, store) = open(backend).await;
    let alice = account(&store).await;
    let mut attempts = Vec::new();
    for _ in 0..CONCURRENT {
        attempts.push((
            ticket_for(&store, &alice).await,
            CodeCheck::Refused("invalid_code"),
        ));
    }
    let outcomes = race(&store, attempts).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, MfaOutcome::Refused { .. } | MfaOutcome::Locked(_))),
        "{outcomes:?}"
    );
    assert!(
        store
            .locked_until(&alice.user_id, unix_now())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(sessions(&db, &alice.user_id).await, 0);
}

async fn a_refresh_token_is_spent_once(backend: Backend) {
    let (_db, store) = open(backend).await;
    let alice = account(&store).await;
    let ticket = ticket_for(&store, &alice).await;
    let outcome = step(&store, &ticket, CodeCheck::TotpStep(101)).await;
    let session = opened(&outcome).unwrap();
    let first = format!("refresh-{}", session.session_id);
    let sid = session.session_id.clone();
    assert_eq!(
        store.use_refresh_token(&first).await.unwrap(),
        RefreshUse::Fresh(sid.clone())
    );
    assert_eq!(
        store.use_refresh_token(&first).await.unwrap(),
        RefreshUse::Reused(sid.clone())
    );
    assert_eq!(
        store.use_refresh_token("no-such-token").await.unwrap(),
        RefreshUse::Unknown
    );
    store.rotate_refresh(&sid, "second").await.unwrap();
    // Two uses at once of the next token: one is fresh, the other a reuse.
    let (a, b) = tokio::join!(
        store.use_refresh_token("second"),
        store.use_refresh_token("second")
    );
    let mut uses = [a.unwrap(), b.unwrap()];
    uses.sort_by_key(|u| matches!(u, RefreshUse::Reused(_)));
    assert_eq!(
        uses,
        [RefreshUse::Fresh(sid.clone()), RefreshUse::Reused(sid)]
    );
}

/// The relay's writes (rows marked sent, denies recorded, sent rows purged)
/// go through the store's writer when the outbox is given it, and do what
/// they did on a connection of their own.
async fn the_outbox_writes_through_the_stores_writer(backend: Backend) {
    let (db, store) = open(backend).await;
    let account = account(&store).await;
    let outbox = Outbox::new(db.db.clone()).with_writer(store.writer().clone());
    let failure = Failure {
        account: Some(&account),
        client_ip: "192.0.2.7",
        user_agent: "test",
        reason: "wrong_password",
    };
    store
        .record_failure(&failure, &LockoutPolicy::default())
        .await
        .unwrap();
    outbox
        .record_now(&[Event::new("auth", "DENIED", "auth.v1.Auth/Login")])
        .await
        .unwrap();
    let pending = outbox.pending(100).await.unwrap();
    assert!(pending.iter().any(|e| e.action == "LOGIN_FAILED"));
    assert!(pending.iter().any(|e| e.action == "DENIED"));

    let units = store.writer().stats().units;
    let ids: Vec<&str> = pending.iter().map(|e| e.id.as_str()).collect();
    outbox.remove_delivered(&ids).await.unwrap();
    assert_eq!(
        store.writer().stats().units,
        units + 1,
        "removed through the writer"
    );
    assert!(outbox.pending(100).await.unwrap().is_empty());
    assert_eq!(outbox.depth().await.unwrap(), 0);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(db.db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0, "delivered events leave the outbox");

    // A row an older version marked sent instead of removing it is purged.
    outbox
        .record_now(&[Event::new("auth", "DENIED", "auth.v1.Auth/Refresh")])
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET sent_at = '2026-12-06T00:00:00Z'")
        .execute(db.db.pool())
        .await
        .unwrap();
    let units = store.writer().stats().units;
    let purged = outbox.purge_sent("9999-12-31T00:00:00Z").await.unwrap();
    assert_eq!(purged, 1);
    assert_eq!(
        store.writer().stats().units,
        units + 1,
        "purged through the writer"
    );
}

on_both_backends!(
    the_outbox_writes_through_the_stores_writer,
    a_refresh_token_is_spent_once,
    a_right_code_opens_one_session_with_the_tickets_role,
    a_wrong_code_keeps_the_ticket_and_is_counted,
    a_ticket_allows_a_few_codes_and_failures_lock_the_account,
    nothing_is_written_when_the_code_cannot_be_checked,
    a_ticket_without_a_role_needs_one,
    revoking_a_users_sessions_voids_their_tokens_and_tickets,
    a_revocation_racing_logins_leaves_no_old_role,
    one_ticket_opens_at_most_one_session,
    one_code_opens_at_most_one_session,
    concurrent_failures_lock_the_account_without_errors,
);
