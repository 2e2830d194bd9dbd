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

/// The XDP program attached to `iface`, as `ip -details -json link`
/// describes it ("program 42 ackgate_gate"); `None` when none shows or
/// `ip` is missing.
pub fn attached_xdp(iface: &str) -> Option<String> {
    let out = Command::new("ip").args(["-details", "-json", "link", "show", "dev", iface]).output().ok()?;
    let link: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let xdp = &link[0]["xdp"];
    // One program: `xdp.prog`; several (modes at once): `xdp.attached[]`.
    let prog = if xdp["prog"].is_object() { &xdp["prog"] } else { &xdp["attached"][0]["prog"] };
    let id = prog["id"].as_u64()?;
    Some(format!("program {id} {}", prog["name"].as_str().unwrap_or("(unnamed)")))
}
