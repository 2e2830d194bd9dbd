//! Probes as a scanner sends them: whole Ethernet frames (bad checksums,
//! VLAN tags) written to the client's interface with a packet socket, and
//! whatever TCP the gateway sends back. A probe's answer, if any, comes
//! before the answer to a SYN sent after it on the same path, so waiting
//! for that control answer tells "no answer" without guessing a timeout.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use ackgate_common::net::{TCP_ACK, TCP_SYN};

use crate::packet::TcpFrame;
use crate::stamper::{raw_tcp_socket, send_ip};

/// The MAC address of `iface`, as `ip -j link` in the calling namespace
/// reports it.
pub fn mac_of(iface: &str) -> [u8; 6] {
    let out = std::process::Command::new("ip").args(["-j", "link", "show", "dev", iface]).output().expect("running ip");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j link output");
    let text = links[0]["address"].as_str().unwrap_or_else(|| panic!("no MAC address for {iface}: {links}"));
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).unwrap_or_else(|e| panic!("MAC {text}: {e}"));
    }
    mac
}

/// Sends `frame` (Ethernet header included) out of `iface`.
pub fn send_frame(iface: &str, frame: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ifindex = ackgate_gateway::netdev::index(iface)?;
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: valid buffer and address of the stated size.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Sends `probe` (a whole frame, from `probe_ports` = (client port, server
/// port)) out of `iface`, then `control`, a valid SYN to a listening port,
/// and returns every TCP segment answering the probe that arrived before
/// the control's SYN/ACK. Panics if the control is not answered within
/// `within`: the path itself is broken then.
pub fn answers_to(
    iface: &str,
    probe: &[u8],
    probe_ports: (u16, u16),
    control: &TcpFrame,
    within: Duration,
) -> Vec<Vec<u8>> {
    let rx = raw_tcp_socket().unwrap_or_else(|e| panic!("raw socket: {e}"));
    send_frame(iface, probe).unwrap_or_else(|e| panic!("sending the probe on {iface}: {e}"));
    send_ip(&rx, control).unwrap_or_else(|e| panic!("sending the control SYN: {e}"));
    let deadline = Instant::now() + within;
    let mut answers = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 40 {
            continue;
        }
        let p = &buf[..n as usize];
        let ihl = ((p[0] & 0x0f) as usize) * 4;
        let Some(t) = p.get(ihl..ihl + 20) else { continue };
        let (sport, dport) = (u16::from_be_bytes([t[0], t[1]]), u16::from_be_bytes([t[2], t[3]]));
        if (dport, sport) == probe_ports {
            answers.push(p.to_vec());
        }
        if (dport, sport) == (control.sport, control.dport) && t[13] & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            return answers;
        }
    }
    panic!("the control SYN to port {} got no SYN/ACK within {within:?}", control.dport);
}
