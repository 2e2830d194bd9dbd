//! The running agent's control socket, for `ackgate-agent login`, `logout`
//! and `status`. Socket and framing: `ackgate_common::proto::local`.
//!
//! With logins per local account (the default) every account may open the
//! socket, and the kernel tells the agent who is calling: a login or
//! logout acts for the caller's own account, and only root may act for
//! another. With one machine-wide login the socket is root's only.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ackgate_common::abi::ANY_ACCOUNT;
use ackgate_common::proto::local::{self, Caller};
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use zeroize::Zeroizing;

use crate::config::LoginScope;
use crate::session::{Credentials, LoginOutcome, SessionStatus, Shared};
use crate::stamper::Stamper;

/// How long `login` waits for the gateway's verdict.
const LOGIN_WAIT: Duration = Duration::from_secs(15);

#[derive(Serialize, Deserialize)]
pub enum Request {
    /// Logs `user` in for `account` (none: the caller's own).
    Login {
        user: String,
        password: Zeroizing<String>,
        account: Option<u32>,
    },
    Logout {
        account: Option<u32>,
    },
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Login(Option<LoginOutcome>),
    LoggedOut,
    Status(StatusReport),
    Error(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecentStamp {
    /// The account the flow was stamped for.
    pub account: u32,
    pub client: String,
    pub service: String,
    /// "syn" or "ack".
    pub kind: String,
    pub age_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub agent_id: u32,
    pub interfaces: Vec<String>,
    pub session: SessionStatus,
    /// Stamper counters by reason (non-zero ones).
    pub counters: Vec<(String, u64)>,
    /// Newest first; another account's stamps only for root.
    pub recent: Vec<RecentStamp>,
}

/// What the control socket serves from.
pub struct Daemon {
    pub agent_id: u32,
    pub interfaces: Vec<String>,
    pub scope: LoginScope,
    /// [`socketless_uid`], read at start.
    pub socketless_uid: u32,
    pub shared: Arc<Shared>,
    pub stamper: Arc<Mutex<Stamper>>,
}

pub use ackgate_common::proto::local::LocalError as ControlError;

/// Binds the socket (replacing a stale one): open to every local account
/// when each logs in for itself, root's only otherwise.
pub fn bind(path: &Path, scope: LoginScope) -> Result<UnixListener, ControlError> {
    match scope {
        LoginScope::Account => local::bind_shared(path),
        LoginScope::Machine => local::bind_private(path),
    }
}

/// The uid the kernel gives a packet without a local socket, such as a
/// forwarded one (`/proc/sys/kernel/overflowuid`, 65534 unless changed).
pub fn socketless_uid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/overflowuid").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(65534)
}

/// The account a login or logout from `caller` acts for, when it asked
/// for `asked`: its own unless root asks for another; under a machine-wide
/// login, every account, and root only. The `socketless` uid never logs
/// in: every forwarded packet (a container's, a VM's) reads as it.
pub fn account_for(scope: LoginScope, caller: Caller, asked: Option<u32>, socketless: u32) -> Result<u32, String> {
    match scope {
        LoginScope::Machine if caller.uid != 0 => {
            Err("only root logs in or out here: this agent has one login for the whole machine".into())
        }
        LoginScope::Machine => match asked {
            None => Ok(ANY_ACCOUNT),
            Some(_) => Err("--account has no meaning here: this agent has one login for the whole machine".into()),
        },
        LoginScope::Account => {
            let account = asked.unwrap_or(caller.uid);
            if account == ANY_ACCOUNT {
                Err(format!("{ANY_ACCOUNT} is no account"))
            } else if account == socketless {
                Err(format!(
                    "uid {account} cannot log in: it is the kernel's overflow uid, which forwarded packets read as too"
                ))
            } else if account != caller.uid && caller.uid != 0 {
                Err(format!("only root logs in or out for another account (you are uid {}, not {account})", caller.uid))
            } else {
                Ok(account)
            }
        }
    }
}

pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    let handle = move |req: Request, caller: Caller| {
        let daemon = daemon.clone();
        async move {
            match req {
                Request::Status => status(&daemon, caller),
                Request::Logout { account } => {
                    match account_for(daemon.scope, caller, account, daemon.socketless_uid) {
                        Ok(account) => match daemon.shared.set_credentials(account, None) {
                            Ok(_) => Reply::LoggedOut,
                            Err(e) => Reply::Error(e.to_string()),
                        },
                        Err(e) => Reply::Error(e),
                    }
                }
                Request::Login { user, password, account } => {
                    match account_for(daemon.scope, caller, account, daemon.socketless_uid) {
                        Ok(account) => {
                            match daemon.shared.set_credentials(account, Some(Credentials { user, password })) {
                                Ok(wait) => Reply::Login(wait.verdict(LOGIN_WAIT).await),
                                Err(e) => Reply::Error(e.to_string()),
                            }
                        }
                        Err(e) => Reply::Error(e),
                    }
                }
            }
        }
    };
    local::serve(listener, handle, Reply::Error).await;
}

/// The status for `caller`: root sees every account's login and stamp;
/// another account sees its own.
fn status(daemon: &Daemon, caller: Caller) -> Reply {
    let visible = |account: u32| caller.uid == 0 || account == caller.uid;
    let stamper = daemon.stamper.lock().unwrap_or_else(|p| p.into_inner());
    let counters = match stamper.counters() {
        Ok(c) => c.labelled().filter(|(_, n)| *n != 0).map(|(l, n)| (l.to_owned(), n)).collect(),
        Err(e) => return Reply::Error(e.to_string()),
    };
    let now = ackgate_common::host::monotonic_ns();
    let recent = match stamper.recent_stamps(20) {
        Ok(r) => r
            .into_iter()
            .filter(|(_, s)| visible(s.account))
            .map(|(flow, s)| RecentStamp {
                account: s.account,
                client: flow.client_addr().to_string(),
                service: flow.service_addr().to_string(),
                kind: if s.kind == ackgate_common::abi::STAMP_KIND_SYN { "syn" } else { "ack" }.into(),
                age_ms: now.saturating_sub(s.stamped_ns) / 1_000_000,
            })
            .collect(),
        Err(e) => return Reply::Error(e.to_string()),
    };
    let mut session = daemon.shared.status();
    session.logins.retain(|l| visible(l.account));
    Reply::Status(StatusReport {
        agent_id: daemon.agent_id,
        interfaces: daemon.interfaces.clone(),
        session,
        counters,
        recent,
    })
}

/// Client side: one request, one reply.
pub async fn request(path: &Path, req: &Request) -> Result<Reply, ControlError> {
    local::call(path, req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_act_for_their_own_account_and_only_root_for_others() {
        let (root, alice) = (Caller { uid: 0 }, Caller { uid: 1000 });
        // The account acted for, or a word of the refusal.
        type Expected = Result<u32, &'static str>;
        let nobody = Caller { uid: 65534 };
        let cases: [(LoginScope, Caller, Option<u32>, Expected); 11] = [
            (LoginScope::Account, alice, None, Ok(1000)),
            (LoginScope::Account, alice, Some(1000), Ok(1000)),
            (LoginScope::Account, alice, Some(1001), Err("only root")),
            (LoginScope::Account, alice, Some(0), Err("only root")),
            (LoginScope::Account, root, None, Ok(0)),
            (LoginScope::Account, root, Some(1001), Ok(1001)),
            (LoginScope::Account, root, Some(ANY_ACCOUNT), Err("is no account")),
            (LoginScope::Account, root, Some(65534), Err("overflow uid")),
            (LoginScope::Account, nobody, None, Err("overflow uid")),
            (LoginScope::Machine, root, None, Ok(ANY_ACCOUNT)),
            (LoginScope::Machine, alice, None, Err("only root")),
        ];
        for (scope, caller, asked, want) in cases {
            let got = account_for(scope, caller, asked, 65534);
            match want {
                Ok(account) => assert_eq!(got, Ok(account), "{scope:?}, uid {}, asked {asked:?}", caller.uid),
                Err(needle) => assert!(
                    got.as_ref().is_err_and(|e| e.contains(needle)),
                    "{scope:?}, uid {}, asked {asked:?}: {got:?} should be refused with {needle:?}",
                    caller.uid
                ),
            }
        }
        assert!(
            account_for(LoginScope::Machine, root, Some(0), 65534).is_err(),
            "no per-account login on a machine login"
        );
    }
}
