//! A raw-socket SYN flood source for the benchmarks: prebuilt SYNs with
//! distinct source ports and ISNs, sent in `sendmmsg` batches from one
//! thread. Create it on a thread inside the sending namespace.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ackgate_common::net::TCP_SYN;

use crate::packet::TcpFrame;

const BATCH: usize = 64;
const VARIANTS: usize = 16384;

pub struct SynFlood {
    fd: OwnedFd,
    dst: libc::sockaddr_in,
    packets: Vec<Vec<u8>>,
}

impl SynFlood {
    /// SYNs from `src` (ports 10000..) to `dst:port`, Linux SYN options.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let packets = (0..VARIANTS)
            .map(|i| {
                let mut f =
                    TcpFrame::new(src.octets(), 10000 + i as u16, dst.octets(), port, TCP_SYN).linux_syn_options();
                f.seq = 0x9e37_79b9u32.wrapping_mul(i as u32 + 1);
                f.build()[14..].to_vec()
            })
            .collect();
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
            sin_zero: [0; 8],
        };
        Ok(Self { fd, dst, packets })
    }

    /// Sends as fast as one thread can until `duration` has passed; returns
    /// the number of SYNs the kernel accepted for sending.
    pub fn run_for(&self, duration: Duration) -> u64 {
        let start = Instant::now();
        let mut sent = 0u64;
        let mut next = 0usize;
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(BATCH);
        let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(BATCH);
        while start.elapsed() < duration {
            iov.clear();
            msgs.clear();
            for k in 0..BATCH {
                let p = &self.packets[(next + k) % VARIANTS];
                iov.push(libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() });
            }
            for v in iov.iter_mut() {
                // SAFETY: zeroed msghdr is valid; pointers set below stay
                // alive until sendmmsg returns.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = &self.dst as *const libc::sockaddr_in as *mut libc::c_void;
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                msgs.push(h);
            }
            // SAFETY: `msgs` holds BATCH initialised headers.
            let n = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
            if n > 0 {
                sent += n as u64;
                next = (next + n as usize) % VARIANTS;
            } else {
                // ENOBUFS when the qdisc is full: back off a little.
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        sent
    }
}
