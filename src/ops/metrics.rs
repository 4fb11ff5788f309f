//! Every metric leadscore exports, in one place: names, units, help texts
//! and histogram buckets. Labels are bounded: reasons, output types, tier
//! names from the rules file, partitions; never a lead id.

use std::sync::{Arc, OnceLock};

use metrics::{
    describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Key, KeyName,
    Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub const EVENTS_CONSUMED: &str = "leadscore_events_consumed_total";
pub const EVENTS_SCORED: &str = "leadscore_events_scored_total";
/// Label `reason`: the dead-letter reason code.
pub const EVENTS_REJECTED: &str = "leadscore_events_rejected_total";
pub const EVENTS_DUPLICATE: &str = "leadscore_events_duplicate_total";
/// Events dropped because their lead was erased after their event time.
pub const EVENTS_ERASED: &str = "leadscore_events_erased_total";
/// Label `reason`: `user_agent`, `ip_range`, `burst` or `after_send`.
pub const EVENTS_FILTERED: &str = "leadscore_events_filtered_total";
pub const DEAD_LETTERS: &str = "leadscore_dead_letters_total";
/// Label `type`: `score_changed` or `threshold_crossed`.
pub const OUTPUTS: &str = "leadscore_outputs_total";
/// Labels `tier` (the tier entered) and `direction` (`up`, `down`).
pub const CROSSINGS: &str = "leadscore_threshold_crossings_total";
/// Label `result`: `committed` or `aborted`.
pub const TRANSACTIONS: &str = "leadscore_transactions_total";
pub const BATCH_MESSAGES: &str = "leadscore_batch_messages";
pub const BATCH_DURATION: &str = "leadscore_batch_duration_seconds";
pub const EVENT_LAG: &str = "leadscore_event_lag_seconds";
/// Label `partition`.
pub const CONSUMER_LAG: &str = "leadscore_consumer_lag_messages";
pub const LEADS: &str = "leadscore_leads";
pub const ACCOUNTS: &str = "leadscore_accounts";
pub const PARTITIONS: &str = "leadscore_partitions_assigned";
pub const RESTORE_DURATION: &str = "leadscore_changelog_restore_duration_seconds";
pub const RESTORED_LEADS: &str = "leadscore_changelog_restored_leads_total";
/// Leads and accounts restored from state written under other rules and
/// re-scored in place.
pub const RESCORED: &str = "leadscore_rules_rescored_total";
/// Label `change`: `reclaimed` (a restarted static member took its
/// partitions back without a rebalance), `assigned` or `revoked`.
pub const REBALANCES: &str = "leadscore_rebalances_total";
/// Labels: kind (merge_request, history, event).
pub const HANDOFFS: &str = "leadscore_identity_handoffs_total";
pub const MISROUTED: &str = "leadscore_events_misrouted_total";
pub const READY: &str = "leadscore_ready";
/// Labels `version` (of leadscore) and `rules_version`.
pub const BUILD_INFO: &str = "leadscore_build_info";
/// 1 for `run --shadow`, 0 for the live deployment.
pub const SHADOW: &str = "leadscore_shadow";
/// HTTP connections closed at once because `[http] max_connections` were
/// open.
pub const HTTP_CONNECTIONS_REFUSED: &str = "leadscore_http_connections_refused_total";

const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const LAG_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
    86400.0, 604800.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0,
];

/// The process's recorder, for [`with_score_label`].
static RECORDER: OnceLock<Arc<PrometheusRecorder>> = OnceLock::new();

/// Installs the Prometheus recorder for this process and describes every
/// metric; render the exposition with the returned handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = Arc::new(
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(BATCH_DURATION.into()), SECONDS_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(RESTORE_DURATION.into()), SECONDS_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(EVENT_LAG.into()), LAG_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(BATCH_MESSAGES.into()), BATCH_BUCKETS)?
            .build_recorder(),
    );
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder.clone())
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
    let _ = RECORDER.set(recorder);
    describe();
    start_at_zero();
    Ok(handle)
}

/// Runs `work` (a stream thread's) with every metric it records labelled
/// `score = name`: the scores of a rules file that a process runs side by
/// side keep series of their own. Without an installed recorder (tests,
/// benches), `work` runs as it is.
pub fn with_score_label<T>(name: &str, work: impl FnOnce() -> T) -> T {
    match RECORDER.get() {
        Some(recorder) => {
            let labelled = ScoreLabelled {
                inner: recorder.as_ref(),
                label: Label::new("score", name.to_string()),
            };
            metrics::with_local_recorder(&labelled, work)
        }
        None => work(),
    }
}

/// A recorder that adds one label to every series it registers.
struct ScoreLabelled<'r> {
    inner: &'r PrometheusRecorder,
    label: Label,
}

impl ScoreLabelled<'_> {
    fn key(&self, key: &Key) -> Key {
        key.with_extra_labels(vec![self.label.clone()])
    }
}

impl Recorder for ScoreLabelled<'_> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description)
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description)
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description)
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.inner.register_counter(&self.key(key), metadata)
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(&self.key(key), metadata)
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(&self.key(key), metadata)
    }
}

/// Series that exist from the start, at zero, so a rate over them is 0
/// rather than no data, and dashboards show them before the first event.
fn start_at_zero() {
    for name in [
        EVENTS_CONSUMED,
        EVENTS_SCORED,
        EVENTS_DUPLICATE,
        DEAD_LETTERS,
        RESTORED_LEADS,
        RESCORED,
        MISROUTED,
    ] {
        metrics::counter!(name).increment(0);
    }
    for kind in ["score_changed", "threshold_crossed"] {
        metrics::counter!(OUTPUTS, "type" => kind).increment(0);
    }
    for result in ["committed", "aborted"] {
        metrics::counter!(TRANSACTIONS, "result" => result).increment(0);
    }
    for change in ["reclaimed", "assigned", "revoked"] {
        metrics::counter!(REBALANCES, "change" => change).increment(0);
    }
    for kind in ["merge_request", "history", "event"] {
        metrics::counter!(HANDOFFS, "kind" => kind).increment(0);
    }
    metrics::counter!(HTTP_CONNECTIONS_REFUSED).increment(0);
    for name in [LEADS, ACCOUNTS, PARTITIONS, READY] {
        metrics::gauge!(name).set(0.0);
    }
}

fn describe() {
    describe_counter!(EVENTS_CONSUMED, "Input messages read from the input topic.");
    describe_counter!(EVENTS_SCORED, "Events applied to lead state.");
    describe_counter!(
        EVENTS_REJECTED,
        "Input messages or batch items not scored, by reason; each goes to the dead-letter topic."
    );
    describe_counter!(
        EVENTS_DUPLICATE,
        "Events skipped because their message id or input position was already applied."
    );
    describe_counter!(
        EVENTS_ERASED,
        "Events dropped because their lead was erased after their event time."
    );
    describe_counter!(
        EVENTS_FILTERED,
        "Events [filters] kept out of scores (bots, scanners), by reason."
    );
    describe_counter!(DEAD_LETTERS, "Records produced to the dead-letter topic.");
    describe_counter!(OUTPUTS, "Output events produced, by type.");
    describe_counter!(
        CROSSINGS,
        "Threshold crossings produced, by tier entered and direction."
    );
    describe_counter!(
        TRANSACTIONS,
        "Kafka transactions ended, by result (exactly_once mode)."
    );
    describe_histogram!(BATCH_MESSAGES, "Input messages per processed batch.");
    describe_histogram!(
        BATCH_DURATION,
        Unit::Seconds,
        "Time to process and commit one batch."
    );
    describe_histogram!(
        EVENT_LAG,
        Unit::Seconds,
        "Wall clock minus event time, when an event is scored."
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Input messages not yet processed, per assigned partition."
    );
    describe_gauge!(LEADS, "Leads held in state on this instance.");
    describe_gauge!(ACCOUNTS, "Accounts held in state on this instance.");
    describe_gauge!(PARTITIONS, "Input partitions assigned to this instance.");
    describe_histogram!(
        RESTORE_DURATION,
        Unit::Seconds,
        "Time to restore assigned partitions from the changelog."
    );
    describe_counter!(RESTORED_LEADS, "Leads restored from the changelog.");
    describe_counter!(
        RESCORED,
        "Leads and accounts restored from state written under other rules and re-scored in place."
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "HTTP connections closed at once: [http] max_connections were open."
    );
    describe_counter!(REBALANCES, "Partition assignment changes, by kind.");
    describe_counter!(
        HANDOFFS,
        "Records sent to another partition to complete alias merges, by kind."
    );
    describe_counter!(
        MISROUTED,
        "Input events whose key [kafka] input_partitioner places on another partition."
    );
    describe_gauge!(
        READY,
        "1 when partitions are assigned and restored, else 0."
    );
    describe_gauge!(BUILD_INFO, "Always 1; labels carry the versions.");
    describe_gauge!(
        SHADOW,
        "1 when this instance is a shadow (run --shadow): its outputs go to a topic of its own."
    );
}
