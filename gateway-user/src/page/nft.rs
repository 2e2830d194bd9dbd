//! The nftables table that completes refused handshakes into the decoy
//! (docs/control-plane.md, "The `page` default responder").
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
use std::process::{Command, Stdio};

use super::{PageError, PageService};

/// The nftables table the gateway owns.
pub const NFT_TABLE: &str = "ackgate_page";

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
