//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod kafka;
pub mod scores;
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
