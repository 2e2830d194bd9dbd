//! A freshly loaded gate with its own pin directory, removed on drop, so
//! tests can run side by side.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use ackgate_common::abi::{RESPONSE_DROP, ServiceKey, ServicePolicy, port_field, v4_words};
use ackgate_common::mac::MacKey;
use ackgate_common::option::OptionId;
use ackgate_gateway::counters::{self, Counters};
use ackgate_gateway::gate::{Gate, GateSettings, ServiceEntry};
use aya::programs::{TestRun, TestRunOptions};

/// Agent and key the fixtures enrol.
pub const AGENT_ID: u32 = 7;
pub const AGENT_KEY: MacKey = MacKey { k0: 0x0706_0504_0302_0100, k1: 0x0f0e_0d0c_0b0a_0908 };

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique directory name under /sys/fs/bpf for this process and call.
pub fn unique_pin_dir(tag: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(format!("/sys/fs/bpf/ackgate-{tag}-{}-{n}", std::process::id()))
}

pub struct TestGate {
    pub gate: Gate,
    pin_dir: PathBuf,
}

/// What one test run returned.
#[derive(Debug)]
pub struct RunOutput {
    pub action: u32,
    pub frame: Vec<u8>,
    pub duration_ns: u64,
}

/// What a Linux client's handshake with the cookie SYN/ACK agrees: MSS
/// 1460, window scale 7, SACK, timestamps, a 502 window.
pub fn linux_handshake(client_tsval: u32, cookie_tsval: u32) -> ackgate_common::abi::HandshakeInfo {
    ackgate_common::abi::HandshakeInfo {
        client_tsval,
        cookie_tsval,
        window: 502,
        mss: 1460,
        wscale: 7,
        sack_ok: 1,
        ts_ok: 1,
        ecn: 0,
    }
}

pub fn service(vip: impl Into<std::net::IpAddr>, port: u16, default_response: u8, stealth: bool) -> ServiceEntry {
    let key = match vip.into() {
        std::net::IpAddr::V4(a) => ServiceKey::ipv4(a.octets(), port.to_be_bytes()),
        std::net::IpAddr::V6(a) => ServiceKey::ipv6(a.octets(), port.to_be_bytes()),
    };
    ServiceEntry {
        key,
        policy: ServicePolicy {
            target_addr: v4_words([10, 99, 0, 2]),
            target_port: port_field(port.to_be_bytes()),
            default_response,
            stealth: u8::from(stealth),
            target_family: ackgate_common::abi::FAMILY_IPV4,
            _pad0: 0,
            _pad1: 0,
        },
    }
}

impl TestGate {
    /// Loads the gate with `services` and the fixture agent key.
    ///
    /// Moves the calling thread into a fresh network namespace first: a
    /// test run's packet arrives on the loopback device of the caller's
    /// namespace, and the gate's transit check asks that namespace's FIB.
    /// A fresh one (forwarding off, no routes) makes every verdict the same
    /// on any host. Tests use a gate from the thread that created it.
    pub fn new(tag: &str, services: &[ServiceEntry]) -> Self {
        Self::with_settings(tag, services, &GateSettings::new(OptionId::default(), ackgate_common::abi::MAX_PENDING))
    }

    /// As [`TestGate::new`], loaded with `settings`.
    pub fn with_settings(tag: &str, services: &[ServiceEntry], settings: &GateSettings) -> Self {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("a fresh network namespace for the test gate: {e}"));
        let pin_dir = unique_pin_dir(tag);
        let mut gate = Gate::load(&pin_dir, settings).unwrap_or_else(|e| {
            // No TestGate owns the directory yet to remove it on drop.
            let _ = std::fs::remove_dir_all(&pin_dir);
            panic!("the XDP gate must load and pass the verifier: {e}")
        });
        gate.sync_services(services).unwrap_or_else(|e| panic!("filling the service map failed: {e}"));
        gate.set_agent_key(AGENT_ID, AGENT_KEY).unwrap_or_else(|e| panic!("filling the agent key map failed: {e}"));
        Self { gate, pin_dir }
    }

    /// One drop-policy service on 10.0.0.1:443.
    pub fn single(tag: &str) -> Self {
        Self::new(tag, &[service([10, 0, 0, 1], 443, RESPONSE_DROP, false)])
    }

    /// Runs the program once over `frame`.
    pub fn run(&mut self, frame: &[u8]) -> RunOutput {
        self.run_repeat(frame, 1)
    }

    /// Runs the program `repeat` times over `frame` (the kernel reuses one
    /// buffer, so only the first iteration sees the original bytes).
    pub fn run_repeat(&mut self, frame: &[u8], repeat: u32) -> RunOutput {
        let prog = self.gate.xdp().unwrap_or_else(|e| panic!("gate program: {e}"));
        test_run(prog, frame, repeat)
    }

    /// Runs the internal interface's program once over `frame`.
    pub fn run_internal(&mut self, frame: &[u8]) -> RunOutput {
        let prog = self.gate.internal_program().unwrap_or_else(|e| panic!("internal program: {e}"));
        test_run(prog, frame, 1)
    }

    /// Runs the do-nothing program once over `frame` (benchmark baseline).
    pub fn run_pass(&mut self, frame: &[u8]) -> RunOutput {
        let prog = self.gate.pass_program().unwrap_or_else(|e| panic!("pass program: {e}"));
        test_run(prog, frame, 1)
    }

    pub fn counters(&mut self) -> Counters {
        counters::from_ebpf(self.gate.ebpf_mut()).unwrap_or_else(|e| panic!("reading counters: {e}"))
    }
}

fn test_run(prog: &mut aya::programs::Xdp, frame: &[u8], repeat: u32) -> RunOutput {
    {
        let mut out = vec![0u8; 2048];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let r = prog.test_run(opts).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed: {e}"));
        out.truncate(r.data_size_out as usize);
        RunOutput { action: r.return_value, frame: out, duration_ns: r.duration.as_nanos() as u64 }
    }
}

impl Drop for TestGate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}
