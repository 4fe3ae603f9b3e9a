//! `trustmesh serve <service>`: one service in the foreground, with its
//! identity from the Workload API (`SPIFFE_ENDPOINT_SOCKET`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use std::sync::Arc;
use trustmesh_gateway::GatewayConfig;
use trustmesh_policy::PolicyEngine;

use trustmesh_policy::SubjectResolver;
use trustmesh_runtime::{Directory, JwtSubjects, MeshClient, RunReport, RunningServer, Shutdown};

use crate::Common;

/// The services this binary can run, in the order `up` starts them.
pub const SERVICES: &[&str] = &["audit", "auth", "user", "wallet", "payment", "gateway"];

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
    /// Auth: failed logins per account within the window that lock it.
    #[arg(long, env = "TRUSTMESH_AUTH_MAX_FAILURES", default_value_t = 5)]
    auth_max_failures: u32,
    /// Auth: failed logins per client IP within the window (all accounts).
    #[arg(long, env = "TRUSTMESH_AUTH_IP_MAX_FAILURES", default_value_t = 20)]
    auth_ip_max_failures: u32,
    /// Auth: threads that hash passwords (Argon2id, at the lowest CPU
    /// priority); 0 means one per core but one (at least one), and a spare
    /// on the last core that takes hashes waiting over 300 ms.
    #[arg(long, env = "TRUSTMESH_AUTH_HASH_THREADS", default_value_t = 0)]
    auth_hash_threads: usize,
    /// Auth: the window in which failures count, and how long a lock lasts.
    #[arg(long, env = "TRUSTMESH_AUTH_LOCK_FOR", default_value = "15m", value_parser = humantime::parse_duration)]
    auth_lock_for: Duration,
    /// Auth: a session ends after this long without a refresh.
    #[arg(long, env = "TRUSTMESH_SESSION_IDLE", default_value = "30m", value_parser = humantime::parse_duration)]
    session_idle: Duration,
    /// Auth: a session ends this long after login.
    #[arg(long, env = "TRUSTMESH_SESSION_MAX", default_value = "12h", value_parser = humantime::parse_duration)]
    session_max: Duration,
    /// Audit: how long events are kept (older ones are removed daily).
    #[arg(long, env = "TRUSTMESH_AUDIT_RETENTION", default_value = "90days", value_parser = humantime::parse_duration)]
    audit_retention: Duration,
    /// Audit: how often a checkpoint of the log is signed (when it grew).
    #[arg(long, env = "TRUSTMESH_AUDIT_CHECKPOINT_EVERY", default_value = "5s", value_parser = humantime::parse_duration)]
    audit_checkpoint_every: Duration,
    /// Audit: consecutive failed logins that raise an alert (3 to 5).
    #[arg(long, env = "TRUSTMESH_ALERT_FAILURES", default_value_t = 3)]
    alert_failures: u32,
    /// Audit: the window those failures must fall in.
    #[arg(long, env = "TRUSTMESH_ALERT_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    alert_window: Duration,
    /// Audit: a MaxMind country database (`.mmdb`) for the country-change rule.
    #[arg(long, env = "TRUSTMESH_GEOIP_DB")]
    geoip_db: Option<PathBuf>,
    /// Audit: the language of alert mail (fr, en).
    #[arg(long, env = "TRUSTMESH_ALERT_LANGUAGE", default_value = "fr")]
    alert_language: trustmesh_audit::alerts::Language,
    /// Audit: addresses that get a copy of every alert (comma-separated).
    #[arg(long, env = "TRUSTMESH_ALERT_COPIES", value_delimiter = ',')]
    alert_copies: Vec<String>,
    /// Audit: addresses that get the weekly report (comma-separated).
    #[arg(long, env = "TRUSTMESH_ALERT_ADMINS", value_delimiter = ',')]
    alert_admins: Vec<String>,
    /// Audit: how often the report of suspicious attempts is sent.
    #[arg(long, env = "TRUSTMESH_ALERT_REPORT_EVERY", default_value = "7days", value_parser = humantime::parse_duration)]
    alert_report_every: Duration,
    /// Audit: SMTP server for alert mail, `smtps://user:pass@host:465` or
    /// `smtp://user:pass@host:587?tls=starttls`; unset writes mail to
    /// `<data-dir>/outbox-mail/`.
    #[arg(long, env = "TRUSTMESH_SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,
    /// Audit: the sender of alert mail.
    #[arg(
        long,
        env = "TRUSTMESH_SMTP_FROM",
        default_value = "Trustmesh <security@trustmesh.local>"
    )]
    smtp_from: String,
    /// Audit: an extra CA certificate (PEM) to trust for the SMTP server.
    #[arg(long, env = "TRUSTMESH_SMTP_CA")]
    smtp_ca: Option<PathBuf>,
    /// Workload API address (`unix:/path`).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
    spiffe_endpoint_socket: Option<String>,
    /// Worker threads of the async runtime; 0 means one per core.
    #[arg(long, env = "TRUSTMESH_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
}

impl ServeArgs {
    /// The async runtime's worker threads, when set (else one per core).
    pub fn worker_threads(&self) -> Option<usize> {
        (self.worker_threads > 0).then_some(self.worker_threads)
    }
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
        "auth" => {
            let mut settings = trustmesh_auth::service::AuthSettings::default();
            settings.lockout.max_failures = args.auth_max_failures;
            settings.lockout.per_ip_max_failures = args.auth_ip_max_failures;
            settings.lockout.window = args.auth_lock_for;
            settings.lockout.lock_for = args.auth_lock_for;
            settings.session_idle = args.session_idle;
            settings.session_max = args.session_max;
            let config = trustmesh_auth::AuthConfig {
                data_dir: common.data_dir.clone(),
                trust_domain: common.trust_domain.clone(),
                grpc_addr: args.grpc_addr,
                admin_addr: args.admin_addr,
                settings,
                hash_threads: args.auth_hash_threads,
            };
            let server = trustmesh_auth::start(config, source, policy, shutdown.clone()).await?;
            serve_until_stopped(&args.service, spiffe_id, server, &common).await?
        }
        "user" => {
            let config = trustmesh_user::UserConfig {
                data_dir: common.data_dir.clone(),
                trust_domain: common.trust_domain.clone(),
                grpc_addr: args.grpc_addr,
                admin_addr: args.admin_addr,
            };
            let subjects = subjects_via_auth(&source, &common)?;
            let server =
                trustmesh_user::start(config, source, policy, subjects, shutdown.clone()).await?;
            serve_until_stopped(&args.service, spiffe_id, server, &common).await?
        }
        "wallet" => {
            let config = trustmesh_wallet::WalletConfig {
                data_dir: common.data_dir.clone(),
                trust_domain: common.trust_domain.clone(),
                grpc_addr: args.grpc_addr,
                admin_addr: args.admin_addr,
            };
            let subjects = subjects_via_auth(&source, &common)?;
            let server =
                trustmesh_wallet::start(config, source, policy, subjects, shutdown.clone()).await?;
            serve_until_stopped(&args.service, spiffe_id, server, &common).await?
        }
        "payment" => {
            let config = trustmesh_payment::PaymentConfig {
                data_dir: common.data_dir.clone(),
                trust_domain: common.trust_domain.clone(),
                grpc_addr: args.grpc_addr,
                admin_addr: args.admin_addr,
            };
            let subjects = subjects_via_auth(&source, &common)?;
            let server =
                trustmesh_payment::start(config, source, policy, subjects, shutdown.clone())
                    .await?;
            serve_until_stopped(&args.service, spiffe_id, server, &common).await?
        }
        "audit" => {
            let config = trustmesh_audit::AuditConfig {
                data_dir: common.data_dir.clone(),
                trust_domain: common.trust_domain.clone(),
                grpc_addr: args.grpc_addr,
                admin_addr: args.admin_addr,
                amqp_url: std::env::var("AMQP_URL").ok().filter(|u| !u.is_empty()),
                retention: args.audit_retention,
                checkpoint_every: args.audit_checkpoint_every,
                alerts: trustmesh_audit::alerts::AlertConfig {
                    failures: args.alert_failures,
                    window: args.alert_window,
                    geoip: args.geoip_db,
                    language: args.alert_language,
                    security_copies: args.alert_copies,
                    admins: args.alert_admins,
                    report_every: args.alert_report_every,
                    mail: trustmesh_audit::alerts::MailConfig {
                        smtp_url: args.smtp_url.filter(|u| !u.is_empty()),
                        from: args.smtp_from,
                        ca_file: args.smtp_ca,
                        outbox_dir: common.data_dir.join("outbox-mail"),
                    },
                },
            };
            let subjects = subjects_via_auth(&source, &common)?;
            let server =
                trustmesh_audit::start(config, source, policy, subjects, shutdown.clone()).await?;
            serve_until_stopped(&args.service, spiffe_id, server, &common).await?
        }
        other => anyhow::bail!("unknown service {other}"),
    };
    let _ = std::fs::remove_file(RunReport::path(&common.data_dir, &report.service));
    Ok(ExitCode::SUCCESS)
}

/// Verifies bearer tokens against the auth service (JWKS, session status).
fn subjects_via_auth(
    source: &spiffe::X509Source,
    common: &Common,
) -> anyhow::Result<Arc<dyn SubjectResolver>> {
    let client = MeshClient::new(source.clone(), &common.trust_domain);
    let subjects = JwtSubjects::via_auth(&client, &Directory::new(&common.data_dir))?;
    Ok(Arc::new(subjects))
}

/// Publishes the run report of a started gRPC service and waits until it
/// has stopped.
async fn serve_until_stopped(
    service: &str,
    spiffe_id: String,
    server: RunningServer,
    common: &Common,
) -> anyhow::Result<RunReport> {
    let report = RunReport {
        service: service.to_owned(),
        pid: std::process::id(),
        spiffe_id,
        grpc: server.addrs.grpc,
        admin: server.addrs.admin,
        https: None,
    };
    write_report(&common.data_dir, &report)?;
    server.wait().await?;
    Ok(report)
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
    report.write(data_dir).with_context(|| {
        format!(
            "cannot write {}",
            RunReport::path(data_dir, &report.service).display()
        )
    })
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
