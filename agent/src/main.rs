//! `ackgate-agent`: enroll this machine, log a user in, run the stamper and
//! the gateway session, show status.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ackgate_agent::config::{Config, DEFAULT_CONFIG};
use ackgate_agent::control::{self, Daemon, Reply, Request};
use ackgate_agent::enroll::enroll;
use ackgate_agent::fingerprint;
use ackgate_agent::session::{self, Identity, Shared};
use ackgate_agent::stamper::Stamper;
use ackgate_agent::state::StateDir;
use ackgate_common::abi::ANY_ACCOUNT;
use ackgate_common::proto::Invite;
use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(
    name = "ackgate-agent",
    version,
    about = "ackgate client agent: proves, inside each TCP handshake, that this enrolled machine may reach a protected service",
    long_about = "ackgate client agent.\n\n\
        A gateway protected by ackgate answers a connection only if its handshake ACK carries a \
        capability TCP option from an enrolled agent, and then asks that agent who the user is. \
        This program stamps the option (an eBPF program on the egress of the configured \
        interfaces) and keeps one TLS session open to the gateway to answer its questions.\n\n\
        First use, as root:\n  \
        ackgate-agent enroll 'ackgate-invite-1....'   (the invite your administrator gave you)\n  \
        ackgate-agent run &                          (or the systemd unit)\n  \
        ackgate-agent login                          (asks for user name and password)\n  \
        ackgate-agent status\n\n\
        Each local account logs in for itself (login_scope = \"account\", the default): only the \
        connections of accounts with a login are stamped, and they go out as that account's user."
)]
struct Cli {
    /// Agent configuration (TOML; see README for every key).
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Redeem an invite: get this machine's agent id, MAC key and client
    /// certificate from the gateway, stored in state_dir (root only).
    Enroll {
        /// The invite text (`ackgate-invite-1.…`), or - to read it from stdin.
        invite: String,
        /// Name this machine is recorded under at the gateway.
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Log a user in for your local account on the running agent: from
    /// then on your account's connections are stamped and go out as that
    /// user. The password stays in the agent's memory only; the gateway
    /// never sees it (an OPAQUE login, once per session).
    Login {
        /// User name (asked for when absent).
        #[arg(long)]
        user: Option<String>,
        /// The local account (uid) to log in for; root only. Default: yours.
        #[arg(long, value_name = "UID")]
        account: Option<u32>,
        /// Read the password from the first line of stdin instead of
        /// asking on the terminal (scripts, tests).
        #[arg(long)]
        password_stdin: bool,
    },
    /// End your local account's login on the running agent: its
    /// connections are no longer stamped, and the gateway drops the login.
    Logout {
        /// The local account (uid) to log out; root only. Default: yours.
        #[arg(long, value_name = "UID")]
        account: Option<u32>,
    },
    /// Load the stamper, attach it to the configured interfaces and keep the
    /// gateway session up until SIGTERM or Ctrl-C.
    Run,
    /// Session state, stamper counters by reason, recently stamped flows.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "ackgate_agent=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main() {
        eprintln!("ackgate-agent: {}", ackgate_common::report::error_report(e.as_ref()));
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run) {
        ackgate_common::host::end_quietly_when_output_closes();
    }
    let config = Config::from_file(&cli.config)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        match cli.command {
            Command::Enroll { invite, hostname } => cmd_enroll(&config, &invite, hostname).await,
            Command::Login { user, account, password_stdin } => cmd_login(&config, user, account, password_stdin).await,
            Command::Logout { account } => {
                match control::request(&config.control_socket, &Request::Logout { account })
                    .await
                    .context("is `ackgate-agent run` running?")?
                {
                    Reply::LoggedOut => Ok(()),
                    Reply::Error(e) => bail!("{e}"),
                    other => bail!("unexpected reply: {other:?}"),
                }
            }
            Command::Run => cmd_run(config).await,
            Command::Status { json } => cmd_status(&config, json).await,
        }
    })
}

async fn cmd_enroll(config: &Config, invite: &str, hostname: Option<String>) -> Result<()> {
    let text = if invite == "-" {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the invite from stdin")?;
        line
    } else {
        invite.to_owned()
    };
    let invite = Invite::parse(&text)?;
    let hostname = hostname.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
    });
    let state = StateDir::new(&config.state_dir);
    let id = enroll(&invite, &hostname, &state, config.session.connect_timeout()).await?;
    println!(
        "enrolled as agent {id} with gateway {}; identity stored in {}",
        invite.gateway,
        config.state_dir.display()
    );
    Ok(())
}

async fn cmd_login(config: &Config, user: Option<String>, account: Option<u32>, password_stdin: bool) -> Result<()> {
    let user = match user {
        Some(u) => u,
        None => {
            if !std::io::stdin().is_terminal() {
                bail!("no --user given and stdin is not a terminal to ask on");
            }
            eprint!("User: ");
            std::io::stderr().flush().ok();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("reading the user name")?;
            line.trim().to_owned()
        }
    };
    if user.is_empty() {
        bail!("the user name is empty");
    }
    let password = if password_stdin {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
        Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned())
    } else {
        Zeroizing::new(
            rpassword::prompt_password("Password: ")
                .context("reading the password (no terminal? use --password-stdin)")?,
        )
    };
    match control::request(&config.control_socket, &Request::Login { user, password, account })
        .await
        .context("is `ackgate-agent run` running?")?
    {
        Reply::Login(Some(o)) if o.accepted => {
            println!("{}", o.message);
            Ok(())
        }
        Reply::Login(Some(o)) => bail!("the gateway refused the login: {}", o.message),
        Reply::Error(e) => bail!("{e}"),
        Reply::Login(None) => {
            bail!(
                "no verdict from the gateway (no session yet, or a newer login or logout replaced this one); \
                 the agent logs in with the latest credentials when its session comes up"
            )
        }
        other => bail!("unexpected reply: {other:?}"),
    }
}

async fn cmd_run(config: Config) -> Result<()> {
    match ackgate_common::kernels::check_running()? {
        Some(kernel) => tracing::info!(%kernel, "kernel supported"),
        None => {
            tracing::warn!("cannot tell the kernel's version; loading the stamper will tell whether it is supported")
        }
    }
    let enrollment = StateDir::new(&config.state_dir).load()?;
    let agent_id = enrollment.info.agent_id;
    let gateway_ip = enrollment.info.gateway.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
    let mut stamper = Stamper::load(config.option_id()).context("loading the TC stamper")?;
    stamper.set_identity(agent_id, enrollment.mac_key)?;
    let targets = config.targets(gateway_ip);
    if targets.is_empty() {
        bail!("no [[targets]] configured and the gateway address {} is not an IP address", enrollment.info.gateway);
    }
    stamper.set_targets(&targets)?;
    if config.interfaces.is_empty() {
        bail!("no interfaces configured: set `interfaces = [\"eth0\"]` in {}", DEFAULT_CONFIG);
    }
    for iface in &config.interfaces {
        stamper.attach(iface)?;
    }
    tracing::info!(agent_id, interfaces = ?config.interfaces, targets = targets.len(), "stamper attached");
    let stamper = Arc::new(Mutex::new(stamper));
    let shared = Shared::new(&enrollment.info.gateway, stamper.clone());
    let machine = fingerprint::digest(&fingerprint::collect(std::path::Path::new("/")));
    let state = Some(StateDir::new(&config.state_dir));
    let identity = Arc::new(Identity::new(enrollment, machine, state));
    let scope = config.login_scope;
    let daemon = Arc::new(Daemon {
        agent_id,
        interfaces: config.interfaces.clone(),
        scope,
        socketless_uid: control::socketless_uid(),
        shared: shared.clone(),
        stamper,
    });
    let listener = control::bind(&config.control_socket, scope)?;
    let control_task = tokio::spawn(control::serve(listener, daemon.clone()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let session_task = tokio::spawn(session::run(identity, shared, config.session.clone(), stopped));
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping: closing the session and detaching the stamper");
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), session_task).await;
    control_task.abort();
    let _ = std::fs::remove_file(&config.control_socket);
    // Dropping the daemon drops the stamper, which detaches it.
    drop(daemon);
    Ok(())
}

async fn cmd_status(config: &Config, json: bool) -> Result<()> {
    let report = match control::request(&config.control_socket, &Request::Status)
        .await
        .context("is `ackgate-agent run` running?")?
    {
        Reply::Status(r) => r,
        Reply::Error(e) => bail!("{e}"),
        other => bail!("unexpected reply: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let s = &report.session;
    println!("agent {} on {}", report.agent_id, report.interfaces.join(", "));
    println!(
        "session: {} (gateway {}, {} connects, {} failed, {} profile requests, {} refused as not stamped here)",
        s.state, s.gateway, s.connects, s.failed_connects, s.profile_requests, s.profile_refusals
    );
    if let Some(e) = &s.last_error {
        println!("last error: {e}");
    }
    if s.logins.is_empty() {
        println!("logins: none");
    }
    for l in &s.logins {
        let account = account_name(l.account);
        match l.accepted {
            true => println!("login: {account} as {} (logged in)", l.user),
            false => println!("login: {account} as {} (refused: {})", l.user, l.message),
        }
    }
    println!("stamper counters:");
    for (label, n) in &report.counters {
        println!("  {label:<24} {n}");
    }
    println!("recently stamped flows:");
    for r in &report.recent {
        println!("  {} -> {} {} for {}, {} ms ago", r.client, r.service, r.kind, account_name(r.account), r.age_ms);
    }
    Ok(())
}

fn account_name(account: u32) -> String {
    if account == ANY_ACCOUNT { "every account".to_owned() } else { format!("uid {account}") }
}
