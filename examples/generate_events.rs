//! Writes realistic sample Segment events as JSON lines to stdout.
//!
//!     cargo run --example generate_events -- [LEADS] [SEED] > events.jsonl

use leadscore::sample::{generate, SampleConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let leads = args
        .next()
        .map_or(1000, |a| a.parse().expect("LEADS must be a number"));
    let seed = args
        .next()
        .map_or(7, |a| a.parse().expect("SEED must be a number"));
    let config = SampleConfig {
        leads,
        seed,
        ..SampleConfig::default()
    };
    for line in generate(&config) {
        println!("{line}");
    }
}
