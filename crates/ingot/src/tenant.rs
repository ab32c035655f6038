//! `ingot tenant`: accounts and their API client credentials, straight against the database
//! (like `ingot admin`). The same operations exist for operators at `/api/v1/accounts`.

use crate::config::DbArgs;
use anyhow::{Context, Result};
use clap::Subcommand;
use ingot_api::tenancy::{DEFAULT_MAX_SERVERS, parse_scopes, validate_account_name};

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create an account (tenant).
    Create {
        #[command(flatten)]
        db: DbArgs,
        /// Account name: 1-63 of a-z, 0-9, '-', '_'.
        name: String,
        /// Quota bmc.servers.max_count.
        #[arg(long, default_value_t = DEFAULT_MAX_SERVERS)]
        max_servers: i64,
    },
    /// Issue OAuth2 client credentials for an account; the last line is `client_id:secret`
    /// (the secret is shown once and stored hashed).
    CreateCredentials {
        #[command(flatten)]
        db: DbArgs,
        name: String,
        /// A label for the credential.
        #[arg(long, default_value = "created by ingot tenant")]
        label: String,
        /// Scopes, space- or comma-separated (default: bmc bmc.read tags tags.read audit.read).
        #[arg(long)]
        scopes: Option<String>,
    },
    /// Add a tenant member (a user who acts for the account and sees only its servers); the
    /// last line is the member's API key (shown once).
    AddMember {
        #[command(flatten)]
        db: DbArgs,
        name: String,
        #[arg(long)]
        username: String,
    },
    /// Change an account's server quota.
    SetQuota {
        #[command(flatten)]
        db: DbArgs,
        name: String,
        #[arg(long)]
        max_servers: i64,
    },
    /// List accounts with their quota use.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
}

pub async fn run(cmd: TenantCommand) -> Result<()> {
    match cmd {
        TenantCommand::Create {
            db,
            name,
            max_servers,
        } => {
            validate_account_name(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::ensure!(max_servers >= 0, "--max-servers must be 0 or more");
            let store = db.open().await?;
            let a = store
                .create_account(&name, max_servers)
                .await
                .with_context(|| format!("creating account {name:?}"))?;
            println!(
                "Created account {:?} (id {}, max servers {}).",
                a.name, a.id, a.max_servers
            );
            Ok(())
        }
        TenantCommand::CreateCredentials {
            db,
            name,
            label,
            scopes,
        } => {
            let scopes: Option<Vec<String>> = scopes.map(|s| {
                s.split([' ', ','])
                    .filter(|x| !x.is_empty())
                    .map(str::to_owned)
                    .collect()
            });
            let scopes =
                parse_scopes(scopes.as_deref()).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
            let store = db.open().await?;
            let a = store
                .account_by_name(&name)
                .await
                .with_context(|| format!("no account {name:?}"))?;
            let issued = store.create_api_client(a.id, &label, &scopes).await?;
            println!(
                "Client credentials for account {name:?}, scopes {:?} (secret shown once; keep it secret):",
                scopes.join(" ")
            );
            println!("{}:{}", issued.client.client_id, issued.client_secret);
            Ok(())
        }
        TenantCommand::AddMember { db, name, username } => {
            anyhow::ensure!(
                !username.is_empty()
                    && username.len() <= 150
                    && !username.contains(char::is_whitespace),
                "--username must be 1-150 characters without spaces"
            );
            let store = db.open().await?;
            let a = store
                .account_by_name(&name)
                .await
                .with_context(|| format!("no account {name:?}"))?;
            let user = store
                .create_account_member(a.id, &username)
                .await
                .with_context(|| format!("adding member {username:?}"))?;
            let key = store.create_api_key(user.id, "tenant member").await?;
            println!(
                "Added {:?} to account {name:?}. API key (shown once; keep it secret):",
                user.username
            );
            println!("{}", key.as_maas_key());
            Ok(())
        }
        TenantCommand::SetQuota {
            db,
            name,
            max_servers,
        } => {
            anyhow::ensure!(max_servers >= 0, "--max-servers must be 0 or more");
            let store = db.open().await?;
            let a = store
                .account_by_name(&name)
                .await
                .with_context(|| format!("no account {name:?}"))?;
            let a = store.set_max_servers(a.id, max_servers).await?;
            println!(
                "Account {:?}: max servers {} ({} in use).",
                a.name, a.max_servers, a.servers_used
            );
            Ok(())
        }
        TenantCommand::List { db } => {
            let store = db.open().await?;
            for a in store.list_accounts().await? {
                println!("{}\t{}/{} servers", a.name, a.servers_used, a.max_servers);
            }
            Ok(())
        }
    }
}
