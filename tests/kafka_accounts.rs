//! Account scoring in `leadscore run` on Apache Kafka: the leads of each
//! account spread over every input partition and two instances, one of
//! them killed with `kill -9` mid-stream and restarted; every account's
//! final state, read from the account changelog, equals `replay`'s.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::*;
use common::verify::*;
use leadscore::codec::account::decode_account_state;
use leadscore::core::account::AccountState;
use leadscore::core::{Rules, Timestamp};
use leadscore::replay::Replayer;

const ACCOUNTS: &str = r#"
[accounts]
from_email_domain = true
lead_engagement_cap = 40
engaged_lead_score = 50
department_group = "seniority"
seniority_group = "seniority"

[[accounts.tiers]]
name = "quiet"
min_score = 0
[[accounts.tiers]]
name = "surging"
min_score = 60
[[accounts.tiers]]
name = "buying"
min_score = 90

[[accounts.fit]]
name = "account_mid_market"
points = 15
when = [{ field = "employees", range = { at_least = 200, below = 5000 } }]
[[accounts.fit]]
name = "account_software"
points = 10
when = [{ field = "industry", equals = "software" }]
"#;

fn rules_text() -> String {
    format!("{}\n{ACCOUNTS}", common::example_lead_rules_text())
}

/// The last state of every account in the account changelog.
/// A test's own account topics, named after its group, as `run`'s
/// environment names them.
fn account_topics(names: &Names) -> [(&'static str, String); 2] {
    [
        (
            "LEADSCORE_KAFKA_ACCOUNT_UPDATES_TOPIC",
            format!("{}-account-updates", names.group),
        ),
        (
            "LEADSCORE_KAFKA_ACCOUNT_CHANGELOG_TOPIC",
            format!("{}-account-changelog", names.group),
        ),
    ]
}

fn read_account_changelog(bootstrap: &str, topic: &str) -> BTreeMap<String, AccountState> {
    let mut accounts = BTreeMap::new();
    for record in read_topic(bootstrap, topic, true) {
        let key = record.key.clone().expect("keyed by account");
        if key.starts_with(leadscore::codec::OUTLINE_KEY_PREFIX) {
            continue; // the rules that wrote the state, not state
        }
        if record.value.is_empty() {
            accounts.remove(&key); // a tombstone
        } else {
            let (state, _) = decode_account_state(&record.value).unwrap();
            accounts.insert(key, state);
        }
    }
    accounts
}

#[test]
fn accounts_across_partitions_and_instances_equal_replay_across_kill_9() {
    accounts_equal_replay(kafka(), "accounts", "exactly_once");
}

/// tansu shows aborted records to every reader: account updates and
/// account state from aborted transactions among them. The state must stay
/// exact, and outputs repeat only as identical copies.
#[test]
fn on_tansu_accounts_stay_exact_and_outputs_dedupable() {
    accounts_equal_replay(tansu(), "accounts-tansu", "exactly_once");
}

fn accounts_equal_replay(broker: &Broker, test: &str, guarantee: &str) {
    let names = Names::new(test);
    let weak = test.contains("tansu");
    create_topic(&broker.bootstrap, &names.input, 4);
    let topics = account_topics(&names);
    let account_changelog = topics[1].1.clone();
    let lines = sample(400, 61);
    let rules_text = rules_text();
    let rules: Rules =
        leadscore::config::parse_rules(&rules_text, Path::new("rules.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with_rules(
        dir.path(),
        &rules_text,
        &broker.bootstrap,
        &names,
        guarantee,
        "timer_clock = \"event_time\"\n",
    );
    let ports = [common::free_port(), common::free_port()];
    let env = |id: &'static str, port: u16| {
        let mut env = vec![
            ("LEADSCORE_KAFKA_TRANSACTIONAL_ID", id.to_string()),
            ("LEADSCORE_HTTP_LISTEN", format!("127.0.0.1:{port}")),
        ];
        env.extend(topics.iter().cloned());
        env
    };
    let as_refs = |v: &[(&'static str, String)]| -> Vec<(&'static str, String)> { v.to_vec() };
    let env_a = as_refs(&env("accounts-a", ports[0]));
    let env_b = as_refs(&env("accounts-b", ports[1]));
    let start = |env: &[(&'static str, String)]| {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Instance::start(&config, &pairs)
    };

    let a = start(&env_a);
    let _b = start(&env_b);
    // Half the events, a kill -9 of one instance mid-stream, the rest.
    let (first, second) = lines.split_at(lines.len() / 2);
    produce_lines(&broker.bootstrap, &names.input, first);
    std::thread::sleep(Duration::from_millis(2500));
    a.kill9();
    produce_lines(&broker.bootstrap, &names.input, second);
    let _a = start(&env_a);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(300));

    let mut replayer = Replayer::new(&rules, false);
    for (i, line) in lines.iter().enumerate() {
        replayer.feed_line(i as u64 + 1, line, &mut |_| {}, &mut |r| panic!("{r}"));
    }
    let cut = event_time_cut(&lines);
    let (at, _) = replayer.finish(None, &mut |_| {}).unwrap();
    assert!(at.millis() >= cut);
    let expected = replayer.account_snapshot(at);
    assert!(expected.len() >= 5, "{} accounts", expected.len());
    let rules = Arc::new(rules);

    // The account side trails the lead side by the updates topic: wait
    // until the changelog agrees, or fail with the last difference.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let found = read_account_changelog(&broker.bootstrap, &account_changelog);
        let mismatch = expected.iter().find_map(|want| {
            let Some(state) = found.get(&want.account_id) else {
                return Some(format!("{} missing", want.account_id));
            };
            let got = state.evaluate(&rules, at);
            let members_ok = state.members.len() == want.members;
            let score_ok = (got.score - want.score).abs() < 1e-6;
            let fit_ok = (got.fit - want.fit).abs() < 1e-9;
            (!(members_ok && score_ok && fit_ok)).then(|| {
                format!(
                    "{}: members {} vs {}, score {} vs {}, fit {} vs {}",
                    want.account_id,
                    state.members.len(),
                    want.members,
                    got.score,
                    want.score,
                    got.fit,
                    want.fit
                )
            })
        });
        let extra = found.len() != expected.len();
        match mismatch {
            None if !extra => break,
            _ => assert!(
                Instant::now() < deadline,
                "account state differs from replay: {mismatch:?}; {} accounts found, {} expected",
                found.len(),
                expected.len()
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // The query API: one instance holds the busiest account, the other
    // names its partition.
    let busiest = expected.iter().max_by_key(|a| a.members).unwrap();
    let mut answers: Vec<(u16, serde_json::Value)> = ports
        .iter()
        .map(|port| {
            let url = format!("http://127.0.0.1:{port}/v1/accounts/{}", busiest.account_id);
            let mut response = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .new_agent()
                .get(&url)
                .call()
                .unwrap();
            let status = response.status().as_u16();
            let body = response.body_mut().read_to_string().unwrap();
            (status, serde_json::from_str(&body).unwrap())
        })
        .collect();
    answers.sort_by_key(|(status, _)| *status);
    assert_eq!((answers[0].0, answers[1].0), (200, 421), "{answers:?}");
    assert_eq!(answers[0].1["members"], busiest.members);
    assert_eq!(answers[0].1["partition"], answers[1].1["partition"]);

    // Account outputs were published, keyed by account, exactly once each.
    let outputs = read_topic(&broker.bootstrap, &names.output, true);
    let account_outputs: Vec<_> = outputs
        .iter()
        .map(Record::json)
        .filter(|o| o["lead_id"].is_null())
        .collect();
    assert!(!account_outputs.is_empty());
    let mut by_id: BTreeMap<&str, &serde_json::Value> = BTreeMap::new();
    let mut repeats = 0;
    for output in &account_outputs {
        let id = output["event_id"].as_str().unwrap();
        match by_id.get(id) {
            Some(first) => {
                repeats += 1;
                assert_eq!(*first, output, "a repeat is identical to its first copy");
            }
            None => {
                by_id.insert(id, output);
            }
        }
    }
    if !weak {
        assert_eq!(repeats, 0, "no account output twice");
    }
    eprintln!(
        "{test}: {} account outputs, {repeats} repeats",
        account_outputs.len()
    );
}

/// Leads that go quiet expire and leave their accounts. Timers follow the
/// wall clock once the input is read. The stream ends with one event per
/// partition from a new lead of account `acct-closing`, too cold to stay,
/// stamped so that it expires (`inactive_after`, 9 days) 20 seconds after
/// it is produced: a batch with nothing but that timer expires it, and
/// nothing follows. Each departure must reach its account all the same, in
/// the transaction that wrote the lead's tombstone: in the end the
/// accounts list exactly the leads still held.
#[test]
fn leads_expired_by_wall_clock_timers_leave_their_accounts() {
    use leadscore::config::Partitioner;
    use leadscore::ops::partitioner::partition_of;
    let broker = kafka();
    let names = Names::new("accounts-expiry");
    create_topic(&broker.bootstrap, &names.input, 4);
    let topics = account_topics(&names);
    let account_changelog = topics[1].1.clone();
    let mut lines = sample(200, 67);
    let expires_soon = Timestamp(now_ms() - 9 * common::DAY + 20_000).to_rfc3339();
    let mut closing: BTreeMap<i32, String> = BTreeMap::new();
    for i in 0.. {
        let lead = format!("closing-lead-{i}");
        // The test config's input_partitioner, over 4 partitions.
        let partition = partition_of(Partitioner::ConsistentRandom, lead.as_bytes(), 4);
        closing.entry(partition).or_insert(lead);
        if closing.len() == 4 {
            break;
        }
    }
    lines.extend(closing.values().map(|lead| {
        format!(
            r#"{{"type":"track","messageId":"{lead}-1","userId":"{lead}","event":"Email Opened","context":{{"groupId":"acct-closing"}},"timestamp":"{expires_soon}"}}"#
        )
    }));
    let rules_text = common::with_expiry(&rules_text(), 9);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with_rules(
        dir.path(),
        &rules_text,
        &broker.bootstrap,
        &names,
        "exactly_once",
        "timer_clock = \"wall\"\n",
    );
    let mut env = vec![("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "accounts-expiry")];
    env.extend(topics.iter().map(|(k, v)| (*k, v.as_str())));
    // A backlog: each partition reaches its end once, after its last event.
    produce_lines(&broker.bootstrap, &names.input, &lines);
    let instance = Instance::start(&config, &env);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(120));

    // Each lead in the changelog: held (its last record a state) or not
    // (a tombstone).
    let leads = || -> BTreeMap<String, bool> {
        let mut last: BTreeMap<String, bool> = BTreeMap::new();
        for record in read_topic(&broker.bootstrap, &names.changelog, true) {
            let key = record.key.clone().expect("keyed by lead");
            if !key.starts_with('\0') {
                last.insert(key, !record.value.is_empty());
            }
        }
        last
    };
    // The account side trails the leads by the account updates topic:
    // wait until `acct-closing` was written (its leads joined), its leads
    // expired, and no lead that expired is a member of any account.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let leads = leads();
        let held = |lead: &str| leads.get(lead) == Some(&true);
        let closing_expired = closing.values().all(|lead| leads.get(lead) == Some(&false));
        let written = read_topic(&broker.bootstrap, &account_changelog, true)
            .iter()
            .any(|r| r.key.as_deref() == Some("acct-closing"));
        let accounts = read_account_changelog(&broker.bootstrap, &account_changelog);
        let gone: Vec<&str> = accounts
            .values()
            .flat_map(|a| &a.members)
            .map(|m| &*m.lead_id)
            .filter(|lead| !held(lead))
            .collect();
        if written && closing_expired && gone.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acct-closing written: {written}; its leads expired: {closing_expired}; {} \
             expired leads still members of their accounts, e.g. {:?}",
            gone.len(),
            &gone[..gone.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(instance.terminate().success());
    let expired = read_topic(&broker.bootstrap, &names.output, true)
        .iter()
        .map(Record::json)
        .filter(|o| o["type"] == "lead_expired")
        .count();
    assert!(expired >= 100, "{expired} leads expired");
}
