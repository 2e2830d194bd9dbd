//! The gateway kernel's own SYN/ACK, computed so that the gate's cookie
//! SYN/ACK can copy it (issue: a scanner must not tell a protected port
//! from an ordinary one by its handshake).
//!
//! Linux (net/ipv4/tcp_minisocks.c `tcp_openreq_init_rwin`, tcp_output.c
//! `tcp_select_initial_window`, 6.1 to 6.18) answers a SYN with:
//! - MSS = the route's advertised MSS: interface MTU − 40 for IPv4, − 60
//!   for IPv6 (tcp_v6_init_sock's and the route's advmss, net/ipv6);
//! - window = the listener's receive space, `tcp_rmem[1]` halved
//!   (`tcp_win_from_space` with the default scaling ratio, or
//!   `tcp_adv_win_scale` = 1 on 6.1), rounded down to a multiple of the MSS
//!   less the timestamp option (12 bytes) when timestamps are on, at most
//!   65535, sent unscaled;
//! - window scale = log2(max(space, tcp_rmem[2], rmem_max)) − 15, within
//!   0..=14;
//! - ECE to an ECN SYN when `net.ipv4.tcp_ecn` is not 0.
//!
//! Everything is read in the network namespace the gateway runs in
//! (/proc/sys/net follows the reader's namespace; the MTU comes from an
//! ioctl on a socket of that namespace).

use ackgate_common::abi::{SynAckProfile, SynAckSizes};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProfileError {
    #[error("reading {what}: {source}")]
    Read { what: String, source: std::io::Error },
    #[error("unexpected contents of {what}: {text:?}")]
    Parse { what: String, text: String },
}

/// The sysctls and MTU the SYN/ACK depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostTcp {
    pub mtu: u32,
    /// `net.ipv4.tcp_rmem` default and max.
    pub rmem_default: u32,
    pub rmem_max_tcp: u32,
    /// `net.core.rmem_max`.
    pub rmem_max: u32,
    /// `net.ipv4.tcp_ecn`.
    pub ecn: u32,
}

/// TCP header + IPv4 header ...
const IPV4_TCP_HEADERS: u32 = 40;
/// ... and + IPv6 header.
const IPV6_TCP_HEADERS: u32 = 60;
/// The aligned timestamp option (TCPOLEN_TSTAMP_ALIGNED).
const TS_OPTION: u32 = 12;

impl HostTcp {
    /// Reads them for `iface` in the current network namespace.
    pub fn read(iface: &str) -> Result<Self, ProfileError> {
        let rmem = read_proc("/proc/sys/net/ipv4/tcp_rmem")?;
        let words: Vec<u32> = rmem.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        let [_, rmem_default, rmem_max_tcp] = words[..] else {
            return Err(ProfileError::Parse { what: "/proc/sys/net/ipv4/tcp_rmem".into(), text: rmem });
        };
        Ok(Self {
            mtu: crate::netdev::mtu(iface)
                .map_err(|source| ProfileError::Read { what: format!("the MTU of {iface}"), source })?,
            rmem_default,
            rmem_max_tcp,
            rmem_max: read_rmem_max()?,
            ecn: read_number("/proc/sys/net/ipv4/tcp_ecn")?,
        })
    }

    /// The SYN/ACK this host sends on that interface; `ts_secret` keys the
    /// TSval offsets.
    pub fn profile(&self, ts_secret: u64) -> SynAckProfile {
        let space = self.rmem_default / 2;
        let sizes = |headers: u32| {
            let mss = self.mtu.saturating_sub(headers).clamp(88, u16::MAX as u32);
            let window = |seg: u32| -> u16 {
                let rounded = if space > seg { space / seg * seg } else { space };
                rounded.min(u16::MAX as u32) as u16
            };
            SynAckSizes { mss: mss as u16, window_ts: window(mss - TS_OPTION), window_no_ts: window(mss) }
        };
        let scale_space = space.max(self.rmem_max_tcp).max(self.rmem_max).max(1);
        let wscale = (scale_space.ilog2() as i32 - 15).clamp(0, 14) as u8;
        SynAckProfile {
            ts_secret,
            v4: sizes(IPV4_TCP_HEADERS),
            v6: sizes(IPV6_TCP_HEADERS),
            wscale,
            ecn: u8::from(self.ecn != 0),
            _pad0: 0,
        }
    }
}

/// Linux's default `net.core.rmem_max` (SK_RMEM_MAX, net/core/sock.c).
const DEFAULT_RMEM_MAX: u32 = 212_992;

/// `net.core.rmem_max`. Kernels before about 6.6 (6.1 here) register it in
/// the initial network namespace only (`net_core_table`,
/// net/core/sysctl_net_core.c): in another namespace the file is missing,
/// and the kernel uses the global value, which cannot be read from there.
/// Linux's default stands in for it then: it only sets the window scale
/// when it is above `tcp_rmem[2]` (6 MiB by default), and the default is far
/// below, so only an administrator's raised global value is missed.
fn read_rmem_max() -> Result<u32, ProfileError> {
    const PATH: &str = "/proc/sys/net/core/rmem_max";
    match read_number(PATH) {
        Err(ProfileError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(
                "{PATH} is not visible in this network namespace on this kernel; assuming Linux's default \
                 {DEFAULT_RMEM_MAX} for the SYN/ACK's window scale"
            );
            Ok(DEFAULT_RMEM_MAX)
        }
        other => other,
    }
}

fn read_proc(path: &str) -> Result<String, ProfileError> {
    std::fs::read_to_string(path).map_err(|source| ProfileError::Read { what: path.into(), source })
}

fn read_number(path: &str) -> Result<u32, ProfileError> {
    let text = read_proc(path)?;
    text.trim().parse().map_err(|_| ProfileError::Parse { what: path.into(), text })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures seen on the wire from Linux hosts (tcpdump of the kernel's
    /// own SYN/ACK to a SYN with timestamps, SACK and window scale).
    #[test]
    fn linux_synacks() {
        let debian_6_12 = HostTcp { mtu: 1500, rmem_default: 131072, rmem_max_tcp: 6291456, rmem_max: 212992, ecn: 2 };
        let p = debian_6_12.profile(0);
        assert_eq!((p.v4.mss, p.v4.window_ts, p.v4.window_no_ts, p.wscale, p.ecn), (1460, 65160, 64240, 7, 1));
        assert_eq!((p.v6.mss, p.v6.window_ts, p.v6.window_no_ts), (1440, 64260, 64800), "IPv6: 45 segments");
        let tcp_rmem_32m = HostTcp { rmem_max_tcp: 33554432, rmem_max: 4194304, ..debian_6_12 };
        assert_eq!(tcp_rmem_32m.profile(0).wscale, 10, "6.18 with tcp_rmem[2] = 32 MiB");
        let jumbo = HostTcp { mtu: 9000, ..debian_6_12 };
        let p = jumbo.profile(0);
        assert_eq!((p.v4.mss, p.v4.window_ts), (8960, 62636), "7 segments of 8948");
        assert_eq!(HostTcp { ecn: 0, ..debian_6_12 }.profile(0).ecn, 0);
    }
}
