//! `[filters]`: bot, crawler and link-scanner traffic mixed into human
//! traffic is kept out of every score (the scores equal those of the human
//! traffic alone) and counted by reason; bursts past the limit are caught.

mod common;

use std::collections::BTreeMap;

use common::*;
use leadscore::core::Timestamp;
use leadscore::replay::{ReplayStats, Replayer};
use serde_json::json;

const SCANNER: &str = "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
/// What a gateway that clicks with a browser's user agent (Defender's Safe
/// Links does) looks like: only its timing gives it away.
const BROWSER: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                       (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// The example rules file, accounts and `[filters]` included.
fn example_with_filters() -> String {
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/leadscore.toml"),
    )
    .unwrap();
    let rules = example.split("\n[kafka]\n").next().unwrap().to_string();
    assert!(rules.contains("[filters]"), "the example filters bots");
    rules
}

/// `rules` with its `[filters]` (and their arrays, up to `[grades]`) cut.
fn without_filters(rules: &str) -> String {
    let (before, rest) = rules.split_once("\n[filters]\n").unwrap();
    let (_, after) = rest.split_once("\n[grades]\n").unwrap();
    format!("{before}\n[grades]\n{after}")
}

fn time_of(line: &str) -> i64 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    Timestamp::parse_rfc3339(v["timestamp"].as_str().unwrap())
        .unwrap()
        .millis()
}

fn at(ms: i64) -> String {
    Timestamp(ms).to_rfc3339()
}

struct Replayed {
    outputs: BTreeMap<String, String>,
    leads: Vec<leadscore::core::engine::LeadSnapshot>,
    accounts: Vec<leadscore::core::account::AccountSnapshot>,
    stats: ReplayStats,
}

fn replay(rules_text: &str, lines: &[String], end: i64) -> Replayed {
    let rules = rules(rules_text);
    let mut replayer = Replayer::new(&rules, false);
    let mut outputs = BTreeMap::new();
    let mut emit = |o: &leadscore::core::Output| {
        let json = leadscore::codec::output::output_to_json(o);
        assert!(
            outputs.insert(o.event_id.to_string(), json).is_none(),
            "an id twice"
        );
    };
    for (i, line) in lines.iter().enumerate() {
        replayer.feed_line(i as u64 + 1, line, &mut emit, &mut |r| {
            panic!("rejected {r}")
        });
    }
    let (at, leads) = replayer.finish(Some(Timestamp(end)), &mut emit).unwrap();
    let accounts = replayer.account_snapshot(at);
    Replayed {
        outputs,
        leads,
        accounts,
        stats: replayer.stats.clone(),
    }
}

/// Human traffic (the sample generator's, with emails delivered to a
/// third of the leads), then the same with bots mixed in: for every
/// delivery, ten clicks within two seconds by a gateway (half with its
/// own user agent, half with a browser's), and crawler page views.
fn traffic(seed: u64) -> (Vec<String>, Vec<String>, BTreeMap<&'static str, u64>) {
    let sample = leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads: 300,
        seed,
        anonymous_share: 0.2,
        sales_share: 0.1,
        ..Default::default()
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut human: Vec<(i64, String)> = sample.iter().map(|l| (time_of(l), l.clone())).collect();
    let mut bots: Vec<(i64, String)> = Vec::new();
    let mut filtered: BTreeMap<&'static str, u64> = BTreeMap::new();
    let users: Vec<(String, i64)> = sample
        .iter()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["type"] == "identify")
                .then(|| (v["userId"].as_str().unwrap().to_string(), time_of(l)))
        })
        .collect();
    for (n, (user, first)) in users.iter().enumerate() {
        if n % 3 != 0 {
            continue;
        }
        // A delivery at a quiet moment of the lead's: no human click of
        // its own falls within a minute after it.
        let delivered = first + 3_600_000 + rng.i64(0..86_400_000);
        let id = format!("{user}-delivered");
        human.push((
            delivered,
            json!({"type": "track", "messageId": id, "userId": user, "event": "Email Delivered",
                   "timestamp": at(delivered)})
            .to_string(),
        ));
        let agent = if n % 2 == 0 { SCANNER } else { BROWSER };
        for click in 0..10 {
            let t = delivered + 300 + click * 150;
            bots.push((
                t,
                json!({"type": "track", "messageId": format!("{user}-scan-{click}"), "userId": user,
                       "event": "Email Link Clicked", "timestamp": at(t),
                       "properties": {"email_id": 7}, "context": {"userAgent": agent}})
                .to_string(),
            ));
            *filtered
                .entry(if agent == SCANNER {
                    "user_agent"
                } else {
                    "after_send"
                })
                .or_default() += 1;
        }
        for view in 0..3 {
            let t = delivered + 7_200_000 + view * 1000;
            bots.push((
                t,
                json!({"type": "page", "messageId": format!("{user}-crawl-{view}"), "userId": user,
                       "name": "Pricing", "timestamp": at(t),
                       "context": {"page": {"path": "/pricing"}, "userAgent": GOOGLEBOT}})
                .to_string(),
            ));
            *filtered.entry("user_agent").or_default() += 1;
        }
    }
    human.sort();
    let mut mixed = human.clone();
    mixed.extend(bots);
    mixed.sort_by_key(|(t, _)| *t);
    let lines = |v: Vec<(i64, String)>| v.into_iter().map(|(_, l)| l).collect::<Vec<_>>();
    (lines(human), lines(mixed), filtered)
}

#[test]
fn bot_and_scanner_traffic_leaves_every_score_as_human_traffic_alone_gives() {
    let rules = example_with_filters();
    for seed in [3, 17, 29] {
        let (human, mixed, expected) = traffic(seed);
        let end = mixed.iter().map(|l| time_of(l)).max().unwrap() + DAY;
        let alone = replay(&rules, &human, end);
        let with_bots = replay(&rules, &mixed, end);
        assert!(
            alone.stats.filtered.is_empty(),
            "{:?}",
            alone.stats.filtered
        );
        assert_eq!(
            with_bots.stats.filtered, expected,
            "every filtered event, by reason"
        );
        assert_eq!(with_bots.leads, alone.leads, "seed {seed}");
        assert_eq!(with_bots.accounts, alone.accounts, "seed {seed}");
        assert_eq!(
            with_bots.outputs, alone.outputs,
            "seed {seed}: the same outputs, ids and all"
        );

        // Without the filters, the same bots move scores.
        let fooled = replay(&without_filters(&rules), &mixed, end);
        assert_ne!(
            fooled.leads, alone.leads,
            "the bots do move scores unfiltered"
        );
    }
}

#[test]
fn clicks_past_a_burst_are_filtered_and_the_first_ones_scored() {
    let rules = example_with_filters(); // more than 3 email_clicked within 5 s
    let click = |n: i64, t: i64| {
        json!({"type": "track", "messageId": format!("c{n}"), "userId": "ann",
               "event": "Email Link Clicked", "timestamp": at(t), "context": {"userAgent": BROWSER}})
        .to_string()
    };
    let lines: Vec<String> = (0..8).map(|n| click(n, T0 + n * 500)).collect();
    let replayed = replay(&rules, &lines, T0 + DAY);
    assert_eq!(replayed.stats.filtered, BTreeMap::from([("burst", 5)]));
    let ann = &replayed.leads[0];
    let clicked = ann
        .contributions
        .iter()
        .find(|c| &*c.rule == "email_clicked")
        .unwrap();
    // Three clicks at 3 points, decayed by a day.
    assert!(clicked.points > 8.0 && clicked.points <= 9.0, "{clicked:?}");
}

/// Filters decide which past events were scored: a change to them is one
/// the kept state cannot answer, and restoring says so.
#[test]
fn a_change_of_filters_needs_history() {
    use leadscore::core::migration::{Migration, RulesOutline};
    let with = rules(&example_with_filters());
    let without = rules(&without_filters(&example_with_filters()));
    assert_ne!(with.fingerprint(), without.fingerprint());
    for (old, new) in [(&with, &without), (&without, &with)] {
        let reasons = Migration::plan(&RulesOutline::of(old), new).unwrap_err();
        assert!(
            reasons.iter().any(|r| r.starts_with("[filters] changed")),
            "{reasons:?}"
        );
    }
    let wider = rules(&example_with_filters().replace("max_hits = 3", "max_hits = 4"));
    assert!(Migration::plan(&RulesOutline::of(&with), &wider).is_err());
    assert!(Migration::plan(&RulesOutline::of(&with), &with).is_ok());
}
