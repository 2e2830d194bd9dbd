//! Test harness shared by the test suites, the demo and the benchmarks:
//! packet builders, a loaded-gate fixture and the namespace topology.

pub mod daemons;
pub mod decoy;
pub mod deployment;
pub mod fixture;
pub mod flood;
pub mod fuzz;
pub mod kernel_alt;
pub mod packet;
pub mod probe;
pub mod stamp_fixture;
pub mod stamper;
pub mod table;
pub mod target;
pub mod test_gateway;
pub mod topology;
pub mod transfer;

/// Test functions `fn name(v6: bool)` run as `v4::name` over IPv4 and
/// `v6::name` over IPv6: the suites' IPv6 twins (their frames mapped by
/// `packet::TcpFrame::family`).
#[macro_export]
macro_rules! twins {
    ($($name:ident),* $(,)?) => {
        mod v4 {
            $(#[test]
            fn $name() {
                super::$name(false)
            })*
        }
        mod v6 {
            $(#[test]
            fn $name() {
                super::$name(true)
            })*
        }
    };
}

/// Whether the suite runs under CPU emulation (the VM run sets
/// `ACKGATE_EMULATED`): tests that move a lot of data or fill large maps
/// scale their work down there, and keep their checks.
pub fn emulated() -> bool {
    std::env::var_os("ACKGATE_EMULATED").is_some()
}

/// A scratch directory under the system's temporary directory, unique to
/// this process and call, removed when dropped (also when a test fails).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("ackgate-{tag}-{}-{n}", std::process::id())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
