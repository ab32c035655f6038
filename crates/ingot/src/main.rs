//! `ingot`: the one binary. Only this crate reads flags, environment and config files.

mod config;
mod pxe;
mod serve;
mod tenant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use config::{DbArgs, ServeArgs};

#[derive(Parser)]
#[command(
    name = "ingot",
    version,
    about = "MAAS-compatible bare-metal automation engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the region: API, engine, and optionally a simulated fleet and the PXE services.
    Serve(Box<ServeArgs>),
    /// Administration: users and API keys.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Tenants of the cloud API: accounts, client credentials, quotas.
    Tenant {
        #[command(subcommand)]
        command: tenant::TenantCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a user and print a MAAS-style API key (consumer_key:token_key:token_secret) as
    /// the last line of output.
    CreateUser {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        username: String,
        #[arg(long)]
        admin: bool,
    },
    /// Issue another API key for an existing user (last line: the key).
    CreateKey {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        username: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Admin { command } => admin(command).await,
            Command::Tenant { command } => tenant::run(command).await,
        }
    })
}

async fn admin(cmd: AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::CreateUser {
            db,
            username,
            admin,
        } => {
            if username.is_empty() || username.len() > 150 || username.contains(char::is_whitespace)
            {
                anyhow::bail!("--username must be 1-150 characters without spaces");
            }
            let store = db.open().await?;
            let user = store
                .create_user(&username, admin)
                .await
                .with_context(|| format!("creating user {username:?}"))?;
            let key = store
                .create_api_key(user.id, "created by ingot admin")
                .await?;
            println!(
                "Created {} {:?}. API key (shown once; keep it secret):",
                if admin { "administrator" } else { "user" },
                user.username
            );
            println!("{}", key.as_maas_key());
            Ok(())
        }
        AdminCommand::CreateKey { db, username } => {
            let store = db.open().await?;
            let user = store
                .user_by_name(&username)
                .await
                .with_context(|| format!("no user {username:?}"))?;
            let key = store
                .create_api_key(user.id, "created by ingot admin")
                .await?;
            println!("New API key for {username:?} (shown once):");
            println!("{}", key.as_maas_key());
            Ok(())
        }
    }
}
