//! `trustmesh wallet`: offline checks of the wallet ledger, reading its
//! database directly (the SQLite file in the data directory, or PostgreSQL
//! with `DATABASE_URL` / `WALLET_DATABASE_URL`).
//! The database is not migrated: a schema other than this binary's is
//! refused, so a check never moves the schema under running replicas.

use std::process::ExitCode;

use anyhow::Context;

use crate::Common;

/// Wallet commands.
#[derive(Debug, clap::Args)]
pub struct WalletArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: WalletCommand,
}

#[derive(Debug, clap::Subcommand)]
enum WalletCommand {
    /// Check the ledger's invariants: every currency sums to zero, every
    /// cached balance equals the sum of its entries, no user wallet is
    /// negative. Exits 1 and lists the violations otherwise.
    Check,
}

pub async fn run(args: WalletArgs) -> anyhow::Result<ExitCode> {
    let db = trustmesh_wallet::open_db_unchanged(&args.common.data_dir)
        .await
        .context("cannot open the wallet database")?;
    match args.command {
        WalletCommand::Check => {
            let report = trustmesh_wallet::check_invariants(&db)
                .await
                .context("cannot read the ledger")?;
            println!("{report}");
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
