//! The SPIFFE Workload API served on a real Unix socket, exercised with the
//! generated tonic client and with the `spiffe` crate's client and X509Source.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    TD, TestIssuer, assert_signed_by, eventually, gid, id, raw_client, serial_of, uid, with_header,
};
use spiffe::{BundleSource as _, JwtSvid, TrustDomain, WorkloadApiClient, WorkloadApiError};
use tokio_stream::StreamExt as _;
use tonic::Code;
use trustmesh_identity::source::x509_source_with_timeout;
use trustmesh_identity::{EntryStore, SourceError, x509_source};
use trustmesh_proto::spiffe::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};

const HOUR: Duration = Duration::from_secs(3600);

fn uid_selector() -> String {
    format!("unix:uid:{}", uid())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_the_security_header_is_invalid_argument() {
    let t = TestIssuer::start(HOUR);
    // Even an entitled caller must send the header.
    EntryStore::open(t.data_dir())
        .unwrap()
        .create(&id("svc/a"), [uid_selector()])
        .unwrap();
    let mut client = raw_client(&t.socket).await;

    let err = client.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = client
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = client
        .fetch_jwt_bundles(JwtBundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = client
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["x".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = client
        .validate_jwtsvid(ValidateJwtsvidRequest {
            audience: "x".into(),
            svid: "y".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A wrong value is no better.
    let mut request = tonic::Request::new(X509svidRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "false".parse().unwrap());
    let err = client.fetch_x509svid(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // With the header the same caller is served.
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.svids.len(), 1);
    assert_eq!(first.svids[0].spiffe_id, id("svc/a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unattested_caller_is_permission_denied() {
    let t = TestIssuer::start(HOUR);
    // Entries that do not match this process: another uid, and this uid with
    // a gid it does not have (all selectors must match).
    let store = EntryStore::open(t.data_dir()).unwrap();
    store
        .create(&id("svc/other"), [format!("unix:uid:{}", uid() + 1)])
        .unwrap();
    store
        .create(
            &id("svc/half"),
            [uid_selector(), format!("unix:gid:{}", gid() + 1)],
        )
        .unwrap();

    let mut raw = raw_client(&t.socket).await;
    let err = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("no identity issued"), "{err:?}");
    for code in [
        raw.fetch_x509_bundles(with_header(X509BundlesRequest {}))
            .await
            .unwrap_err()
            .code(),
        raw.fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
            .await
            .unwrap_err()
            .code(),
        raw.fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err()
        .code(),
    ] {
        assert_eq!(code, Code::PermissionDenied);
    }

    // The spiffe crate's client.
    let client = WorkloadApiClient::connect_to(&t.endpoint).await.unwrap();
    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");
    let err = client.fetch_jwt_svid(["a"], None).await.unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");

    // Our X509Source builder says why it failed.
    let err = x509_source_with_timeout(Some(&t.endpoint), None, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::PermissionDenied { .. }), "{err}");
    assert!(err.to_string().contains("no identity issued"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_entry_gets_an_svid_and_deleting_it_revokes_it() {
    let t = TestIssuer::start(HOUR);
    let want = id("svc/uid-workload");
    // Created through a separate store handle, as the CLI would from another process.
    let entry = EntryStore::open(t.data_dir())
        .unwrap()
        .create(&want, [uid_selector()])
        .unwrap();

    let source = x509_source(Some(&t.endpoint), None).await.unwrap();
    let svid = source.svid().unwrap();
    assert_eq!(svid.spiffe_id().to_string(), want);
    // The bundle is the issuer's CA and the SVID chains to it.
    let td = TrustDomain::new(TD).unwrap();
    let bundle = source.bundle_for_trust_domain(&td).unwrap().unwrap();
    assert_eq!(bundle.authorities().len(), 1);
    assert_eq!(
        bundle.authorities()[0].as_bytes(),
        t.issuer.bundle_der().as_slice()
    );
    assert_signed_by(svid.leaf().as_bytes(), bundle.authorities()[0].as_bytes());
    // The leaf lives one TTL.
    {
        use x509_parser::prelude::FromDer as _;
        let (_, leaf) =
            x509_parser::certificate::X509Certificate::from_der(svid.leaf().as_bytes()).unwrap();
        let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert_eq!(life, 3600 + 10);
    }

    let mut raw = raw_client(&t.socket).await;
    let mut stream = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream.next().await.unwrap().unwrap().svids[0].spiffe_id,
        want
    );

    // Delete the entry (another process): new callers are refused...
    assert!(
        EntryStore::open(t.data_dir())
            .unwrap()
            .delete(&entry.id)
            .unwrap()
    );
    // ...the open raw stream ends with PermissionDenied...
    let end = tokio::time::timeout(Duration::from_secs(3), stream.next())
        .await
        .expect("the open stream was not told about the deleted entry")
        .unwrap()
        .unwrap_err();
    assert_eq!(end.code(), Code::PermissionDenied, "{end:?}");
    assert!(stream.next().await.is_none());
    let client = WorkloadApiClient::connect_to(&t.endpoint).await.unwrap();
    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");
    // ...and the open X509Source withdraws its SVID.
    assert!(
        eventually(Duration::from_secs(5), || source.svid().is_err()).await,
        "the open X509Source still has an SVID after the entry was deleted"
    );
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_registration_and_path_selector() {
    let t = TestIssuer::start(HOUR);
    let registry = t.issuer.registry();
    let by_pid = id("svc/by-pid");
    let by_path = id("svc/by-path");

    // A foreign trust domain is refused.
    assert!(
        registry
            .try_register_pid(std::process::id(), "spiffe://example.org/svc/x".into())
            .is_err()
    );
    registry.register_pid(std::process::id(), by_pid.clone());
    assert_eq!(
        registry.pid_spiffe_id(std::process::id()),
        Some(by_pid.clone())
    );

    let client = WorkloadApiClient::connect_to(&t.endpoint).await.unwrap();
    let ids = |svids: Vec<spiffe::X509Svid>| -> Vec<String> {
        svids.iter().map(|s| s.spiffe_id().to_string()).collect()
    };
    assert_eq!(
        ids(client.fetch_all_x509_svids().await.unwrap()),
        vec![by_pid.clone()]
    );

    // An open source is pushed the new set when an entry starts matching.
    let source = x509_source(Some(&t.endpoint), None).await.unwrap();
    assert_eq!(source.svid().unwrap().spiffe_id().to_string(), by_pid);
    let mut updates = source.updated();
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    EntryStore::open(t.data_dir())
        .unwrap()
        .create(&by_path, [format!("unix:path:{}", exe.display())])
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), updates.changed())
        .await
        .expect("no update after the entry was created")
        .unwrap();
    let context = source.x509_context().unwrap();
    let pushed: Vec<String> = context
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    assert_eq!(pushed, vec![by_pid.clone(), by_path.clone()]);
    source.shutdown().await;

    // A source can pick the SVID it wants.
    let picked = x509_source(Some(&t.endpoint), Some(&by_path))
        .await
        .unwrap();
    assert_eq!(picked.svid().unwrap().spiffe_id().to_string(), by_path);
    picked.shutdown().await;

    // Unregistering the PID leaves the path entry.
    registry.unregister_pid(std::process::id());
    assert_eq!(
        ids(client.fetch_all_x509_svids().await.unwrap()),
        vec![by_path.clone()]
    );

    // Asking for an ID the process does not have is explained.
    let err = x509_source_with_timeout(Some(&t.endpoint), Some(&by_pid), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::WantedIdNotIssued { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_rotate_at_half_life() {
    let ttl = Duration::from_secs(3);
    let t = TestIssuer::start(ttl);
    t.issuer
        .registry()
        .register_pid(std::process::id(), id("svc/rotating"));
    let source = x509_source(Some(&t.endpoint), None).await.unwrap();
    let mut updates = source.updated();
    let mut serials = vec![serial_of(source.svid().unwrap().leaf().as_bytes())];
    for _ in 0..2 {
        tokio::time::timeout(ttl, updates.changed())
            .await
            .expect("no rotation within one TTL")
            .unwrap();
        let svid = source.svid().unwrap();
        assert_eq!(svid.spiffe_id().to_string(), id("svc/rotating"));
        serials.push(serial_of(svid.leaf().as_bytes()));
    }
    assert_ne!(serials[0], serials[1]);
    assert_ne!(serials[1], serials[2]);
    source.shutdown().await;

    // The raw stream: a new response about every TTL/2 (the SVID of a
    // SPIFFE ID is shared by all streams, so the first rotation may come sooner).
    let mut raw = raw_client(&t.socket).await;
    let mut stream = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut messages = vec![stream.next().await.unwrap().unwrap()];
    let mut times = Vec::new();
    for _ in 0..2 {
        let next = tokio::time::timeout(ttl, stream.next())
            .await
            .expect("no rotation within one TTL")
            .unwrap()
            .unwrap();
        times.push(tokio::time::Instant::now());
        messages.push(next);
    }
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_millis(900) && gap <= Duration::from_millis(2600),
        "rotation period {gap:?} is not about TTL/2"
    );
    for pair in messages.windows(2) {
        assert_ne!(pair[0].svids[0].x509_svid, pair[1].svids[0].x509_svid);
        assert_ne!(
            pair[0].svids[0].x509_svid_key,
            pair[1].svids[0].x509_svid_key
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_are_issued_and_validated() {
    let t = TestIssuer::start(HOUR);
    let want = id("svc/jwt");
    EntryStore::open(t.data_dir())
        .unwrap()
        .create(&want, [uid_selector()])
        .unwrap();
    let client = WorkloadApiClient::connect_to(&t.endpoint).await.unwrap();

    let svid = client.fetch_jwt_svid(["payments"], None).await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), want);
    assert_eq!(svid.audience(), ["payments".to_owned()]);
    let lifetime = svid.expiry() - time::OffsetDateTime::now_utc();
    assert!(lifetime > time::Duration::minutes(4) && lifetime <= time::Duration::minutes(5));

    // ValidateJWTSVID, through the spiffe client and raw.
    let validated = client
        .validate_jwt_token("payments", svid.token())
        .await
        .unwrap();
    assert_eq!(validated.spiffe_id().to_string(), want);
    let mut raw = raw_client(&t.socket).await;
    let response = raw
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "payments".into(),
            svid: svid.token().to_owned(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.spiffe_id, want);
    let claims = response.claims.unwrap();
    match claims.fields["sub"].kind.as_ref().unwrap() {
        prost_types::value::Kind::StringValue(s) => assert_eq!(s, &want),
        other => panic!("sub is {other:?}"),
    }
    assert!(claims.fields.contains_key("exp") && claims.fields.contains_key("iat"));

    // Wrong audience, tampered token, garbage, missing fields.
    let err = client
        .validate_jwt_token("orders", svid.token())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("InvalidArgument")
            || matches!(err, WorkloadApiError::Transport(_)),
        "{err}"
    );
    for (audience, token) in [
        ("orders", svid.token().to_owned()),
        ("payments", format!("{}x", svid.token())),
        ("payments", "garbage".to_owned()),
        ("", svid.token().to_owned()),
        ("payments", String::new()),
    ] {
        let status = raw
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: token,
            }))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{audience}: {status:?}"
        );
    }

    // Offline validation with the JWT bundle (JWKS) from FetchJWTBundles.
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let offline = JwtSvid::parse_and_validate(svid.token(), &bundles, &["payments"]).unwrap();
    assert_eq!(offline.spiffe_id().to_string(), want);
    assert!(JwtSvid::parse_and_validate(svid.token(), &bundles, &["orders"]).is_err());

    // Empty audience, a specific ID, a foreign ID.
    let status = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let only = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["a".into(), "b".into()],
            spiffe_id: want.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only.svids.len(), 1);
    assert_eq!(only.svids[0].spiffe_id, want);
    let status = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: id("svc/someone-else"),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_streams_stay_open() {
    let t = TestIssuer::start(HOUR);
    t.issuer
        .registry()
        .register_pid(std::process::id(), id("svc/bundles"));
    let client = WorkloadApiClient::connect_to(&t.endpoint).await.unwrap();
    let td = TrustDomain::new(TD).unwrap();

    let x509 = client.fetch_x509_bundles().await.unwrap();
    let bundle = x509.get(&td).unwrap();
    assert_eq!(
        bundle.authorities()[0].as_bytes(),
        t.issuer.bundle_der().as_slice()
    );
    let jwt = client.fetch_jwt_bundles().await.unwrap();
    let jwt_bundle = jwt.get(&td).unwrap();
    assert_eq!(jwt_bundle.jwt_authorities().count(), 1);

    // Keyed by the trust domain's SPIFFE ID, like SPIRE; the JWK is an EC P-256 key for jwt-svid.
    let mut raw = raw_client(&t.socket).await;
    let mut stream = raw
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let jwks: serde_json::Value =
        serde_json::from_slice(&first.bundles[&format!("spiffe://{TD}")]).unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["use"], "jwt-svid");
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(key["x"].is_string() && key["y"].is_string());
    let more = tokio::time::timeout(Duration::from_millis(700), stream.next()).await;
    assert!(
        more.is_err(),
        "the JWT bundle stream ended or sent again: {more:?}"
    );

    let mut stream = raw
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(
        first.bundles[&format!("spiffe://{TD}")],
        t.issuer.bundle_der()
    );
    let more = tokio::time::timeout(Duration::from_millis(700), stream.next()).await;
    assert!(
        more.is_err(),
        "the X.509 bundle stream ended or sent again: {more:?}"
    );

    // Losing the identity ends the open stream with PermissionDenied.
    t.issuer.registry().unregister_pid(std::process::id());
    let end = tokio::time::timeout(Duration::from_secs(3), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(end.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_and_removes_the_socket() {
    let mut t = TestIssuer::start(HOUR);
    t.issuer
        .registry()
        .register_pid(std::process::id(), id("svc/shutdown"));
    let source = x509_source(Some(&t.endpoint), None).await.unwrap();
    let mut raw = raw_client(&t.socket).await;
    let mut stream = raw
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();

    let socket = t.socket.clone();
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), t.stop())
        .await
        .expect("shutdown hangs with open streams")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!socket.exists(), "the socket file is removed");
    // The open stream has ended.
    let next = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .expect("stream still open after shutdown");
    assert!(!matches!(next, Some(Ok(_))), "{next:?}");
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_sockets_are_replaced_and_live_ones_refused() {
    let mut t = TestIssuer::start(HOUR);
    // A second issuer on the same live socket is refused.
    let err = t.issuer.clone().bind().unwrap_err();
    assert!(err.to_string().contains("already serving"), "{err}");
    let issuer = t.issuer.clone();
    let socket = t.socket.clone();
    t.stop().await.unwrap();

    // A stale socket file (its server died) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let bound = issuer.clone().bind().unwrap();
    drop(bound);

    // A regular file in the way is not removed.
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, b"important").unwrap();
    let err = issuer.bind().unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"important");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("unix:{}", dir.path().join("nope.sock").display());
    let err = x509_source(Some(&missing), None).await.unwrap_err();
    assert!(matches!(err, SourceError::SocketMissing { .. }), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    let err = x509_source(Some("http://x"), None).await.unwrap_err();
    assert!(matches!(err, SourceError::InvalidEndpoint { .. }), "{err}");

    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let err = x509_source(Some(&format!("unix:{}", file.display())), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a Unix socket"), "{err}");

    let t = TestIssuer::start(HOUR);
    let err = x509_source(Some(&t.endpoint), Some("not-an-id"))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::InvalidSpiffeId { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_svids_complete_an_mtls_handshake() {
    use rustls::pki_types::ServerName;
    let t = TestIssuer::start(HOUR);
    let want = id("svc/tls");
    EntryStore::open(t.data_dir())
        .unwrap()
        .create(&want, [uid_selector()])
        .unwrap();
    let server_source = x509_source(Some(&t.endpoint), None).await.unwrap();
    let client_source = x509_source(Some(&t.endpoint), None).await.unwrap();
    let td = spiffe_rustls::TrustDomain::new(TD).unwrap();
    let server_cfg = spiffe_rustls::mtls_server(server_source.clone())
        .authorize(spiffe_rustls::any())
        .trust_domain_policy(spiffe_rustls::LocalOnly(td.clone()))
        .build()
        .unwrap();
    let client_cfg = spiffe_rustls::mtls_client(client_source.clone())
        .authorize(spiffe_rustls::exact([want.as_str()]).unwrap())
        .trust_domain_policy(spiffe_rustls::LocalOnly(td))
        .build()
        .unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let (server, client) = tokio::join!(
        acceptor.accept(a),
        connector.connect(ServerName::try_from("localhost").unwrap(), b)
    );
    let server = server.expect("server handshake");
    let client = client.expect("client handshake");
    let (_, conn) = server.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].as_ref().to_vec();
    let peer = trustmesh_identity::PeerIdentity::from_leaf(Some(&leaf), None);
    assert_eq!(peer.spiffe_id.as_deref(), Some(want.as_str()));
    assert_eq!(
        client.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    server_source.shutdown().await;
    client_source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_streams_leave_no_task_behind() {
    let t = TestIssuer::start(HOUR);
    let registry = t.issuer.registry();
    registry.register_pid(std::process::id(), id("svc/cancel"));
    let mut raw = raw_client(&t.socket).await;
    let mut x509 = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    x509.next().await.unwrap().unwrap();
    let mut bundles = raw
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    bundles.next().await.unwrap().unwrap();
    let mut jwt = raw
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    jwt.next().await.unwrap().unwrap();
    assert_eq!(registry.open_streams(), 3);

    drop(x509);
    assert!(
        eventually(Duration::from_secs(3), || registry.open_streams() == 2).await,
        "the FetchX509SVID task outlived its client"
    );
    drop(bundles);
    drop(jwt);
    drop(raw);
    assert!(
        eventually(Duration::from_secs(3), || registry.open_streams() == 0).await,
        "bundle stream tasks outlived their client: {}",
        registry.open_streams()
    );
}
