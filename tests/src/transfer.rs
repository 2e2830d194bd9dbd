//! Bulk transfers through the splice, the client's side: a download of the
//! target server's pattern and an upload of it, each checked by SHA-256.
//! Every read and write has a deadline, so a stalled splice fails the test
//! instead of hanging it.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sha2::Digest as _;

use crate::target::{hex, pattern};

/// No progress for this long fails the transfer.
const STALL: Duration = Duration::from_secs(30);

fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, STALL)?;
    s.set_read_timeout(Some(STALL))?;
    s.set_write_timeout(Some(STALL))?;
    Ok(s)
}

/// Sends `request`, skips the response header, hashes `len` body bytes.
pub fn download(to: SocketAddr, request: &str, len: usize, mut progress: impl FnMut(usize)) -> io::Result<String> {
    let mut s = connect(to)?;
    s.write_all(request.as_bytes())?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut in_body = false;
    let mut h = sha2::Sha256::new();
    let mut got = 0usize;
    loop {
        let n =
            s.read(&mut buf).map_err(|e| io::Error::new(e.kind(), format!("after {got} of {len} body bytes: {e}")))?;
        if n == 0 {
            break;
        }
        let body = if in_body {
            &buf[..n]
        } else {
            head.extend_from_slice(&buf[..n]);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            in_body = true;
            // What followed the header in this read is body already.
            &head[end + 4..]
        };
        h.update(body);
        got += body.len();
        progress(got);
    }
    if got != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("received {got} of {len} bytes")));
    }
    Ok(hex(&h.finalize()))
}

/// POSTs `len` bytes of the pattern; returns the SHA-256 the target sent
/// back.
pub fn upload(to: SocketAddr, len: usize) -> io::Result<String> {
    let mut s = connect(to)?;
    s.write_all(format!("POST /sha256 HTTP/1.0\r\nContent-Length: {len}\r\n\r\n").as_bytes())?;
    for chunk in pattern(len) {
        s.write_all(&chunk)?;
    }
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    reply
        .split("\r\n\r\n")
        .nth(1)
        .map(|body| body.trim().to_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no digest in {reply:?}")))
}
