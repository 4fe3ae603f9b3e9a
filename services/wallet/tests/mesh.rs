//! The wallet served by the real mesh runtime (mTLS with SVIDs from a local
//! SPIFFE issuer, the policy layer with `policies/`), on both back-ends:
//! who may call what, end to end.
//!
//! The end user is given by two test headers (`x-test-sub`, `x-test-role`)
//! instead of a JWT: token verification is the runtime's business and is
//! tested there; here the subject only feeds the wallet policy.

#![allow(clippy::unwrap_used)]

mod common;

use trustmesh_store::on_both_backends;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TEST_AGENT, TestDb, policies, recording_hook, user};
use tonic::{Code, Request};
use trustmesh_identity::{Issuer, IssuerConfig};
use trustmesh_policy::{DENY_REASON_METADATA, Subject, SubjectResolver};
use trustmesh_proto::trustmesh::wallet::v1::wallet_client::WalletClient;
use trustmesh_proto::trustmesh::wallet::v1::{
    DepositRequest, GetBalanceRequest, GetOutgoingVolumeRequest, ListTransactionsRequest,
    TransferRequest,
};
use trustmesh_runtime::{MeshChannel, RunningServer, RuntimeError, Shutdown, SvidFiles};
use trustmesh_wallet::{Hooks, WalletConfig, start_with_db};

on_both_backends!(policy_decides_every_call_over_mtls);

/// A SQLite wallet whose log cannot be synced tells the agent that the
/// outcome of its deposit is unknown (`Unavailable`, `outcome_unknown`,
/// retry with the same reference) and stops with the fault, so that the
/// process exits with an error and its supervisor starts it again (and
/// SQLite recovers the database from the disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_log_sync_stops_the_wallet() {
    let mut db = TestDb::open(Backend::Sqlite, 8).await;
    db.db = db.db.clone().with_log_sync(Arc::new(|_: &std::fs::File| {
        Err(std::io::Error::other("injected write-back error"))
    }));
    let mut mesh = Harness::start_on(db).await;
    let status = mesh
        .client(TEST_AGENT)
        .deposit(deposit(&user(), 100, "ext-fault"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), trustmesh_store::NOT_DURABLE_MESSAGE);
    let server = mesh.server.take().unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("the wallet kept serving after the fault");
    match stopped {
        Err(RuntimeError::Fault(why)) => assert!(why.contains("injected"), "{why}"),
        other => panic!("the wallet stopped without its fault: {other:?}"),
    }
    assert!(
        mesh.shutdown.is_triggered(),
        "the rest of the process runs on"
    );
}

const WALLET_ID: &str = "spiffe://trustmesh.local/svc/wallet";
const GATEWAY_ID: &str = "spiffe://trustmesh.local/svc/gateway";
const PAYMENT_ID: &str = "spiffe://trustmesh.local/svc/payment";
const MALLORY_ID: &str = "spiffe://trustmesh.local/agent/mallory";

/// An issuer, the wallet server, and a way to mint client SVIDs.
struct Harness {
    config: IssuerConfig,
    addr: SocketAddr,
    shutdown: Shutdown,
    server: Option<RunningServer>,
    denies: Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    _db: TestDb,
}

impl Harness {
    async fn start(backend: Backend) -> Self {
        Self::start_on(TestDb::open(backend, 8).await).await
    }

    /// The wallet served over `db`.
    async fn start_on(db: TestDb) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config =
            IssuerConfig::new(dir.path().join("issuer")).with_svid_ttl(Duration::from_secs(3600));
        let issuer = Issuer::open(config.clone()).unwrap();
        let registry = issuer.registry();
        let shutdown = Shutdown::new();
        let wait = shutdown.clone();
        tokio::spawn(issuer.serve(async move { wait.wait().await }));
        for _ in 0..500 {
            if config.socket_path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        registry.register_pid(std::process::id(), WALLET_ID.to_owned());
        let endpoint = format!("unix:{}", config.socket_path.display());
        let source = trustmesh_identity::x509_source(Some(&endpoint), Some(WALLET_ID))
            .await
            .unwrap();

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
        let subjects: Arc<dyn SubjectResolver> = Arc::new(resolver);
        let (hook, denies) = recording_hook();
        let server = start_with_db(
            WalletConfig {
                data_dir: dir.path().to_path_buf(),
                trust_domain: "trustmesh.local".into(),
                grpc_addr: "127.0.0.1:0".parse().unwrap(),
                admin_addr: "127.0.0.1:0".parse().unwrap(),
            },
            db.db.clone(),
            source,
            policies(),
            subjects,
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
            addr: server.addrs.grpc,
            shutdown,
            server: Some(server),
            denies,
            _dir: dir,
            _db: db,
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

    fn client(&self, id: &str) -> WalletClient<MeshChannel> {
        let config = self.svid(id).client_config(WALLET_ID).unwrap();
        let channel = trustmesh_runtime::connect_channel(config, &self.addr.to_string()).unwrap();
        WalletClient::new(channel)
    }

    fn health(&self, id: &str) -> tonic_health::pb::health_client::HealthClient<MeshChannel> {
        let config = self.svid(id).client_config(WALLET_ID).unwrap();
        let channel = trustmesh_runtime::connect_channel(config, &self.addr.to_string()).unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
    }

    async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(server) = self.server.take() {
            server.wait().await.unwrap();
        }
    }
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

fn deposit(to: &str, amount: i64, reference: &str) -> DepositRequest {
    DepositRequest {
        to_user_id: to.to_owned(),
        amount,
        currency: "EUR".into(),
        reference: reference.to_owned(),
    }
}

fn transfer(from: &str, to: &str, amount: i64) -> TransferRequest {
    TransferRequest {
        transfer_id: uuid::Uuid::new_v4().to_string(),
        from_user_id: from.to_owned(),
        to_user_id: to.to_owned(),
        amount,
        currency: "EUR".into(),
        kind: "payment".into(),
        reference: "pay".into(),
        outgoing_limit_24h: 0,
    }
}

async fn policy_decides_every_call_over_mtls(backend: Backend) {
    let mesh = Harness::start(backend).await;
    let (alice, bob) = (user(), user());
    let mut agent = mesh.client(TEST_AGENT);
    let mut payment = mesh.client(PAYMENT_ID);
    let mut gateway = mesh.client(GATEWAY_ID);
    let mut mallory = mesh.client(MALLORY_ID);

    // Health answers any SVID of the trust domain.
    let health = mesh
        .health(PAYMENT_ID)
        .check(tonic_health::pb::HealthCheckRequest {
            service: trustmesh_wallet::HEALTH_SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");

    // A listed agent deposits; its identity comes from its certificate.
    let reply = agent
        .deposit(deposit(&alice, 1_000_000, "ext-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.transfer.as_ref().unwrap().agent_id, TEST_AGENT);
    let again = agent
        .deposit(deposit(&alice, 1_000_000, "ext-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    let status = agent
        .deposit(deposit(&alice, 999, "ext-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);

    // An unlisted agent, a service SVID and the gateway cannot deposit.
    denied(
        &mallory
            .deposit(deposit(&alice, 1, "m-1"))
            .await
            .unwrap_err(),
        "agent_not_allowed",
    );
    denied(
        &payment
            .deposit(deposit(&alice, 1, "p-1"))
            .await
            .unwrap_err(),
        "agent_not_allowed",
    );
    denied(
        &gateway
            .deposit(as_user(deposit(&alice, 1, "g-1"), &alice, "admin"))
            .await
            .unwrap_err(),
        "agent_not_allowed",
    );
    // Above the agent's per-deposit maximum: the policy layer refuses.
    denied(
        &agent
            .deposit(deposit(&alice, 1_000_001, "ext-big"))
            .await
            .unwrap_err(),
        "limit_exceeded",
    );
    // The daily limit (5,000,000): the handler's decision refuses.
    for i in 0..4 {
        agent
            .deposit(deposit(&bob, 1_000_000, &format!("day-{i}")))
            .await
            .unwrap();
    }
    denied(
        &agent
            .deposit(deposit(&bob, 1, "day-over"))
            .await
            .unwrap_err(),
        "daily_limit_exceeded",
    );
    // Every deny reached the hook: the layer's and the handler's.
    assert_eq!(
        *mesh.denies.lock().unwrap(),
        [
            "agent_not_allowed",
            "agent_not_allowed",
            "agent_not_allowed",
            "limit_exceeded",
            "daily_limit_exceeded"
        ]
    );

    // Only the payment workload transfers.
    let posted = payment
        .transfer(transfer(&alice, &bob, 250))
        .await
        .unwrap()
        .into_inner();
    assert!(!posted.replayed);
    denied(
        &gateway
            .transfer(transfer(&alice, &bob, 1))
            .await
            .unwrap_err(),
        "workload_not_allowed",
    );
    denied(
        &gateway
            .transfer(as_user(transfer(&alice, &bob, 1), &alice, "admin"))
            .await
            .unwrap_err(),
        "workload_not_allowed",
    );
    denied(
        &agent.transfer(transfer(&alice, &bob, 1)).await.unwrap_err(),
        "workload_not_allowed",
    );
    let status = payment
        .transfer(transfer(&alice, &bob, 10_000_000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().starts_with("insufficient_funds"));
    let volume = payment
        .get_outgoing_volume(GetOutgoingVolumeRequest {
            user_id: alice.clone(),
            currency: "EUR".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(volume.volume, 250);
    denied(
        &gateway
            .get_outgoing_volume(GetOutgoingVolumeRequest {
                user_id: alice.clone(),
                currency: "EUR".into(),
            })
            .await
            .unwrap_err(),
        "workload_not_allowed",
    );

    // Reading: the owner through the gateway, finance and audit for anyone.
    let balance = gateway
        .get_balance(as_user(
            GetBalanceRequest {
                user_id: alice.clone(),
            },
            &alice,
            "user",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(balance.balances[0].amount, 1_000_000 - 250);
    denied(
        &gateway
            .get_balance(as_user(
                GetBalanceRequest {
                    user_id: bob.clone(),
                },
                &alice,
                "user",
            ))
            .await
            .unwrap_err(),
        "not_owner",
    );
    denied(
        &gateway
            .get_balance(Request::new(GetBalanceRequest {
                user_id: alice.clone(),
            }))
            .await
            .unwrap_err(),
        "subject_required",
    );
    denied(
        &payment
            .get_balance(as_user(
                GetBalanceRequest {
                    user_id: alice.clone(),
                },
                &alice,
                "user",
            ))
            .await
            .unwrap_err(),
        "workload_not_allowed",
    );
    let history = gateway
        .list_transactions(as_user(
            ListTransactionsRequest {
                user_id: bob.clone(),
                page_size: 2,
                page_token: String::new(),
            },
            &alice,
            "finance",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.transactions.len(), 2);
    assert_eq!(history.transactions[0].amount, 250, "newest first");
    assert!(!history.next_page_token.is_empty());
    gateway
        .list_transactions(as_user(
            ListTransactionsRequest {
                user_id: bob.clone(),
                page_size: 2,
                page_token: history.next_page_token,
            },
            &bob,
            "user",
        ))
        .await
        .unwrap();
    denied(
        &gateway
            .list_transactions(as_user(
                ListTransactionsRequest {
                    user_id: bob.clone(),
                    page_size: 2,
                    page_token: String::new(),
                },
                &alice,
                "manager",
            ))
            .await
            .unwrap_err(),
        "not_owner",
    );
    mesh.stop().await;
}
