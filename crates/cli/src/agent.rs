//! `trustmesh agent`: what a payment agent runs. `deposit` brings money into
//! a user's wallet by calling `trustmesh.wallet.v1.Wallet/Deposit` directly
//! over mTLS with the agent's own SPIFFE identity — from the Workload API
//! (`SPIFFE_ENDPOINT_SOCKET`, e.g. a SPIRE agent or `trustmesh up` with a
//! registration entry) or from files minted by `trustmesh identity mint`
//! (`--svid-dir`) — never through the gateway. The wallet policy decides:
//! only agents listed in `data.agents`, within their limits.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use trustmesh_policy::DENY_REASON_METADATA;
use trustmesh_proto::trustmesh::wallet::v1::DepositRequest;
use trustmesh_proto::trustmesh::wallet::v1::wallet_client::WalletClient;
use trustmesh_runtime::{Directory, MeshChannel, MeshClient, SvidFiles, connect_channel};

use crate::Common;

/// Agent commands.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Deposit money into a user's wallet (idempotent on --reference).
    Deposit {
        /// The receiving user's id (UUID).
        #[arg(long)]
        to: String,
        /// The amount in minor units (cents), > 0.
        #[arg(long)]
        amount: i64,
        /// The currency (three uppercase letters).
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// The agent's external reference: a retry with the same reference
        /// returns the original deposit.
        #[arg(long)]
        reference: String,
        /// Directory holding `svid.pem`, `key.pem` and `bundle.pem`
        /// (`trustmesh identity mint --out DIR`); without it the SVID comes
        /// from the Workload API.
        #[arg(long)]
        svid_dir: Option<PathBuf>,
        /// Workload API address (`unix:/path`) when --svid-dir is not given.
        #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
        socket: Option<String>,
        /// The wallet's mTLS address (`host:port`); default: the run report
        /// in the data directory (or TRUSTMESH_WALLET_ADDR).
        #[arg(long)]
        wallet_addr: Option<String>,
    },
}

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let common = args.common;
    match args.command {
        AgentCommand::Deposit {
            to,
            amount,
            currency,
            reference,
            svid_dir,
            socket,
            wallet_addr,
        } => {
            let wallet_id = format!("spiffe://{}/svc/wallet", common.trust_domain);
            let addr = match wallet_addr {
                Some(addr) => addr,
                None => Directory::new(&common.data_dir)
                    .resolve("wallet")
                    .context("cannot find the wallet (pass --wallet-addr or --data-dir)")?,
            };
            let channel: MeshChannel = match svid_dir {
                Some(dir) => {
                    let files = SvidFiles::load(&dir)
                        .with_context(|| format!("cannot load the SVID in {}", dir.display()))?;
                    connect_channel(files.client_config(&wallet_id)?, &addr)?
                }
                None => {
                    let source = trustmesh_identity::x509_source(socket.as_deref(), None)
                        .await
                        .context("no SPIFFE identity from the Workload API (or pass --svid-dir)")?;
                    MeshClient::new(source, &common.trust_domain).channel(&addr, &wallet_id)?
                }
            };
            let reply = WalletClient::new(channel)
                .deposit(DepositRequest {
                    to_user_id: to.clone(),
                    amount,
                    currency: currency.clone(),
                    reference: reference.clone(),
                })
                .await
                .map_err(|status| {
                    let reason = status
                        .metadata()
                        .get(DENY_REASON_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default();
                    anyhow::anyhow!(
                        "the wallet refused the deposit: {}{reason}",
                        status.message()
                    )
                })?
                .into_inner();
            let transfer = reply
                .transfer
                .context("the wallet answered without a transfer")?;
            println!(
                "{} {} {} minor units to {} (transfer {}, reference {}, at {})",
                if reply.replayed {
                    "already deposited:"
                } else {
                    "deposited"
                },
                transfer.amount,
                transfer.currency,
                transfer.to_user_id,
                transfer.transfer_id,
                transfer.reference,
                transfer.created_at,
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
