//! A test stamper standing in for the agent: performs a TCP handshake by
//! hand on a raw socket and stamps the ACK with the fixture agent's
//! capability. Call it on a thread inside the client namespace. The client
//! kernel answers the unsolicited SYN/ACK with a RST; the gate drops it.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ackgate_common::mac::MacKey;
use ackgate_common::net::{TCP_ACK, TCP_SYN};
use ackgate_common::option::OptionId;

use crate::fixture::{AGENT_ID, AGENT_KEY};
use crate::packet::{TcpFrame, stamp};

/// What the handshake saw.
#[derive(Clone, Copy, Debug)]
pub struct Handshake {
    pub client_isn: u32,
    pub server_isn: u32,
}

/// A raw IPv4 socket that sends whole IP packets (`IP_HDRINCL`) and
/// receives every TCP segment of the namespace, with a short receive
/// timeout.
pub fn raw_tcp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid option pointer and length.
    let rc =
        unsafe { libc::setsockopt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_HDRINCL, (&raw const one).cast(), 4) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: as above.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    Ok(fd)
}

/// Sends `frame`'s IP packet (its Ethernet header dropped) on `fd`.
pub fn send_ip(fd: &OwnedFd, frame: &TcpFrame) -> io::Result<()> {
    let pkt = &frame.build()[14..];
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(frame.daddr) },
        sin_zero: [0; 8],
    };
    // SAFETY: valid buffer and address.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&raw const dst).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// SYN from `src:sport` to `dst:dport`, wait for the SYN/ACK, send the
/// stamped ACK. `None` if no SYN/ACK came within `timeout`.
pub fn stamped_handshake(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, timeout: Duration) -> Option<Handshake> {
    stamped_handshake_as(AGENT_ID, &AGENT_KEY, src, sport, dst, dport, timeout)
}

/// As [`stamped_handshake`], stamping with agent `agent_id`'s `key` (a
/// thief holding a copy of an enrolled agent's key).
pub fn stamped_handshake_as(
    agent_id: u32,
    key: &MacKey,
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    timeout: Duration,
) -> Option<Handshake> {
    let fd = raw_tcp_socket().unwrap_or_else(|e| panic!("raw socket: {e}"));
    let mut syn = TcpFrame::new(src.octets(), sport, dst.octets(), dport, TCP_SYN).linux_syn_options();
    syn.seq = 0x5eed_0000 ^ u32::from(sport);
    let synack = exchange(&fd, &syn, timeout)?;
    let t = &synack[((synack[0] & 0x0f) as usize) * 4..];
    let server_isn = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let mut ack = TcpFrame::new(src.octets(), sport, dst.octets(), dport, TCP_ACK);
    ack.seq = syn.seq.wrapping_add(1);
    ack.ack = server_isn.wrapping_add(1);
    stamp::ack(&mut ack, OptionId::default(), agent_id, key);
    send_ip(&fd, &ack).unwrap_or_else(|e| panic!("sending the stamped ACK: {e}"));
    Some(Handshake { client_isn: syn.seq, server_isn })
}

/// Sends `syn` and returns the IPv4 packet of the SYN/ACK that answers it,
/// or `None` if none came within `timeout`.
pub fn synack_for(syn: &TcpFrame, timeout: Duration) -> Option<Vec<u8>> {
    let fd = raw_tcp_socket().unwrap_or_else(|e| panic!("raw socket: {e}"));
    exchange(&fd, syn, timeout)
}

fn exchange(fd: &OwnedFd, syn: &TcpFrame, timeout: Duration) -> Option<Vec<u8>> {
    send_ip(fd, syn).unwrap_or_else(|e| panic!("sending the SYN: {e}"));
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 40 {
            continue;
        }
        let p = &buf[..n as usize];
        let ihl = ((p[0] & 0x0f) as usize) * 4;
        if p.len() < ihl + 20 || p[12..16] != syn.daddr {
            continue;
        }
        let t = &p[ihl..];
        let (sp, dp) = (u16::from_be_bytes([t[0], t[1]]), u16::from_be_bytes([t[2], t[3]]));
        if sp != syn.dport || dp != syn.sport || t[13] & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK {
            continue;
        }
        return Some(p.to_vec());
    }
    None
}
