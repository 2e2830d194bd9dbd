//! The command line: subcommands and their arguments.

use std::path::PathBuf;

use ackgate_gateway::config::{DEFAULT_PIN_DIR, DEFAULT_STATE_DIR};
use clap::{Parser, Subcommand};

/// ackgate gateway: hides TCP services behind a capability check done in the
/// kernel, inside the TCP handshake (XDP SYN cookies + a MAC'd TCP option).
#[derive(Parser)]
#[command(
    version,
    about,
    long_about = "ackgate gateway.\n\n\
        Protected services (VIP:port) answer only handshakes whose final ACK carries a capability TCP \
        option from an enrolled agent (`ackgate-agent`), checked in XDP before any packet reaches the \
        server; the control plane then asks the agent who the user is and authorizes or denies the \
        flow. Everything else gets the service's default response: silence, a reset, or a decoy page.\n\n\
        First use, as root:\n  \
        ackgate init --config /etc/ackgate/gateway.toml      (config skeleton, CA, user store)\n  \
        edit the config: edge_interface and [[services]]\n  \
        ackgate run --config /etc/ackgate/gateway.toml &     (or the systemd unit)\n  \
        ackgate users add alice --config ...                 (asks for a password)\n  \
        ackgate invite --note alice --config ...             (give the text to alice's machine)\n  \
        ackgate users pending / users approve alice          (bind her machine after her first try)\n  \
        ackgate flows / ackgate status                       (what the gate is doing)"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Load the XDP gate, attach it to the edge interface named in the config,
    /// fill its maps, and run until SIGTERM/SIGINT (then detach cleanly; the
    /// pinned maps stay so a restart keeps live state).
    Run {
        /// TOML configuration file (see README "Configuration").
        #[arg(long, short)]
        config: PathBuf,
    },
    /// First start: write a commented config skeleton (if FILE does not
    /// exist), then create the private CA and the user store in the
    /// config's control.state_dir.
    Init {
        #[arg(long, short)]
        config: PathBuf,
        /// Edge interface for a new skeleton.
        #[arg(long, default_value = "eth0")]
        edge_interface: String,
        /// State directory for a new skeleton.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Create a one-time invite for a new agent and print it (give it to
    /// the user; `ackgate-agent enroll INVITE` redeems it).
    Invite {
        #[arg(long, short)]
        config: PathBuf,
        /// Who it is for (kept in the store's audit log).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// The validator as its own service.
    Validator {
        #[command(subcommand)]
        command: ValidatorCommand,
    },
    /// Valid and potential users.
    Users {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Work on this store file instead (a remote validator's).
        #[arg(long, global = true, conflicts_with = "config")]
        store: Option<PathBuf>,
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Enrolled agents: list them, show one (with any use of its key from
    /// elsewhere), revoke one.
    Agents {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Protected services (the config's [[services]]).
    Services {
        /// The gateway config (required).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ServicesCommand,
    },
    /// Flows the gate accepted, with state (pending, authorized, denied)
    /// and age, from the pinned flow map.
    Flows {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the gate's verdict counters by reason and its flows by state
    /// (read from the pinned maps), and, with --config, what the running
    /// control plane is doing (agents, decisions; over its admin socket).
    Status {
        /// Read the pin directory from this config file.
        #[arg(long, short, conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
        /// Pin directory of the running gateway.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Print every reason, including those still at zero.
        #[arg(long)]
        all: bool,
        /// Machine-readable output (every reason).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum ServicesCommand {
    /// The configured services.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a service to the config file (comments kept) and apply it to
    /// the running gateway.
    Add {
        name: String,
        /// Address clients connect to (an address of this gateway).
        #[arg(long)]
        vip: String,
        #[arg(long)]
        port: u16,
        /// The hidden server, ADDR:PORT.
        #[arg(long)]
        target: String,
        /// drop, reset or page.
        #[arg(long, default_value = "drop")]
        default_response: String,
        /// Drop unstamped SYNs too.
        #[arg(long)]
        stealth: bool,
        /// Groups allowed (repeatable); none: every valid user.
        #[arg(long = "allow-group")]
        allow_groups: Vec<String>,
    },
    /// Remove a service from the config file and the running gateway.
    Remove { name: String },
}

#[derive(Subcommand)]
pub(crate) enum ValidatorCommand {
    /// Serve validation requests of one gateway over mutual TLS.
    Run {
        /// Validator config (`[validator] listen, store, credentials`).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// On the gateway: issue the certificates of a gateway–validator link
    /// from the gateway's CA into DIR (copy it to the validator host).
    Credentials {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum UsersCommand {
    /// Add a valid user (password asked without echo, or --password-stdin).
    Add {
        name: String,
        /// Group membership (repeatable); services list the groups they allow.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a valid user's password (asked without echo, or
    /// --password-stdin). Sessions logged in with the old one keep going
    /// until they end.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Valid users, their groups and approved machines.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Potential users: failed first attempts waiting for a decision.
    Pending {
        #[arg(long)]
        json: bool,
    },
    /// Approve what is pending for NAME. A valid user: the machines whose
    /// attempts proved their password are bound to them. An unknown name:
    /// one claim on it (--claim, or the only one) makes it a valid user with
    /// that claim's password, bound to the machines that proved it only.
    Approve {
        name: String,
        /// The claim to approve, when the name has several (`users pending`).
        #[arg(long)]
        claim: Option<u64>,
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Revoke a user (or one of their machines): no new flow is authorized,
    /// and the running gateway ends their live flows at once (a RST to the
    /// client unless the service's policy is drop).
    Revoke {
        name: String,
        /// Only the machines whose fingerprint starts with this (hex).
        #[arg(long)]
        machine: Option<String>,
    },
    /// One user.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Unlock a user locked after too many failed logins (see
    /// `control.login_lockout_after`).
    Unlock { name: String },
}

#[derive(Subcommand)]
pub(crate) enum AgentsCommand {
    /// Every enrolled agent, revoked ones too.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One agent, with the addresses its key was used from without it
    /// (a suspected stolen key).
    Show {
        id: u32,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an agent: its key leaves the gate, its certificate opens no
    /// session, and the running gateway ends its session and its live flows
    /// at once (a RST to the client unless the service's policy is drop).
    Revoke { id: u32 },
}
