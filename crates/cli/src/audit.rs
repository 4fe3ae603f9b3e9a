//! `trustmesh audit`: offline checks of the audit log, reading the audit
//! database directly (the SQLite file in the data directory, or PostgreSQL
//! with `DATABASE_URL` / `AUDIT_DATABASE_URL`), so they work whether or not
//! the mesh runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use trustmesh_merkle::to_hex;

use crate::Common;

/// Audit commands.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// Recompute the whole log (every leaf, the hash chain, the Merkle
    /// root) and check it against every signed checkpoint. Exits 1 and names
    /// the first bad entry if anything was edited, deleted or reordered.
    Verify {
        /// Also check an earlier checkpoint kept elsewhere (the text printed
        /// by `trustmesh audit checkpoint`): proves the log was neither
        /// truncated nor rewritten since.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The verifying key (default: `<data-dir>/audit/checkpoint.pub`).
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Print the newest signed checkpoint (save it to verify against later).
    Checkpoint,
}

pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let common = args.common;
    let db = trustmesh_audit::open_db(&common.data_dir)
        .await
        .context("cannot open the audit database")?;
    let origin = format!("{}/audit", common.trust_domain);
    match args.command {
        AuditCommand::Checkpoint => {
            let latest: Option<String> =
                sqlx::query_scalar("SELECT signed FROM checkpoints ORDER BY size DESC LIMIT 1")
                    .fetch_optional(db.pool())
                    .await
                    .context("cannot read the checkpoints")?;
            match latest {
                Some(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                None => anyhow::bail!("the audit log has no checkpoint yet"),
            }
        }
        AuditCommand::Verify {
            checkpoint,
            public_key,
        } => {
            let key_path = public_key
                .unwrap_or_else(|| trustmesh_audit::keys::public_key_path(&common.data_dir));
            let key = trustmesh_audit::keys::load_public(&key_path)?;
            let extra = match &checkpoint {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                None => None,
            };
            let started = std::time::Instant::now();
            match trustmesh_audit::log::verify(&db, &origin, &[key], extra.as_deref()).await {
                Ok(report) => {
                    println!(
                        "ok: {} events (from #{}), root {}, {} checkpoints checked, in {:.2?}",
                        report.size,
                        report.first_index,
                        to_hex(&report.root),
                        report.checkpoints.len(),
                        started.elapsed()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("FAILED: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
