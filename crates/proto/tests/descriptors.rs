//! The embedded descriptor set (which the policy layer decodes requests
//! with) describes every service of `proto/` as it is on disk. A stale set —
//! generated code rebuilt but the descriptors not — would make the policy
//! see an empty `input.request` for a new service and deny its calls.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use prost::Message;

fn services_on_disk(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            services_on_disk(&path, out);
            continue;
        }
        if path.extension().is_none_or(|ext| ext != "proto") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let package = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(|p| format!("{}.", p.trim_end_matches(';').trim()))
            .unwrap_or_default();
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("service ") {
                let name = rest.split_whitespace().next().unwrap();
                out.insert(format!("{package}{name}"));
            }
        }
    }
}

#[test]
fn every_service_on_disk_is_in_the_embedded_descriptor_set() {
    let mut on_disk = BTreeSet::new();
    services_on_disk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto"),
        &mut on_disk,
    );
    let set = prost_types::FileDescriptorSet::decode(trustmesh_proto::FILE_DESCRIPTOR_SET).unwrap();
    let embedded: BTreeSet<String> = set
        .file
        .iter()
        .flat_map(|file| {
            let package = file
                .package
                .as_deref()
                .map(|p| format!("{p}."))
                .unwrap_or_default();
            file.service
                .iter()
                .map(move |s| format!("{package}{}", s.name()))
        })
        .collect();
    assert!(
        on_disk.contains("trustmesh.payment.v1.Payment"),
        "{on_disk:?}"
    );
    assert_eq!(
        embedded, on_disk,
        "the embedded descriptor set is stale: `touch crates/proto/build.rs` and rebuild"
    );
}
