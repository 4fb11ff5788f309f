//! Realistic sample traffic: Segment-spec JSON messages from a seeded,
//! deterministic generator of B2B leads. Used by the demo feed, tests and
//! benchmarks; the same seed always gives the same messages.

use serde_json::{json, Value as Json};

use crate::core::time::{Timestamp, MS_PER_DAY};

#[derive(Debug, Clone)]
pub struct SampleConfig {
    pub seed: u64,
    pub leads: usize,
    /// Event time of the first event.
    pub start: Timestamp,
    /// Events spread over this many days.
    pub days: i64,
    /// Share of leads that first browse anonymously and are then aliased.
    pub anonymous_share: f64,
    /// Share of identified leads that sales works: an MQL rejected (and
    /// recycled), an opportunity, a deal won or lost. Drawn apart from the
    /// rest, so other leads' events do not change with it.
    pub sales_share: f64,
    /// Accounts the leads work at. Up to the ten built-in companies, the
    /// leads spread over those (thousands of people per account with many
    /// leads); more: numbered companies of the same ten kinds, so accounts
    /// stay the size of real ones (`leads / companies` people each).
    pub companies: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            seed: 7,
            leads: 1000,
            start: Timestamp(1_764_547_200_000), // 2025-12-01T00:00:00Z
            days: 30,
            anonymous_share: 0.2,
            sales_share: 0.0,
            companies: COMPANIES.len(),
        }
    }
}

struct Persona {
    title: &'static str,
    department: &'static str,
    /// How actively this kind of lead engages (0..1).
    intent: f64,
}

const PERSONAS: &[Persona] = &[
    Persona {
        title: "Chief Marketing Officer",
        department: "marketing",
        intent: 0.5,
    },
    Persona {
        title: "VP of Sales",
        department: "sales",
        intent: 0.6,
    },
    Persona {
        title: "Head of Growth",
        department: "growth",
        intent: 0.7,
    },
    Persona {
        title: "Director of Demand Generation",
        department: "marketing",
        intent: 0.8,
    },
    Persona {
        title: "Marketing Operations Manager",
        department: "marketing",
        intent: 0.9,
    },
    Persona {
        title: "Sales Development Lead",
        department: "sales",
        intent: 0.6,
    },
    Persona {
        title: "Software Engineer",
        department: "engineering",
        intent: 0.3,
    },
    Persona {
        title: "Graduate Student",
        department: "education",
        intent: 0.4,
    },
    Persona {
        title: "Marketing Intern",
        department: "marketing",
        intent: 0.3,
    },
    Persona {
        title: "Founder",
        department: "executive",
        intent: 0.7,
    },
];

const COMPANIES: &[(&str, &str, u64, u64)] = &[
    ("Acme Analytics", "software", 850, 120_000_000),
    ("Northwind Retail", "e-commerce", 4200, 900_000_000),
    (
        "Globex Financial",
        "financial services",
        12000,
        5_000_000_000,
    ),
    ("Initech", "software", 140, 18_000_000),
    ("Umbrella Health", "healthcare", 30000, 9_000_000_000),
    ("Stark Logistics", "logistics", 2600, 400_000_000),
    ("Hooli", "saas", 600, 75_000_000),
    ("Pied Piper", "saas", 35, 2_000_000),
    ("Vandelay Imports", "wholesale", 60, 8_000_000),
    ("Soylent Media", "marketing", 320, 40_000_000),
];

const COUNTRIES: &[&str] = &["US", "US", "US", "GB", "DE", "CA", "IN", "FR", "BR", "AU"];
const PERSONAL_DOMAINS: &[&str] = &["gmail.com", "yahoo.com", "outlook.com"];

/// (weight, kind, name-or-path)
const ACTIONS: &[(u32, &str, &str)] = &[
    (30, "page", "/blog/lead-scoring-guide"),
    (14, "page", "/product"),
    (8, "page", "/features/scoring"),
    (9, "page", "/pricing"),
    (3, "page", "/contact"),
    (3, "page", "/careers"),
    (16, "track", "Email Opened"),
    (6, "track", "Email Link Clicked"),
    (4, "track", "Whitepaper Downloaded"),
    (2, "track", "Webinar Attended"),
    (2, "track", "Form Submitted"),
    (1, "track", "Demo Requested"),
    (1, "track", "Trial Started"),
    (1, "track", "Unsubscribed"),
];

/// Generates every message of every lead, ordered by event time (ties by
/// message id). Each message is one line of Segment JSON.
pub fn generate(config: &SampleConfig) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(config.seed);
    let mut messages: Vec<(i64, String, Json)> = Vec::new();
    let span_ms = config.days.max(1) * MS_PER_DAY;
    let total_weight: u32 = ACTIONS.iter().map(|a| a.0).sum();
    for lead in 0..config.leads {
        let persona = &PERSONAS[rng.usize(..PERSONAS.len())];
        let (kind, industry, employees, revenue) = COMPANIES[rng.usize(..COMPANIES.len())];
        // Drawn only when asked for, so the default traffic stays as it was.
        let company = if config.companies > COMPANIES.len() {
            format!("{kind} {}", rng.usize(..config.companies))
        } else {
            kind.to_string()
        };
        let company = company.as_str();
        let user_id = format!("lead-{:06}", lead);
        let personal = rng.f64() < 0.25;
        let first_name = ["alex", "sam", "jordan", "taylor", "morgan", "casey"][rng.usize(..6)];
        let domain = if personal {
            PERSONAL_DOMAINS[rng.usize(..PERSONAL_DOMAINS.len())].to_string()
        } else {
            format!("{}.example", company.to_ascii_lowercase().replace(' ', ""))
        };
        let email = format!("{first_name}.{lead}@{domain}");
        let first_touch = config.start.millis() + rng.i64(0..span_ms * 2 / 3);
        let mut t = first_touch;
        let mut seq = 0u32;
        let next_id = |seq: &mut u32| {
            *seq += 1;
            format!("{user_id}-m{seq:04}")
        };

        let anonymous_id =
            (rng.f64() < config.anonymous_share).then(|| format!("anon-{:016x}", rng.u64(..)));
        if let Some(anon) = &anonymous_id {
            for _ in 0..rng.usize(1..4) {
                t += rng.i64(60_000..6 * 3_600_000);
                let path = ["/product", "/pricing", "/blog/lead-scoring-guide"][rng.usize(..3)];
                let mut m = page(&next_id(&mut seq), None, Some(anon), path, t);
                m["anonymousId"] = json!(anon);
                messages.push((
                    t,
                    m["messageId"].as_str().unwrap_or_default().to_string(),
                    m,
                ));
            }
            t += rng.i64(60_000..3_600_000);
            let id = next_id(&mut seq);
            messages.push((
                t,
                id.clone(),
                json!({"type": "alias", "messageId": id, "userId": user_id, "previousId": anon, "timestamp": iso(t)}),
            ));
        }

        t += rng.i64(1_000..600_000);
        let mut traits = json!({
            "email": email,
            "title": persona.title,
            "department": persona.department,
            "country": COUNTRIES[rng.usize(..COUNTRIES.len())],
            "company": {"name": company, "industry": industry, "employees": employees, "annual_revenue": revenue},
        });
        if rng.f64() < 0.3 {
            traits["budget"] = json!((["<10k", "10k-50k", "50k+"][rng.usize(..3)]));
        }
        let id = next_id(&mut seq);
        messages.push((
            t,
            id.clone(),
            json!({"type": "identify", "messageId": id, "userId": user_id, "traits": traits, "timestamp": iso(t),
                   "context": {"library": {"name": "analytics.js", "version": "5.2.0"}}}),
        ));
        if rng.f64() < 0.5 {
            t += rng.i64(1_000..60_000);
            let id = next_id(&mut seq);
            let group_id = format!("acct-{}", company.to_ascii_lowercase().replace(' ', "-"));
            messages.push((
                t,
                id.clone(),
                json!({"type": "group", "messageId": id, "userId": user_id, "groupId": group_id, "timestamp": iso(t),
                       "traits": {"name": company, "industry": industry, "employees": employees}}),
            ));
        }

        let actions = (persona.intent * rng.f64() * 40.0) as usize;
        for _ in 0..actions {
            t += rng.i64(600_000..3 * MS_PER_DAY / 2);
            if t > config.start.millis() + span_ms {
                break;
            }
            let mut pick = rng.u32(..total_weight);
            let (_, kind, what) = ACTIONS
                .iter()
                .find(|(w, _, _)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .copied()
                .unwrap_or(ACTIONS[0]);
            let id = next_id(&mut seq);
            let m = if kind == "page" {
                page(&id, Some(&user_id), None, what, t)
            } else {
                let properties = match what {
                    "Webinar Attended" => {
                        json!({"webinar": "Scoring 101", "minutes_watched": rng.u32(2..60)})
                    }
                    "Form Submitted" => {
                        json!({"form_type": (["contact", "newsletter", "event"][rng.usize(..3)])})
                    }
                    "Email Opened" | "Email Link Clicked" => {
                        json!({"campaign": "nurture-q4", "email_id": rng.u32(1..20)})
                    }
                    "Whitepaper Downloaded" => json!({"asset": "state-of-b2b-marketing-2026.pdf"}),
                    _ => json!({}),
                };
                json!({"type": "track", "messageId": id, "userId": user_id, "event": what, "properties": properties,
                       "timestamp": iso(t), "context": {"ip": "203.0.113.7", "library": {"name": "analytics-node", "version": "6.0.0"}}})
            };
            messages.push((t, id, m));
        }
        if config.sales_share > 0.0 {
            let mut sales = fastrand::Rng::with_seed(
                config.seed ^ (lead as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            if sales.f64() < config.sales_share {
                let end = config.start.millis() + span_ms;
                let mut at = first_touch + sales.i64(MS_PER_DAY..span_ms / 2);
                let mut story = vec!["Lead Disqualified"];
                if sales.f64() < 0.6 {
                    story.push("Opportunity Created");
                    story.push(if sales.bool() {
                        "Deal Won"
                    } else {
                        "Deal Lost"
                    });
                }
                for event in story {
                    if at > end {
                        break;
                    }
                    let id = next_id(&mut seq);
                    messages.push((
                        at,
                        id.clone(),
                        json!({"type": "track", "messageId": id, "userId": user_id, "event": event,
                               "properties": {"source": "crm"}, "timestamp": iso(at)}),
                    ));
                    at += sales.i64(MS_PER_DAY..10 * MS_PER_DAY);
                }
            }
        }
    }
    messages.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    messages
        .into_iter()
        .map(|(_, _, m)| m.to_string())
        .collect()
}

fn page(id: &str, user_id: Option<&str>, anonymous_id: Option<&str>, path: &str, t: i64) -> Json {
    let name = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("home");
    let mut m = json!({
        "type": "page", "messageId": id, "name": name,
        "properties": {"path": path, "url": format!("https://www.example.com{path}"), "title": name},
        "context": {"page": {"path": path, "url": format!("https://www.example.com{path}"), "referrer": "https://www.google.com/"},
                    "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)"},
        "timestamp": iso(t),
    });
    if let Some(u) = user_id {
        m["userId"] = json!(u);
    }
    if let Some(a) = anonymous_id {
        m["anonymousId"] = json!(a);
    }
    m
}

fn iso(ms: i64) -> String {
    Timestamp(ms).to_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_messages() {
        let config = SampleConfig {
            leads: 20,
            ..SampleConfig::default()
        };
        assert_eq!(generate(&config), generate(&config));
        let other = SampleConfig {
            seed: 8,
            ..config.clone()
        };
        assert_ne!(generate(&config), generate(&other));
    }
}
