//! `trustmesh`: the one command of the mesh.
//!
//! `trustmesh up` runs everything locally; `trustmesh serve <service>` runs one
//! service (what `up` launches, and what a container runs); `identity` manages
//! registration entries and mints SVIDs; `policy test` runs the Rego tests.

mod agent;
mod audit;
mod identity;
mod payment;
mod policy;
mod serve;
mod up;
mod user;
mod wallet;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Trustmesh: a zero-trust service mesh — SPIFFE identities, mTLS gRPC and
/// Rego policies in one binary.
#[derive(Debug, Parser)]
#[command(name = "trustmesh", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by the commands that work on a data directory.
#[derive(Debug, Clone, clap::Args)]
struct Common {
    /// Data directory: CA, keys, SQLite files, sockets, endpoints.json.
    #[arg(
        long,
        env = "TRUSTMESH_DATA_DIR",
        default_value = ".trustmesh",
        global = true
    )]
    data_dir: PathBuf,
    /// SPIFFE trust domain of the mesh.
    #[arg(long, env = "TRUSTMESH_TRUST_DOMAIN", default_value = trustmesh_identity::DEFAULT_TRUST_DOMAIN, global = true)]
    trust_domain: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole mesh locally: the SPIFFE issuer and every service as its
    /// own supervised process, with the gateway at https://127.0.0.1:8443.
    Up(up::UpArgs),
    /// Run one service in the foreground (what `up` launches for each).
    Serve(Box<serve::ServeArgs>),
    /// Workload identities: registration entries, minted SVIDs, fetching.
    Identity(identity::IdentityArgs),
    /// Rego policies: run the tests.
    Policy(policy::PolicyArgs),
    /// Operator commands on users (the first admin).
    User(user::UserArgs),
    /// The audit log: verify it is complete and unaltered.
    Audit(audit::AuditArgs),
    /// The wallet ledger: check its invariants.
    Wallet(wallet::WalletArgs),
    /// The payment service's database: check the payers' running totals.
    Payment(payment::PaymentArgs),
    /// Payment agents: deposit into a user's wallet over mTLS.
    Agent(agent::AgentArgs),
    /// Print the REST API's OpenAPI 3.1 document (JSON), the one the
    /// gateway serves at /api/v1/openapi.json.
    Openapi,
}

/// Help and version go out as clap prints them; a usage or configuration
/// error is reduced to its one `error:` line (plus a pointer to `--help`).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = e.render().to_string();
    let line = rendered
        .lines()
        .next()
        .unwrap_or("error: invalid arguments");
    eprintln!("trustmesh: {line} (see --help)");
    ExitCode::from(2)
}

/// `trustmesh openapi`: the document on standard output.
fn print_openapi() -> anyhow::Result<ExitCode> {
    let json = trustmesh_gateway::api::openapi::document().to_pretty_json()?;
    println!("{json}");
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Command::Serve(args) = &cli.command
        && let Some(threads) = args.worker_threads()
    {
        builder.worker_threads(threads);
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("trustmesh: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Serve(args) => serve::run(*args).await,
            Command::Identity(args) => identity::run(args).await,
            Command::Policy(args) => policy::run(args),
            Command::User(args) => user::run(args).await,
            Command::Audit(args) => audit::run(args).await,
            Command::Wallet(args) => wallet::run(args).await,
            Command::Payment(args) => payment::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Openapi => print_openapi(),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, the whole cause chain.
            eprintln!("trustmesh: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
