//! A sales-alert service, the way alerting plugs into leadscore: consume
//! the output topic (`read_committed`), keep upward threshold crossings,
//! drop repeats by `event_id`, and post a Slack-compatible message to a
//! webhook.
//!
//!     cargo run --release --example sales_alert -- \
//!         BOOTSTRAP OUTPUT_TOPIC WEBHOOK_URL [TIER,TIER...]
//!
//! With tiers given (e.g. `mql,sql`), only crossings into them alert.
//! Offsets are committed after the webhook accepted every alert before
//! them, so a crash re-reads from the last commit: the alerts since then
//! are posted again (at least once). While it runs, a repeated record (an
//! aborted transaction on a weak broker, a retried producer) is posted once.
//! `LEADSCORE_ALERT_GROUP` sets the consumer group (default
//! `leadscore-sales-alert`).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use serde_json::{json, Value};

/// Ids remembered for dedup; repeats arrive close to their first copy.
const REMEMBERED_IDS: usize = 100_000;
const POST_ATTEMPTS: u32 = 6;

/// Event ids seen lately, oldest dropped first.
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    fn new() -> Self {
        Seen {
            ids: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// True the first time an id is offered.
    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == REMEMBERED_IDS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

/// The message for one crossing, or `None` when it should not alert.
fn alert_for(output: &Value, tiers: &[String]) -> Option<Value> {
    if output["type"] != "threshold_crossed" || output["direction"] != "up" {
        return None;
    }
    let tier = output["tier"].as_str()?;
    if !tiers.is_empty() && !tiers.iter().any(|t| t == tier) {
        return None;
    }
    let lead = output["lead_id"].as_str()?;
    let reasons: Vec<String> = output["contributions"]
        .as_array()
        .map(|list| {
            list.iter()
                .take(3)
                .filter_map(|c| {
                    Some(format!(
                        "{} {:+.0}",
                        c["rule"].as_str()?,
                        c["points"].as_f64()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    // Rules of several scores (`[[scores]]`): which one the lead crossed in.
    let in_score = output["score_name"]
        .as_str()
        .map(|score| format!(" in {score}"))
        .unwrap_or_default();
    let headline = format!(
        "Lead {lead} is now {tier}{in_score} (from {}): score {:.0}, grade {}",
        output["previous_tier"].as_str().unwrap_or("?"),
        output["score"].as_f64().unwrap_or(0.0),
        output["grade"].as_str().unwrap_or("?"),
    );
    let why = if reasons.is_empty() {
        String::new()
    } else {
        format!("\nWhy: {}", reasons.join(", "))
    };
    Some(json!({
        "text": format!("{headline}{why}"),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{headline}*{why}")}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                "event `{}` at {}, rules {}",
                output["event_id"].as_str().unwrap_or(""),
                output["at"].as_str().unwrap_or(""),
                output["rules_version"].as_str().unwrap_or(""),
            )}]}
        ],
    }))
}

/// Posts with retries (the webhook may be briefly down); gives up after
/// [`POST_ATTEMPTS`], leaving the offset uncommitted.
fn post(agent: &ureq::Agent, url: &str, message: &Value) -> anyhow::Result<()> {
    let mut wait = Duration::from_millis(200);
    let mut last = String::new();
    for _ in 0..POST_ATTEMPTS {
        let sent = agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(message.to_string());
        match sent {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => last = format!("status {}", response.status()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(wait);
        wait *= 2;
    }
    bail!("the webhook refused the alert {POST_ATTEMPTS} times; last: {last}")
}

/// Where to read, where to post, which tiers alert.
pub struct Options {
    pub bootstrap: String,
    pub topic: String,
    pub webhook: String,
    /// Empty: every upward crossing alerts.
    pub tiers: Vec<String>,
    pub group: String,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, topic, webhook, rest @ ..] = args.as_slice() else {
        bail!("usage: sales_alert BOOTSTRAP OUTPUT_TOPIC WEBHOOK_URL [TIER,TIER...]");
    };
    let options = Options {
        bootstrap: bootstrap.clone(),
        topic: topic.clone(),
        webhook: webhook.clone(),
        tiers: rest
            .first()
            .map(|t| t.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        group: std::env::var("LEADSCORE_ALERT_GROUP")
            .unwrap_or_else(|_| "leadscore-sales-alert".to_string()),
    };
    run(&options, &AtomicBool::new(false)).map(|_| ())
}

/// Consumes and alerts until `stop` is set; returns the alerts posted.
pub fn run(options: &Options, stop: &AtomicBool) -> anyhow::Result<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &options.bootstrap)
        .set("group.id", &options.group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("cannot create the consumer")?;
    consumer.subscribe(&[&options.topic])?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut seen = Seen::new();
    let mut posted = 0u64;
    eprintln!(
        "sales_alert: {} -> {} (group {})",
        options.topic, options.webhook, options.group
    );
    while !stop.load(Ordering::Relaxed) {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = result.context("consumer error")?;
        let Some(output) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            continue; // not a JSON output (a protobuf deployment needs the proto decoder)
        };
        let first = output["event_id"]
            .as_str()
            .is_some_and(|id| seen.first_time(id));
        if first {
            if let Some(alert) = alert_for(&output, &options.tiers) {
                post(&agent, &options.webhook, &alert)?;
                posted += 1;
                eprintln!(
                    "sales_alert: posted {posted}: {}",
                    alert["text"].as_str().unwrap_or("")
                );
            }
        }
        consumer
            .commit_message(&message, CommitMode::Async)
            .context("cannot commit")?;
    }
    Ok(posted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crossing(direction: &str, tier: &str) -> Value {
        json!({"type": "threshold_crossed", "event_id": "e1", "lead_id": "lead-1",
               "tier": tier, "previous_tier": "warm", "direction": direction,
               "score": 76.0, "grade": "A", "at": "2026-11-25T10:00:00.000Z",
               "rules_version": "v1",
               "contributions": [{"rule": "demo_requested", "points": 30.0},
                                 {"rule": "title_vp", "points": 18.0}]})
    }

    #[test]
    fn only_upward_crossings_into_chosen_tiers_alert() {
        let up = alert_for(&crossing("up", "mql"), &[]).unwrap();
        assert_eq!(
            up["text"],
            "Lead lead-1 is now mql (from warm): score 76, grade A\nWhy: demo_requested +30, title_vp +18"
        );
        assert!(alert_for(&crossing("down", "mql"), &[]).is_none());
        assert!(alert_for(&crossing("up", "mql"), &["sql".into()]).is_none());
        let mut changed = crossing("up", "mql");
        changed["type"] = json!("score_changed");
        assert!(alert_for(&changed, &[]).is_none());
        let mut scored = crossing("up", "mql");
        scored["score_name"] = json!("platform");
        let alert = alert_for(&scored, &[]).unwrap();
        assert!(alert["text"]
            .as_str()
            .unwrap()
            .starts_with("Lead lead-1 is now mql in platform (from warm)"));
    }

    #[test]
    fn repeats_are_seen_once() {
        let mut seen = Seen::new();
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        assert!(seen.first_time("b"));
    }
}
