//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod kafka;
pub mod verify;

use std::path::Path;
use std::sync::Arc;

use leadscore::core::{Event, EventKind, Output, Rules, Timestamp};

pub const DAY: i64 = 86_400_000;
pub const T0: i64 = 1_764_547_200_000; // 2025-12-01T00:00:00Z

pub fn rules(toml: &str) -> Rules {
    leadscore::config::parse_rules(toml, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// The rules of `config/leadscore.toml` for lead scoring alone: its text
/// before the runtime sections, without its `[accounts]` section. Lead
/// tests compare each lead with `replay`; accounts add outputs whose order
/// across partitions is their own, and have tests of their own.
pub fn example_lead_rules_text() -> String {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/leadscore.toml"),
    )
    .unwrap();
    let rules = example.split("\n[kafka]\n").next().unwrap();
    let rules = rules.split("\n[accounts]\n").next().unwrap();
    rules.to_string()
}

/// `rules_text` with leads dropped after `days` without an event (in the
/// lowest tier), each announced by a `lead_expired` output.
pub fn with_expiry(rules_text: &str, days: u32) -> String {
    let text = rules_text.replace(
        "[events]\n",
        &format!("[events]\ninactive_after = \"{days}d\"\nannounce_expiry = true\n"),
    );
    assert!(
        text.contains("inactive_after"),
        "the rules have an [events] section"
    );
    text
}

/// `rules_text` (a file of one score, without `[[scores]]`) as a file of
/// two: `enterprise`, its rules as they are, and `self_serve`, with its
/// engagement worth half (caps too), tiers 20 points lower and base 10.
/// Every other section is shared.
pub fn two_scores(rules_text: &str) -> String {
    use toml::{Table, Value};
    let number = |v: &Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
    let mut file: Table = rules_text.parse().unwrap();
    let grades = file.remove("grades").unwrap();
    let tiers = file.remove("tiers").unwrap();
    let engagement = file.remove("engagement").unwrap();
    let entry = |name: &str| {
        let mut entry = Table::new();
        entry.insert("name".into(), name.into());
        entry.insert("grades".into(), grades.clone());
        entry.insert("tiers".into(), tiers.clone());
        entry.insert("engagement".into(), engagement.clone());
        entry
    };
    let mut second = entry("self_serve");
    second.insert(
        "scoring".into(),
        Value::Table(Table::from_iter([("base".to_string(), Value::from(10.0))])),
    );
    for rule in second["engagement"].as_array_mut().unwrap() {
        let rule = rule.as_table_mut().unwrap();
        let points = number(&rule["points"]).unwrap();
        rule.insert("points".into(), (points / 2.0).into());
        if let Some(cap) = rule.get_mut("cap").and_then(Value::as_table_mut) {
            let points = number(&cap["points"]).unwrap();
            cap.insert("points".into(), (points / 2.0).into());
        }
    }
    for tier in second["tiers"].as_array_mut().unwrap().iter_mut().skip(1) {
        let tier = tier.as_table_mut().unwrap();
        let min = number(&tier["min_score"]).unwrap();
        tier.insert("min_score".into(), (min - 20.0).into());
    }
    file.insert(
        "scores".into(),
        Value::Array(vec![
            Value::Table(entry("enterprise")),
            Value::Table(second),
        ]),
    );
    toml::to_string(&file).unwrap()
}

/// [`example_lead_rules_text`], parsed.
pub fn example_rules() -> Rules {
    rules(&example_lead_rules_text())
}

pub fn arc(rules: Rules) -> Arc<Rules> {
    Arc::new(rules)
}

pub fn track(id: &str, lead: &str, name: &str, at_ms: i64) -> Event {
    Event::new(id, lead, EventKind::Track, Timestamp(at_ms)).named(name)
}

pub fn page(id: &str, lead: &str, path: &str, at_ms: i64) -> Event {
    Event::new(id, lead, EventKind::Page, Timestamp(at_ms)).with_context("page.path", path)
}

pub fn identify(id: &str, lead: &str, at_ms: i64, traits: &[(&str, &str)]) -> Event {
    traits.iter().fold(
        Event::new(id, lead, EventKind::Identify, Timestamp(at_ms)),
        |e, (k, v)| e.with_trait(k, *v),
    )
}

pub fn crossings(outputs: &[Output]) -> Vec<&Output> {
    outputs
        .iter()
        .filter(|o| o.kind == leadscore::core::OutputKind::ThresholdCrossed)
        .collect()
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// promtool, as `scripts/promtool.sh install` unpacks it (or
/// `LEADSCORE_PROMTOOL`).
pub fn promtool() -> std::path::PathBuf {
    let path = std::env::var_os("LEADSCORE_PROMTOOL").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/leadscore/prometheus-deb/usr/bin/promtool")
        },
        std::path::PathBuf::from,
    );
    assert!(
        path.exists(),
        "no promtool at {}: run scripts/promtool.sh install (scripts/test.sh does)",
        path.display()
    );
    path
}
