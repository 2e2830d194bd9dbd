//! A full deployment for end-to-end tests and benchmarks: the topology,
//! gateway and agent configs in a scratch directory, and the real `ackgate`
//! and `ackgate-agent` binaries driven through their command lines.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ackgate_common::abi::{FlowKey, PendingFlow};
use ackgate_gateway::admin_socket::{AdminReply, AdminRequest};
use aya::maps::{HashMap, Map, MapData};
use serde_json::Value;

use crate::daemons::{Daemon, eventually, in_netns, run_ok, workspace_binary};
use crate::fixture::unique_pin_dir;
use crate::target::TargetServer;
use crate::topology::{Ns, Topology};
use crate::transfer;

/// The protected service's port.
pub const PORT: u16 = 8443;
/// How long any step may take before a test fails. Tests wait for events,
/// never for this long when things work; it is generous because the VM
/// run emulates its CPU (about 14 times slower: loading and verifying the
/// gate's programs alone takes seconds there).
pub const WAIT: Duration = Duration::from_secs(60);

/// How long `ackgate run` may take to come up: [`WAIT`], or four times it
/// under emulation, where 6.1's verifier sometimes spends 55 to 90 s on
/// the gate program alone, instead of its usual 10 to 20, without
/// verifying more instructions (docs/kernels.md, "Verifier headroom").
pub fn start_wait() -> Duration {
    if crate::emulated() { 4 * WAIT } else { WAIT }
}

pub struct Setup {
    /// The hidden server (first, so it stops before the topology goes).
    pub target: TargetServer,
    pub topo: Topology,
    /// The service's VIP (the edge's address) and the target's address,
    /// IPv4 or, for [`Setup::ipv6`], IPv6.
    pub vip: IpAddr,
    pub target_ip: IpAddr,
    pub dir: PathBuf,
    pin_dir: PathBuf,
    gateway_config: PathBuf,
    agent_config: PathBuf,
    ackgate: PathBuf,
    agent_bin: PathBuf,
}

impl Setup {
    /// A fresh deployment with one service (`default_response`), the
    /// control plane initialised; `extra_control` is appended to `[control]`
    /// with `{dir}` (the scratch directory) and `{target}` (the target's
    /// address) replaced.
    pub fn new(tag: &str, default_response: &str, profile_timeout_ms: u64, extra_control: &str) -> Self {
        Self::with_gateway(tag, default_response, profile_timeout_ms, extra_control, "", "")
    }

    /// As [`Setup::new`], with `extra_gateway` appended to `[gateway]` and
    /// `extra_service` to the service.
    pub fn with_gateway(
        tag: &str,
        default_response: &str,
        profile_timeout_ms: u64,
        extra_control: &str,
        extra_gateway: &str,
        extra_service: &str,
    ) -> Self {
        let topo = Topology::new(tag);
        let (vip, target_ip) = (topo.edge_addr.into(), topo.target_addr.into());
        Self::build(
            topo,
            (vip, target_ip),
            tag,
            default_response,
            profile_timeout_ms,
            extra_control,
            extra_gateway,
            extra_service,
        )
    }

    /// As [`Setup::new`], all over IPv6: the topology's ends get IPv6
    /// addresses too (`Topology::add_ipv6_everywhere`), and the service's
    /// VIP, its target and the agents' listener are the IPv6 ones.
    pub fn ipv6(tag: &str, default_response: &str) -> Self {
        let topo = Topology::new(tag);
        let v6 = topo.add_ipv6_everywhere();
        Self::build(topo, (v6.edge.into(), v6.target.into()), tag, default_response, 3000, "", "", "")
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        topo: Topology,
        (vip, target_ip): (IpAddr, IpAddr),
        tag: &str,
        default_response: &str,
        profile_timeout_ms: u64,
        extra_control: &str,
        extra_gateway: &str,
        extra_service: &str,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("ackgate-e2e-{tag}-{}", std::process::id()));
        let extra_control =
            extra_control.replace("{dir}", &dir.display().to_string()).replace("{target}", &target_ip.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let pin_dir = unique_pin_dir(tag);
        let gateway_config = dir.join("gateway.toml");
        std::fs::write(
            &gateway_config,
            format!(
                r#"[gateway]
edge_interface = "{edge}"
internal_interface = "{internal}"
{mode}
pin_dir = "{pin}"
{extra_gateway}

[control]
state_dir = "{dir}/state"
agent_listen = "{listen}"
access_log = "{dir}/access.jsonl"
admin_socket = "{dir}/admin.sock"
metrics_listen = "127.0.0.1:9100"
profile_timeout_ms = {profile_timeout_ms}
{extra_control}

[[services]]
name = "intranet"
vip = "{vip}"
port = {PORT}
target = "{target}"
default_response = "{default_response}"
{extra_service}
"#,
                edge = topo.edge_if,
                internal = topo.internal_if,
                pin = pin_dir.display(),
                // Generic unless the caller picks a mode.
                mode = if extra_gateway.contains("xdp_mode") { "" } else { "xdp_mode = \"generic\"" },
                dir = dir.display(),
                listen = SocketAddr::new(vip, 4433),
                target = SocketAddr::new(target_ip, PORT),
            ),
        )
        .expect("gateway config");
        let agent_config = dir.join("agent.toml");
        std::fs::write(
            &agent_config,
            format!(
                "state_dir = \"{0}/agent-state\"\ncontrol_socket = \"{0}/agent.sock\"\ninterfaces = [\"{1}\"]\n",
                dir.display(),
                topo.client_if
            ),
        )
        .expect("agent config");
        let setup = Self {
            target: TargetServer::start(&topo, PORT),
            topo,
            vip,
            target_ip,
            dir,
            pin_dir,
            gateway_config,
            agent_config,
            ackgate: workspace_binary("ackgate"),
            agent_bin: workspace_binary("ackgate-agent"),
        };
        run_ok(setup.ackgate(&["init"]), None, "ackgate init");
        setup
    }

    pub fn ackgate(&self, args: &[&str]) -> Command {
        let mut c = in_netns(self.topo.ns(Ns::Gateway), &self.ackgate);
        c.args(args).arg("--config").arg(&self.gateway_config);
        c
    }

    pub fn agent(&self, args: &[&str]) -> Command {
        let mut c = in_netns(self.topo.ns(Ns::Client), &self.agent_bin);
        c.arg("--config").arg(&self.agent_config).args(args);
        c
    }

    /// `ackgate-agent ARGS` run by the local account `uid` (not root) in
    /// the client namespace. The binary runs from a copy in the scratch
    /// directory, which every account can reach.
    pub fn agent_as(&self, uid: u32, args: &[&str]) -> Command {
        let copy = self.dir.join("ackgate-agent");
        if !copy.exists() {
            std::fs::copy(&self.agent_bin, &copy).expect("copying the agent binary for another account");
        }
        let mut c = in_netns(self.topo.ns(Ns::Client), Path::new("setpriv"));
        c.args(as_account(uid)).arg(&copy).arg("--config").arg(&self.agent_config).args(args);
        c
    }

    /// Makes the agent's logins machine-wide (`login_scope = "machine"`);
    /// before the agent starts.
    pub fn machine_wide_logins(&self) {
        let config = std::fs::read_to_string(&self.agent_config).expect("agent config");
        std::fs::write(&self.agent_config, format!("login_scope = \"machine\"\n{config}")).expect("agent config");
    }

    /// Invite, enroll, and both daemons up with the agent connected.
    pub fn start(&self) -> (Daemon, Daemon) {
        let gateway = self.start_gateway();
        (gateway, self.start_agent())
    }

    /// `ackgate run`, up with its agent listener.
    pub fn start_gateway(&self) -> Daemon {
        let mut gateway = Daemon::start(self.ackgate(&["run"]), "ackgate run", self.dir.join("gateway.log"));
        gateway.wait_for_log("agent listener up", start_wait());
        gateway
    }

    /// An invite, `ackgate-agent enroll`, and `ackgate-agent run` with its
    /// session up (the gateway must be running).
    pub fn start_agent(&self) -> Daemon {
        let invite = run_ok(self.ackgate(&["invite", "--note", "e2e"]), None, "ackgate invite");
        let invite = String::from_utf8_lossy(&invite.stdout).trim().to_owned();
        run_ok(self.agent(&["enroll", &invite]), None, "ackgate-agent enroll");
        let mut agent = Daemon::start(self.agent(&["run"]), "ackgate-agent run", self.dir.join("agent.log"));
        // Logged once the session's state reads "connected". Watching the
        // log rather than polling `ackgate-agent status` leaves the CPU to
        // the agent's start-up, which in the emulated VMs is mostly the
        // verifier's.
        agent.wait_for_log("gateway session open", WAIT);
        agent
    }

    /// `ackgate-agent status --json`.
    pub fn agent_status(&self) -> Value {
        let out = run_ok(self.agent(&["status", "--json"]), None, "ackgate-agent status");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ackgate-agent status --json: {e}"))
    }

    pub fn login(&self, user: &str, password: &str) {
        use std::io::Write as _;
        let mut cmd = self.agent(&["login", "--user", user, "--password-stdin"]);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("ackgate-agent login: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(format!("{password}\n").as_bytes()).expect("the password");
        }
        let out = child.wait_with_output().expect("ackgate-agent login");
        if String::from_utf8_lossy(&out.stdout).contains("logged in") {
            return;
        }
        // The command waits 15 s for the verdict; the login goes on after
        // it gives up (the VM's emulated CPU runs argon2id on both ends far
        // slower): the agent's status then shows the verdict.
        assert!(String::from_utf8_lossy(&out.stderr).contains("no verdict from the gateway"), "login output: {out:?}");
        eventually(WAIT, "the agent's login verdict", || {
            let logins = self.agent_status()["session"]["logins"].clone();
            let verdict = logins.as_array()?.iter().find(|l| l["user"] == user)?.clone();
            assert_eq!(verdict["accepted"], true, "the login must be accepted: {verdict}");
            Some(())
        });
    }

    /// One connection attempt with curl from the client namespace, given
    /// `max_secs`; returns curl's exit code (28: timed out, 56: reset).
    pub fn curl(&self, max_secs: u32) -> i32 {
        self.fetch(max_secs).0
    }

    /// As [`Setup::curl`], with what it fetched.
    pub fn fetch(&self, max_secs: u32) -> (i32, String) {
        self.fetch_with(&[], max_secs)
    }

    /// As [`Setup::fetch`], by the local account `uid` instead of root.
    pub fn fetch_as(&self, uid: u32, max_secs: u32) -> (i32, String) {
        let account = as_account(uid);
        let mut prefix = vec!["setpriv"];
        prefix.extend(account.iter().map(String::as_str));
        self.fetch_with(&prefix, max_secs)
    }

    fn fetch_with(&self, prefix: &[&str], max_secs: u32) -> (i32, String) {
        let url = format!("http://{}/", SocketAddr::new(self.vip, PORT));
        let max = max_secs.to_string();
        let mut args = prefix.to_vec();
        args.extend(["curl", "-s", "-m", &max, &url]);
        let out = self.topo.cmd(Ns::Client, &args);
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn access_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("access.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for the `n`th access-log record and returns it.
    pub fn decision(&self, n: usize) -> Value {
        eventually(WAIT, &format!("access log record {n}"), || self.access_log().get(n - 1).cloned())
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = run_ok(self.ackgate(args), None, &format!("ackgate {args:?}"));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ackgate {args:?} --json: {e}"))
    }

    /// Adds `user` (password "pw"), starts both daemons, logs the agent in,
    /// and approves the user's machine after a first connect that must be
    /// denied (access log record 1): the next connect is authorized.
    pub fn start_approved(&self, user: &str) -> (Daemon, Daemon) {
        run_ok(self.ackgate(&["users", "add", user, "--password-stdin"]), Some("pw\n"), "users add");
        let daemons = self.start();
        self.login(user, "pw");
        self.curl(2);
        assert_eq!(self.decision(1)["decision"], "denied", "a first connect from a new machine must be denied");
        run_ok(self.ackgate(&["users", "approve", user]), None, "users approve");
        daemons
    }

    /// Connects from the client namespace, sends nothing, and reads until
    /// the connection ends or `within` passes; returns how the read ended
    /// and when. Only the gateway can end such an idle connection.
    pub fn idle_client(&self, within: Duration) -> (Result<usize, std::io::ErrorKind>, std::time::Instant) {
        let to = SocketAddr::new(self.vip, PORT);
        self.topo.run_in(Ns::Client, || {
            let mut c = std::net::TcpStream::connect_timeout(&to, WAIT).expect("connect");
            c.set_read_timeout(Some(within)).expect("read timeout");
            let r = std::io::Read::read(&mut c, &mut [0u8; 16]);
            (r.map_err(|e| e.kind()), std::time::Instant::now())
        })
    }

    /// Downloads `len` bytes of the target's pattern through the gateway
    /// (a stamped connection from the client namespace); `progress` hears
    /// the bytes received so far after every read. Returns the SHA-256 of
    /// what arrived, or how the transfer broke.
    pub fn download(&self, len: usize, progress: impl FnMut(usize) + Send) -> std::io::Result<String> {
        let to = SocketAddr::new(self.vip, PORT);
        let request = format!("GET /bytes/{len} HTTP/1.0\r\n\r\n");
        self.topo.run_in(Ns::Client, || transfer::download(to, &request, len, progress))
    }

    /// Uploads `len` bytes of the pattern to the target through the
    /// gateway; returns the SHA-256 the target computed.
    pub fn upload(&self, len: usize) -> std::io::Result<String> {
        let to = SocketAddr::new(self.vip, PORT);
        self.topo.run_in(Ns::Client, || transfer::upload(to, len))
    }

    /// Flows `ackgate flows --json` lists as live: authorized, being
    /// spliced or spliced.
    pub fn live_flows(&self) -> Vec<Value> {
        let flows = self.json(&["flows", "--json"]);
        flows
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| matches!(r["state"].as_str(), Some("authorized" | "connecting" | "spliced")))
            .cloned()
            .collect()
    }

    /// Writes `flows` straight into the running gate's pinned flow map, as
    /// a gate holding that many flows would have them. The map is an LRU
    /// with a free list per CPU (`BPF_F_NO_COMMON_LRU`): an insert takes a
    /// slot from the inserting CPU's list and evicts when that list is
    /// empty, so the flows are spread over every CPU as traffic would be.
    pub fn plant_flows(&self, flows: Vec<(FlowKey, PendingFlow)>) {
        let path = self.pin_dir.join(ackgate_common::abi::MAP_PENDING);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        std::thread::scope(|scope| {
            for (cpu, share) in flows.chunks(flows.len().div_ceil(cpus).max(1)).enumerate() {
                let path = &path;
                scope.spawn(move || {
                    let mut on = nix::sched::CpuSet::new();
                    on.set(cpu).expect("a CPU number");
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &on)
                        .unwrap_or_else(|e| panic!("pinning the planting thread to CPU {cpu}: {e}"));
                    let data = MapData::from_pin(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
                    let mut map: HashMap<MapData, FlowKey, PendingFlow> =
                        HashMap::try_from(Map::LruHashMap(data)).expect("the flow map's layout");
                    for (key, flow) in share {
                        map.insert(key, flow, 0).unwrap_or_else(|e| panic!("planting flow {key:?}: {e}"));
                    }
                });
            }
        });
    }

    /// The flows in the running gate's flow map.
    pub fn flow_map(&self) -> Vec<(FlowKey, PendingFlow)> {
        ackgate_gateway::gate::Gate::read_flows(&self.pin_dir).expect("reading the flow map")
    }

    /// Asks the running gateway over its admin socket.
    pub fn admin(&self, req: &AdminRequest) -> AdminReply {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(ackgate_gateway::admin_socket::request(&self.dir.join("admin.sock"), req))
            .unwrap_or_else(|e| panic!("admin request {req:?}: {e}"))
    }

    /// The gateway's metrics exposition (`metrics_listen` in its namespace).
    pub fn metrics(&self) -> String {
        let out = self.topo.cmd_ok(Ns::Gateway, &["curl", "-sS", "--max-time", "10", "http://127.0.0.1:9100/metrics"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Loads nftables `rules` (a whole table) in namespace `ns`.
    pub fn nft(&self, ns: Ns, rules: &str) {
        let file = self.dir.join(format!("rules-{}.nft", std::process::id()));
        std::fs::write(&file, rules).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        self.topo.cmd_ok(ns, &["nft", "-f", &file.display().to_string()]);
    }

    /// The gate's packet counter for `reason`, from `ackgate status --json`.
    /// The gate's counter of `reason`, read from its pinned map in this
    /// process: tests poll it, and an `ackgate status` per poll costs the
    /// emulated VMs about a second of CPU (the command's own output is
    /// tested where it is the subject).
    pub fn gate_counter(&self, reason: &str) -> u64 {
        let counters = ackgate_gateway::counters::from_pin_dir(&self.pin_dir)
            .unwrap_or_else(|e| panic!("reading the gate's counters in {}: {e}", self.pin_dir.display()));
        counters
            .labelled()
            .find_map(|(label, n)| (label == reason).then_some(n))
            .unwrap_or_else(|| panic!("the gate has no counter {reason}"))
    }
}

/// `setpriv` arguments that run a program as the local account `uid`
/// (with the group of the same number and no others).
fn as_account(uid: u32) -> Vec<String> {
    vec![format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()]
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}
