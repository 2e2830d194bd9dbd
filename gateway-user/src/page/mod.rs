//! The default responder of `page` services (docs/design.md §5): a
//! handshake that fails the gate completes into a local listener on
//! VIP:port that answers as a stock nginx would, so an unauthorized prober
//! sees an ordinary web server and cannot tell that a protected service is
//! there (docs/gate.md, "The decoy").
//!
//! - [`nft`]: the table that completes the gate's cookie handshakes into
//!   the listener (netfilter SYNPROXY) and bounds what refused clients
//!   leave in conntrack.
//! - [`http`]: nginx's HTTP/1.x answers (404 for every path, 400 and the
//!   rest as nginx gives them), with its keep-alive and timeouts;
//!   [`parse`] holds its parsers.
//! - [`tls`]: nginx's answer on a TLS port with `ssl_reject_handshake on`.

pub mod http;
pub mod nft;
mod parse;
pub mod tls;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::accept::Acceptor;

pub use nft::{Dropped, NFT_TABLE, dropped, established_timeout, install_synproxy, remove_synproxy};

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("nft: {0}")]
    Nft(String),
    #[error("page file {path}: {source}")]
    File { path: String, source: std::io::Error },
}

/// What a page service imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decoy {
    /// nginx serving plain HTTP (`listen 80`).
    Http,
    /// nginx on a TLS port with `ssl_reject_handshake on` (`listen 443
    /// ssl`): every TLS handshake refused; plain HTTP answered as nginx
    /// answers it on an HTTPS port.
    Tls,
}

impl Decoy {
    /// The decoy a service gets when its config does not say: TLS on the
    /// HTTPS port, plain HTTP elsewhere.
    pub fn for_port(port: u16) -> Self {
        if port == 443 { Decoy::Tls } else { Decoy::Http }
    }

    pub fn label(self) -> &'static str {
        match self {
            Decoy::Http => "http",
            Decoy::Tls => "tls",
        }
    }
}

/// The body of the decoy's "404 Not Found".
#[derive(Clone, Debug)]
pub enum NotFound {
    /// nginx's built-in page.
    Builtin,
    /// A page file, answered as nginx answers `error_page 404` with a
    /// static file: its bytes as `text/html`, with the `ETag` nginx makes
    /// from the file's modification time and size.
    File { body: Arc<Vec<u8>>, etag: String },
}

impl NotFound {
    /// The page file at `path`, read now (the decoy serves these bytes
    /// until the daemon restarts).
    pub fn load(path: &Path) -> Result<Self, PageError> {
        let err = |source| PageError::File { path: path.display().to_string(), source };
        let body = std::fs::read(path).map_err(err)?;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).map_err(err)?;
        let secs = modified.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // `ngx_http_set_etag`: "%xT-%xO", modification time and size in hex.
        let etag = format!("\"{secs:x}-{:x}\"", body.len());
        Ok(NotFound::File { body: Arc::new(body), etag })
    }
}

/// nginx's timeouts, which the decoy keeps (nginx's defaults unless
/// configured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// `client_header_timeout`: a request header (or, on a TLS port, the
    /// ClientHello) must be whole this long after the connection opened,
    /// or after a keep-alive request began; else the connection closes
    /// without an answer.
    pub header: Duration,
    /// `keepalive_timeout`: an idle keep-alive connection closes.
    pub keepalive: Duration,
    /// `send_timeout`: a write that makes no progress this long ends the
    /// connection. Also the sockets' `TCP_USER_TIMEOUT`: data or a FIN
    /// unacknowledged this long ends them, so a vanished client leaves no
    /// socket retransmitting for long (FIN-WAIT-1 included, once closed).
    pub send: Duration,
    /// `lingering_timeout`: after an answer that closes, what the client
    /// still sends is read and dropped while it comes at least this often.
    pub lingering: Duration,
    /// `lingering_time`: for at most this long.
    pub lingering_time: Duration,
}

impl Timeouts {
    /// nginx's defaults.
    pub const NGINX: Timeouts = Timeouts {
        header: Duration::from_secs(60),
        keepalive: Duration::from_secs(75),
        send: Duration::from_secs(60),
        lingering: Duration::from_secs(5),
        lingering_time: Duration::from_secs(30),
    };

    /// The longest a live decoy connection waits between two segments.
    pub fn longest_wait(&self) -> Duration {
        [self.header, self.keepalive, self.send, self.lingering].into_iter().max().unwrap_or(self.header)
    }
}

/// One `page` service.
#[derive(Clone, Debug)]
pub struct PageService {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub decoy: Decoy,
    pub not_found: NotFound,
}

impl PageService {
    /// A plain-HTTP service with the built-in page (unit tests).
    #[cfg(test)]
    pub fn for_tests(vip: Ipv4Addr, port: u16) -> Self {
        Self { vip, port, decoy: Decoy::Http, not_found: NotFound::Builtin }
    }
}

/// The responder's counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections closed at once because `max` were being served.
    pub refused: AtomicU64,
}

/// Serves `service` on `listener`: at most `max` connections at once
/// (beyond, new ones are closed at once and counted in `counters`). Accept
/// errors are waited out (`crate::accept`): the responder never stops
/// serving.
pub async fn serve(
    listener: TcpListener,
    service: PageService,
    max: usize,
    timeouts: Timeouts,
    counters: Arc<Counters>,
) {
    let slots = Arc::new(Semaphore::new(max));
    let mut incoming = Acceptor::new(listener, "page responder", Arc::new(AtomicU64::new(0)));
    let site =
        Arc::new(http::Site { tls_port: service.decoy == Decoy::Tls, not_found: service.not_found.clone(), timeouts });
    loop {
        let (conn, _) = incoming.next().await;
        let accepted = Instant::now();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        set_user_timeout(&conn, timeouts.send);
        let site = site.clone();
        let decoy = service.decoy;
        tokio::spawn(async move {
            let _permit = permit;
            let mut conn = Conn(conn);
            match decoy {
                Decoy::Http => http::serve(&mut conn, &site, accepted).await,
                Decoy::Tls => {
                    // `ngx_http_ssl_handshake`: the first byte (peeked)
                    // says TLS (a handshake record or an SSLv2 hello) or
                    // plain HTTP.
                    let deadline = accepted + timeouts.header;
                    let mut first = [0u8; 1];
                    match tokio::time::timeout_at(deadline, conn.0.peek(&mut first)).await {
                        Ok(Ok(1)) if first[0] == 0x16 || first[0] & 0x80 != 0 => {
                            tls::serve(&mut conn.0, deadline).await
                        }
                        Ok(Ok(1)) => http::serve(&mut conn, &site, accepted).await,
                        _ => {}
                    }
                }
            }
        });
    }
}

/// `TCP_USER_TIMEOUT` on an accepted socket (tcp(7)): how long sent data
/// may stay unacknowledged before the kernel gives the connection up. It
/// holds for the socket once closed too (`tcp_write_timeout`,
/// net/ipv4/tcp_timer.c, checks `icsk_user_timeout` for orphans), which is
/// what bounds a FIN-WAIT-1 socket whose peer is gone; a healthy peer
/// never sees it.
fn set_user_timeout(conn: &TcpStream, timeout: Duration) {
    if let Err(e) = socket2::SockRef::from(conn).set_tcp_user_timeout(Some(timeout)) {
        tracing::warn!("setting TCP_USER_TIMEOUT on a decoy connection: {e}");
    }
}

/// An accepted connection as the HTTP side reads it.
struct Conn(TcpStream);

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl http::Wire for Conn {
    fn readable_now(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
        // MSG_PEEK leaves the byte queued. Data, the peer's FIN (0) or an
        // error other than "nothing yet" are each what nginx's read event
        // would report.
        match socket2::SockRef::from(&self.0).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_https_port_gets_the_tls_decoy_by_default() {
        assert_eq!(Decoy::for_port(443), Decoy::Tls);
        assert_eq!(Decoy::for_port(80), Decoy::Http);
        assert_eq!(Decoy::for_port(8443), Decoy::Http);
    }

    #[test]
    fn the_page_file_s_etag_is_nginx_s() {
        let dir = std::env::temp_dir().join(format!("ackgate-page-etag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join("404.html");
        std::fs::write(&path, b"<p>gone</p>\n").expect("page file");
        let when = std::time::UNIX_EPOCH + Duration::from_secs(0x6b06_96d1);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(when))
            .expect("setting the page file's time");
        match NotFound::load(&path).expect("loading the page file") {
            NotFound::File { body, etag } => {
                assert_eq!(body.as_slice(), b"<p>gone</p>\n");
                assert_eq!(etag, "\"6b0696d1-c\"");
            }
            NotFound::Builtin => panic!("a page file must be served"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_longest_wait_is_the_longest_timeout() {
        assert_eq!(Timeouts::NGINX.longest_wait(), Duration::from_secs(75));
    }
}
