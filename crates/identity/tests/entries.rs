//! The persistent registration entry store.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use common::id;
use trustmesh_identity::{EntryStore, IdentityError, Issuer, IssuerConfig, Selector};

#[test]
fn create_list_delete_persist() {
    let dir = tempfile::tempdir().unwrap();
    let store = EntryStore::open(dir.path()).unwrap();
    assert_eq!(store.trust_domain(), "trustmesh.local");
    assert!(store.list().unwrap().is_empty());

    let a = store
        .create(&id("svc/a"), ["unix:uid:1000", "unix:gid:100"])
        .unwrap();
    let b = store
        .create(&id("svc/b"), vec![Selector::Path("/usr/bin/b".into())])
        .unwrap();
    assert_eq!(a.selectors, vec![Selector::Uid(1000), Selector::Gid(100)]);
    assert_ne!(a.id, b.id);
    uuid::Uuid::parse_str(&a.id).unwrap();
    time::OffsetDateTime::parse(
        &a.created_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();

    let path = dir.path().join("identity/entries.json");
    assert_eq!(store.path(), path);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(json["entries"][0]["selectors"][0], "unix:uid:1000");

    // Another handle (another process, e.g. the CLI) sees the same entries.
    let other = EntryStore::open(dir.path()).unwrap();
    assert_eq!(other.list().unwrap(), vec![a.clone(), b.clone()]);

    assert!(other.delete(&a.id).unwrap());
    assert!(!other.delete(&a.id).unwrap());
    assert!(!other.delete("no-such-entry").unwrap());
    assert_eq!(store.list().unwrap(), vec![b]);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn invalid_entries_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = EntryStore::open(dir.path()).unwrap();
    let sel = ["unix:uid:0"];
    for bad in [
        "spiffe://example.org/svc/a",
        "spiffe://trustmesh.local",
        "not a spiffe id",
    ] {
        let err = store.create(bad, sel).unwrap_err();
        assert!(
            matches!(err, IdentityError::InvalidSpiffeId { .. }),
            "{bad}: {err}"
        );
    }
    let none: [&str; 0] = [];
    let err = store.create(&id("svc/a"), none).unwrap_err();
    assert!(err.to_string().contains("at least one selector"), "{err}");
    let err = store.create(&id("svc/a"), ["unix:user:root"]).unwrap_err();
    assert!(
        matches!(err, IdentityError::InvalidSelector { .. }),
        "{err}"
    );
    let err = store.create(&id("svc/a"), ["unix:path:bin/x"]).unwrap_err();
    assert!(err.to_string().contains("absolute"), "{err}");

    store
        .create(&id("svc/a"), ["unix:uid:1", "unix:gid:2"])
        .unwrap();
    let err = store
        .create(&id("svc/a"), ["unix:gid:2", "unix:uid:1"])
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    // Same selectors for another ID is fine (a workload may have several IDs).
    store
        .create(&id("svc/b"), ["unix:gid:2", "unix:uid:1"])
        .unwrap();
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn a_corrupt_file_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = EntryStore::open(dir.path()).unwrap();
    fs::write(store.path(), b"{ not json").unwrap();
    let err = store.list().unwrap_err();
    assert!(err.to_string().contains("entries.json"), "{err}");
    assert!(store.create(&id("svc/a"), ["unix:uid:1"]).is_err());
}

#[test]
fn the_store_follows_the_trust_domain_of_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    drop(Issuer::open(IssuerConfig::new(dir.path()).with_trust_domain("example.org")).unwrap());
    let store = EntryStore::open(dir.path()).unwrap();
    assert_eq!(store.trust_domain(), "example.org");
    store
        .create("spiffe://example.org/svc/a", ["unix:uid:1"])
        .unwrap();
    assert!(store.create(&id("svc/a"), ["unix:uid:1"]).is_err());
    let explicit = EntryStore::open_with_trust_domain(dir.path(), "other.org").unwrap();
    assert_eq!(explicit.trust_domain(), "other.org");
}

#[test]
fn concurrent_writers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let path = dir.path().to_owned();
            std::thread::spawn(move || {
                let store = EntryStore::open(&path).unwrap();
                for i in 0..5 {
                    store
                        .create(&id(&format!("svc/t{t}-{i}")), [format!("unix:uid:{t}")])
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = EntryStore::open(dir.path()).unwrap();
    assert_eq!(store.list().unwrap().len(), 40);
}
