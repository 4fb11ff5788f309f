//! Writes realistic sample Segment events as JSON lines to stdout.
//!
//!     cargo run --example generate_events -- [LEADS] [SEED] [START] [COMPANIES] > events.jsonl
//!
//! START (RFC 3339) is the time of the first event; events span 30 days
//! from it. Default: 2025-12-01T00:00:00Z. COMPANIES: accounts the leads
//! work at (default 10: thousands of people per account with many leads;
//! LEADS / 20 gives accounts the size of real ones).

use leadscore::core::Timestamp;
use leadscore::sample::{generate, SampleConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let leads = args
        .next()
        .map_or(1000, |a| a.parse().expect("LEADS must be a number"));
    let seed = args
        .next()
        .map_or(7, |a| a.parse().expect("SEED must be a number"));
    let mut config = SampleConfig {
        leads,
        seed,
        ..SampleConfig::default()
    };
    if let Some(start) = args.next() {
        config.start = Timestamp::parse_rfc3339(&start).expect("START must be an RFC 3339 time");
    }
    if let Some(companies) = args.next() {
        config.companies = companies.parse().expect("COMPANIES must be a number");
    }
    for line in generate(&config) {
        println!("{line}");
    }
}
