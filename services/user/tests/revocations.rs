//! A role change ends the user's sessions at the (real) auth service, and
//! keeps asking until auth answers: the revocation is committed with the
//! role, so neither auth being down nor the user service stopping between
//! the commit and the call leaves a session with the old role. On SQLite
//! and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use tonic::service::Routes;
use tonic::{Code, Request};
use trustmesh_auth::hash_pool::HashPool;
use trustmesh_auth::password::{HashParams, Hasher};
use trustmesh_auth::service::{AuthService, AuthSettings};
use trustmesh_auth::store::AuthStore;
use trustmesh_proto::trustmesh::auth::v1::auth_server::AuthServer;
use trustmesh_proto::trustmesh::user::v1::SetRoleRequest;
use trustmesh_proto::trustmesh::user::v1::user_server::User as _;
use trustmesh_runtime::testing::{serve_plain, unreachable_channel};
use trustmesh_runtime::{MeshChannel, RetryUnprocessed};
use trustmesh_store::testing::TestDb;
use trustmesh_store::{Backend, on_both_backends};
use trustmesh_tokens::{KeyRing, RotationPolicy, TokenIssuer};
use trustmesh_user::revoker::{Pass, Revoker};
use trustmesh_user::service::UserService;
use trustmesh_user::store::UserStore;

static AUTH_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../auth/migrations");

/// The auth service on loopback (plain gRPC: the policy layer and mTLS are
/// the runtime's, tested elsewhere), over its own database.
struct Auth {
    db: TestDb,
    channel: MeshChannel,
    _keys: tempfile::TempDir,
}

impl Auth {
    async fn start(backend: Backend) -> Self {
        let db = TestDb::open("auth", backend, 4, &AUTH_MIGRATIONS).await;
        let keys = tempfile::tempdir().unwrap();
        let signing =
            KeyRing::open(&keys.path().join("signing"), RotationPolicy::default()).unwrap();
        let service = AuthService::new(
            AuthStore::new(db.db.clone()),
            Hasher::new(HashParams::default()).unwrap(),
            HashPool::new(1, 0).unwrap(),
            trustmesh_keyring::KeyRing::open(&keys.path().join("secrets")).unwrap(),
            TokenIssuer::new(signing, "trustmesh", "trustmesh", Duration::from_secs(900)),
            RetryUnprocessed::new(unreachable_channel().await.unwrap()),
            AuthSettings::default(),
        );
        let channel = serve_plain(Routes::new(AuthServer::new(service)))
            .await
            .unwrap();
        Self {
            db,
            channel: RetryUnprocessed::new(channel),
            _keys: keys,
        }
    }

    /// How many times auth ended every session of `user_id`.
    async fn revocations(&self, user_id: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(
            "SELECT revocations FROM session_revocations WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(self.db.db.pool())
        .await
        .unwrap()
        .unwrap_or(0)
    }

    /// The actors of the `SESSIONS_REVOKED` events of `user_id`.
    async fn revoked_by(&self, user_id: &str) -> Vec<Option<String>> {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT actor_user FROM outbox WHERE action = 'SESSIONS_REVOKED' AND target = $1 \
             ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(self.db.db.pool())
        .await
        .unwrap()
    }
}

async fn users(backend: Backend) -> (TestDb, UserStore) {
    let db = TestDb::open("user", backend, 4, &trustmesh_user::MIGRATIONS).await;
    let store = UserStore::new(db.db.clone());
    (db, store)
}

/// A profile with the `user` role; its id.
async fn profile(store: &UserStore) -> String {
    let user_id = uuid::Uuid::now_v7().to_string();
    store
        .ensure_profile(&user_id, &format!("{user_id}@example.com"))
        .await
        .unwrap();
    user_id
}

async fn pending(store: &UserStore) -> usize {
    store
        .due_revocations("9999-12-31T23:59:59.999999Z", 1000)
        .await
        .unwrap()
        .len()
}

fn set_role(user_id: &str, role: &str) -> Request<SetRoleRequest> {
    Request::new(SetRoleRequest {
        user_id: user_id.to_owned(),
        role: role.to_owned(),
        ..SetRoleRequest::default()
    })
}

/// With auth up, the role change itself ends the sessions, names who asked
/// (the operator here), and leaves nothing pending.
async fn a_role_change_ends_the_sessions_at_once(backend: Backend) {
    let auth = Auth::start(backend).await;
    let (db, store) = users(backend).await;
    let bob = profile(&store).await;
    // Every time column has the one stored form (six fractional digits).
    let created = store.profile(&bob).await.unwrap().unwrap().created_at;
    assert!(
        created.len() == 27 && created.as_bytes()[19] == b'.' && created.ends_with('Z'),
        "{created}"
    );
    let service = UserService::new(store.clone(), auth.channel.clone());

    let answer = service.set_role(set_role(&bob, "manager")).await.unwrap();
    assert_eq!(answer.into_inner().role, "manager");
    assert_eq!(auth.revocations(&bob).await, 1);
    assert_eq!(auth.revoked_by(&bob).await, vec![Some("ops".to_owned())]);
    assert_eq!(
        pending(&store).await,
        0,
        "a confirmed revocation is forgotten"
    );

    // The role the user has already: nothing changes, no session ends,
    // nothing is recorded.
    let events = role_events(&db, &bob).await;
    let answer = service.set_role(set_role(&bob, "manager")).await.unwrap();
    assert_eq!(answer.into_inner().role, "manager");
    assert_eq!(auth.revocations(&bob).await, 1);
    assert_eq!(pending(&store).await, 0);
    assert_eq!(role_events(&db, &bob).await, events);
}

/// How many `ROLE_CHANGED` events the user service recorded about `user_id`.
async fn role_events(db: &TestDb, user_id: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM outbox WHERE action = 'ROLE_CHANGED' AND target = $1",
    )
    .bind(user_id)
    .fetch_one(db.db.pool())
    .await
    .unwrap()
}

/// With auth down, the role still changes, the caller hears 503
/// `sessions_not_revoked`, and the revocation waits; the revoker leaves it
/// alone while it is young, then asks auth once auth is back.
async fn an_unanswered_revocation_is_asked_again(backend: Backend) {
    let (_db, store) = users(backend).await;
    let bob = profile(&store).await;
    let down = UserService::new(
        store.clone(),
        RetryUnprocessed::new(unreachable_channel().await.unwrap()),
    );

    let refused = down.set_role(set_role(&bob, "finance")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.message().starts_with("sessions_not_revoked"),
        "{refused:?}"
    );
    assert_eq!(store.profile(&bob).await.unwrap().unwrap().role, "finance");
    assert_eq!(pending(&store).await, 1);

    // Still down: the pass stops and keeps it.
    let still_down = Revoker::new(
        store.clone(),
        RetryUnprocessed::new(unreachable_channel().await.unwrap()),
    );
    let pass = still_down.run_due(Duration::ZERO).await.unwrap();
    assert!(pass.auth_unreachable, "{pass:?}");
    assert_eq!(pending(&store).await, 1);

    let auth = Auth::start(backend).await;
    let revoker = Revoker::new(store.clone(), auth.channel.clone());
    // Younger than the grace: the request that made it may still be asking.
    let young = revoker.run_due(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(young, Pass::default());
    assert_eq!(auth.revocations(&bob).await, 0);

    let pass = revoker.run_due(Duration::ZERO).await.unwrap();
    assert_eq!(pass.confirmed, 1, "{pass:?}");
    assert_eq!(auth.revocations(&bob).await, 1);
    assert_eq!(pending(&store).await, 0);
    // Nothing is asked twice.
    assert_eq!(
        revoker.run_due(Duration::ZERO).await.unwrap(),
        Pass::default()
    );
    assert_eq!(auth.revocations(&bob).await, 1);
}

/// A stop between the role's commit and the call to auth (here: the store's
/// role change, which the handler would have followed with the call) leaves
/// the revocation in the store, and the revoker of the next start sends
/// it, with who asked for it.
async fn a_revocation_survives_a_stop_before_the_call(backend: Backend) {
    let auth = Auth::start(backend).await;
    let (_db, store) = users(backend).await;
    let admin = profile(&store).await;
    let (alice, carol) = (profile(&store).await, profile(&store).await);
    for user in [&alice, &carol] {
        let changed = store
            .set_role(user, "audit", &admin)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(changed.from, "user");
        assert_eq!(changed.revocation.unwrap().user_id, *user);
    }
    // Deleting an account forgets what it was owed (auth ended its sessions
    // before the profile went).
    assert!(store.delete(&carol).await.unwrap());
    assert_eq!(pending(&store).await, 1);

    let pass = Revoker::new(store.clone(), auth.channel.clone())
        .run_due(Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(pass.confirmed, 1, "{pass:?}");
    assert_eq!(auth.revocations(&alice).await, 1);
    assert_eq!(auth.revoked_by(&alice).await, vec![Some(admin)]);
    assert_eq!(auth.revocations(&carol).await, 0);
    assert_eq!(pending(&store).await, 0);
}

on_both_backends!(
    a_role_change_ends_the_sessions_at_once,
    an_unanswered_revocation_is_asked_again,
    a_revocation_survives_a_stop_before_the_call,
);
