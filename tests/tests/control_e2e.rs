//! End to end with the real daemons: `ackgate run` (gate + control plane) in
//! the gateway namespace, `ackgate-agent run` in the client namespace, and
//! curl as the client application.
//!
//! - A valid user on a new machine is denied and recorded; after
//!   `ackgate users approve` the next connect is authorized, visible in
//!   `ackgate flows` and the access log.
//! - An unknown user likewise becomes a valid user by approval.
//! - An agent that stops answering (SIGSTOP, its stamper still attached)
//!   times out: the flow gets the service's default response (a reset).

use std::time::Duration;

use ackgate_agent::state::StateDir;
use ackgate_tests::daemons::{Daemon, eventually, run_ok};
use ackgate_tests::deployment::{PORT, Setup, WAIT, start_wait};
use ackgate_tests::stamper::stamped_handshake_as;
use ackgate_tests::target::GREETING;
use ackgate_tests::topology::Ns;

/// Denied and recorded first, authorized after approval.
fn approval_flow(tag: &str, add_user_first: bool) {
    let s = Setup::new(tag, "drop", 10_000, "");
    if add_user_first {
        run_ok(s.ackgate(&["users", "add", "alice", "--password-stdin"]), Some("pw-alice\n"), "users add");
    }
    let (gateway, agent) = s.start();
    s.login("alice", "pw-alice");

    s.curl(2);
    let first = s.decision(1);
    assert_eq!(first["decision"], "denied", "first connect from a new machine must be denied: {first}");
    let expected = if add_user_first { "unapproved machine" } else { "unknown user" };
    assert!(first["reason"].as_str().unwrap_or("").contains(expected), "reason: {first}");
    assert_eq!(first["user"], "alice", "{first}");
    let pending = s.json(&["users", "pending", "--json"]);
    assert!(
        pending.as_array().is_some_and(|p| p.iter().any(|e| e["user"] == "alice" && e["new_user"] == !add_user_first)),
        "alice must be listed as a potential user: {pending}"
    );

    run_ok(s.ackgate(&["users", "approve", "alice"]), None, "users approve");
    // The agent is held while curl connects, so curl's request reaches the
    // gate while the flow waits for the agent's answer, however the
    // machine schedules curl: the gate holds it, and the control plane
    // must hand it to the target once spliced (no wait for curl's
    // retransmission). The stamper, in the kernel, runs on.
    let held_before = s.gate_counter("pending_hold");
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(agent.pid(), libc::SIGSTOP) };
    let (code, body) = std::thread::scope(|scope| {
        let fetch = scope.spawn(|| s.fetch(10));
        eventually(WAIT, "the gate holding curl's early request", || {
            (s.gate_counter("pending_hold") > held_before).then_some(())
        });
        // SAFETY: as above.
        unsafe { libc::kill(agent.pid(), libc::SIGCONT) };
        fetch.join().expect("curl thread")
    });
    // The splice carries the authorized flow to the hidden target, which
    // sees the client's real address.
    assert_eq!(code, 0, "curl through the gateway must succeed after approval: {body}");
    assert!(body.starts_with(GREETING), "the target's page must come back: {body:?}");
    let client = s.topo.client_addr.to_string();
    assert!(body.contains(&format!("you are {client}:")), "the target must see the real client address: {body}");
    assert!(s.target.peers().iter().all(|p| p.ip().to_string() == client), "target peers: {:?}", s.target.peers());
    let second = s.decision(2);
    assert_eq!(second["decision"], "authorized", "after approval the next connect must be authorized: {second}");
    // curl closed: FIN both ways ends the flow, with one access-log record.
    let ended = s.decision(3);
    assert_eq!(ended["decision"], "ended", "{ended}");
    assert_eq!(ended["flow_end"]["ended"], "fin", "{ended}");
    assert!(ended["flow_end"]["to_client"]["bytes"].as_u64() > Some(100), "bytes to the client: {ended}");
    assert!(ended["flow_end"]["to_target"]["packets"].as_u64() >= Some(2), "packets to the target: {ended}");
    let status = s.json(&["status", "--json"]);
    let daemon = &status["control_plane"];
    assert_eq!(daemon["agents_connected"], 1, "status must show the agent's session: {status}");
    assert_eq!(daemon["authorized"], 1, "status must count the authorization: {status}");
    assert_eq!(daemon["denied"], 1, "status must count the first, denied connect: {status}");
    assert_eq!(daemon["splice"]["spliced"], 1, "status must count the splice: {status}");
    assert!(daemon["splice"]["held_delivered"].as_u64() >= Some(1), "the early request must be delivered: {status}");
    assert!(s.gate_counter("splice_redirect") >= 4, "the data path must have redirected the flow: {status}");
    assert!(s.gate_counter("internal_spliced") == 1, "one splice handshake completed: {status}");
    assert!(s.live_flows().is_empty(), "the ended flow's entries must be gone: {:?}", s.live_flows());
    let users = s.json(&["users", "list", "--json"]);
    assert!(
        users.as_array().is_some_and(|u| u
            .iter()
            .any(|r| r["name"] == "alice" && r["machines"].as_array().is_some_and(|m| m.len() == 1))),
        "alice must have one approved machine: {users}"
    );
    let scraped = s.topo.cmd(Ns::Gateway, &["curl", "-s", "-m", "2", "http://127.0.0.1:9100/metrics"]);
    let metrics = String::from_utf8_lossy(&scraped.stdout);
    assert!(metrics.contains("ackgate_login_table_entries 1"), "the agent's login, in the gateway's table: {metrics}");
    assert!(
        metrics.contains(r#"ackgate_agent_events_total{event="logins_accepted"} 1"#),
        "one login, accepted: {metrics}"
    );
    for (name, log) in [("ackgate run", gateway.log()), ("ackgate-agent run", agent.log())] {
        assert!(!log.contains("ERROR"), "{name} logged an error on a flow that went right:\n{log}");
    }
}

#[test]
fn known_user_on_a_new_machine_is_approved_then_authorized() {
    approval_flow("known", true);
}

#[test]
fn unknown_user_is_recorded_then_approved_and_authorized() {
    approval_flow("unknown", false);
}

#[test]
fn an_agent_that_stops_answering_times_out_into_the_default_response() {
    let s = Setup::new("timeout", "reset", 700, "");
    run_ok(s.ackgate(&["users", "add", "bob", "--password-stdin"]), Some("pw\n"), "users add");
    let (_gateway, agent) = s.start();
    s.login("bob", "pw");
    // Frozen: its stamper stays attached, its session goes silent.
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(agent.pid(), libc::SIGSTOP) };
    let code = s.curl(6);
    let d = s.decision(1);
    assert_eq!(d["decision"], "timed_out", "a silent agent must time out: {d}");
    assert!(code != 0, "curl must not succeed");
    let flows = s.json(&["flows", "--json"]);
    assert!(
        flows.as_array().is_some_and(|f| f.iter().any(|r| r["state"] == "denied")),
        "the timed-out flow must be marked denied (default response): {flows}"
    );
    // curl's retransmitted request on the now-denied flow got the default
    // response: a reset (curl exit 56, "failure receiving network data").
    assert_eq!(code, 56, "curl should have been reset by the default response");
    let denied = s.gate_counter("flow_denied");
    assert!(denied >= 1, "the gate must count the denied flow's segments");
    let status = s.json(&["status", "--json"]);
    assert_eq!(status["control_plane"]["timed_out"], 1, "the control plane must count the timeout: {status}");
}

/// Revoking a user ends their live authorized flow at once: the flow leaves
/// the gate's map and the client gets a RST (the service's policy is reset).
#[test]
fn revocation_ends_a_live_flow() {
    let s = Setup::new("revoke", "reset", 3000, "");
    let (_gateway, _agent) = s.start_approved("alice");
    // An idle client: it sends nothing after the handshake, so only the
    // gateway's own RST can end its connection.
    let (read, revoked_at, ended_at) = std::thread::scope(|scope| {
        let client = scope.spawn(|| s.idle_client(Duration::from_secs(20)));
        assert_eq!(s.decision(2)["decision"], "authorized", "the flow must be authorized before the revocation");
        let revoked_at = std::time::Instant::now();
        let out = run_ok(s.ackgate(&["users", "revoke", "alice"]), None, "users revoke");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ended 1 live flow"),
            "revoke must end the live flow: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let (read, ended_at) = client.join().expect("client thread");
        (read, revoked_at, ended_at)
    });
    assert_eq!(read, Err(std::io::ErrorKind::ConnectionReset), "the idle client must see its connection reset");
    assert!(ended_at.duration_since(revoked_at) < Duration::from_secs(3), "the reset must come at once");
    let left = s.live_flows();
    assert!(left.is_empty(), "the revoked flow must be gone from the gate: {left:?}");
    assert!(s.access_log().iter().any(|r| r["decision"] == "revoked"), "the revocation must be in the access log");
}

/// A revocation stored while the control plane is down (crashed) reaches
/// the flow it authorized earlier: the restarted daemon finds the owner in
/// the pinned flow map, sees the revocation in the store, and ends the flow
/// with a RST.
#[test]
fn a_revocation_while_the_gateway_is_down_ends_its_flows_at_start() {
    let s = Setup::new("downrev", "reset", 3000, "");
    let (gateway, _agent) = s.start_approved("alice");
    let (read, said) = std::thread::scope(|scope| {
        // Only a deadline: the RST ends the read at once. It spans the kill,
        // the revocation and a restart that loads and verifies the gate,
        // which under emulation, beside other VMs, has taken over 30 s.
        let client = scope.spawn(|| s.idle_client(Duration::from_secs(180)).0);
        assert_eq!(s.decision(2)["decision"], "authorized", "the flow must be authorized before the crash");
        // SAFETY: killing the daemon this test started.
        unsafe { libc::kill(gateway.pid(), libc::SIGKILL) };
        let out = run_ok(s.ackgate(&["users", "revoke", "alice"]), None, "users revoke (gateway down)");
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut restarted = Daemon::start(s.ackgate(&["run"]), "ackgate run (restarted)", s.dir.join("gateway2.log"));
        restarted.wait_for_log("agent listener up", start_wait());
        (client.join().expect("client thread"), said)
    });
    assert!(said.contains("end when it starts"), "revoke must say when the live flows end: {said}");
    assert_eq!(read, Err(std::io::ErrorKind::ConnectionReset), "the restarted gateway must reset the revoked flow");
    let left = s.live_flows();
    assert!(left.is_empty(), "the revoked flow must be gone from the gate: {left:?}");
    assert!(
        s.access_log().iter().any(|r| r["decision"] == "revoked"
            && r["reason"].as_str().is_some_and(|why| why.contains("while the gateway was down"))),
        "the access log must record the revocation at start"
    );
}

/// kill -9 of the control plane while flows are authorized and the daemon
/// is writing to its store: the gate keeps filtering (its link stays
/// pinned), flows the gate accepted meanwhile wait in the pinned maps, the
/// restarted control plane decides them within its session grace (with the
/// default profile timeout: the agent reconnects at once), earlier
/// authorized flows are still there, no write the daemon acknowledged is
/// lost, and a revocation after the restart ends the flows authorized
/// before it.
#[test]
fn a_killed_control_plane_loses_nothing() {
    let s = Setup::new("crash", "reset", 3000, "");
    let (gateway, _agent) = s.start_approved("alice");
    run_ok(
        s.agent_as(MALLORY_UID, &["login", "--user", "mallory", "--password-stdin"]),
        Some("pw-mallory\n"),
        "ackgate-agent login as a potential user",
    );
    let denials = |log: &[serde_json::Value]| {
        log.iter().filter(|r| r["user"] == "mallory" && r["decision"] == "denied").count() as u64
    };
    std::thread::scope(|scope| {
        // A spliced flow that stays open across the crash, until the
        // revocation at the end resets it. Its read waits far longer than
        // the test takes on the slowest (emulated, loaded) machine: a read
        // that gave up first would close the flow and fail the test.
        let idle = scope.spawn(|| s.idle_client(Duration::from_secs(900)).0);
        assert_eq!(s.decision(2)["decision"], "authorized");
        eventually(WAIT, "the idle flow to be spliced", || {
            s.live_flows().iter().any(|f| f["state"] == "spliced").then_some(())
        });

        // The daemon keeps writing to its store while it dies: mallory, a
        // potential user, connects again and again, and the daemon records
        // each denied attempt in the store before its access log says so.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let logged_before_kill = std::thread::scope(|inner| {
            let attempts = inner.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    s.fetch_as(MALLORY_UID, 2);
                }
            });
            eventually(WAIT, "mallory's attempts to be recorded", || (denials(&s.access_log()) >= 3).then_some(()));
            // SAFETY: killing the daemon this test started.
            unsafe { libc::kill(gateway.pid(), libc::SIGKILL) };
            let logged = denials(&s.access_log());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            attempts.join().expect("attempts thread");
            logged
        });

        let link = s.topo.cmd_ok(Ns::Gateway, &["ip", "link", "show", "dev", &s.topo.edge_if]);
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(link.contains("xdp"), "the gate must stay attached after the crash (fail closed): {link}");
        let status = s.json(&["status", "--json"]);
        assert!(
            status["control_plane"].is_null() && status["control_error"].is_string(),
            "status must report the gate and a control plane that does not answer: {status}"
        );
        // A connect while the control plane is down: the gate still accepts
        // the stamped handshake and keeps it pending in the pinned map.
        s.curl(2);
        let flows = s.json(&["flows", "--json"]);
        let states: Vec<&str> = flows.as_array().into_iter().flatten().filter_map(|f| f["state"].as_str()).collect();
        assert!(states.contains(&"spliced"), "the spliced flow must survive the crash: {flows}");
        assert!(states.contains(&"pending"), "the handshake during the outage must wait as pending: {flows}");

        drop(gateway);
        // The gateway stays down through several refused reconnects, so a
        // doubling backoff would now keep the agent away for seconds after
        // the restart, past the profile timeout.
        let refused_before = s.agent_status()["session"]["failed_connects"].as_u64().unwrap_or(0);
        eventually(WAIT, "the agent's reconnects to be refused five times", || {
            let failed = s.agent_status()["session"]["failed_connects"].as_u64().unwrap_or(0);
            (failed >= refused_before + 5).then_some(())
        });
        let mut restarted = Daemon::start(s.ackgate(&["run"]), "ackgate run (restarted)", s.dir.join("gateway2.log"));
        restarted.wait_for_log("agent listener up", start_wait());
        // Records come in the order things happen; on a slow machine the
        // decision need not be the third.
        eventually(WAIT, "the flow left pending to be authorized after the restart", || {
            (s.access_log().iter().filter(|r| r["decision"] == "authorized").count() == 2).then_some(())
        });
        // Every denial the access log showed before the kill was committed
        // to the store first.
        let pending = s.json(&["users", "pending", "--json"]);
        let recorded = pending
            .as_array()
            .and_then(|p| p.iter().find(|e| e["user"] == "mallory"))
            .and_then(|e| e["count"].as_u64())
            .unwrap_or_else(|| panic!("mallory's attempts are not in the store: {pending}"));
        assert!(
            recorded >= logged_before_kill,
            "the store lost acknowledged writes: {recorded} attempts recorded, {logged_before_kill} logged before the kill"
        );

        // The owner of the spliced flow is in the pinned map, so a
        // revocation after the restart reaches the flow spliced before the
        // crash.
        let spliced: Vec<_> = s.live_flows().into_iter().filter(|f| f["state"] == "spliced").collect();
        assert!(
            spliced.iter().any(|f| f["user"] == "alice" && f["machine"].is_string()),
            "the spliced flow must show alice and her machine: {spliced:?}"
        );
        let out = run_ok(s.ackgate(&["users", "revoke", "alice"]), None, "users revoke");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("ended"), "revoke must end the flow from before the crash: {said}");
        assert_eq!(idle.join().expect("idle client"), Err(std::io::ErrorKind::ConnectionReset));
        let left = s.live_flows();
        assert!(left.is_empty(), "no flow of the revoked user may stay live: {left:?}");
    });
}

/// `page` mode: an unstamped client completes its handshake into the
/// gateway's local responder and gets an ordinary 404 page; the gate counts
/// the refused ACK it passed on.
#[test]
fn page_mode_serves_the_page_to_an_unstamped_client() {
    let s = Setup::new("page", "page", 3000, "");
    // The sysctl exists once conntrack is loaded (a module on distribution
    // kernels, loaded by the responder's rules), and starts at 1.
    let tcp_loose = || {
        s.topo.run_in(Ns::Gateway, || match std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_loose") {
            Ok(v) => v.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "1".to_owned(),
            Err(e) => panic!("reading nf_conntrack_tcp_loose: {e}"),
        })
    };
    // The administrator's own setting (the default), which a clean stop
    // must give back.
    assert_eq!(tcp_loose(), "1", "a fresh namespace starts with nf_conntrack_tcp_loose on");
    let mut gateway = Daemon::start(s.ackgate(&["run"]), "ackgate run", s.dir.join("gateway.log"));
    gateway.wait_for_log("page responder up", start_wait());
    assert_eq!(tcp_loose(), "0", "the page responder's SYNPROXY needs nf_conntrack_tcp_loose off");
    let url = format!("http://{}:{PORT}/secret", s.topo.edge_addr);
    let out = s.topo.cmd(Ns::Client, &["curl", "-s", "-m", "5", "-i", &url]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl must get an answer in page mode: {out:?}\n{}", gateway.log());
    assert!(body.starts_with("HTTP/1.1 404 Not Found"), "expected the decoy 404, got:\n{body}");
    assert!(body.contains("<center>nginx</center>"), "expected the stock page body, got:\n{body}");
    let status = run_ok(s.ackgate(&["status"]), None, "ackgate status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("ack_no_option"), "the gate must have counted the unstamped ACK: {text}");
    assert!(text.contains("control plane: pid"), "status must show the running control plane: {text}");
    drop(gateway);
    assert_eq!(tcp_loose(), "1", "a clean stop must give nf_conntrack_tcp_loose back its earlier value");
}

/// The validator as its own service in the target-side namespace: the same
/// approval flow passes through it (login check and every decision), and
/// its store is the one administered.
#[test]
fn a_remote_validator_decides_through_mutual_tls() {
    let s = Setup::new("remote", "drop", 3000, "validator = \"{target}:4434\"\nvalidator_credentials = \"{dir}/link\"");
    let link = s.dir.join("link");
    run_ok(
        s.ackgate(&["validator", "credentials", "--out", &link.display().to_string()]),
        None,
        "validator credentials",
    );
    let vstore = s.dir.join("validator.db");
    let vconfig = s.dir.join("validator.toml");
    std::fs::write(
        &vconfig,
        format!(
            "[validator]\nlisten = \"{}:4434\"\nstore = \"{}\"\ncredentials = \"{}\"\n",
            s.topo.target_addr,
            vstore.display(),
            link.display()
        ),
    )
    .expect("validator config");
    let ackgate = ackgate_tests::daemons::workspace_binary("ackgate");
    let mut vcmd = ackgate_tests::daemons::in_netns(s.topo.ns(Ns::Target), &ackgate);
    vcmd.args(["validator", "run", "--config"]).arg(&vconfig);
    let mut validator = Daemon::start(vcmd, "ackgate validator run", s.dir.join("validator.log"));
    validator.wait_for_log("validator up", WAIT);
    let users = |args: &[&str], input: Option<&str>| {
        let mut c = std::process::Command::new(&ackgate);
        c.arg("users").args(args).arg("--store").arg(&vstore);
        run_ok(c, input, &format!("users {args:?} --store"))
    };
    users(&["add", "alice", "--password-stdin"], Some("pw-remote\n"));

    let (_gateway, _agent) = s.start();
    s.login("alice", "pw-remote");
    s.curl(2);
    let first = s.decision(1);
    assert_eq!(first["decision"], "denied", "{first}");
    assert!(first["reason"].as_str().unwrap_or("").contains("unapproved machine"), "{first}");
    let pending: serde_json::Value =
        serde_json::from_slice(&users(&["pending", "--json"], None).stdout).expect("pending json");
    assert!(
        pending.as_array().is_some_and(|p| p.iter().any(|e| e["user"] == "alice")),
        "the attempt must be recorded in the validator's store: {pending}"
    );
    users(&["approve", "alice"], None);
    s.curl(2);
    let second = s.decision(2);
    assert_eq!(second["decision"], "authorized", "authorized through the remote validator: {second}");
    let local = s.ackgate(&["users", "list"]).output().expect("users list");
    assert!(
        String::from_utf8_lossy(&local.stderr).contains("remote validator"),
        "the gateway must point user administration to the validator"
    );
    // An agent's certificate is signed by the same CA, but the validator
    // talks to its one gateway only.
    let agent_state = s.dir.join("agent-state");
    let to = std::net::SocketAddr::new(s.topo.target_addr.into(), 4434);
    let answered = s.topo.run_in(Ns::Gateway, || agent_queries_validator(&link, &agent_state, to));
    assert!(!answered, "the validator must not answer a client holding an agent's certificate");
}

/// Connects to the validator with the agent's client certificate and
/// relays a login start; true if an answer came back.
fn agent_queries_validator(link: &std::path::Path, agent_state: &std::path::Path, to: std::net::SocketAddr) -> bool {
    use ackgate_common::proto::pake::LoginClient;
    use ackgate_common::proto::{Message, MessageCodec, Relay, RelayStep};
    use futures_util::{SinkExt, StreamExt};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(link.join("ca.pem")).expect("ca")).expect("root");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(agent_state.join("client.pem")).expect("agent cert")],
                PrivateKeyDer::from_pem_file(agent_state.join("client.key")).expect("agent key"),
            )
            .expect("client config");
        let tcp = tokio::net::TcpStream::connect(to).await.expect("tcp to the validator");
        let name = ServerName::try_from("validator.ackgate.invalid").expect("name");
        let Ok(tls) = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await else {
            return false;
        };
        let mut conn = tokio_util::codec::Framed::new(tls, MessageCodec::default());
        let (_, start) = LoginClient::start("alice", 0, "x").expect("client start");
        let step = RelayStep::Start { start, agent_id: 1, source: "10.0.0.2".into() };
        if conn.send(Message::Relay(Relay { request_id: 1, step })).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(Duration::from_secs(3), conn.next()).await, Ok(Some(Ok(_))))
    })
}

/// `services add|remove` edit the config and the running gateway applies
/// them at once: a new port is gated, a removed one is not.
#[test]
fn services_are_added_and_removed_on_a_running_gateway() {
    let s = Setup::new("services", "drop", 3000, "");
    let mut gateway = Daemon::start(s.ackgate(&["run"]), "ackgate run", s.dir.join("gateway.log"));
    gateway.wait_for_log("agent listener up", start_wait());
    let counter = |reason: &str| s.gate_counter(reason);
    let vip = s.topo.edge_addr.to_string();
    let probe = || {
        let url = format!("http://{vip}:9443/");
        s.topo.cmd(Ns::Client, &["curl", "-s", "-m", "1", "-o", "/dev/null", &url]);
    };
    let target = format!("{}:9443", s.topo.target_addr);
    let out = run_ok(
        s.ackgate(&["services", "add", "admin", "--vip", &vip, "--port", "9443", "--target", &target]),
        None,
        "services add",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("now protects 2 service(s)"), "{out:?}");
    let listed = run_ok(s.ackgate(&["services", "list", "--json"]), None, "services list");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("\"admin\""), "{listed:?}");
    let cookies = counter("syn_cookie");
    probe();
    assert!(counter("syn_cookie") > cookies, "the added port must be gated (cookie SYN/ACK)");

    run_ok(s.ackgate(&["services", "remove", "admin"]), None, "services remove");
    let (cookies, passed) = (counter("syn_cookie"), counter("pass_not_service"));
    probe();
    assert_eq!(counter("syn_cookie"), cookies, "a removed port must no longer be gated");
    assert!(counter("pass_not_service") > passed, "its SYN must pass to the stack");
    let bad =
        s.ackgate(&["services", "add", "x", "--vip", &vip, "--port", "0", "--target", &target]).output().expect("run");
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("port 0"), "{bad:?}");
}

/// A thief on the client's segment holds a copy of the enrolled agent's
/// MAC key and stamps valid handshakes while the real agent is logged in as
/// an approved user. The gate accepts the stamps (the MAC is right), but the
/// agent never stamped those handshakes and says so: every one is denied,
/// recorded against the agent and counted; none is authorized.
#[test]
fn a_stolen_key_alone_authorizes_nothing() {
    let s = Setup::new("stolen", "reset", 3000, "");
    let (_gateway, _agent) = s.start_approved("alice");
    let (code, body) = s.fetch(5);
    assert_eq!(code, 0, "the real agent's own flow must go through: {body}");
    let enrollment = StateDir::new(&s.dir.join("agent-state")).load().expect("the agent's enrollment");
    let (agent_id, key) = (enrollment.info.agent_id, enrollment.mac_key);
    let thief = s.topo.neighbour();
    const TRIES: u16 = 3;
    for i in 0..TRIES {
        let shook = thief.run_in(|| {
            stamped_handshake_as(agent_id, &key, thief.addr, 41000 + i, s.topo.edge_addr, PORT, Duration::from_secs(5))
        });
        assert!(shook.is_some(), "the gate must answer the thief's SYN {i} with its SYN/ACK");
    }
    let from_thief =
        |r: &serde_json::Value| r["client"].as_str().is_some_and(|c| c.starts_with(&format!("{}:", thief.addr)));
    let rows = eventually(WAIT, "a decision on each of the thief's flows", || {
        let rows: Vec<_> = s.access_log().into_iter().filter(from_thief).collect();
        (rows.len() == usize::from(TRIES)).then_some(rows)
    });
    for r in &rows {
        assert_eq!(r["decision"], "denied", "a stolen key must not authorize: {r}");
        assert!(r["reason"].as_str().is_some_and(|w| w.contains("suspected stolen key")), "reason: {r}");
    }
    let shown = s.json(&["agents", "show", &agent_id.to_string(), "--json"]);
    let misuse = &shown["key_misuse"][0];
    assert_eq!(misuse["source"], thief.addr.to_string(), "the thief's address must be recorded: {shown}");
    assert_eq!(misuse["count"], TRIES, "every stolen-key flow must be recorded: {shown}");
    let status = s.json(&["status", "--json"]);
    assert_eq!(status["control_plane"]["not_stamped"], TRIES, "the gateway must count them: {status}");
    let agent = s.agent_status();
    assert_eq!(agent["session"]["profile_refusals"], TRIES, "the agent must count its refusals: {agent}");
    assert!(!s.access_log().iter().any(|r| from_thief(r) && r["decision"] == "authorized"));
}

/// `agents revoke` on a running gateway: the agent's live flow gets a RST,
/// its session ends, its certificate is refused at the next TLS handshake,
/// and its stamps no longer pass the gate.
#[test]
fn a_revoked_agent_loses_its_flows_its_session_and_its_key() {
    let s = Setup::new("agrevoke", "reset", 3000, "");
    let (_gateway, _agent) = s.start_approved("alice");
    let agents = s.json(&["agents", "list", "--json"]);
    let id = agents[0]["agent_id"].as_u64().unwrap_or_else(|| panic!("agents list names the agent: {agents}"));
    let (read, said) = std::thread::scope(|scope| {
        let client = scope.spawn(|| s.idle_client(Duration::from_secs(20)).0);
        assert_eq!(s.decision(2)["decision"], "authorized", "the flow must be authorized before the revocation");
        let out = run_ok(s.ackgate(&["agents", "revoke", &id.to_string()]), None, "agents revoke");
        (client.join().expect("client thread"), String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(said.contains("ended 1 live flow(s) and the agent's session"), "agents revoke said: {said}");
    assert_eq!(read, Err(std::io::ErrorKind::ConnectionReset), "the agent's live flow must be reset");
    let refused = eventually(WAIT, "the agent's reconnect to be refused in the TLS handshake", || {
        let agent = s.agent_status();
        let error = agent["session"]["last_error"].as_str().unwrap_or("").to_owned();
        (agent["session"]["connects"] == 1 && error.contains("CertificateRevoked")).then_some(error)
    });
    assert!(refused.contains("CertificateRevoked"), "{refused}");
    let before = s.gate_counter("ack_unknown_agent");
    assert_ne!(s.curl(2), 0, "a revoked agent's stamp must not open the service");
    assert!(s.gate_counter("ack_unknown_agent") > before, "the gate must no longer know the agent's key");
    let shown = s.json(&["agents", "show", &id.to_string(), "--json"]);
    assert_eq!(shown["revoked"], true, "{shown}");
}

/// An agent revoked while the gateway is down: at start the gate's pinned
/// key map is rebuilt from the store, so the revoked key does not survive.
#[test]
fn a_key_revoked_while_the_gateway_is_down_does_not_survive_its_restart() {
    let s = Setup::new("keysync", "reset", 3000, "");
    run_ok(s.ackgate(&["users", "add", "alice", "--password-stdin"]), Some("pw\n"), "users add");
    let (gateway, _agent) = s.start();
    s.login("alice", "pw");
    s.curl(2);
    assert_eq!(s.decision(1)["decision"], "denied", "the agent's key must pass the gate before the revocation");
    let agents = s.json(&["agents", "list", "--json"]);
    let id = agents[0]["agent_id"].as_u64().unwrap_or_else(|| panic!("agents list names the agent: {agents}"));
    drop(gateway);
    let out = run_ok(s.ackgate(&["agents", "revoke", &id.to_string()]), None, "agents revoke (gateway down)");
    assert!(String::from_utf8_lossy(&out.stdout).contains("when it starts"), "{out:?}");
    let _restarted = s.start_gateway();
    let before = s.gate_counter("ack_unknown_agent");
    assert_ne!(s.curl(2), 0, "a revoked agent's stamp must not open the service");
    assert!(s.gate_counter("ack_unknown_agent") > before, "the revoked key must be gone from the pinned map");
    assert_eq!(s.access_log().len(), 1, "no flow of the revoked agent may reach the control plane");
}

/// A local account of the client machine that is not root, and another.
const BOB_UID: u32 = 1001;
/// A local account logged in as a potential user (kill -9 test).
const MALLORY_UID: u32 = 1003;
const CAROL_UID: u32 = 1002;

/// Logins are per local account: root's login as alice stamps root's
/// connections only. Another account reaches nothing (its handshake ACK
/// leaves unstamped and no decision is even asked for) until it logs in
/// for itself, over the same control socket, as its own user; its flows
/// then go out as that user, and its logout ends that and nothing else.
#[test]
fn each_local_account_reaches_the_service_only_as_its_own_user() {
    let s = Setup::new("accounts", "drop", 3000, "");
    let (_gateway, _agent) = s.start_approved("alice");
    run_ok(s.ackgate(&["users", "add", "bob", "--password-stdin"]), Some("pw-bob\n"), "users add");
    let unstamped = s.gate_counter("ack_no_option");
    let records = s.access_log().len();
    let (code, _) = s.fetch_as(BOB_UID, 2);
    assert_ne!(code, 0, "an account without a login must reach nothing, not ride on root's login");
    assert!(s.gate_counter("ack_no_option") > unstamped, "its handshake ACK must leave unstamped");
    assert_eq!(s.access_log().len(), records, "an unstamped flow asks for no decision: {:?}", s.access_log());
    let skipped = &s.agent_status()["counters"];
    assert!(
        skipped.as_array().is_some_and(|c| c.iter().any(|l| l[0] == "skip_no_account")),
        "the stamper must count the account it skipped: {skipped}"
    );

    let refused = s.agent_as(BOB_UID, &["logout", "--account", "0"]).output().expect("run ackgate-agent");
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("only root"),
        "an account must not log another out: {refused:?}"
    );
    let out = run_ok(
        s.agent_as(BOB_UID, &["login", "--user", "bob", "--password-stdin"]),
        Some("pw-bob\n"),
        "ackgate-agent login as another account",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("logged in as bob"), "{out:?}");
    s.fetch_as(BOB_UID, 2);
    let denied = s.decision(records + 1);
    assert_eq!((&denied["user"], &denied["account"]), (&"bob".into(), &BOB_UID.into()), "{denied}");
    assert!(denied["reason"].as_str().is_some_and(|r| r.contains("unapproved machine")), "{denied}");
    run_ok(s.ackgate(&["users", "approve", "bob"]), None, "users approve bob");
    let (code, body) = s.fetch_as(BOB_UID, 5);
    assert!(code == 0 && body.starts_with(GREETING), "bob's own login must open the service: {code} {body}");
    let bob = s.decision(records + 2);
    assert_eq!(
        (&bob["decision"], &bob["user"], &bob["account"]),
        (&"authorized".into(), &"bob".into(), &BOB_UID.into())
    );
    let (code, _) = s.fetch_as(CAROL_UID, 2);
    assert_ne!(code, 0, "a third account, without a login, still reaches nothing");

    let (code, _) = s.fetch(5);
    assert_eq!(code, 0, "root's connections still go out as alice");
    let root = s.access_log().into_iter().rev().find(|r| r["decision"] == "authorized").expect("root's decision");
    assert_eq!((&root["user"], &root["account"]), (&"alice".into(), &0.into()), "{root}");

    run_ok(s.agent_as(BOB_UID, &["logout"]), None, "ackgate-agent logout as another account");
    let records = s.access_log().len();
    let (code, _) = s.fetch_as(BOB_UID, 2);
    assert_ne!(code, 0, "after its logout the account reaches nothing again");
    let (code, _) = s.fetch(5);
    assert_eq!(code, 0, "bob's logout must leave root's login alone");
    let after: Vec<_> = s.access_log().into_iter().skip(records).collect();
    assert!(
        after.iter().all(|r| r["user"] == "alice"),
        "only root's flow may be decided after bob's logout: {after:?}"
    );
}

/// Single-user mode (`login_scope = "machine"`): root's one login covers
/// every local account, whose flows go out as that user.
#[test]
fn a_machine_wide_login_covers_every_local_account() {
    let s = Setup::new("machine", "drop", 3000, "");
    s.machine_wide_logins();
    let (_gateway, _agent) = s.start_approved("alice");
    let (code, body) = s.fetch_as(BOB_UID, 5);
    assert!(code == 0 && body.starts_with(GREETING), "any account rides on the machine's login: {code} {body}");
    let d = s.decision(2);
    assert_eq!((&d["decision"], &d["user"]), (&"authorized".into(), &"alice".into()), "{d}");
    assert!(d.get("account").is_none(), "a machine-wide login names no account: {d}");
    let refused = s.agent_as(BOB_UID, &["login", "--user", "bob", "--password-stdin"]).output().expect("run");
    assert!(!refused.status.success(), "only root logs in under a machine-wide login: {refused:?}");
}

/// A million flows in the flow map: the census counts them and a
/// revocation walks them off the event loop, so the daemon keeps answering
/// meanwhile. The worst wait for a status answer while both run is the
/// event loop's worst stall.
#[test]
fn a_million_flows_leave_the_event_loop_responsive() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use ackgate_common::abi::{FLOW_AUTHORIZED, FlowKey, PendingFlow};
    use ackgate_gateway::admin_socket::{AdminReply, AdminRequest};
    use ackgate_gateway::owner::owner;
    // The VM's emulated CPU fills and walks a tenth of it.
    let flows: u32 = if ackgate_tests::emulated() { 100_000 } else { 1_000_000 };
    const REVOKED: u16 = 100;
    let s = Setup::with_gateway("stall", "reset", 3000, "census_interval_ms = 200", "max_flows = 1048576", "");
    let _gateway = s.start_gateway();
    let vip = s.topo.edge_addr.octets();
    let authorized = |client: [u8; 4], port: u16, user: &str| {
        let key = FlowKey::ipv4(client, vip, port.to_be_bytes(), PORT.to_be_bytes());
        let flow =
            PendingFlow { owner: owner(user, &[0x5a; 32]), agent_id: 7, state: FLOW_AUTHORIZED, ..Default::default() };
        (key, flow)
    };
    let started = Instant::now();
    let bob = (0..flows).map(|i| {
        let [_, a, b, c] = i.to_be_bytes();
        authorized([10, 100 + a, b, c], 40000, "bob")
    });
    let carol = (0..REVOKED).map(|i| authorized(s.topo.client_addr.octets(), 50000 + i, "carol"));
    s.plant_flows(bob.chain(carol).collect());
    let planted = s.flow_map().len();
    eprintln!("planted {planted} flows in {:?}", started.elapsed());
    assert_eq!(planted, flows as usize + usize::from(REVOKED), "every planted flow must be in the map");

    let polling = AtomicBool::new(true);
    let (worst, polls, revocation, reply) = std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let (mut worst, mut polls) = (Duration::ZERO, 0u32);
            while polling.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let reply = s.admin(&AdminRequest::Status);
                assert!(matches!(reply, AdminReply::Status(_)), "status must answer: {reply:?}");
                worst = worst.max(asked.elapsed());
                polls += 1;
            }
            (worst, polls)
        });
        // Whatever happens below, the poller stops (else a failed check
        // would leave the scope waiting for it).
        struct StopPolling<'a>(&'a AtomicBool);
        impl Drop for StopPolling<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        let stop = StopPolling(&polling);
        // A scrape reads the census (it walked the whole map before).
        let scrape = s.metrics();
        assert!(scrape.contains("ackgate_flows{"), "the scrape must report flows by state: {scrape}");
        let asked = Instant::now();
        let reply = s.admin(&AdminRequest::EndFlows { user: "carol".into(), machine: None });
        let revocation = asked.elapsed();
        // Census walks go on meanwhile (every 200 ms): a few more polls.
        let census_walks = Instant::now();
        while census_walks.elapsed() < Duration::from_secs(1) {
            std::thread::yield_now();
        }
        drop(stop);
        let (worst, polls) = poller.join().expect("status poller");
        (worst, polls, revocation, reply)
    });
    let walk = s.metrics();
    eprintln!(
        "{flows} flows: revocation answered in {revocation:?}; worst status wait {worst:?} over {polls} polls; \
         census walk: {}",
        walk.lines().find(|l| l.starts_with("ackgate_flow_census_walk_seconds ")).unwrap_or("(not reported)")
    );
    assert!(
        matches!(reply, AdminReply::Ended(n) if n == usize::from(REVOKED)),
        "the revocation must end carol's {REVOKED} flows: {reply:?}"
    );
    // A loop that walked the map itself would hold every request for the
    // whole walk. Off the loop, a status answer waits only for a share of
    // the CPUs: under 250 ms here, or (the VM's emulated CPUs, where the
    // walks, the daemon and this poller share two slow ones) under half
    // the revocation's own time.
    assert!(
        worst < Duration::from_millis(250) || worst < revocation / 2,
        "the event loop stalled {worst:?} (worst status wait over {polls} polls) while a revocation walked \
         {flows} flows in {revocation:?} and the census counted them"
    );
    let expected = format!("ackgate_flows{{state=\"authorized\"}} {flows}\n");
    eventually(WAIT, "a census of bob's flows alone", || {
        let scrape = s.metrics();
        scrape.contains(&expected).then_some(()).or_else(|| {
            eprintln!("{}", scrape.lines().filter(|l| l.starts_with("ackgate_flow")).collect::<Vec<_>>().join("\n"));
            None
        })
    });
    let revoked = s.access_log().iter().filter(|r| r["decision"] == "revoked").count();
    assert_eq!(revoked, usize::from(REVOKED), "every revoked flow is in the access log");
}
