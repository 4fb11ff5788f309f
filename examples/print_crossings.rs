//! Prints threshold crossings of leads and accounts from leadscore's
//! output topic as they are committed (`read_committed`), dropping repeats
//! by `event_id`; exits after IDLE_SECONDS without a new output.
//!
//!     cargo run --example print_crossings -- BOOTSTRAP TOPIC [IDLE_SECONDS]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: print_crossings BOOTSTRAP TOPIC [IDLE_SECONDS]";
    let bootstrap = args.next().ok_or(usage)?;
    let topic = args.next().ok_or(usage)?;
    let idle = Duration::from_secs(args.next().map_or(Ok(10), |a| a.parse())?);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set(
            "group.id",
            format!("print-crossings-{}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let mut seen = HashSet::new();
    // [lead, account] crossings up and down.
    let (mut up, mut down, mut changes) = ([0u64; 2], [0u64; 2], 0u64);
    let mut last = Instant::now();
    while last.elapsed() < idle {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        last = Instant::now();
        let output: serde_json::Value =
            serde_json::from_slice(message.payload().unwrap_or_default())?;
        if !seen.insert(output["event_id"].as_str().unwrap_or_default().to_string()) {
            continue;
        }
        if output["type"] != "threshold_crossed" {
            changes += 1;
            continue;
        }
        let down_move = output["direction"] == "down";
        // Account outputs carry `account_id` and a null `lead_id`.
        let (mut who, of) = match output["lead_id"].as_str() {
            Some(lead) => (lead.to_string(), 0),
            None => (
                format!("account {}", output["account_id"].as_str().unwrap_or("?")),
                1,
            ),
        };
        // Rules of several scores (`[[scores]]`): which one crossed.
        if let Some(score) = output["score_name"].as_str() {
            who = format!("{who} [{score}]");
        }
        if down_move {
            down[of] += 1;
        } else {
            up[of] += 1;
        }
        let why: Vec<String> = output["contributions"]
            .as_array()
            .map(|list| {
                list.iter()
                    .take(3)
                    .map(|c| {
                        format!(
                            "{} {:+.1}",
                            c["rule"].as_str().unwrap_or("?"),
                            c["points"].as_f64().unwrap_or(0.0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{}  {:<12} {:>7} -> {:<7} score {:5.1} grade {}  {}{}",
            output["at"].as_str().unwrap_or(""),
            who,
            output["previous_tier"].as_str().unwrap_or(""),
            output["tier"].as_str().unwrap_or(""),
            output["score"].as_f64().unwrap_or(0.0),
            output["grade"].as_str().unwrap_or(""),
            if down_move { "(cooled down) " } else { "" },
            why.join(", ")
        );
    }
    println!(
        "leads: {} crossings up, {} down; accounts: {} up, {} down; {changes} other score changes",
        up[0], down[0], up[1], down[1]
    );
    Ok(())
}
