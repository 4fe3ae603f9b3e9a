//! `trustmesh payment`: offline checks of the payment service's database,
//! reading it directly (the SQLite file in the data directory, or
//! PostgreSQL with `DATABASE_URL` / `PAYMENT_DATABASE_URL`).
//! The database is not migrated: a schema other than this binary's is
//! refused, so a check never moves the schema under running replicas.

use std::process::ExitCode;

use anyhow::Context;

use crate::Common;

/// Payment commands.
#[derive(Debug, clap::Args)]
pub struct PaymentArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: PaymentCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PaymentCommand {
    /// Check the payers' running totals the 24 h volumes are read from:
    /// each total equals the sum of its payer's payments, and each step of
    /// each chain is its payment's amount. Exits 1 and lists the problems
    /// otherwise.
    Check,
}

pub async fn run(args: PaymentArgs) -> anyhow::Result<ExitCode> {
    let db = trustmesh_payment::open_db_unchanged(&args.common.data_dir)
        .await
        .context("cannot open the payment database")?;
    match args.command {
        PaymentCommand::Check => {
            let problems = trustmesh_payment::PaymentStore::new(db)
                .check_totals()
                .await
                .context("cannot read the payments")?;
            for problem in &problems {
                println!("{problem}");
            }
            if problems.is_empty() {
                println!("ok: every running total holds");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{} problem(s)", problems.len());
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
