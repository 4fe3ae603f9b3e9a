//! `trustmesh serve <service>`: one service in the foreground, with its
//! identity from the Workload API (`SPIFFE_ENDPOINT_SOCKET`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use trustmesh_gateway::GatewayConfig;
use trustmesh_policy::PolicyEngine;
use trustmesh_runtime::Shutdown;

use crate::Common;

/// The services this binary can run, in the order `up` starts them.
pub const SERVICES: &[&str] = &["gateway"];

/// Options of `trustmesh serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The service to run.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(SERVICES))]
    service: String,
    #[command(flatten)]
    common: Common,
    /// mTLS gRPC listen address.
    #[arg(long, env = "TRUSTMESH_GRPC_ADDR", default_value = "127.0.0.1:0")]
    grpc_addr: SocketAddr,
    /// Admin HTTP listen address (/metrics, /healthz, /readyz).
    #[arg(long, env = "TRUSTMESH_ADMIN_ADDR", default_value = "127.0.0.1:0")]
    admin_addr: SocketAddr,
    /// HTTPS listen address (gateway only).
    #[arg(long, env = "TRUSTMESH_HTTPS_ADDR", default_value = "127.0.0.1:8443")]
    https_addr: SocketAddr,
    /// Workload API address (`unix:/path`).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
    spiffe_endpoint_socket: Option<String>,
}

/// What a running service reports about itself in `<data-dir>/run/<name>.json`
/// (read by `up` to write `endpoints.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    /// The service name.
    pub service: String,
    /// Its process id.
    pub pid: u32,
    /// The SPIFFE ID it serves with.
    pub spiffe_id: String,
    /// mTLS gRPC address.
    pub grpc: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// HTTPS address (gateway only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub https: Option<SocketAddr>,
}

/// Where a service writes its run report.
pub fn run_report_path(data_dir: &Path, service: &str) -> std::path::PathBuf {
    data_dir.join("run").join(format!("{service}.json"))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    trustmesh_telemetry::init_tracing(&args.service);
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    watch_supervisor(&shutdown);

    let policy = PolicyEngine::from_env().context("cannot load the policies")?;
    let source = identity_with_retry(args.spiffe_endpoint_socket.as_deref(), &shutdown).await?;
    let spiffe_id = source
        .svid()
        .context("the Workload API gave no X.509-SVID")?
        .spiffe_id()
        .to_string();
    let common = args.common;
    let report = match args.service.as_str() {
        "gateway" => {
            let config = GatewayConfig {
                data_dir: common.data_dir.clone(),
                trust_domain: common.trust_domain.clone(),
                https_addr: args.https_addr,
                grpc_addr: args.grpc_addr,
                admin_addr: args.admin_addr,
            };
            let gateway =
                trustmesh_gateway::start(config, source, policy, shutdown.clone()).await?;
            let report = RunReport {
                service: args.service.clone(),
                pid: std::process::id(),
                spiffe_id,
                grpc: gateway.addrs.grpc,
                admin: gateway.addrs.admin,
                https: Some(gateway.addrs.https),
            };
            write_report(&common.data_dir, &report)?;
            gateway.wait().await?;
            report
        }
        other => anyhow::bail!("unknown service {other}"),
    };
    let _ = std::fs::remove_file(run_report_path(&common.data_dir, &report.service));
    Ok(ExitCode::SUCCESS)
}

/// The Workload API may not know this process for a moment after it starts
/// (the supervisor registers its PID right after spawning it): retry for up
/// to 15 s before giving up.
async fn identity_with_retry(
    endpoint: Option<&str>,
    shutdown: &Shutdown,
) -> anyhow::Result<spiffe::X509Source> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut delay = Duration::from_millis(50);
    loop {
        match trustmesh_identity::x509_source(endpoint, None).await {
            Ok(source) => return Ok(source),
            Err(e) if tokio::time::Instant::now() < deadline && !shutdown.is_triggered() => {
                tracing::debug!(error = %e, "waiting for an SVID");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e).context("no SPIFFE identity from the Workload API"),
        }
    }
}

fn write_report(data_dir: &Path, report: &RunReport) -> anyhow::Result<()> {
    let path = run_report_path(data_dir, &report.service);
    let dir = path.parent().context("run report path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// When launched by `trustmesh up` (which sets TRUSTMESH_SUPERVISOR_PID), shut
/// down if the supervisor disappears, so no process is left behind even if
/// `up` itself is killed.
fn watch_supervisor(shutdown: &Shutdown) {
    let Some(supervisor) = std::env::var("TRUSTMESH_SUPERVISOR_PID")
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok())
    else {
        return;
    };
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if nix::unistd::getppid().as_raw() != supervisor {
                tracing::warn!("supervisor is gone; shutting down");
                shutdown.trigger();
                return;
            }
        }
    });
}
