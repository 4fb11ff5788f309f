//! Converts the X Education leads export into Segment events and an
//! outcomes file for `leadscore calibrate`:
//!
//!     cargo run --release --example x_education -- \
//!         ../shared/data/x-education-leads.csv target/x-education
//!
//! writes `events.jsonl` and `outcomes.csv` into the output directory.
//! See `leadscore::datasets::x_education` for how rows become events.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use leadscore::core::Timestamp;
use leadscore::datasets::x_education;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(input), Some(out_dir)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: x_education LEADS.csv OUT_DIR [START_RFC3339]");
    };
    let start = match args.next() {
        Some(text) => {
            let text = text.to_string_lossy().into_owned();
            Timestamp::parse_rfc3339(&text)
                .with_context(|| format!("{text:?} is not an RFC 3339 time"))?
        }
        None => Timestamp::parse_rfc3339("2026-01-05T09:00:00Z").expect("valid literal"),
    };
    let (input, out_dir) = (PathBuf::from(input), PathBuf::from(out_dir));
    let file = File::open(&input).with_context(|| format!("cannot open {}", input.display()))?;
    let conversion = x_education::convert(file, start)?;
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut events = BufWriter::new(File::create(out_dir.join("events.jsonl"))?);
    for line in &conversion.events {
        writeln!(events, "{line}")?;
    }
    events.flush()?;
    fs::write(out_dir.join("outcomes.csv"), conversion.outcomes_csv())?;
    let converted = conversion.outcomes.iter().filter(|o| o.converted).count();
    eprintln!(
        "{} leads ({} converted), {} events -> {}",
        conversion.outcomes.len(),
        converted,
        conversion.events.len(),
        out_dir.display()
    );
    Ok(())
}
