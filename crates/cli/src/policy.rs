//! `trustmesh policy test`: runs every `test_*` rule of the Rego tests.

use std::path::PathBuf;
use std::process::ExitCode;

use trustmesh_policy::{TestSource, run_tests};

/// Rego policy commands.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PolicyCommand {
    /// Run every `test_*` rule in `**/*_test.rego`; exits non-zero on any
    /// failure.
    Test {
        /// Policy directory to test (default: TRUSTMESH_POLICY_DIR, else the
        /// policies built into this binary).
        #[arg(long, env = "TRUSTMESH_POLICY_DIR")]
        dir: Option<PathBuf>,
    },
}

pub fn run(args: PolicyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PolicyCommand::Test { dir } => {
            let source = match dir {
                Some(dir) => TestSource::Dir(dir),
                None => TestSource::Embedded,
            };
            let outcomes = run_tests(source)?;
            let mut failed = 0;
            for outcome in &outcomes {
                if outcome.passed {
                    println!("PASS {}", outcome.name);
                } else {
                    failed += 1;
                    match &outcome.error {
                        Some(error) => {
                            println!("FAIL {} ({}): {error}", outcome.name, outcome.file)
                        }
                        None => println!("FAIL {} ({})", outcome.name, outcome.file),
                    }
                }
            }
            println!("{} passed, {failed} failed", outcomes.len() - failed);
            if outcomes.is_empty() {
                eprintln!("trustmesh: error: no test_* rules found");
                return Ok(ExitCode::FAILURE);
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
