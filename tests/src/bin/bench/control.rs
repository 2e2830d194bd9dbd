//! The control plane: logins per second (OPAQUE, both halves and the
//! gateway's half alone) next to the argon2id password check logins used to
//! be; validator lookups against 100,000 users next to a bare SQLite
//! primary-key lookup on the same database; authorizations per
//! second end to end (real daemons, many concurrent connects from the
//! client namespace); and the gateway daemon's memory with many flows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ackgate_common::proto::pake::LoginClient;
use ackgate_common::proto::{FlowSummary, LoginGrant, LoginStep, Profile, ProfileRequest, profile_proof};
use ackgate_gateway::agents::ProfileOutcome;
use ackgate_gateway::logins::{LoginAuthority, Logins, login_here, register, user_credential_id};
use ackgate_gateway::store::Store;
use ackgate_gateway::validator::{ServiceRule, Validator, Verdict};
use ackgate_tests::daemons::eventually;
use ackgate_tests::deployment::{PORT, Setup};
use ackgate_tests::topology::Ns;

use crate::rss_kib;

const USERS: u32 = 100_000;
const CONNECTS: usize = 2000;
const CONCURRENCY: usize = 256;
const PENDING: usize = 10_000;
const MANY: usize = 100_000;
/// Source ports of the 100,000-connect run, below the ephemeral range.
const FIRST_SOURCE_PORT: u16 = 20_000;

fn machine(i: u32) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[..4].copy_from_slice(&i.to_be_bytes());
    m
}

/// Pseudo-random user indices (a full-period LCG), so lookups do not walk
/// the B-tree in order.
fn order(n: u32) -> impl Iterator<Item = u32> {
    let mut x: u32 = 12345;
    (0..n).map(move |_| {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        x % USERS
    })
}

/// Users logged in for the validator bench: each login costs the agent's
/// argon2id run, so lookups cycle over these (every one a full decision:
/// proof, user, machine, groups).
const LOGGED_IN: u32 = 64;
const LOGINS: u32 = 40;

fn request(i: u32) -> ProfileRequest {
    let flow = FlowSummary {
        client: std::net::SocketAddr::from(([10, 0, 0, 2], (i % 60_000) as u16)),
        service: std::net::SocketAddr::from(([10, 0, 0, 1], 443)),
        client_isn: i,
        server_isn: !i,
    };
    ProfileRequest { request_id: u64::from(i), nonce: [7; 16], flow }
}

/// Logins per second: the whole OPAQUE exchange in one process (the
/// agent's argon2id included), the gateway's half of it alone, and the
/// argon2id check of a sent password that logins were before, all in this
/// run.
pub fn logins_bench() {
    use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
    let store = Arc::new(Store::open(std::path::Path::new(":memory:")).expect("store"));
    store.add_user("alice", "correct horse", &[]).expect("user");
    let logins = Logins::new(store.login_setup().expect("setup"), store.clone());

    let start = Instant::now();
    for _ in 0..LOGINS {
        let done = login_here(&logins, "alice", "correct horse", 1);
        assert_eq!(done.grant, LoginGrant::User, "the right password logs in");
        logins.end(done.login.expect("a login id"));
    }
    let whole = start.elapsed().as_secs_f64();

    let mut gateway = Duration::ZERO;
    for _ in 0..LOGINS {
        let (client, start_msg) = LoginClient::start("alice", 0, "correct horse").expect("client start");
        let t = Instant::now();
        let LoginStep::Challenge { login, credential_response } = logins.begin(&start_msg, 1, "10.0.0.2") else {
            panic!("alice has a record")
        };
        gateway += t.elapsed();
        let done = client.finish(&credential_response).expect("client finish");
        let t = Instant::now();
        assert_eq!(logins.finish(login, &done.message), LoginStep::Done(LoginGrant::User));
        logins.end(login);
        gateway += t.elapsed();
    }

    let salt = SaltString::encode_b64(&[3; 16]).expect("salt");
    let phc = argon2::Argon2::default().hash_password(b"correct horse", &salt).expect("hash").to_string();
    let start = Instant::now();
    for _ in 0..LOGINS {
        let hash = PasswordHash::new(&phc).expect("PHC string");
        assert!(argon2::Argon2::default().verify_password(b"correct horse", &hash).is_ok());
    }
    let argon2_check = start.elapsed().as_secs_f64();

    let per_sec = |secs: f64| f64::from(LOGINS) / secs;
    println!("logins_opaque_whole_per_sec: {:.1}", per_sec(whole));
    println!("logins_opaque_gateway_half_per_sec: {:.0}", per_sec(gateway.as_secs_f64()));
    println!("logins_argon2_password_check_per_sec: {:.1}", per_sec(argon2_check));
    println!("logins_gateway_cost_ratio_opaque_to_argon2: {:.3}", gateway.as_secs_f64() / argon2_check);
}

pub fn validator_bench() {
    let dir = std::env::temp_dir().join(format!("ackgate-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("users.db");
    let store = Arc::new(Store::open(&path).expect("store"));
    // One record for all: what a lookup costs does not depend on it.
    let record = register(&store.login_setup().expect("setup"), "pw", &user_credential_id("user0")).expect("record");
    let users: Vec<(String, [u8; 32])> = (0..USERS).map(|i| (format!("user{i}"), machine(i))).collect();
    store.import_users(&users, &record, &["staff".to_owned()]).expect("import");
    let validator = Validator::new(store.clone()).expect("validator");
    let rule = ServiceRule { name: "intranet".into(), allow_groups: vec!["staff".into()] };
    let logged_in: Vec<(u32, u64, [u8; 32])> = order(LOGGED_IN)
        .map(|i| {
            let done = login_here(&validator, &format!("user{i}"), "pw", 1);
            assert_eq!(done.grant, LoginGrant::User, "user{i} logs in");
            (i, done.login.expect("login id"), done.proof_key.expect("proof key"))
        })
        .collect();

    let bare = rusqlite::Connection::open(&path).expect("second connection");
    let mut stmt = bare.prepare("SELECT opaque_record FROM users WHERE name = ?1").expect("prepare");
    let start = Instant::now();
    for n in order(USERS) {
        let (i, _, _) = logged_in[n as usize % logged_in.len()];
        let _: Vec<u8> = stmt.query_row([format!("user{i}")], |r| r.get(0)).expect("bare lookup");
    }
    let bare_secs = start.elapsed().as_secs_f64();

    let start = Instant::now();
    for n in order(USERS) {
        let (i, login, key) = logged_in[n as usize % logged_in.len()];
        let request = request(n);
        let mut profile = Profile {
            user: format!("user{i}"),
            account: 0,
            proof: [0; 32],
            machine: machine(i),
            install_serial: "s".into(),
        };
        profile.proof = profile_proof(&key, &request, &profile);
        let outcome = ProfileOutcome { agent_id: 1, profile, request, login: Some(login) };
        let v = validator.validate(&outcome, &rule, "10.0.0.2:1").expect("validate");
        assert_eq!(v, Verdict::Authorized, "every imported user on their machine must be authorized");
    }
    let validate_secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    println!("validator_users: {USERS}");
    println!("validator_logged_in_users: {LOGGED_IN}");
    println!("validator_bare_lookups_per_sec: {:.0}", USERS as f64 / bare_secs);
    println!("validator_lookups_per_sec: {:.0}", USERS as f64 / validate_secs);
    println!("validator_cost_ratio_to_bare_lookup: {:.2}", validate_secs / bare_secs);
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Opens `n` connections from the client namespace, at most CONCURRENCY
/// handshakes at a time, one every `pace` if given; returns them with each
/// connect()'s duration in ms. With `sources`, connection i comes from
/// `sources[i % len]`, port FIRST_SOURCE_PORT + i / len: every connection
/// is a 4-tuple of its own (the kernel's own port choice reuses ports of
/// reset sockets within a burst, and a reused 4-tuple replaces the flow the
/// gate held). Without, from the client's address and a kernel-chosen
/// port. With `keep` false each is reset (SO_LINGER 0) as soon as it is up:
/// the gate keeps the flow, the client no file descriptor.
fn connect_many(
    s: &Setup,
    n: usize,
    pace: Option<Duration>,
    sources: &[std::net::Ipv4Addr],
    keep: bool,
) -> (Vec<tokio::net::TcpStream>, Vec<f64>, tokio::runtime::Runtime) {
    let to = std::net::SocketAddr::new(s.topo.edge_addr.into(), PORT);
    let sources: Vec<std::net::Ipv4Addr> = sources.to_vec();
    s.topo.run_in(Ns::Client, || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let (conns, times) = rt.block_on(async {
            let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
            let mut tasks = Vec::with_capacity(n);
            let mut ticker = pace.map(tokio::time::interval);
            for i in 0..n {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let gate = gate.clone();
                let source = sources.get(i % sources.len().max(1)).map(|a| {
                    let port = usize::from(FIRST_SOURCE_PORT) + i / sources.len();
                    let port = u16::try_from(port).expect("enough source addresses for distinct ports");
                    std::net::SocketAddr::new((*a).into(), port)
                });
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire().await.expect("semaphore");
                    let t = Instant::now();
                    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                    if let Some(src) = source {
                        socket.bind(src).unwrap_or_else(|e| panic!("binding {src}: {e}"));
                    }
                    let c = socket.connect(to).await.expect("connect");
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    if keep {
                        (Some(c), ms)
                    } else {
                        let _ = c.set_zero_linger();
                        (None, ms)
                    }
                }));
            }
            let mut conns = Vec::with_capacity(n);
            let mut times = Vec::with_capacity(n);
            for t in tasks {
                let (c, ms) = t.await.expect("connect task");
                conns.extend(c);
                times.push(ms);
            }
            (conns, times)
        });
        (conns, times, rt)
    })
}

/// Up to the hard limit: the bursts keep thousands of sockets open.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub fn authorizations_bench() {
    raise_fd_limit();
    // A flow map with room for every flow of the run, so the figure below
    // is the memory of 100,000 authorized flows, not of what LRU kept.
    let s = Setup::with_gateway(
        "auth",
        "drop",
        30_000,
        "max_pending = 20000\nmax_pending_per_agent = 20000",
        "max_flows = 262144",
        "",
    );
    let (gateway, agent) = s.start_approved("alice");
    let idle_kib = rss_kib(gateway.pid() as u32);

    // A burst (as fast as CONCURRENCY handshakes in flight allow), then the
    // same number paced at the goal's rate of 2,000/s.
    let mut keep = Vec::new();
    let mut seen = 1;
    for (name, pace) in [("burst", None), ("paced_2000_per_sec", Some(Duration::from_micros(500)))] {
        let started_ms = std::time::SystemTime::UNIX_EPOCH.elapsed().expect("clock").as_millis() as f64;
        let (conns, mut connect_ms, rt) = connect_many(&s, CONNECTS, pace, &[], true);
        let records = eventually(Duration::from_secs(120), "every connect decided", || {
            let log = s.access_log();
            (log.len() >= seen + CONNECTS).then_some(log)
        });
        let decided = &records[seen..seen + CONNECTS];
        seen += CONNECTS;
        let authorized = decided.iter().filter(|r| r["decision"] == "authorized").count();
        let last_ms = decided.iter().filter_map(|r| r["at_unix_ms"].as_f64()).fold(0.0, f64::max);
        let mut latency: Vec<f64> = decided.iter().filter_map(|r| r["latency_ms"].as_f64()).collect();
        latency.sort_by(f64::total_cmp);
        connect_ms.sort_by(f64::total_cmp);
        let mean = |key: &str| decided.iter().filter_map(|r| r[key].as_f64()).sum::<f64>() / decided.len() as f64;
        // SYN to "authorized": the client's handshake plus the gate's event
        // to the decision (the event follows the handshake's last ACK).
        let mut total: Vec<f64> = connect_ms.iter().zip(&latency).map(|(a, b)| a + b).collect();
        total.sort_by(f64::total_cmp);
        println!("auth_{name}_connects: {CONNECTS} (at most {CONCURRENCY} handshakes in flight)");
        println!("auth_{name}_authorized: {authorized}");
        println!("auth_{name}_per_sec: {:.0} (goal >= 2000)", authorized as f64 / ((last_ms - started_ms) / 1000.0));
        println!("auth_{name}_handshake_ms_p50: {:.2}", percentile(&connect_ms, 0.5));
        println!("auth_{name}_handshake_ms_p99: {:.2}", percentile(&connect_ms, 0.99));
        println!("auth_{name}_event_to_decision_ms_p50: {:.2}", percentile(&latency, 0.5));
        println!("auth_{name}_event_to_decision_ms_p99: {:.2}", percentile(&latency, 0.99));
        println!("auth_{name}_syn_to_authorized_ms_p50_est: {:.2}", percentile(&total, 0.5));
        println!("auth_{name}_syn_to_authorized_ms_p99_est: {:.2} (goal < 10)", percentile(&total, 0.99));
        println!("auth_{name}_profile_ms_mean: {:.2}", mean("profile_ms"));
        println!("auth_{name}_validation_ms_mean: {:.2}", mean("validation_ms"));
        keep.push((conns, rt));
    }
    let busy_kib = rss_kib(gateway.pid() as u32);
    drop(keep);

    // Many authorized flows: 100,000 connects, each its own 4-tuple (ten
    // source addresses, 10,000 ports each); the gate keeps each flow after
    // the client resets it (no FIN/RST handling before the splice).
    let subnet = s.topo.client_addr.octets();
    let sources: Vec<std::net::Ipv4Addr> =
        (0..10).map(|i| std::net::Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 100 + i)).collect();
    for a in &sources {
        let cidr = format!("{a}/24");
        s.topo.cmd_ok(Ns::Client, &["ip", "addr", "add", &cidr, "dev", &s.topo.client_if]);
    }
    let before = s.access_log().len();
    let (many, _, rt_many) = connect_many(&s, MANY, None, &sources, false);
    // Until the decisions stop coming.
    let mut last = 0;
    loop {
        std::thread::sleep(Duration::from_secs(3));
        let now = s.access_log().len() - before;
        if now == last {
            break;
        }
        last = now;
    }
    let authorized = s.live_flows().len();
    let many_kib = rss_kib(gateway.pid() as u32);
    println!("control_connects: {MANY} more, decided {last}, authorized flows in the map {authorized}");
    println!("control_rss_with_{authorized}_authorized_kib: {many_kib}");
    drop(many);
    drop(rt_many);

    // Pending flows: the agent is frozen, so every stamped handshake waits
    // for its profile (the profile timeout is long here).
    // SAFETY: signalling the daemon this benchmark started.
    unsafe { libc::kill(agent.pid(), libc::SIGSTOP) };
    let (pending_conns, _, rt2) = connect_many(&s, PENDING, None, &[], true);
    let flows = eventually(Duration::from_secs(60), "the pending flows in the gate's map", || {
        let v = s.json(&["flows", "--json"]);
        let n = v.as_array()?.iter().filter(|f| f["state"] == "pending").count();
        (n >= PENDING).then_some(n)
    });
    let pending_kib = rss_kib(gateway.pid() as u32);
    println!("control_rss_idle_kib: {idle_kib}");
    println!("control_rss_after_{}_authorized_kib: {busy_kib}", 2 * CONNECTS);
    println!("control_rss_with_{flows}_pending_kib: {pending_kib}");
    // SAFETY: as above.
    unsafe { libc::kill(agent.pid(), libc::SIGCONT) };
    drop(pending_conns);
    drop(rt2);
}
