//! `trustmesh up`: the whole mesh on one machine.
//!
//! Starts the local SPIFFE issuer (a Workload API on a Unix socket in the data
//! directory) in this process, then every service as its own OS process
//! (`trustmesh serve <name>`), each attested by the PID it was given. A child
//! that exits is restarted with exponential backoff. When every service has
//! reported its addresses, `<data-dir>/endpoints.json` is written. Ctrl-C (or
//! SIGTERM) stops the children with SIGTERM, then SIGKILL after a grace
//! period, so everything is gone within 5 seconds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::process::Command;
use tokio::time::Instant;
use trustmesh_identity::{Issuer, IssuerConfig, Registry};
use trustmesh_policy::PolicyEngine;
use trustmesh_runtime::Shutdown;

use crate::Common;
use crate::serve::SERVICES;
use trustmesh_runtime::RunReport;

/// How long a child gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_millis(3500);
/// Restart backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A child that ran this long is considered healthy again (backoff resets).
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// Options of `trustmesh up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    common: Common,
    /// Lifetime of the X.509-SVIDs the local issuer hands out (rotated at
    /// half-life); as low as a few seconds for tests.
    #[arg(long, env = "TRUSTMESH_SVID_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    svid_ttl: Duration,
    /// Where the gateway serves HTTPS.
    #[arg(long, env = "TRUSTMESH_GATEWAY_ADDR", default_value = "127.0.0.1:8443")]
    gateway_addr: SocketAddr,
    /// First port for the services' gRPC and admin listeners (service i gets
    /// base+2i and base+2i+1); 0 picks free ports.
    #[arg(long, env = "TRUSTMESH_PORT_BASE", default_value_t = 7400)]
    port_base: u16,
    /// Worker threads of each service's async runtime; 0 means one per
    /// core.
    #[arg(long, env = "TRUSTMESH_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
}

/// `<data-dir>/endpoints.json`: where everything runs.
#[derive(Debug, Serialize)]
struct Endpoints {
    trust_domain: String,
    workload_api: String,
    gateway: GatewayEndpoint,
    services: BTreeMap<String, ServiceEndpoint>,
}

#[derive(Debug, Serialize)]
struct GatewayEndpoint {
    url: String,
    ca: PathBuf,
}

#[derive(Debug, Serialize, PartialEq)]
struct ServiceEndpoint {
    spiffe_id: String,
    grpc: SocketAddr,
    admin: SocketAddr,
    pid: u32,
}

/// How to launch one child.
#[derive(Debug, Clone)]
struct ChildSpec {
    name: &'static str,
    spiffe_id: String,
    args: Vec<String>,
    socket: PathBuf,
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    trustmesh_telemetry::init_tracing("up");
    let data_dir = prepare_data_dir(&args.common.data_dir)?;
    let trust_domain = args.common.trust_domain.clone();
    PolicyEngine::from_env().context("cannot load the policies")?;

    let ports = plan_ports(args.port_base, SERVICES.len())?;
    check_bindable(args.gateway_addr)?;

    let mut issuer_config = IssuerConfig::new(data_dir.clone());
    issuer_config.trust_domain = trust_domain.clone();
    issuer_config.svid_ttl = args.svid_ttl;
    let socket = issuer_config.socket_path.clone();
    let issuer = Issuer::open(issuer_config).context("cannot start the local SPIFFE issuer")?;
    let registry = issuer.registry();
    let ca = trustmesh_gateway::local_ca::LocalCa::ensure(&data_dir.join("gateway"))?;

    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let issuer_shutdown = shutdown.clone();
    let issuer_task = tokio::spawn(issuer.serve(async move { issuer_shutdown.wait().await }));
    wait_for_socket(&socket).await?;

    let run_dir = data_dir.join("run");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;

    let exe = std::env::current_exe().context("cannot find the trustmesh binary")?;
    let mut supervisors = Vec::new();
    for (index, name) in SERVICES.iter().enumerate() {
        let (grpc, admin) = ports[index];
        let spec = ChildSpec {
            name,
            spiffe_id: format!("spiffe://{trust_domain}/svc/{name}"),
            args: vec![
                "serve".into(),
                (*name).into(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--trust-domain".into(),
                trust_domain.clone(),
                "--grpc-addr".into(),
                grpc.to_string(),
                "--admin-addr".into(),
                admin.to_string(),
                "--https-addr".into(),
                args.gateway_addr.to_string(),
                "--worker-threads".into(),
                args.worker_threads.to_string(),
            ],
            socket: socket.clone(),
        };
        supervisors.push(tokio::spawn(supervise(
            exe.clone(),
            spec,
            registry.clone(),
            shutdown.clone(),
        )));
    }

    let endpoints_path = data_dir.join("endpoints.json");
    let mut published = false;
    let mut last: Option<BTreeMap<String, ServiceEndpoint>> = None;
    let started = Instant::now();
    while !shutdown.is_triggered() {
        let reports = read_reports(&data_dir);
        if reports.len() == SERVICES.len() && last.as_ref() != Some(&services_of(&reports)) {
            let gateway_url = reports
                .iter()
                .find_map(|r| r.https)
                .map(|addr| format!("https://{addr}"))
                .unwrap_or_default();
            let endpoints = Endpoints {
                trust_domain: trust_domain.clone(),
                workload_api: format!("unix:{}", socket.display()),
                gateway: GatewayEndpoint {
                    url: gateway_url.clone(),
                    ca: ca.ca_path(),
                },
                services: services_of(&reports),
            };
            write_atomic(&endpoints_path, &serde_json::to_vec_pretty(&endpoints)?)?;
            if !published {
                print_summary(&data_dir, &endpoints, &endpoints_path);
                published = true;
            }
            last = Some(endpoints.services);
        } else if !published && started.elapsed() > Duration::from_secs(60) {
            tracing::warn!("services have not all reported their addresses after 60 s");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = shutdown.wait() => {}
        }
    }

    println!("stopping…");
    for supervisor in supervisors {
        let _ = supervisor.await;
    }
    match tokio::time::timeout(Duration::from_secs(1), issuer_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "issuer stopped with an error"),
        Ok(_) => {}
        Err(_) => tracing::warn!("issuer did not stop in time"),
    }
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&endpoints_path);
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Runs one child for as long as the mesh runs, restarting it when it exits.
async fn supervise(exe: PathBuf, spec: ChildSpec, registry: Registry, shutdown: Shutdown) {
    let mut backoff = BACKOFF_MIN;
    while !shutdown.is_triggered() {
        let mut command = Command::new(&exe);
        command
            .args(&spec.args)
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix:{}", spec.socket.display()),
            )
            .env("TRUSTMESH_SUPERVISOR_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            // Own process group: a terminal's Ctrl-C reaches only `up`,
            // which then stops the children in order.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(service = spec.name, error = %e, "cannot start");
                if sleep_or_shutdown(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let Some(pid) = child.id() else {
            continue;
        };
        registry.register_pid(pid, spec.spiffe_id.clone());
        tracing::info!(service = spec.name, pid, "started");
        let started = Instant::now();
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            () = shutdown.wait() => None,
        };
        match exited {
            Some(status) => {
                registry.unregister_pid(pid);
                if shutdown.is_triggered() {
                    return;
                }
                if started.elapsed() > HEALTHY_AFTER {
                    backoff = BACKOFF_MIN;
                }
                let status = status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                tracing::warn!(service = spec.name, pid, %status, restart_in = ?backoff, "exited; restarting");
                if sleep_or_shutdown(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            None => {
                stop_child(&mut child, pid, spec.name).await;
                registry.unregister_pid(pid);
                return;
            }
        }
    }
}

/// SIGTERM, then SIGKILL if the child has not exited within the grace period.
async fn stop_child(child: &mut tokio::process::Child, pid: u32, name: &str) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(_) => tracing::info!(service = name, pid, "stopped"),
        Err(_) => {
            tracing::warn!(service = name, pid, "did not stop in time; killing");
            let _ = child.kill().await;
        }
    }
}

/// Sleeps for `duration`; true if shutdown fired meanwhile.
async fn sleep_or_shutdown(duration: Duration, shutdown: &Shutdown) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => shutdown.is_triggered(),
        () = shutdown.wait() => true,
    }
}

/// Creates the data directory if needed and checks that it is a writable
/// directory; returns its absolute path.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let unusable = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("data directory {} is not usable: {e}", dir.display())
    };
    if dir.exists() && !dir.is_dir() {
        return Err(unusable(&"it is not a directory"));
    }
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| unusable(&e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| unusable(&e))?;
    }
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"").map_err(|e| unusable(&e))?;
    let _ = std::fs::remove_file(&probe);
    std::fs::canonicalize(dir).map_err(|e| unusable(&e))
}

/// The (gRPC, admin) addresses of each service.
fn plan_ports(base: u16, count: usize) -> anyhow::Result<Vec<(SocketAddr, SocketAddr)>> {
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    (0..count)
        .map(|index| {
            if base == 0 {
                return Ok((loopback(0), loopback(0)));
            }
            let offset = u16::try_from(index * 2).context("too many services")?;
            let grpc = base
                .checked_add(offset)
                .and_then(|p| p.checked_add(1).map(|admin| (p, admin)))
                .with_context(|| format!("port base {base} leaves no room for {count} services"))?;
            let (grpc, admin) = (loopback(grpc.0), loopback(grpc.1));
            check_bindable(grpc)?;
            check_bindable(admin)?;
            Ok((grpc, admin))
        })
        .collect()
}

/// Fails with one clear line if `addr` cannot be listened on.
fn check_bindable(addr: SocketAddr) -> anyhow::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    std::net::TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("cannot listen on {addr}"))
}

async fn wait_for_socket(socket: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "the Workload API socket {} did not appear",
                socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn read_reports(data_dir: &Path) -> Vec<RunReport> {
    SERVICES
        .iter()
        .filter_map(|name| RunReport::read(data_dir, name))
        .collect()
}

fn services_of(reports: &[RunReport]) -> BTreeMap<String, ServiceEndpoint> {
    reports
        .iter()
        .map(|r| {
            (
                r.service.clone(),
                ServiceEndpoint {
                    spiffe_id: r.spiffe_id.clone(),
                    grpc: r.grpc,
                    admin: r.admin,
                    pid: r.pid,
                },
            )
        })
        .collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn print_summary(data_dir: &Path, endpoints: &Endpoints, endpoints_path: &Path) {
    println!("trustmesh is up (data directory {})", data_dir.display());
    println!(
        "  gateway     {}   trust its CA: {}",
        endpoints.gateway.url,
        endpoints.gateway.ca.display()
    );
    for (name, service) in &endpoints.services {
        println!(
            "  {name:<11} {}   grpc {}   admin http://{}",
            service.spiffe_id, service.grpc, service.admin
        );
    }
    println!("  workload API {}", endpoints.workload_api);
    println!("  endpoints   {}", endpoints_path.display());
    println!("press Ctrl-C to stop");
}
