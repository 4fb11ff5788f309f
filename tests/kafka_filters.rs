//! `[filters]` in `leadscore run` on Apache Kafka: bot and scanner events
//! are not scored, not dead-lettered, and go to `[kafka] filtered_topic`
//! with their reason; the outputs are replay's.

mod common;

use std::time::Duration;

use common::kafka::*;
use common::verify::*;
use serde_json::json;

#[test]
fn filtered_events_go_to_their_own_topic_with_the_reason() {
    let broker = kafka();
    let names = Names::new("filters");
    create_topic(&broker.bootstrap, &names.input, 4);
    let filtered_topic = format!("{}-filtered", names.group);
    let mut lines = sample(300, 52);
    let last = lines.len() - 1;
    let t = |offset: i64| {
        let v: serde_json::Value = serde_json::from_str(&lines[last]).unwrap();
        let at =
            leadscore::core::Timestamp::parse_rfc3339(v["timestamp"].as_str().unwrap()).unwrap();
        leadscore::core::Timestamp(at.millis() + offset).to_rfc3339()
    };
    let bots: Vec<String> = (0..6)
        .map(|n| {
            json!({"type": "page", "messageId": format!("crawl-{n}"), "userId": format!("lead-00000{n}"),
                   "name": "Pricing", "timestamp": t(1000 + n),
                   "context": {"page": {"path": "/pricing"},
                               "userAgent": "Mozilla/5.0 (compatible; bingbot/2.0)"}})
            .to_string()
        })
        .collect();
    lines.extend(bots.iter().cloned());
    let dir = tempfile::tempdir().unwrap();
    let rules_text = common::example_lead_rules_text();
    assert!(rules_text.contains("[filters]"), "the example filters bots");
    let config = write_config_with_rules(
        dir.path(),
        &rules_text,
        &broker.bootstrap,
        &names,
        "exactly_once",
        "timer_clock = \"event_time\"\n",
    );
    // Filtered events are kept, in a topic of their own.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[kafka]\n",
        &format!("[kafka]\nfiltered_topic = \"{filtered_topic}\"\n"),
    );
    std::fs::write(&config, text).unwrap();
    produce_lines(&broker.bootstrap, &names.input, &lines);
    process_all(broker, &names, &config, Duration::from_secs(2));

    let rules = common::rules(&rules_text);
    assert_run_equals_replay_under(&rules, &broker.bootstrap, &names, &lines);
    let filtered = read_topic(&broker.bootstrap, &filtered_topic, true);
    assert_eq!(filtered.len(), bots.len(), "every bot event, once");
    for record in &filtered {
        assert_eq!(
            record
                .headers
                .get("leadscore.filter.reason")
                .map(String::as_str),
            Some("user_agent")
        );
        assert!(bots.contains(&String::from_utf8(record.value.clone()).unwrap()));
    }
    assert!(read_topic(&broker.bootstrap, &names.dead_letter, true).is_empty());
}
