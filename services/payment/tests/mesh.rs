//! The payment service with a real wallet, both served by the mesh runtime
//! (mTLS with SVIDs from a local SPIFFE issuer, the policy layer with
//! `policies/`), on both back-ends: idempotency, limits, rollback rules.
//!
//! The end user is given by two test headers (`x-test-sub`, `x-test-role`)
//! instead of a JWT (token verification is the runtime's business); the
//! caller is a minted gateway SVID, as in production.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Request};
use trustmesh_events::Outbox;
use trustmesh_identity::{EntryStore, Issuer, IssuerConfig, Selector};
use trustmesh_payment::{Hooks, PaymentConfig, PaymentStatus, PaymentStore, start_with_db};
use trustmesh_policy::{DENY_REASON_METADATA, PolicyEngine, Subject, SubjectResolver};
use trustmesh_proto::trustmesh::payment::v1::payment_client::PaymentClient;
use trustmesh_proto::trustmesh::payment::v1::{
    CreatePaymentRequest, GetPaymentRequest, ListTransactionsRequest, RollbackRequest,
};
use trustmesh_proto::trustmesh::wallet::v1::TransferRequest;
use trustmesh_proto::trustmesh::wallet::v1::wallet_client::WalletClient;
use trustmesh_runtime::{MeshChannel, RunningServer, Shutdown, SvidFiles};
use trustmesh_store::testing::TestDb;
use trustmesh_store::{Backend, on_both_backends};
use trustmesh_wallet::{NewDeposit, WalletStore};

on_both_backends!(payments_are_idempotent_and_within_limits);
on_both_backends!(rollbacks_follow_the_rules);

const WALLET_ID: &str = "spiffe://trustmesh.local/svc/wallet";
const PAYMENT_ID: &str = "spiffe://trustmesh.local/svc/payment";
const GATEWAY_ID: &str = "spiffe://trustmesh.local/svc/gateway";
const AGENT: &str = "spiffe://trustmesh.local/agent/test-agent";

/// The repository's policies plus a small USD rollback maximum.
fn policies() -> PolicyEngine {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let extra = r#"{"limits": {"rollback": {"max_amount": {"USD": 100}}}}"#;
    PolicyEngine::from_dir(&dir)
        .unwrap()
        .with_extra_data(&[("tests/limits.json".to_owned(), extra.to_owned())])
        .unwrap()
}

struct Harness {
    config: IssuerConfig,
    payment_addr: SocketAddr,
    wallet_addr: SocketAddr,
    shutdown: Shutdown,
    servers: Vec<RunningServer>,
    wallet_db: TestDb,
    payment_db: TestDb,
    denies: Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

fn test_subjects() -> Arc<dyn SubjectResolver> {
    let resolver = |headers: &http::HeaderMap| -> Result<Option<Subject>, tonic::Status> {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(text("x-test-sub").map(|sub| Subject {
            sub,
            role: text("x-test-role").unwrap_or_else(|| "user".into()),
            sid: "s1".into(),
            mfa: true,
        }))
    };
    Arc::new(resolver)
}

impl Harness {
    async fn start(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let issuer_dir = dir.path().join("issuer");
        // This process holds both workload identities: two entries for its uid.
        let probe = dir.path().join("uid");
        std::fs::write(&probe, b"").unwrap();
        let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&probe).unwrap());
        let store = EntryStore::open(&issuer_dir).unwrap();
        for id in [WALLET_ID, PAYMENT_ID] {
            let selector: Selector = format!("unix:uid:{uid}").parse().unwrap();
            store.create(id, vec![selector]).unwrap();
        }
        let config = IssuerConfig::new(issuer_dir).with_svid_ttl(Duration::from_secs(3600));
        let issuer = Issuer::open(config.clone()).unwrap();
        let shutdown = Shutdown::new();
        let wait = shutdown.clone();
        tokio::spawn(issuer.serve(async move { wait.wait().await }));
        for _ in 0..500 {
            if config.socket_path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let endpoint = format!("unix:{}", config.socket_path.display());
        let wallet_source = trustmesh_identity::x509_source(Some(&endpoint), Some(WALLET_ID))
            .await
            .unwrap();
        let payment_source = trustmesh_identity::x509_source(Some(&endpoint), Some(PAYMENT_ID))
            .await
            .unwrap();

        let wallet_db = TestDb::open("wallet", backend, 8, &trustmesh_wallet::MIGRATIONS).await;
        let payment_db = TestDb::open("payment", backend, 8, &trustmesh_payment::MIGRATIONS).await;
        let policy = policies();
        let wallet = trustmesh_wallet::start_with_db(
            trustmesh_wallet::WalletConfig {
                data_dir: dir.path().to_path_buf(),
                trust_domain: "trustmesh.local".into(),
                grpc_addr: "127.0.0.1:0".parse().unwrap(),
                admin_addr: "127.0.0.1:0".parse().unwrap(),
            },
            wallet_db.db.clone(),
            wallet_source,
            policy.clone(),
            test_subjects(),
            trustmesh_wallet::Hooks::default(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let wallet_addr = wallet.addrs.grpc;
        let mesh = trustmesh_runtime::MeshClient::new(payment_source.clone(), "trustmesh.local");
        let wallet_channel = mesh.channel(&wallet_addr.to_string(), WALLET_ID).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let hook: trustmesh_policy::DenyHook = Arc::new(move |_input, decision| {
            sink.lock().unwrap().push(decision.reason.clone());
        });
        let payment = start_with_db(
            PaymentConfig {
                data_dir: dir.path().to_path_buf(),
                trust_domain: "trustmesh.local".into(),
                grpc_addr: "127.0.0.1:0".parse().unwrap(),
                admin_addr: "127.0.0.1:0".parse().unwrap(),
            },
            payment_db.db.clone(),
            wallet_channel,
            payment_source,
            policy,
            test_subjects(),
            Hooks {
                deny_hook: Some(hook),
                ..Hooks::default()
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        Self {
            config,
            payment_addr: payment.addrs.grpc,
            wallet_addr,
            shutdown,
            servers: vec![payment, wallet],
            wallet_db,
            payment_db,
            denies: seen,
            _dir: dir,
        }
    }

    fn svid(&self, id: &str) -> SvidFiles {
        let issuer = Issuer::open(self.config.clone()).unwrap();
        let svid = issuer.mint(id, Duration::from_secs(3600)).unwrap();
        SvidFiles::from_der(
            svid.cert_chain_der,
            svid.key_pkcs8_der,
            vec![issuer.bundle_der()],
        )
        .unwrap()
    }

    /// The payment service as the gateway.
    fn payments(&self) -> PaymentClient<MeshChannel> {
        let config = self.svid(GATEWAY_ID).client_config(PAYMENT_ID).unwrap();
        let channel =
            trustmesh_runtime::connect_channel(config, &self.payment_addr.to_string()).unwrap();
        PaymentClient::new(channel)
    }

    fn wallet_as(&self, id: &str) -> WalletClient<MeshChannel> {
        let config = self.svid(id).client_config(WALLET_ID).unwrap();
        let channel =
            trustmesh_runtime::connect_channel(config, &self.wallet_addr.to_string()).unwrap();
        WalletClient::new(channel)
    }

    fn wallet(&self) -> WalletStore {
        WalletStore::new(self.wallet_db.db.clone())
    }

    fn store(&self) -> PaymentStore {
        PaymentStore::new(self.payment_db.db.clone())
    }

    async fn fund(&self, user: &str, amount: i64, currency: &str) {
        self.wallet()
            .deposit(
                &NewDeposit {
                    agent: AGENT.to_owned(),
                    to_user: user.to_owned(),
                    amount,
                    currency: currency.to_owned(),
                    reference: uuid::Uuid::new_v4().to_string(),
                },
                |_| Ok(()),
            )
            .await
            .unwrap();
    }

    async fn balance(&self, user: &str, currency: &str) -> i64 {
        self.wallet()
            .balances(user)
            .await
            .unwrap()
            .into_iter()
            .find(|(c, _)| c == currency)
            .map_or(0, |(_, b)| b)
    }

    async fn stop(mut self) {
        self.shutdown.trigger();
        for server in self.servers.drain(..) {
            server.wait().await.unwrap();
        }
    }
}

fn user() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn as_user<T>(message: T, sub: &str, role: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-test-sub", sub.parse().unwrap());
    request
        .metadata_mut()
        .insert("x-test-role", role.parse().unwrap());
    request
}

#[track_caller]
fn denied(status: &tonic::Status, reason: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get(DENY_REASON_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some(reason),
        "{status:?}"
    );
}

fn pay(to: &str, amount: i64, currency: &str, key: &str) -> CreatePaymentRequest {
    CreatePaymentRequest {
        receiver_id: to.to_owned(),
        amount,
        currency: currency.to_owned(),
        idempotency_key: key.to_owned(),
    }
}

async fn payments_are_idempotent_and_within_limits(backend: Backend) {
    let h = Harness::start(backend).await;
    let mut api = h.payments();
    let (alice, bob, carol) = (user(), user(), user());
    h.fund(&alice, 10_000_000, "EUR").await;

    // A payment, and its retry: the original, once.
    let first = api
        .create_payment(as_user(pay(&bob, 1_500, "EUR", "k-1"), &alice, "user"))
        .await
        .unwrap()
        .into_inner();
    let p = first.payment.unwrap();
    assert!(!first.replayed);
    assert_eq!(p.status, "COMPLETED");
    assert_eq!(p.payer_id, alice);
    let again = api
        .create_payment(as_user(pay(&bob, 1_500, "EUR", "k-1"), &alice, "user"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.payment.unwrap().payment_id, p.payment_id);
    assert_eq!(h.balance(&bob, "EUR").await, 1_500);
    // The wallet transfer id is the payment id.
    assert!(
        h.wallet()
            .transfer_by_id(&p.payment_id)
            .await
            .unwrap()
            .is_some()
    );

    // Same key, other content: 409 (ALREADY_EXISTS). Another payer may use the key.
    let conflict = api
        .create_payment(as_user(pay(&bob, 1_501, "EUR", "k-1"), &alice, "user"))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists, "{conflict:?}");
    assert!(conflict.message().starts_with("idempotency_key_reused"));

    // Concurrent retries of one new key: one payment, one transfer.
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let mut api = api.clone();
            let (alice, carol) = (alice.clone(), carol.clone());
            tokio::spawn(async move {
                api.create_payment(as_user(pay(&carol, 10, "EUR", "burst"), &alice, "user"))
                    .await
                    .map(|r| r.into_inner().payment.unwrap().payment_id)
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap().unwrap());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(h.balance(&carol, "EUR").await, 10);

    // An overdraw is recorded as FAILED, and its retry returns that.
    let broke = user();
    let failed = api
        .create_payment(as_user(pay(&bob, 1, "EUR", "x"), &broke, "user"))
        .await
        .unwrap()
        .into_inner();
    let fp = failed.payment.unwrap();
    assert_eq!(
        (fp.status.as_str(), fp.failure_reason.as_str()),
        ("FAILED", "insufficient_funds")
    );
    let failed_again = api
        .create_payment(as_user(pay(&bob, 1, "EUR", "x"), &broke, "user"))
        .await
        .unwrap()
        .into_inner();
    assert!(failed_again.replayed);
    assert_eq!(failed_again.payment.unwrap().payment_id, fp.payment_id);

    // Validation: 422 at the gateway.
    for bad in [
        pay(&alice, 1, "EUR", "self"),
        pay(&bob, 0, "EUR", "zero"),
        pay(&bob, 1, "eur", "cur"),
        pay("nope", 1, "EUR", "rcv"),
        pay(&bob, 1, "EUR", ""),
        pay(&bob, 1, "EUR", &"k".repeat(256)),
    ] {
        let e = api
            .create_payment(as_user(bad, &alice, "user"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }

    // Roles: audit is read-only.
    denied(
        &api.create_payment(as_user(pay(&bob, 1, "EUR", "a"), &alice, "audit"))
            .await
            .unwrap_err(),
        "role_required",
    );
    for role in ["manager", "admin", "finance"] {
        api.create_payment(as_user(pay(&bob, 1, "EUR", role), &alice, role))
            .await
            .unwrap();
    }

    // Per-payment maximum (data.limits.payment.max_amount: 1,000,000).
    denied(
        &api.create_payment(as_user(pay(&bob, 1_000_001, "EUR", "big"), &alice, "user"))
            .await
            .unwrap_err(),
        "limit_exceeded",
    );

    // Rolling 24 h volume (5,000,000): dave pays 5 × 1,000,000, the sixth
    // payment of 1 is refused by the policy with his volume.
    let dave = user();
    h.fund(&dave, 6_000_000, "EUR").await;
    for i in 0..5 {
        let r = api
            .create_payment(as_user(
                pay(&bob, 1_000_000, "EUR", &format!("d{i}")),
                &dave,
                "user",
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.payment.unwrap().status, "COMPLETED");
    }
    denied(
        &api.create_payment(as_user(pay(&bob, 1, "EUR", "d5"), &dave, "user"))
            .await
            .unwrap_err(),
        "daily_limit_exceeded",
    );
    // A retry of a payment made before the volume was reached is answered
    // as the original, not refused by the limit it no longer fits under.
    let retried = api
        .create_payment(as_user(pay(&bob, 1_000_000, "EUR", "d4"), &dave, "user"))
        .await
        .unwrap()
        .into_inner();
    assert!(retried.replayed);
    assert_eq!(retried.payment.unwrap().status, "COMPLETED");
    // If the service's own view of the volume is wrong (here: its rows
    // backdated), the wallet's atomic check still refuses.
    let store = h.store();
    for p in store
        .list(
            &trustmesh_payment::PaymentFilter {
                user_id: Some(dave.clone()),
                ..Default::default()
            },
            50,
        )
        .await
        .unwrap()
    {
        store
            .backdate(&p.payment_id, time::Duration::hours(25))
            .await
            .unwrap();
    }
    assert_eq!(store.volume_24h(&dave, "EUR").await.unwrap(), 0);
    denied(
        &api.create_payment(as_user(pay(&bob, 1, "EUR", "d6"), &dave, "user"))
            .await
            .unwrap_err(),
        "daily_limit_exceeded",
    );
    assert!(
        store.by_key(&dave, "d6").await.unwrap().is_none(),
        "a refused payment leaves no row"
    );
    assert_eq!(h.balance(&dave, "EUR").await, 1_000_000);

    // GetPayment: payer, receiver, finance, audit — not a stranger.
    for (sub, role) in [
        (&alice, "user"),
        (&bob, "user"),
        (&carol, "finance"),
        (&carol, "audit"),
    ] {
        let got = api
            .get_payment(as_user(
                GetPaymentRequest {
                    payment_id: p.payment_id.clone(),
                },
                sub,
                role,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.amount, 1_500);
        // The receiver does not see the payer's key.
        assert_eq!(got.idempotency_key.is_empty(), *sub == bob);
    }
    denied(
        &api.get_payment(as_user(
            GetPaymentRequest {
                payment_id: p.payment_id.clone(),
            },
            &carol,
            "user",
        ))
        .await
        .unwrap_err(),
        "not_party",
    );

    // Only the payment workload may call wallet.Transfer: not the gateway.
    let mut as_gateway = h.wallet_as(GATEWAY_ID);
    let e = as_gateway
        .transfer(TransferRequest {
            transfer_id: uuid::Uuid::new_v4().to_string(),
            from_user_id: alice.clone(),
            to_user_id: bob.clone(),
            amount: 1,
            currency: "EUR".into(),
            kind: "payment".into(),
            reference: "x".into(),
            outgoing_limit_24h: 0,
        })
        .await
        .unwrap_err();
    denied(&e, "workload_not_allowed");

    // Events: one PAYMENT per settled payment, FAILED ones as failures.
    let events = Outbox::new(store.db().clone())
        .pending(10_000)
        .await
        .unwrap();
    let payments = events.iter().filter(|e| e.action == "PAYMENT").count();
    assert_eq!(payments, 1 + 1 + 1 + 3 + 5, "{events:?}");
    assert!(events.iter().any(|e| e.action == "PAYMENT"
        && e.status.as_str() == "FAIL"
        && e.target == fp.payment_id));
    let denies = h.denies.lock().unwrap().clone();
    assert!(
        denies
            .iter()
            .filter(|r| *r == "daily_limit_exceeded")
            .count()
            >= 2,
        "{denies:?}"
    );
    assert!(
        trustmesh_wallet::check_invariants(&h.wallet_db.db)
            .await
            .unwrap()
            .is_ok()
    );
    h.stop().await;
}

async fn rollbacks_follow_the_rules(backend: Backend) {
    let h = Harness::start(backend).await;
    let mut api = h.payments();
    let (alice, bob, carol, fin) = (user(), user(), user(), user());
    h.fund(&alice, 100_000, "EUR").await;
    h.fund(&alice, 100_000, "USD").await;
    let paid = |r: tonic::Response<trustmesh_proto::trustmesh::payment::v1::CreatePaymentReply>| {
        r.into_inner().payment.unwrap()
    };
    let p1 = paid(
        api.create_payment(as_user(pay(&bob, 700, "EUR", "r1"), &alice, "user"))
            .await
            .unwrap(),
    );
    let rollback = |id: &str, reason: &str| RollbackRequest {
        payment_id: id.to_owned(),
        reason: reason.to_owned(),
    };

    // Only finance.
    for role in ["user", "admin", "audit"] {
        denied(
            &api.rollback(as_user(rollback(&p1.payment_id, "x"), &bob, role))
                .await
                .unwrap_err(),
            "role_required",
        );
    }
    // A reason is required.
    assert_eq!(
        api.rollback(as_user(rollback(&p1.payment_id, "  "), &fin, "finance"))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    // Unknown payment.
    assert_eq!(
        api.rollback(as_user(
            rollback(&uuid::Uuid::now_v7().to_string(), "x"),
            &fin,
            "finance"
        ))
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );

    // Within 24 h and the maximum: the money goes back, who/why recorded.
    let done = api
        .rollback(as_user(
            rollback(&p1.payment_id, "customer complaint"),
            &fin,
            "finance",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.status, "ROLLED_BACK");
    let rb = done.rollback.unwrap();
    assert_eq!(
        (rb.by_user_id.as_str(), rb.reason.as_str()),
        (fin.as_str(), "customer complaint")
    );
    assert_eq!(h.balance(&alice, "EUR").await, 100_000);
    assert_eq!(h.balance(&bob, "EUR").await, 0);
    let transfer = h
        .wallet()
        .transfer_by_id(&rb.rollback_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(transfer.kind.as_str(), "rollback");
    assert_eq!(transfer.from_user.as_deref(), Some(bob.as_str()));

    // Never twice: 409.
    let twice = api
        .rollback(as_user(rollback(&p1.payment_id, "again"), &fin, "finance"))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::AlreadyExists, "{twice:?}");
    assert!(twice.message().starts_with("already_rolled_back"));

    // After the window (24 h): refused by policy.
    let p2 = paid(
        api.create_payment(as_user(pay(&bob, 10, "EUR", "r2"), &alice, "user"))
            .await
            .unwrap(),
    );
    h.store()
        .backdate(
            &p2.payment_id,
            time::Duration::hours(24) + time::Duration::minutes(1),
        )
        .await
        .unwrap();
    denied(
        &api.rollback(as_user(rollback(&p2.payment_id, "late"), &fin, "finance"))
            .await
            .unwrap_err(),
        "rollback_window_expired",
    );

    // Above the maximum (USD: 100 in this test's data).
    let p3 = paid(
        api.create_payment(as_user(pay(&bob, 101, "USD", "r3"), &alice, "user"))
            .await
            .unwrap(),
    );
    denied(
        &api.rollback(as_user(rollback(&p3.payment_id, "big"), &fin, "finance"))
            .await
            .unwrap_err(),
        "rollback_limit_exceeded",
    );

    // The receiver can no longer cover it: 409 (FAILED_PRECONDITION), and
    // nothing is recorded but the refused attempt; later it works.
    let p4 = paid(
        api.create_payment(as_user(pay(&bob, 500, "EUR", "r4"), &alice, "user"))
            .await
            .unwrap(),
    );
    let spent = paid(
        api.create_payment(as_user(pay(&carol, 500, "EUR", "spend"), &bob, "user"))
            .await
            .unwrap(),
    );
    assert_eq!(spent.status, "COMPLETED");
    let broke = api
        .rollback(as_user(rollback(&p4.payment_id, "fraud"), &fin, "finance"))
        .await
        .unwrap_err();
    assert_eq!(broke.code(), Code::FailedPrecondition, "{broke:?}");
    assert!(broke.message().starts_with("insufficient_funds"));
    let still = h.store().get(&p4.payment_id).await.unwrap().unwrap();
    assert_eq!(still.status, PaymentStatus::Completed);
    assert!(still.rollback.is_none());
    h.fund(&bob, 500, "EUR").await;
    let later = api
        .rollback(as_user(rollback(&p4.payment_id, "fraud"), &fin, "finance"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(later.status, "ROLLED_BACK");

    // A failed payment cannot be rolled back.
    let failed = paid(
        api.create_payment(as_user(pay(&alice, 1, "EUR", "f"), &user(), "user"))
            .await
            .unwrap(),
    );
    let e = api
        .rollback(as_user(rollback(&failed.payment_id, "x"), &fin, "finance"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().starts_with("not_completed"));

    // Finance lists with filters, newest first, paginated.
    let list = |req: ListTransactionsRequest| {
        let mut api = api.clone();
        let fin = fin.clone();
        async move {
            api.list_transactions(as_user(req, &fin, "finance"))
                .await
                .map(|r| r.into_inner())
        }
    };
    let all = list(ListTransactionsRequest {
        user_id: alice.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let ids: Vec<_> = all.payments.iter().map(|p| p.payment_id.clone()).collect();
    // Newest first: alice received the failed payment last, after paying four.
    let expected = [&failed, &p4, &p3, &p2, &p1].map(|p| p.payment_id.clone());
    assert_eq!(ids, expected);
    let rolled = list(ListTransactionsRequest {
        status: "ROLLED_BACK".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(rolled.payments.len(), 2);
    let mid = list(ListTransactionsRequest {
        min_amount: 100,
        max_amount: 500,
        page_size: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(mid.payments.len(), 1);
    let next = list(ListTransactionsRequest {
        min_amount: 100,
        max_amount: 500,
        page_size: 1,
        page_token: mid.next_page_token.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let amounts: Vec<i64> = mid
        .payments
        .iter()
        .chain(&next.payments)
        .map(|p| p.amount)
        .collect();
    assert_eq!(amounts.len(), 2);
    assert!(amounts.iter().all(|a| (100..=500).contains(a)));
    let future = list(ListTransactionsRequest {
        since: "2999-01-01T00:00:00Z".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(future.payments.is_empty());
    assert_eq!(
        list(ListTransactionsRequest {
            since: "yesterday".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    denied(
        &api.list_transactions(as_user(ListTransactionsRequest::default(), &alice, "user"))
            .await
            .unwrap_err(),
        "role_required",
    );

    // Events: a ROLLBACK per rollback, the refused attempt as a failure.
    let events = Outbox::new(h.store().db().clone())
        .pending(10_000)
        .await
        .unwrap();
    let rollbacks: Vec<_> = events.iter().filter(|e| e.action == "ROLLBACK").collect();
    assert_eq!(rollbacks.len(), 3, "{events:?}");
    assert_eq!(
        rollbacks
            .iter()
            .filter(|e| e.status.as_str() == "FAIL")
            .count(),
        1
    );
    assert!(
        trustmesh_wallet::check_invariants(&h.wallet_db.db)
            .await
            .unwrap()
            .is_ok()
    );
    h.stop().await;
}
