//! Random mutations of the shipped configuration: each either fails as
//! `check` fails, naming `FILE:LINE:COLUMN`, or loads and replays sample
//! traffic without a panic and with finite numbers everywhere.

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;

use leadscore::codec::output::{account_snapshot_to_json, output_to_json, snapshot_to_json};
use leadscore::replay::Replayer;

fn example() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/leadscore.toml"))
            .unwrap()
    })
}

fn sample() -> &'static [String] {
    static LINES: OnceLock<Vec<String>> = OnceLock::new();
    LINES.get_or_init(|| {
        leadscore::sample::generate(&leadscore::sample::SampleConfig {
            leads: 60,
            ..Default::default()
        })
    })
}

const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "0.5",
    "1e308",
    "-1e308",
    "1e-300",
    "nan",
    "inf",
    "-inf",
    "1000000",
    "1000001",
    "9223372036854775807",
    "-9223372036854775808",
    "\"12\"",
];

const DURATIONS: &[&str] = &[
    "\"1ns\"",
    "\"0s\"",
    "\"1ms\"",
    "\"999ms\"",
    "\"1s\"",
    "\"59s\"",
    "\"1m\"",
    "\"1h\"",
    "\"100000000d\"",
    "\"none\"",
    "\"soon\"",
    "\"-1d\"",
    "\"\"",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the `index`-th number with `NUMBERS[with]`.
    Number {
        index: usize,
        with: usize,
    },
    /// Replace the `index`-th duration string with `DURATIONS[with]`.
    Duration {
        index: usize,
        with: usize,
    },
    DeleteLine(usize),
    DuplicateLine(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0..NUMBERS.len()).prop_map(|(index, with)| Mutation::Number { index, with }),
        3 => (any::<usize>(), 0..DURATIONS.len()).prop_map(|(index, with)| Mutation::Duration { index, with }),
        1 => any::<usize>().prop_map(Mutation::DeleteLine),
        1 => any::<usize>().prop_map(Mutation::DuplicateLine),
    ]
}

/// Byte ranges of the values a mutation may replace: numbers after `=`
/// (or inside inline tables), and quoted durations such as `"7d"`.
fn spans(text: &str, durations: bool) -> Vec<(usize, usize)> {
    let pattern = if durations {
        r#""[0-9]+(ns|ms|s|m|h|d|w)""#
    } else {
        r"(?m)(?:=\s*|\{\s*[a-z_]+\s*=\s*)(-?[0-9][0-9_]*(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)\b"
    };
    let re = regex::Regex::new(pattern).unwrap();
    re.captures_iter(text)
        .map(|c| {
            let m = c.get(1).unwrap_or_else(|| c.get(0).unwrap());
            (m.start(), m.end())
        })
        .collect()
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let replace = |spans: Vec<(usize, usize)>, index: usize, with: &str| {
        let (start, end) = spans[index % spans.len()];
        format!("{}{with}{}", &text[..start], &text[end..])
    };
    let lines: Vec<&str> = text.lines().collect();
    match *mutation {
        Mutation::Number { index, with } => replace(spans(text, false), index, NUMBERS[with]),
        Mutation::Duration { index, with } => replace(spans(text, true), index, DURATIONS[with]),
        Mutation::DeleteLine(i) => {
            let i = i % lines.len();
            lines
                .iter()
                .enumerate()
                .filter(|(n, _)| *n != i)
                .map(|(_, l)| *l)
                .collect::<Vec<_>>()
                .join("\n")
        }
        Mutation::DuplicateLine(i) => {
            let i = i % lines.len();
            let mut out = lines.clone();
            out.insert(i, lines[i]);
            out.join("\n")
        }
    }
}

/// Every number in a JSON document is finite (serde_json writes a
/// non-finite float as `null`, so a null where a number belongs fails).
fn assert_finite(json: &str) {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    for key in ["score", "fit", "engagement", "committee", "delta"] {
        if let Some(v) = value.get(key) {
            assert!(v.is_f64() || v.is_i64() || v.is_u64(), "{key} in {json}");
        }
    }
    for c in value["contributions"].as_array().into_iter().flatten() {
        assert!(c["points"].is_number(), "contribution in {json}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn a_mutated_config_is_refused_with_its_place_or_replays_finite_numbers(
        mutations in proptest::collection::vec(mutation(), 1..3)
    ) {
        let text = mutations.iter().fold(example().to_string(), |t, m| apply(&t, m));
        match leadscore::config::parse(&text, Path::new("mutated.toml"), &[]) {
            Err(e) => {
                prop_assert!(
                    e.line > 0 && e.column > 0,
                    "no place for {:?}: {}", mutations, e
                );
            }
            Ok(config) => {
                let mut replayer = Replayer::new(&config.rules, false);
                let mut outputs = Vec::new();
                for (i, line) in sample().iter().enumerate() {
                    replayer.feed_line(i as u64 + 1, line, &mut |o| outputs.push(output_to_json(o)), &mut |_| {});
                }
                let (at, leads) = replayer
                    .finish(None, &mut |o| outputs.push(output_to_json(o)))
                    .unwrap();
                for json in &outputs {
                    assert_finite(json);
                }
                for lead in &leads {
                    assert_finite(&snapshot_to_json(lead));
                }
                for account in &replayer.account_snapshot(at) {
                    assert_finite(&account_snapshot_to_json(account));
                }
            }
        }
    }
}

#[test]
fn the_mutations_reach_numbers_and_durations() {
    assert!(spans(example(), false).len() > 40);
    assert!(spans(example(), true).len() > 8);
}

/// Lead state and fit readings hold rule indexes in 16 bits: a file with
/// more rules of a kind than that is refused, saying so, not truncated.
#[test]
fn more_rules_than_sixteen_bits_index_are_refused() {
    let mut text = example().to_string();
    for i in 0..=u16::MAX as usize {
        text.push_str(&format!(
            "\n[[engagement]]\nname = \"extra_{i}\"\ntype = \"track\"\nevent = \"E{i}\"\npoints = 1\n"
        ));
    }
    let error = leadscore::config::parse_rules(&text, Path::new("many.toml"))
        .expect_err("too many engagement rules")
        .to_string();
    assert!(
        error.contains("65551 engagement rules: at most 65535 are supported"),
        "{error}"
    );
}
