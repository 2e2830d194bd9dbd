//! Prometheus metrics over HTTP (`[control] metrics_listen`): gate verdicts
//! by reason (read from the pinned counters at each scrape), flows by state
//! and evictions (from the latest census, `census`),
//! decisions by outcome, decision and validation latency histograms, the
//! splice's flows and bytes, the agent listener's counters, and the login
//! table's (when the logins run in the gateway).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::agents::AgentServer;
use crate::census::FlowCensus;
use crate::store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Event {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: String,
}

/// Metrics the control plane updates as it decides.
pub struct Metrics {
    registry: Registry,
    decisions: Family<Outcome, Counter>,
    latency: Histogram,
    validation: Histogram,
    spliced: Counter,
    ended: Family<Reason, Counter>,
    bytes: Family<Direction, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ackgate");
        let decisions = Family::<Outcome, Counter>::default();
        registry.register("decisions", "Flows decided, by outcome (authorized, denied, timed_out)", decisions.clone());
        // 0.5 ms .. ~16 s.
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register("decision_latency_seconds", "From the gate's event to the decision", latency.clone());
        let validation = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register("validation_latency_seconds", "Time the validator took per decision", validation.clone());
        let spliced = Counter::default();
        registry.register(
            "flows_spliced",
            "Authorized flows whose target connection the gate completed",
            spliced.clone(),
        );
        let ended = Family::<Reason, Counter>::default();
        registry.register(
            "flows_ended",
            "Spliced flows ended, by reason (fin, rst_client, rst_target, idle, revoked, target_refused, target_unreachable, target_timeout)",
            ended.clone(),
        );
        let bytes = Family::<Direction, Counter>::default();
        registry.register("spliced_bytes", "IP bytes of ended spliced flows, by direction", bytes.clone());
        Self { registry, decisions, latency, validation, spliced, ended, bytes }
    }
}

impl Metrics {
    /// One decision: its outcome, its latency from the gate's event, and
    /// the validator's share (zero when no profile arrived).
    pub fn decision(&self, outcome: &str, latency: Duration, validation: Duration) {
        self.decisions.get_or_create(&Outcome { outcome: outcome.to_owned() }).inc();
        self.latency.observe(latency.as_secs_f64());
        if !validation.is_zero() {
            self.validation.observe(validation.as_secs_f64());
        }
    }

    /// A flow spliced to its target.
    pub fn spliced(&self) {
        self.spliced.inc();
    }

    /// A spliced flow ended: why, and what it carried each way.
    pub fn flow_ended(&self, reason: &str, to_target: u64, to_client: u64) {
        self.ended.get_or_create(&Reason { reason: reason.to_owned() }).inc();
        self.bytes.get_or_create(&Direction { direction: "to_target".into() }).inc_by(to_target);
        self.bytes.get_or_create(&Direction { direction: "to_client".into() }).inc_by(to_client);
    }

    /// The full exposition: live values read now, then the accumulated ones.
    fn render(&self, live: &Live) -> String {
        let Live { pin_dir, server, store, census } = live;
        let mut now = Registry::with_prefix("ackgate");
        let gate = Family::<Reason, Counter>::default();
        now.register("gate_packets", "Packets the XDP gate handled, by verdict reason", gate.clone());
        if let Ok(c) = crate::counters::from_pin_dir(pin_dir) {
            for (reason, n) in c.labelled() {
                gate.get_or_create(&Reason { reason: reason.to_owned() }).inc_by(n);
            }
        }
        let flows = Family::<State, Gauge>::default();
        now.register("flows", "Flows in the gate's flow map, by state, at the latest census", flows.clone());
        for (name, n) in census.by_state() {
            flows.get_or_create(&State { state: name.to_owned() }).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let evicted = Counter::<u64>::default();
        evicted.inc_by(census.evicted());
        now.register(
            "flows_evicted",
            "Flows the full flow map evicted since start, as the latest census infers them (raise gateway.max_flows)",
            evicted,
        );
        let walk = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        walk.set(census.walk_time().as_secs_f64());
        now.register("flow_census_walk_seconds", "How long the latest census's walk of the flow map took", walk);
        let sessions = Gauge::<i64>::default();
        sessions.set(server.connected().len() as i64);
        now.register("agent_sessions", "Agents with a live session", sessions);
        let agent = Family::<Event, Counter>::default();
        now.register("agent_events", "Agent listener events since start", agent.clone());
        let s = &server.stats;
        for (name, v) in [
            ("enrolled", &s.enrolled),
            ("accept_errors", &s.accept_errors),
            ("unauthenticated_refused", &s.unauthenticated_refused),
            ("enroll_refused", &s.enroll_refused),
            ("sessions_opened", &s.sessions_opened),
            ("sessions_refused", &s.sessions_refused),
            ("bad_frames", &s.bad_frames),
            ("logins_accepted", &s.logins_accepted),
            ("logins_refused", &s.logins_refused),
            ("logins_throttled", &s.logins_throttled),
            ("logins_locked", &s.logins_locked),
            ("logins_unavailable", &s.logins_unavailable),
            ("answers_refused", &s.answers_refused),
            ("not_stamped", &s.not_stamped),
            ("not_logged_in", &s.not_logged_in),
            ("serial_mismatches", &s.serial_mismatches),
            ("certificates_renewed", &s.certificates_renewed),
            ("logouts", &s.logouts),
        ] {
            agent.get_or_create(&Event { event: name.to_owned() }).inc_by(v.load(Ordering::Relaxed));
        }
        let not_recorded = Counter::<u64>::default();
        not_recorded.inc_by(store.attempts_not_recorded());
        now.register(
            "attempts_not_recorded",
            "New attempts not kept for approval: their agent (or the store) held as many as it may",
            not_recorded,
        );
        let unauthenticated = Gauge::<i64>::default();
        unauthenticated.set(i64::try_from(server.unauthenticated()).unwrap_or(i64::MAX));
        now.register(
            "agent_unauthenticated_connections",
            "Agent-listener connections before their first authenticated message (bounded by max_unauthenticated)",
            unauthenticated,
        );
        if let Some(t) = server.login_table() {
            let entries = Gauge::<i64>::default();
            entries.set(i64::try_from(t.entries).unwrap_or(i64::MAX));
            now.register("login_table_entries", "Logins under way and accepted (bounded; see login_events)", entries);
            let events = Family::<Event, Counter>::default();
            now.register("login_events", "Login table events since start", events.clone());
            for (name, v) in [("evicted", t.evicted), ("unknown_steps", t.unknown_steps), ("malformed", t.malformed)] {
                events.get_or_create(&Event { event: name.to_owned() }).inc_by(v);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &now);
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// What a scrape reads besides the accumulated metrics.
pub struct Live {
    /// The gate's pinned maps (its verdict counters).
    pub pin_dir: PathBuf,
    pub server: Arc<AgentServer>,
    pub store: Arc<Store>,
    /// Flows by state: counted off the event loop, never in a scrape.
    pub census: Arc<FlowCensus>,
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, live: Live) -> std::io::Result<()> {
    let live = Arc::new(live);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let (metrics, live) = (metrics.clone(), live.clone());
            async move {
                let body = metrics.render(&live);
                ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
            }
        }),
    );
    axum::serve(listener, app).await
}
