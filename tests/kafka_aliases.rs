//! `alias` merges across input partitions in `leadscore run`: sample
//! traffic in which a third of the leads browse anonymously before an
//! `alias` call joins them to their user id (which usually lives on another
//! partition), processed while the instance is killed with `kill -9` five
//! times. Every lead's final state, read from the changelog, equals
//! `replay`'s; leads that never browsed anonymously get exactly `replay`'s
//! outputs.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::kafka::*;
use common::verify::*;
use leadscore::config::Partitioner;
use leadscore::core::engine::LeadSnapshot;
use leadscore::core::Timestamp;
use leadscore::ops::partitioner::partition_of;

#[test]
fn anonymous_histories_follow_their_alias_across_partitions_on_kafka() {
    merges_equal_replay(kafka(), "aliases", "exactly_once");
}

/// tansu shows aborted records to every reader: handoffs and changelog
/// records of aborted transactions among them. State must stay exact.
#[test]
fn on_tansu_merges_across_partitions_keep_state_exact() {
    merges_equal_replay(tansu(), "aliases-tansu", "exactly_once");
}

#[test]
fn at_least_once_merges_across_partitions_keep_state_exact() {
    merges_equal_replay(kafka(), "aliases-alo", "at_least_once");
}

fn merges_equal_replay(broker: &Broker, test: &str, guarantee: &str) {
    let names = Names::new(test);
    let exactly_once = guarantee == "exactly_once" && !test.contains("tansu");
    create_topic(&broker.bootstrap, &names.input, 4);
    let lines = sample_with_anonymous(400, 71, 0.35);
    let values: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Users whose anonymous history lives on another partition.
    let aliases: Vec<(&str, &str)> = values
        .iter()
        .filter(|v| v["type"] == "alias")
        .map(|v| {
            (
                v["userId"].as_str().unwrap(),
                v["previousId"].as_str().unwrap(),
            )
        })
        .collect();
    let partition = |id: &str| partition_of(Partitioner::ConsistentRandom, id.as_bytes(), 4);
    let across = aliases
        .iter()
        .filter(|(user, anonymous)| partition(user) != partition(anonymous))
        .count();
    assert!(
        across >= 20,
        "{across} of {} aliases cross partitions",
        aliases.len()
    );
    let merged: BTreeSet<&str> = aliases.iter().flat_map(|(u, a)| [*u, *a]).collect();

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &broker.bootstrap,
        &names,
        guarantee,
        "timer_clock = \"event_time\"\n",
    );
    produce_lines(&broker.bootstrap, &names.input, &lines);
    let instance = kill_five_times_mid_stream(broker, &names, &config, &[], lines.len(), 0xa11a5);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(300));
    assert!(instance.terminate().success(), "exit 0 on SIGTERM");

    let cut = event_time_cut(&lines);
    let (expected, replayer) = replay(&lines, cut);
    // Merged leads: the same numbers, contributions, grade and account.
    // Their tier (hysteresis) and clock (the time of the last decay
    // crossing) depend on when the partition saw each part of the history.
    let last = replayer.watermark().unwrap().millis();
    let path_free = |leads: Vec<LeadSnapshot>| -> Vec<LeadSnapshot> {
        leads
            .into_iter()
            .map(|mut lead| {
                if merged.contains(lead.lead_id.as_str()) {
                    lead.tier = "(path-dependent)".into();
                    lead.last_event_at = Timestamp(0);
                }
                lead
            })
            .collect()
    };
    let run_state = changelog_snapshot(&broker.bootstrap, &names, last);
    let replay_state = replayer.engine().snapshot(Timestamp(last));
    let tiers_apart = run_state
        .iter()
        .zip(&replay_state)
        .filter(|(a, b)| a.tier != b.tier)
        .count();
    assert_same_state(&path_free(run_state), &path_free(replay_state));

    let handoffs = read_topic(
        &broker.bootstrap,
        &format!("{}-identities", names.group),
        exactly_once,
    );
    assert!(
        handoffs.len() >= across,
        "{} handoffs for {across} aliases across partitions",
        handoffs.len()
    );

    let outputs = read_topic(&broker.bootstrap, &names.output, true);
    let (unique, repeats) = drop_repeats(&outputs);
    if exactly_once {
        assert_eq!(repeats, 0, "no output twice");
    }
    // A merged lead's outputs follow the order its partition saw its own
    // events and its anonymous history in; every other lead's are replay's.
    let unmerged = |lead: &serde_json::Value| !merged.contains(lead.as_str().unwrap_or_default());
    let run: Vec<Record> = if exactly_once { outputs } else { unique }
        .into_iter()
        .filter(|r| unmerged(&r.json()["lead_id"]))
        .collect();
    let expected: Vec<serde_json::Value> = expected
        .into_iter()
        .filter(|o| unmerged(&o["lead_id"]))
        .collect();
    assert_exactly_replay(&run, &expected, cut);
    eprintln!(
        "{test}: {across} of {} aliases across partitions, {} handoffs, {repeats} repeated \
         outputs, {tiers_apart} merged leads in another tier than replay's",
        aliases.len(),
        handoffs.len()
    );
}
