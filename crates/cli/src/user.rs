//! `trustmesh user`: operator commands on users, for the operator's machine.
//!
//! `grant-role` is how the first admin is made. Whoever can read the data
//! directory holds the local CA, so the command mints itself a short-lived
//! SVID for the `ops` workload (`spiffe://<td>/ops/cli`) in memory — never on
//! disk, and no standing registration entry — and calls the user service
//! over mTLS. The policy lets only `ops` and admins change roles; the change
//! is recorded as a `ROLE_CHANGED` event.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use trustmesh_identity::{Issuer, IssuerConfig};
use trustmesh_proto::trustmesh::user::v1::SetRoleRequest;
use trustmesh_proto::trustmesh::user::v1::user_client::UserClient;
use trustmesh_runtime::{Directory, SvidFiles, connect_channel};

use crate::Common;

/// How long the in-memory `ops` SVID lives.
const OPS_SVID_TTL: Duration = Duration::from_secs(300);

/// User commands.
#[derive(Debug, clap::Args)]
pub struct UserArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Debug, clap::Subcommand)]
enum UserCommand {
    /// Give a user a role (user, manager, admin, finance, audit) as the
    /// operator (`ops` workload); needs the running mesh's data directory.
    GrantRole {
        /// The user's email.
        #[arg(long)]
        email: String,
        /// The role to give.
        #[arg(long)]
        role: String,
    },
}

pub async fn run(args: UserArgs) -> anyhow::Result<ExitCode> {
    let common = args.common;
    match args.command {
        UserCommand::GrantRole { email, role } => {
            if !common.data_dir.join("ca").join("ca.pem").exists() {
                anyhow::bail!(
                    "no mesh in {}: start it with `trustmesh up` (or pass --data-dir)",
                    common.data_dir.display()
                );
            }
            let mut config = IssuerConfig::new(common.data_dir.clone());
            config.trust_domain = common.trust_domain.clone();
            let issuer = Issuer::open(config)?;
            let svid = issuer.mint(
                &format!("spiffe://{}/ops/cli", common.trust_domain),
                OPS_SVID_TTL,
            )?;
            let files = SvidFiles::from_der(
                svid.cert_chain_der.clone(),
                svid.key_pkcs8_der.clone(),
                vec![issuer.bundle_der()],
            )?;
            let user_id = format!("spiffe://{}/svc/user", common.trust_domain);
            let addr = Directory::new(&common.data_dir).resolve("user")?;
            let channel = connect_channel(files.client_config(&user_id)?, &addr)?;
            let profile = UserClient::new(channel)
                .set_role(SetRoleRequest {
                    user_id: String::new(),
                    email: email.clone(),
                    role: role.clone(),
                })
                .await
                .map_err(|status| anyhow::anyhow!("{}", status.message()))
                .with_context(|| format!("cannot give {email} the role {role}"))?
                .into_inner();
            println!(
                "{} ({}) is now {}",
                profile.email, profile.user_id, profile.role
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
