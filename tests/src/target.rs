//! The hidden server of end-to-end tests: a TCP listener in the target
//! namespace that answers each HTTP request with the client address it
//! saw, so a test can check that the splice delivered the client's real
//! address. Stopped on drop.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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
    /// Listens on the target's `port` (all addresses).
    pub fn start(topo: &Topology, port: u16) -> Self {
        let listener = topo.run_in(Ns::Target, || {
            TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| panic!("binding the target server on {port}: {e}"))
        });
        listener.set_nonblocking(true).expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (stop2, peers2) = (stop.clone(), peers.clone());
        let accepter = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        peers2.lock().expect("peers").push(peer);
                        std::thread::spawn(move || serve(conn, peer));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("target server accept: {e}"),
                }
            }
        });
        Self { stop, accepter: Some(accepter), peers }
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("peers").clone()
    }
}

/// Reads one request (up to its blank line) and answers it; a client that
/// sends nothing is kept open (it waits for the gateway to end the flow).
fn serve(mut conn: TcpStream, peer: SocketAddr) {
    conn.set_nonblocking(false).expect("blocking connection");
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("{GREETING}; you are {peer}\n");
    let reply = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = conn.write_all(reply.as_bytes());
}

impl Drop for TargetServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accepter.take() {
            let _ = h.join();
        }
    }
}
