//! Interface facts from the current network namespace (an ioctl on a
//! socket of the namespace, not /sys, which shows the namespace /sys was
//! mounted in).

use std::io;
use std::process::Command;

/// The MTU of `iface`.
pub fn mtu(iface: &str) -> io::Result<u32> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut req: libc::ifreq = zeroed_ifreq();
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {iface:?}")));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads ifr_name and writes ifr_mtu of the ifreq we
    // own, on a valid socket descriptor.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&sock), libc::SIOCGIFMTU, &mut req) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the ifru_mtu member.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// The index of `iface`.
pub fn index(iface: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(iface).map_err(io::Error::from)
}

fn zeroed_ifreq() -> libc::ifreq {
    // SAFETY: ifreq is a plain C struct/union for which all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// The first IPv4 address of `iface`, if it has one.
pub fn ipv4_address(iface: &str) -> io::Result<Option<std::net::Ipv4Addr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter(|a| a.interface_name == iface)
        .filter_map(|a| a.address?.as_sockaddr_in().map(|sin| sin.ip()))
        .next())
}

/// An XDP program attached to an interface.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct XdpAttachment {
    pub interface: String,
    pub program_id: u64,
    pub program: String,
    /// "native", "generic" or "offload".
    pub mode: &'static str,
}

impl std::fmt::Display for XdpAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "program {} {} ({} XDP on {})", self.program_id, self.program, self.mode, self.interface)
    }
}

/// The XDP program attached to `iface` (in the calling thread's network
/// namespace), as `ip -details -json link` describes it; `None` when none
/// is, or `ip` is missing.
pub fn attached_xdp(iface: &str) -> Option<XdpAttachment> {
    let out = Command::new("ip").args(["-details", "-json", "link", "show", "dev", iface]).output().ok()?;
    let link: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let xdp = &link[0]["xdp"];
    // One program: `xdp` itself; several (modes at once): `xdp.attached[]`.
    let one = if xdp["prog"].is_object() { xdp } else { &xdp["attached"][0] };
    let prog = &one["prog"];
    // XDP_ATTACHED_* in include/uapi/linux/if_link.h.
    let mode = match one["mode"].as_u64() {
        Some(1) => "native",
        Some(2) => "generic",
        Some(3) => "offload",
        _ => "unknown-mode",
    };
    Some(XdpAttachment {
        interface: iface.to_owned(),
        program_id: prog["id"].as_u64()?,
        program: prog["name"].as_str().unwrap_or("(unnamed)").to_owned(),
        mode,
    })
}

/// Whether frames arriving on `iface` can carry a TCP checksum still
/// partial: made on this host or its containers and handed over with
/// checksum offload pending (loopback, veth, bridges and other virtual
/// devices, which have no `device` link in sysfs), or seen in generic XDP
/// mode, where the frame is the skb the stack received. A physical NIC's
/// received frames carry full checksums.
pub fn may_carry_partial_checksums(iface: &str, generic_xdp: bool) -> bool {
    generic_xdp || !std::path::Path::new("/sys/class/net").join(iface).join("device").exists()
}
