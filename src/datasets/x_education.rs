//! The X Education leads export (9,240 real leads of an online-course
//! seller, with whether each converted) as Segment events plus an outcomes
//! file, so `calibrate` can be proven on real behaviour.
//!
//! The export is one row per lead with totals, not a tracking log, so the
//! conversion invents the timing and nothing else:
//! - leads arrive in `Lead Number` order (the CRM's creation order), spread
//!   evenly over [`ARRIVAL_SPAN_DAYS`] from the start time;
//! - a lead's profile columns become traits of one `identify` at arrival;
//! - `TotalVisits` become `Session Started` events on days picked from a
//!   hash of the lead id within [`ACTIVE_DAYS`]; the page views
//!   (`TotalVisits` x `Page Views Per Visit`) become `Course Page` page
//!   calls, and `Total Time Spent on Website` one `Engaged Minute` per whole
//!   minute, both dealt round-robin over the visits;
//! - `Last Activity` becomes a track event of that name after the visits;
//! - the outcome is decided [`DECISION_AFTER_DAYS`] after arrival.
//!
//! Columns filled in by sales after contact leak the outcome and are left
//! out: `Tags`, `Lead Quality`, the `Asymmetrique*` scores and `Last Notable
//! Activity`. So are the ids and the columns that hold one value throughout.
//! The result depends only on the file and the start time.

use std::io::Read;

use serde_json::{json, Map, Value};
use xxhash_rust::xxh3::xxh3_64;

use crate::core::time::MS_PER_DAY;
use crate::core::Timestamp;

pub const ARRIVAL_SPAN_DAYS: i64 = 180;
pub const ACTIVE_DAYS: i64 = 7;
pub const DECISION_AFTER_DAYS: i64 = 14;

/// Profile columns and the trait each becomes. Values are passed through
/// as written, including the form's unchosen default `Select`; an empty
/// cell (the field was never asked) sets no trait.
const TRAIT_COLUMNS: &[(&str, &str)] = &[
    ("Lead Origin", "lead_origin"),
    ("Lead Source", "lead_source"),
    ("Country", "country"),
    ("City", "city"),
    ("Specialization", "specialization"),
    ("How did you hear about X Education", "heard_about"),
    ("What is your current occupation", "occupation"),
    (
        "What matters most to you in choosing a course",
        "motivation",
    ),
    ("Lead Profile", "lead_profile"),
];

/// Yes/No columns, as boolean traits.
const FLAG_COLUMNS: &[(&str, &str)] = &[
    ("Do Not Email", "do_not_email"),
    ("Do Not Call", "do_not_call"),
    ("A free copy of Mastering The Interview", "wants_free_copy"),
    ("Search", "saw_search_ad"),
    ("Newspaper Article", "saw_newspaper_article"),
    ("X Education Forums", "saw_forums"),
    ("Newspaper", "saw_newspaper"),
    ("Digital Advertisement", "saw_digital_ad"),
    ("Through Recommendations", "came_by_recommendation"),
];

/// Columns that would hand the model the answer.
pub const LEAKING_COLUMNS: &[&str] = &[
    "Tags",
    "Lead Quality",
    "Asymmetrique Activity Index",
    "Asymmetrique Profile Index",
    "Asymmetrique Activity Score",
    "Asymmetrique Profile Score",
    "Last Notable Activity",
];

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot read the CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("the CSV has no `{0}` column; is this the X Education leads export?")]
    MissingColumn(String),
    #[error("row {row}: {reason}")]
    BadRow { row: usize, reason: String },
}

/// One lead's result, for the outcomes file.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadOutcome {
    pub lead_id: String,
    pub converted: bool,
    pub decided_at: Timestamp,
}

#[derive(Debug, Default)]
pub struct Conversion {
    /// Segment JSON lines in event-time order (ties in lead order).
    pub events: Vec<String>,
    pub outcomes: Vec<LeadOutcome>,
}

impl Conversion {
    /// The outcomes as `calibrate` reads them.
    pub fn outcomes_csv(&self) -> String {
        let mut out = String::from("lead_id,converted,decided_at\n");
        for o in &self.outcomes {
            out.push_str(&format!(
                "{},{},{}\n",
                o.lead_id,
                u8::from(o.converted),
                o.decided_at.to_rfc3339()
            ));
        }
        out
    }
}

struct Row<'a> {
    headers: &'a csv::StringRecord,
    record: &'a csv::StringRecord,
}

impl Row<'_> {
    fn get(&self, column: &str) -> &str {
        self.headers
            .iter()
            .position(|h| h == column)
            .and_then(|i| self.record.get(i))
            .map_or("", str::trim)
    }
}

pub fn convert(input: impl Read, start: Timestamp) -> Result<Conversion, ConvertError> {
    let mut reader = csv::Reader::from_reader(input);
    let headers = reader.headers()?.clone();
    let required = ["Prospect ID", "Lead Number", "Converted", "TotalVisits"];
    for column in required
        .iter()
        .chain(TRAIT_COLUMNS.iter().map(|(c, _)| c))
        .chain(FLAG_COLUMNS.iter().map(|(c, _)| c))
    {
        if !headers.iter().any(|h| h == *column) {
            return Err(ConvertError::MissingColumn(column.to_string()));
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        rows.push(record?);
    }
    let number = |r: &csv::StringRecord| -> Result<u64, String> {
        let text = Row {
            headers: &headers,
            record: r,
        }
        .get("Lead Number")
        .to_string();
        text.parse()
            .map_err(|_| format!("`Lead Number` {text:?} is not a number"))
    };
    let mut order = Vec::with_capacity(rows.len());
    for (index, record) in rows.iter().enumerate() {
        let n = number(record).map_err(|reason| ConvertError::BadRow {
            row: index + 2,
            reason,
        })?;
        order.push((n, index));
    }
    order.sort_unstable();

    let span_ms = ARRIVAL_SPAN_DAYS * MS_PER_DAY;
    let count = order.len().max(1) as i64;
    let mut timed: Vec<(i64, usize, String)> = Vec::new();
    let mut conversion = Conversion::default();
    for (rank, &(_, index)) in order.iter().enumerate() {
        let row = Row {
            headers: &headers,
            record: &rows[index],
        };
        let arrival = start.millis() + span_ms * rank as i64 / count;
        let lead = lead_events(&row, arrival).map_err(|reason| ConvertError::BadRow {
            row: index + 2,
            reason,
        })?;
        for (at, line) in lead.events {
            timed.push((at, rank, line));
        }
        conversion.outcomes.push(LeadOutcome {
            lead_id: lead.lead_id,
            converted: lead.converted,
            decided_at: Timestamp(arrival + DECISION_AFTER_DAYS * MS_PER_DAY),
        });
    }
    // Stable: a lead's events keep their order when times tie.
    timed.sort_by_key(|(at, rank, _)| (*at, *rank));
    conversion.events = timed.into_iter().map(|(_, _, line)| line).collect();
    Ok(conversion)
}

struct LeadEvents {
    lead_id: String,
    converted: bool,
    events: Vec<(i64, String)>,
}

fn count_column(row: &Row, column: &str) -> Result<f64, String> {
    let text = row.get(column);
    if text.is_empty() {
        return Ok(0.0);
    }
    match text.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(format!("`{column}` {text:?} is not a count")),
    }
}

fn lead_events(row: &Row, arrival: i64) -> Result<LeadEvents, String> {
    let lead_id = row.get("Prospect ID").to_string();
    if lead_id.is_empty() {
        return Err("`Prospect ID` is empty".into());
    }
    let converted = match row.get("Converted") {
        "1" => true,
        "0" => false,
        other => return Err(format!("`Converted` is {other:?}, not 0 or 1")),
    };
    let visits = count_column(row, "TotalVisits")?.round() as u64;
    let per_visit = count_column(row, "Page Views Per Visit")?;
    let seconds = count_column(row, "Total Time Spent on Website")?;
    let pages = (visits as f64 * per_visit).round() as u64;
    let minutes = (seconds / 60.0).floor() as u64;

    let mut events = Vec::new();
    let mut sequence = 0u32;
    let mut push = |at: i64, mut body: Map<String, Value>| {
        sequence += 1;
        body.insert("messageId".into(), json!(format!("{lead_id}-{sequence}")));
        body.insert("userId".into(), json!(lead_id));
        body.insert("timestamp".into(), json!(Timestamp(at).to_rfc3339()));
        events.push((at, Value::Object(body).to_string()));
    };

    let mut traits = Map::new();
    for (column, name) in TRAIT_COLUMNS {
        let value = row.get(column);
        if !value.is_empty() {
            traits.insert((*name).into(), json!(value));
        }
    }
    for (column, name) in FLAG_COLUMNS {
        match row.get(column) {
            "Yes" => traits.insert((*name).into(), json!(true)),
            "No" => traits.insert((*name).into(), json!(false)),
            _ => None,
        };
    }
    push(
        arrival,
        object(json!({"type": "identify", "traits": traits})),
    );

    // Visits fall on hashed days of the active period, in time order.
    let seed = xxh3_64(lead_id.as_bytes());
    let sessions = visits.max(u64::from(pages > 0 || minutes > 0));
    let mut starts: Vec<i64> = (0..sessions)
        .map(|v| {
            let h = xxh3_64(&[seed.to_le_bytes(), v.to_le_bytes()].concat());
            // After the identify, within the active days.
            60_000 + (h % (ACTIVE_DAYS * MS_PER_DAY - 3_600_000) as u64) as i64
        })
        .collect();
    starts.sort_unstable();
    for (v, offset) in starts.iter().enumerate() {
        let at = arrival + offset;
        if (v as u64) < visits {
            push(
                at,
                object(json!({"type": "track", "event": "Session Started"})),
            );
        }
        let dealt = |total: u64| total / sessions + u64::from((v as u64) < total % sessions);
        for p in 0..dealt(pages) {
            push(
                at + 1_000 + p as i64 * 20_000,
                object(json!({"type": "page", "name": "Course Page",
                    "properties": {"path": "/courses"}})),
            );
        }
        for m in 0..dealt(minutes) {
            push(
                at + 60_000 * (m as i64 + 1),
                object(json!({"type": "track", "event": "Engaged Minute"})),
            );
        }
    }
    let last_activity = row.get("Last Activity");
    if !last_activity.is_empty() {
        push(
            arrival + ACTIVE_DAYS * MS_PER_DAY,
            object(json!({"type": "track", "event": last_activity})),
        );
    }
    Ok(LeadEvents {
        lead_id,
        converted,
        events,
    })
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("built from an object literal"),
    }
}
