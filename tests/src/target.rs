//! The hidden server of end-to-end tests: a TCP listener in the target
//! namespace that speaks just enough HTTP/1.0:
//! - `GET /` → a greeting naming the client address it saw (the splice
//!   must deliver the client's real address);
//! - `GET /bytes/N` → N bytes of [`pattern`] (downloads);
//! - `POST /sha256` with a Content-Length → the body's SHA-256 in hex
//!   (uploads).
//!
//! Stopped on drop, or earlier with [`TargetServer::stop`] (a target that
//! refuses).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use ackgate_common::host::hex;

use crate::topology::{Ns, Topology};

/// The body's first words, for tests to look for.
pub const GREETING: &str = "hello from the target";

pub struct TargetServer {
    stop: Arc<AtomicBool>,
    accepter: Option<JoinHandle<()>>,
    /// Peer addresses of the connections accepted so far.
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl TargetServer {
    /// Listens on the target's `port` (all addresses of both families: a
    /// fresh namespace's IPv6 sockets take IPv4 too, net.ipv6.bindv6only
    /// being 0).
    pub fn start(topo: &Topology, port: u16) -> Self {
        let listener = topo.run_in(Ns::Target, || {
            TcpListener::bind(("::", port)).unwrap_or_else(|e| panic!("binding the target server on {port}: {e}"))
        });
        listener.set_nonblocking(true).expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (stop2, peers2) = (stop.clone(), peers.clone());
        let accepter = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                // Wakes at once for a connection (time-to-first-byte
                // figures depend on it), and every 100 ms to see `stop`.
                let mut fds = [libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
                // SAFETY: one valid pollfd for the duration of the call.
                if unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) } <= 0 {
                    continue;
                }
                match listener.accept() {
                    Ok((conn, peer)) => {
                        // IPv4 peers as IPv4, not IPv4-mapped IPv6.
                        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                        peers2.lock().expect("peers").push(peer);
                        std::thread::spawn(move || serve(conn, peer));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("target server accept: {e}"),
                }
            }
        });
        Self { stop, accepter: Some(accepter), peers }
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("peers").clone()
    }

    /// Closes the listening socket: new connections are refused (RST).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accepter.take() {
            let _ = h.join();
        }
    }
}

/// The bytes of a download: a deterministic sequence that no compression
/// or coincidence makes easy (xorshift64 words), so a corrupted or shifted
/// segment changes the digest.
pub fn pattern(len: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(64 * 1024);
        let mut chunk = Vec::with_capacity(n + 8);
        while chunk.len() < n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.extend_from_slice(&state.to_le_bytes());
        }
        chunk.truncate(n);
        left -= n;
        Some(chunk)
    })
}

/// SHA-256 of `pattern(len)`, hex.
pub fn pattern_sha256(len: usize) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for chunk in pattern(len) {
        h.update(&chunk);
    }
    hex(&h.finalize())
}

/// Reads one request (up to its blank line) and answers it; a client that
/// sends nothing is kept open (it waits for the gateway to end the flow).
fn serve(mut conn: TcpStream, peer: SocketAddr) {
    conn.set_nonblocking(false).expect("blocking connection");
    // A safety net for a hung test only: idle clients are kept open until
    // the gateway ends their flow, which takes minutes in the emulated VM.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(600)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let head = String::from_utf8_lossy(&request[..end]).into_owned();
    let first = head.lines().next().unwrap_or("");
    if let Some(n) = first.strip_prefix("GET /bytes/").and_then(|r| r.split(' ').next()) {
        let n: usize = n.parse().unwrap_or(0);
        let _ = conn.write_all(format!("HTTP/1.0 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes());
        for chunk in pattern(n) {
            if conn.write_all(&chunk).is_err() {
                return;
            }
        }
        return;
    }
    if first.starts_with("POST /sha256") {
        use sha2::Digest as _;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut h = sha2::Sha256::new();
        h.update(&request[end..]);
        let mut got = request.len() - end;
        let mut buf = vec![0u8; 64 * 1024];
        while got < len {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    h.update(&buf[..n]);
                    got += n;
                }
            }
        }
        let body = format!("{}\n", hex(&h.finalize()));
        let reply = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let _ = conn.write_all(reply.as_bytes());
        return;
    }
    let body = format!("{GREETING}; you are {peer}\n");
    let reply = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = conn.write_all(reply.as_bytes());
}

impl Drop for TargetServer {
    fn drop(&mut self) {
        self.stop();
    }
}
