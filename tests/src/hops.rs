//! Where a benchmark's requests spend their time: each hop's own latency
//! histogram (`http_server_handling_seconds` at the gateway,
//! `grpc_server_handling_seconds` in every service), read off its
//! `/metrics` before and after a phase, so that a phase's client-side
//! figures can be printed beside what each hop measured of the same
//! requests.

use crate::Mesh;
use crate::stats::{histogram_buckets, histogram_delta, histogram_quantile, ms};

/// The gateway's metric: HTTPS request in, response headers out, by route.
pub const HTTP: &str = "http_server_handling_seconds";
/// A service's metric: gRPC call in (before its policy decision), answer
/// out, by method.
pub const GRPC: &str = "grpc_server_handling_seconds";

/// A service's group-commit writer: each write's time queued, committing
/// and waiting for the log's sync, by stage.
pub const DB_WRITE: &str = trustmesh_store::group_commit::WRITE_STAGES_METRIC;

/// One hop of a request: whose `/metrics`, which metric, which route.
#[derive(Clone, Copy, Debug)]
pub struct Hop {
    /// The process (`gateway`, `auth`, …) as `endpoints.json` names it.
    pub service: &'static str,
    /// [`HTTP`] or [`GRPC`].
    pub metric: &'static str,
    /// The route label (`POST /api/v1/payments`, `/trustmesh.wallet.v1.Wallet/Transfer`),
    /// or with [`DB_WRITE`] the stage (`queue`, `commit`, `sync`).
    pub route: &'static str,
}

impl Hop {
    /// The stage `stage` of `service`'s database writes ([`DB_WRITE`]).
    pub const fn db_write(service: &'static str, stage: &'static str) -> Self {
        Self {
            service,
            metric: DB_WRITE,
            route: stage,
        }
    }

    /// The name of the label [`Hop::route`] is the value of.
    fn label(&self) -> &'static str {
        match self.metric {
            DB_WRITE => "stage",
            _ => "route",
        }
    }

    /// How the hop is named in a report line.
    fn name(&self) -> String {
        match self.metric {
            DB_WRITE => format!("{} db {}", self.service, self.route),
            _ => self.service.to_owned(),
        }
    }
}

/// The `/metrics` text of each hop's service, in the order of `hops` (one
/// `GET` per service, however many of its hops are listed).
pub async fn read(mesh: &Mesh, hops: &[Hop]) -> Vec<String> {
    let mut texts: Vec<String> = Vec::new();
    for (i, hop) in hops.iter().enumerate() {
        if let Some(earlier) = hops[..i].iter().position(|h| h.service == hop.service) {
            let text = texts[earlier].clone();
            texts.push(text);
            continue;
        }
        let (status, text) = crate::http_get(mesh.admin_addr(hop.service), "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(status, 200, "GET /metrics of {}", hop.service);
        texts.push(text);
    }
    texts
}

/// One line: how many requests each hop saw between two [`read`]s, and
/// their p50 and p99 as it timed them.
pub fn inside(hops: &[Hop], before: &[String], after: &[String]) -> String {
    let parts: Vec<String> = hops
        .iter()
        .zip(before.iter().zip(after))
        .map(|(hop, (before, after))| {
            let delta = histogram_delta(
                &histogram_buckets(before, hop.metric, hop.label(), hop.route),
                &histogram_buckets(after, hop.metric, hop.label(), hop.route),
            );
            let count = delta.last().map_or(0, |b| b.1);
            format!(
                "{} {count}: p50 {:.1} ms  p99 {:.1} ms",
                hop.name(),
                ms(histogram_quantile(&delta, 0.5)),
                ms(histogram_quantile(&delta, 0.99)),
            )
        })
        .collect();
    format!("    as timed inside: {}", parts.join(" | "))
}
