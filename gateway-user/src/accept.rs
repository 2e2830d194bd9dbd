//! Accept loops that survive accept errors.
//!
//! `accept` fails when the process is out of file descriptors (EMFILE,
//! ENFILE) or memory (ENOBUFS, ENOMEM), or when a connection went away
//! before it was taken (ECONNABORTED). The listener stays usable, so the
//! loop must go on; but the first kind does not clear by itself, and
//! retrying at once spins a core on the same error until a descriptor
//! frees up. So after each error the loop waits, doubling from 10 ms up to
//! 1 s (the first success resets it), counts the error and logs it: at
//! most one line a second while the errors last.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The first wait after an accept error.
pub const FIRST_WAIT: Duration = Duration::from_millis(10);
/// The longest wait between two tries.
pub const LONGEST_WAIT: Duration = Duration::from_secs(1);

/// Something connections are accepted from.
pub trait Listen {
    type Conn;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Conn>> + Send;
}

impl Listen for tokio::net::TcpListener {
    type Conn = (tokio::net::TcpStream, std::net::SocketAddr);
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Conn>> + Send {
        tokio::net::TcpListener::accept(self)
    }
}

/// A listener and its backoff.
pub struct Acceptor<L> {
    listener: L,
    /// What the log calls this listener.
    name: &'static str,
    wait: Duration,
    errors: Arc<AtomicU64>,
}

impl<L: Listen> Acceptor<L> {
    /// Accepts from `listener`, counting errors in `errors`.
    pub fn new(listener: L, name: &'static str, errors: Arc<AtomicU64>) -> Self {
        Self { listener, name, wait: FIRST_WAIT, errors }
    }

    /// The next connection; errors are waited out, counted and logged.
    pub async fn next(&mut self) -> L::Conn {
        loop {
            match self.listener.accept().await {
                Ok(conn) => {
                    self.wait = FIRST_WAIT;
                    return conn;
                }
                Err(e) => {
                    let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(listener = self.name, errors, "accept failed: {e}; trying again in {:?}", self.wait);
                    tokio::time::sleep(self.wait).await;
                    self.wait = (self.wait * 2).min(LONGEST_WAIT);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Fails `failures` times (out of descriptors), then accepts.
    struct Exhausted {
        failures: u32,
        calls: AtomicU32,
    }

    impl Listen for Exhausted {
        type Conn = u32;
        fn accept(&self) -> impl Future<Output = std::io::Result<u32>> + Send {
            let call = self.calls.fetch_add(1, Ordering::Relaxed);
            let result = match call < self.failures {
                true => Err(std::io::Error::from_raw_os_error(libc::EMFILE)),
                false => Ok(call),
            };
            std::future::ready(result)
        }
    }

    /// Twelve errors in a row: the loop tries thirteen times, not
    /// millions, waiting 10, 20, 40 ... ms and then a second each time;
    /// each error is counted; the success resets the wait.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_are_waited_out_not_spun_on() {
        let errors = Arc::new(AtomicU64::new(0));
        let mut acceptor = Acceptor::new(Exhausted { failures: 12, calls: AtomicU32::new(0) }, "test", errors.clone());
        let started = tokio::time::Instant::now();
        assert_eq!(acceptor.next().await, 12, "the first success after the errors");
        let waited = started.elapsed();
        // 10 + 20 + ... + 640 ms, then 1 s five times.
        let expected = Duration::from_millis(10 * ((1 << 7) - 1)) + LONGEST_WAIT * 5;
        assert_eq!(waited, expected, "each error must be waited out, doubling up to a second");
        assert_eq!(acceptor.listener.calls.load(Ordering::Relaxed), 13, "one try per wait, no spinning");
        assert_eq!(errors.load(Ordering::Relaxed), 12, "every error counted");
        assert_eq!(acceptor.wait, FIRST_WAIT, "a success resets the backoff");
    }
}
