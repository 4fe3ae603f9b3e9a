//! `trustmesh identity`: registration entries for local workloads, SVIDs
//! minted to files, and fetching an SVID from the Workload API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use trustmesh_identity::{EntryStore, Issuer, IssuerConfig, Selector};

use crate::Common;

/// Identity commands.
#[derive(Debug, clap::Args)]
pub struct IdentityArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: IdentityCommand,
}

#[derive(Debug, clap::Subcommand)]
enum IdentityCommand {
    /// Registration entries: which local processes get which SPIFFE ID.
    Entry {
        #[command(subcommand)]
        command: EntryCommand,
    },
    /// Mint an X.509-SVID to files (`svid.pem`, `key.pem`, `bundle.pem`) for
    /// an agent that does not use the Workload API, like
    /// `spire-server x509 mint`.
    Mint {
        /// The SPIFFE ID to mint, e.g. spiffe://trustmesh.local/agent/acme.
        #[arg(long)]
        spiffe_id: String,
        /// Lifetime of the SVID (e.g. 30m, 1h, 24h).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Directory to write the three files into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Fetch this process's X.509-SVID from the Workload API and print its
    /// SPIFFE ID (and write it to files with --out), like
    /// `spire-agent api fetch x509`.
    Fetch {
        /// Workload API address (`unix:/path`); default SPIFFE_ENDPOINT_SOCKET,
        /// else the socket in the data directory.
        #[arg(long)]
        socket: Option<String>,
        /// Directory to write `svid.pem`, `key.pem` and `bundle.pem` into.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Subcommand)]
enum EntryCommand {
    /// Register a SPIFFE ID for the local processes matching every selector.
    Create {
        /// The SPIFFE ID to issue, e.g. spiffe://trustmesh.local/agent/acme.
        #[arg(long)]
        spiffe_id: String,
        /// A Unix selector: unix:uid:N, unix:gid:N or unix:path:/abs/path
        /// (repeat for several; all must match).
        #[arg(long = "selector", required = true)]
        selectors: Vec<String>,
    },
    /// List the registration entries.
    List,
    /// Delete a registration entry by its id.
    Delete {
        /// The entry id printed by `create` or `list`.
        id: String,
    },
}

pub async fn run(args: IdentityArgs) -> anyhow::Result<ExitCode> {
    let common = args.common;
    match args.command {
        IdentityCommand::Entry { command } => {
            let store = EntryStore::open(&common.data_dir).with_context(|| {
                format!("cannot open the entries of {}", common.data_dir.display())
            })?;
            match command {
                EntryCommand::Create {
                    spiffe_id,
                    selectors,
                } => {
                    let selectors = selectors
                        .iter()
                        .map(|s| s.parse::<Selector>())
                        .collect::<Result<Vec<_>, _>>()?;
                    let entry = store.create(&spiffe_id, selectors)?;
                    println!(
                        "{}\t{}\t{}",
                        entry.id,
                        entry.spiffe_id,
                        selectors_text(&entry.selectors)
                    );
                }
                EntryCommand::List => {
                    let entries = store.list()?;
                    if entries.is_empty() {
                        eprintln!("no registration entries");
                    }
                    for entry in entries {
                        println!(
                            "{}\t{}\t{}",
                            entry.id,
                            entry.spiffe_id,
                            selectors_text(&entry.selectors)
                        );
                    }
                }
                EntryCommand::Delete { id } => {
                    if !store.delete(&id)? {
                        anyhow::bail!("no registration entry with id {id}");
                    }
                    println!("deleted {id}");
                }
            }
        }
        IdentityCommand::Mint {
            spiffe_id,
            ttl,
            out,
        } => {
            let mut config = IssuerConfig::new(common.data_dir.clone());
            config.trust_domain = common.trust_domain.clone();
            let issuer = Issuer::open(config)?;
            let svid = issuer.mint(&spiffe_id, ttl)?;
            issuer.write_minted(&svid, &out)?;
            println!(
                "minted {} valid for {} into {}",
                svid.spiffe_id,
                humantime::format_duration(ttl),
                out.display()
            );
        }
        IdentityCommand::Fetch { socket, out } => {
            let endpoint = socket
                .or_else(|| std::env::var("SPIFFE_ENDPOINT_SOCKET").ok())
                .unwrap_or_else(|| {
                    format!(
                        "unix:{}",
                        IssuerConfig::new(common.data_dir.clone())
                            .socket_path
                            .display()
                    )
                });
            let source = trustmesh_identity::source::x509_source_with_timeout(
                Some(&endpoint),
                None,
                Duration::from_secs(5),
            )
            .await?;
            let svid = source
                .svid()
                .context("the Workload API gave no X.509-SVID")?;
            println!("{}", svid.spiffe_id());
            if let Some(out) = out {
                write_fetched(&source, &svid, &common.trust_domain, &out)?;
            }
            source.shutdown().await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn selectors_text(selectors: &[Selector]) -> String {
    selectors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn write_fetched(
    source: &spiffe::X509Source,
    svid: &spiffe::X509Svid,
    trust_domain: &str,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let chain: Vec<Vec<u8>> = svid
        .cert_chain()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    let td = spiffe::TrustDomain::new(trust_domain)?;
    let bundle = source
        .bundle_set()?
        .get(&td)
        .context("the Workload API gave no bundle for the trust domain")?;
    let bundle: Vec<Vec<u8>> = bundle
        .authorities()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    trustmesh_identity::write_svid_files(out, &chain, svid.private_key().as_ref(), &bundle)?;
    Ok(())
}
