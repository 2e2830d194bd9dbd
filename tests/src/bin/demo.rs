//! `cargo xtask demo`: the whole product on a fresh client / gateway /
//! target topology, told in plain words: the real `ackgate` and
//! `ackgate-agent` daemons, an unknown client, an enrolled user, an
//! approval, and what the gateway saw.

use ackgate_tests::daemons::run_ok;
use ackgate_tests::deployment::{PORT, Setup};
use ackgate_tests::topology::Ns;

/// curl's exit code in words.
fn outcome(code: i32) -> &'static str {
    match code {
        0 => "answered",
        7 => "connection refused",
        28 => "no answer (timed out): the gate holds or drops it",
        52 | 56 => "connection reset",
        _ => "failed",
    }
}

fn main() {
    println!("Building a topology: client -- gateway (XDP gate on its edge) -- target ...");
    let s = Setup::new("demo", "drop", 3000, "");
    let vip = s.topo.edge_addr;
    println!("  client {}  ->  VIP {vip}:{PORT} (protected, default response: drop)", s.topo.client_addr);
    println!("  `ackgate init` created the gateway's CA and user store\n");

    run_ok(s.ackgate(&["users", "add", "alice", "--password-stdin"]), Some("correct horse\n"), "users add");
    println!("1. The administrator adds user alice (`ackgate users add alice`).");

    let _gateway = s.start_gateway();
    println!("2. `ackgate run` is up. A machine without an agent tries VIP:{PORT}:");
    println!("   -> {}", outcome(s.curl(2)));

    let agent = s.start_agent();
    println!("3. Alice's machine redeemed an invite (`ackgate-agent enroll`) and runs");
    println!("   `ackgate-agent run`: its TC program stamps her handshakes.");
    s.login("alice", "correct horse");
    println!("4. Alice logs in on her machine (`ackgate-agent login`).");

    s.curl(2);
    let first = s.decision(1);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    println!("5. Her first connect from this machine: {} ({})", text(&first["decision"]), text(&first["reason"]));
    println!("   `ackgate users pending` lists her machine for approval.");
    run_ok(s.ackgate(&["users", "approve", "alice"]), None, "users approve");
    println!("6. The administrator approves it (`ackgate users approve alice`).");
    let (code, page) = s.fetch(5);
    let second = s.decision(2);
    println!(
        "7. Her next connect: {} in {:.1} ms ({}); the gateway spliced it to the hidden",
        text(&second["decision"]),
        second["latency_ms"].as_f64().unwrap_or(0.0),
        text(&second["reason"])
    );
    println!("   target {}:{PORT} in XDP. curl {} and fetched:", s.topo.target_addr, outcome(code));
    println!("   | {}", page.trim_end());
    println!("   (the target saw her real address, {})", s.topo.client_addr);
    let ended = s.decision(3);
    println!(
        "8. curl closed the connection: the flow {} ({}), {} bytes to the target, {} back.\n",
        text(&ended["decision"]),
        text(&ended["flow_end"]["ended"]),
        ended["flow_end"]["to_target"]["bytes"],
        ended["flow_end"]["to_client"]["bytes"]
    );
    println!("`ackgate flows` (an idle spliced flow of alice's is open meanwhile):");
    let flows = std::thread::scope(|scope| {
        let idle = scope.spawn(|| s.idle_client(std::time::Duration::from_secs(2)));
        ackgate_tests::daemons::eventually(ackgate_tests::deployment::WAIT, "the idle flow's splice", || {
            s.live_flows().iter().any(|f| f["state"] == "spliced").then_some(())
        });
        let flows = run_ok(s.ackgate(&["flows"]), None, "flows");
        let _ = idle.join();
        flows
    });
    print!("{}", String::from_utf8_lossy(&flows.stdout));
    println!("\n`ackgate status` (gate verdicts by reason, flows, control plane):");
    let status = run_ok(s.ackgate(&["status"]), None, "status");
    print!("{}", String::from_utf8_lossy(&status.stdout));
    let agent_status =
        s.agent(&["status"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    println!("\n`ackgate-agent status`:\n{agent_status}");
    drop(agent);
    println!("Alice's agent stops (SIGTERM; its stamper detaches), so her machine is one without");
    println!("an agent now. The same curl: -> {}\n", outcome(s.curl(2)));
    let opens = s.topo.nstat(Ns::Target, &["TcpPassiveOpens"])["TcpPassiveOpens"];
    let peers = s.target.peers();
    println!("Connections the target accepted: {opens}, all from {:?}:", s.topo.client_addr);
    println!("   {peers:?}");
    println!("   (alice's; nothing of the machine without an agent reached it).");
    println!("Tearing the topology down.");
}
