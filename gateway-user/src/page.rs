//! The default responder of `page` services (docs/design.md §5): a handshake
//! that fails the gate completes into a local listener on VIP:port, which
//! serves configured bytes (by default a 404 page like a stock web
//! server's) and closes, so an unauthorized prober sees an ordinary server
//! and cannot tell that a protected service is there.
//!
//! The gate answered the SYN with a cookie, so the gateway's own listener
//! never issued one and would refuse the cookie ACK (`cookie_v4_check` wants
//! a recent SYN-queue overflow of that very listener, net/ipv4/syncookies.c).
//! netfilter's SYNPROXY checks the cookie instead (the same kernel cookie
//! the XDP helper makes) and opens the connection to the listener on the
//! client's behalf: the recipe of the kernel's XDP synproxy selftest. It
//! needs `nf_conntrack_tcp_loose = 0` in the gateway's network namespace so
//! that the lone ACK is invalid to conntrack rather than picked up.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::accept::Acceptor;

/// The nftables table the gateway owns.
pub const NFT_TABLE: &str = "ackgate_page";

/// What a stock nginx answers for an unknown path.
pub const DEFAULT_PAGE: &[u8] = b"HTTP/1.1 404 Not Found\r\n\
Server: nginx\r\n\
Content-Type: text/html\r\n\
Content-Length: 146\r\n\
Connection: close\r\n\
\r\n\
<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("nft: {0}")]
    Nft(String),
    #[error("page file {path}: {source}")]
    File { path: String, source: std::io::Error },
}

/// One `page` service.
#[derive(Clone, Debug)]
pub struct PageService {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub page: Arc<Vec<u8>>,
}

fn nft(script: &str) -> Result<(), PageError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| PageError::Nft(format!("cannot run nft (is nftables installed?): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| PageError::Nft(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| PageError::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(PageError::Nft(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}

const TCP_LOOSE: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_loose";
/// How the table's comment records the administrator's own
/// `nf_conntrack_tcp_loose`, so that a clean stop restores it even after a
/// crash and a restart in between (the restarted daemon finds the table).
const TCP_LOOSE_WAS: &str = "nf_conntrack_tcp_loose was ";

/// Installs the SYNPROXY rules for `services` (replacing earlier ones).
/// Then turns `nf_conntrack_tcp_loose` off in this network namespace (the
/// sysctl exists once the rules have loaded conntrack); its earlier value
/// is kept in the table's comment for [`remove_synproxy`].
pub fn install_synproxy(services: &[PageService]) -> Result<(), PageError> {
    // Before conntrack is loaded the sysctl does not exist; it then starts
    // at its default, 1.
    let was = recorded_tcp_loose()
        .or_else(|| std::fs::read_to_string(TCP_LOOSE).ok().map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| "1".to_owned());
    let mut script = format!(
        "table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n  comment \"{TCP_LOOSE_WAS}{was}\"\n"
    );
    script.push_str("  chain pre {\n    type filter hook prerouting priority raw; policy accept;\n");
    for s in services {
        script.push_str(&format!(
            "    ip daddr {} tcp dport {} tcp flags syn / fin,syn,rst,ack notrack\n",
            s.vip, s.port
        ));
    }
    script.push_str("  }\n  chain inp {\n    type filter hook input priority filter; policy accept;\n");
    for s in services {
        script.push_str(&format!(
            "    ip daddr {} tcp dport {} ct state invalid,untracked synproxy mss 1460\n",
            s.vip, s.port
        ));
    }
    script.push_str("  }\n}\n");
    nft(&script)?;
    std::fs::write(TCP_LOOSE, "0")
        .map_err(|e| PageError::Nft(format!("setting net.netfilter.nf_conntrack_tcp_loose = 0: {e}")))
}

/// The `nf_conntrack_tcp_loose` value recorded in the table's comment, if
/// the table is there. From the text listing: nft's JSON output leaves
/// table comments out (nftables 1.0.6).
fn recorded_tcp_loose() -> Option<String> {
    let out = Command::new("nft").args(["list", "table", "ip", NFT_TABLE]).output().ok()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    listing.lines().find_map(|line| {
        let value = line.trim().strip_prefix("comment \"")?.strip_suffix('"')?.strip_prefix(TCP_LOOSE_WAS)?;
        // Only a value the kernel accepts is written back.
        matches!(value, "0" | "1").then(|| value.to_owned())
    })
}

/// Removes the rules (clean stop) and gives `nf_conntrack_tcp_loose` back
/// the value it had before the first install.
pub fn remove_synproxy() -> Result<(), PageError> {
    let was = recorded_tcp_loose();
    nft(&format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n"))?;
    match was {
        Some(value) => std::fs::write(TCP_LOOSE, value)
            .map_err(|e| PageError::Nft(format!("restoring net.netfilter.nf_conntrack_tcp_loose: {e}"))),
        None => Ok(()),
    }
}

/// Serves `page` to every connection on `listener`: wait for the request
/// (or `timeout`), send the page, close. At most `max` connections at once;
/// beyond, new ones are closed at once. Accept errors are waited out
/// (`crate::accept`): the responder never stops serving.
pub async fn serve(listener: TcpListener, page: Arc<Vec<u8>>, max: usize, timeout: Duration) {
    let slots = Arc::new(Semaphore::new(max));
    let mut incoming = Acceptor::new(listener, "page responder", Arc::new(AtomicU64::new(0)));
    loop {
        let (mut conn, _) = incoming.next().await;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let page = page.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(timeout, async {
                if matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {
                    let _ = conn.write_all(&page).await;
                    let _ = conn.shutdown().await;
                }
            })
            .await;
        });
    }
}
