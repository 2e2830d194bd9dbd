//! `ackgate`: the gateway command line.

use ackgate_gateway::config::Config;
use ackgate_gateway::daemon;
use anyhow::{Context as _, Result};
use clap::Parser as _;

use cli::{Cli, Command, ValidatorCommand};

mod admin;
mod cli;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("ackgate: {}", ackgate_common::report::error_report(e.as_ref()));
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let daemon =
        matches!(cli.command, Command::Run { .. } | Command::Validator { command: ValidatorCommand::Run { .. } });
    if !daemon {
        ackgate_common::host::end_quietly_when_output_closes();
    }
    match cli.command {
        Command::Run { config } => daemon::run(&config),
        Command::Init { config, edge_interface, state_dir } => admin::init(&config, &edge_interface, &state_dir),
        Command::Invite { config, note } => admin::invite(&config, &note),
        Command::Users { config, store, command } => admin::users(config.as_deref(), store.as_deref(), command),
        Command::Agents { config, command } => admin::agents(&config.context("--config FILE is required")?, command),
        Command::Validator { command: ValidatorCommand::Run { config } } => daemon::run_validator(&config),
        Command::Validator { command: ValidatorCommand::Credentials { config, out } } => {
            admin::validator_credentials(&config, &out)
        }
        Command::Flows { config, json } => admin::flows(&config, json),
        Command::Services { config, command } => {
            admin::services(&config.context("--config FILE is required")?, command)
        }
        Command::Status { config, pin_dir, all, json } => {
            let config = config.map(|path| Config::from_file(&path)).transpose()?;
            let pin_dir = config.as_ref().map_or(pin_dir, |c| c.gateway.pin_dir.clone());
            admin::status(&pin_dir, config.as_ref(), all, json)
        }
    }
}
