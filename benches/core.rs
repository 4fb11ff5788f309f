//! Core throughput and memory: decode a typical ~300-byte Segment `track`
//! call and score it, per core; `replay` of the sample generator's
//! realistic mix, per core; re-score leads in place under changed
//! rules (points, a tier line), per core; and the steady-state heap bytes
//! per lead. The realistic replay and the memory report are also measured
//! for a rules file of two scores (`[[scores]]`), beside one.
//!
//!     cargo bench --bench core
//!
//! Throughput comes from criterion (events/s = "thrpt"); the memory report
//! is printed at the end, measured with a counting allocator in this run.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput};
use leadscore::codec::output::output_to_json;
use leadscore::codec::{Decoder, Encoding};
use leadscore::core::{Engine, Event, Outcome, Rules, Timestamp};

/// Counts live heap bytes on top of the allocator `leadscore` runs with.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const T0: i64 = 1_764_547_200_000;
const MESSAGES: usize = 20_000;
const LEADS: usize = 2_000;

#[path = "../tests/common/scores.rs"]
mod scores;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/leadscore.toml");

fn rules() -> Rules {
    leadscore::config::load_rules(std::path::Path::new(EXAMPLE)).expect("example rules")
}

/// The example's rules as two scores: the example's, and one with other
/// points and tier lines (see `tests/common/scores.rs`).
fn two_scores() -> Vec<Rules> {
    let text = std::fs::read_to_string(EXAMPLE).expect("example rules");
    let rules = text
        .split("\n[kafka]\n")
        .next()
        .expect("rules before [kafka]");
    let two = scores::two_scores(rules);
    leadscore::config::parse_scores(&two, std::path::Path::new(EXAMPLE)).expect("two scores")
}

const EVENTS: &[&str] = &[
    "Email Opened",
    "Email Link Clicked",
    "Whitepaper Downloaded",
    "Webinar Attended",
    "Product Viewed",
];

/// Typical `track` calls of ~300 bytes, spread over `LEADS` leads, one
/// minute apart in event time.
fn messages() -> Vec<Vec<u8>> {
    (0..MESSAGES)
        .map(|i| {
            format!(
                r#"{{"type":"track","messageId":"{:08x}-8b7a-4c3d-9e2f-1a2b3c4d5e6f","userId":"lead-{:06}","event":"{}","properties":{{"campaign":"nurture-q4","email_id":{}}},"context":{{"ip":"203.0.113.7","library":{{"name":"analytics-node","version":"6.0.0"}}}},"timestamp":"{}"}}"#,
                i,
                (i * 7919) % LEADS,
                EVENTS[i % EVENTS.len()],
                i % 20,
                Timestamp(T0 + i as i64 * 60_000).to_rfc3339()
            )
            .into_bytes()
        })
        .collect()
}

fn decoded(decoder: &Decoder, messages: &[Vec<u8>]) -> Vec<Event> {
    messages
        .iter()
        .map(|m| {
            decoder
                .decode(m, Encoding::Json)
                .unwrap()
                .pop()
                .unwrap()
                .unwrap()
        })
        .collect()
}

fn throughput(c: &mut Criterion) {
    let rules = Arc::new(rules());
    let messages = messages();
    let mean_len = messages.iter().map(Vec::len).sum::<usize>() / messages.len();
    println!("typical track message: {mean_len} bytes on average");
    let decoder = Decoder::for_rules(&rules);
    let keep_all = Decoder::keep_all();
    let events = decoded(&decoder, &messages);

    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.sample_size(20);
    group.bench_function("decode_json", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(decoder.decode(black_box(m), Encoding::Json).unwrap());
            }
        })
    });
    group.bench_function("decode_json_all_fields", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(keep_all.decode(black_box(m), Encoding::Json).unwrap());
            }
        })
    });
    group.bench_function("score", |b| {
        b.iter_batched(
            || Engine::new(rules.clone()),
            |mut engine| {
                for e in &events {
                    black_box(engine.apply(e, e.timestamp));
                }
                engine
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("decode_json_and_score", |b| {
        b.iter_batched(
            || Engine::new(rules.clone()),
            |mut engine| {
                for m in &messages {
                    for e in decoder.decode(m, Encoding::Json).unwrap() {
                        let e = e.unwrap();
                        black_box(engine.apply(&e, e.timestamp));
                    }
                }
                engine
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// `replay` of realistic traffic, in memory: the sample generator's mix
/// (identify calls with a dozen traits, group calls, page views, track
/// events, anonymous browsing merged by `alias`, sales dispositions),
/// decoded and scored with accounts, every output serialised as `replay`
/// writes it. Throughput is in messages: compare with decode + score of
/// plain `track` calls above, measured in the same run.
fn realistic(c: &mut Criterion) {
    let rules = rules();
    let lines = leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads: LEADS,
        ..Default::default()
    });
    println!("realistic mix: {} messages over {LEADS} leads", lines.len());
    let mut group = c.benchmark_group("realistic");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.sample_size(20);
    let two = two_scores();
    for (name, scores) in [
        ("replay_mix", std::slice::from_ref(&rules)),
        ("replay_mix_two_scores", &two[..]),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || leadscore::replay::Replayer::of_scores(scores, false),
                |mut replayer| {
                    let mut written = 0usize;
                    for (n, line) in lines.iter().enumerate() {
                        replayer.feed_line(
                            n as u64 + 1,
                            line,
                            &mut |output| written += output_to_json(output).len(),
                            &mut |rejected| panic!("a sample line was rejected: {rejected}"),
                        );
                    }
                    black_box(written);
                    replayer
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// Heap bytes held per lead after a realistic history (identify, group,
/// pages, tracks; the sample generator's mix), with the dedup window as
/// configured and with it reduced to one remembered id; then the same for
/// a file of two scores (an engine per score, as `replay` and a process
/// per score hold them).
fn memory_report() {
    let events: Vec<Event> = {
        let decoder = Decoder::for_scores(&two_scores());
        leadscore::sample::generate(&leadscore::sample::SampleConfig {
            leads: 20_000,
            ..Default::default()
        })
        .iter()
        .flat_map(|line| decoder.decode(line.as_bytes(), Encoding::Json).unwrap())
        .map(Result::unwrap)
        .collect()
    };
    println!();
    for (what, scores) in [("one score", vec![rules()]), ("two scores", two_scores())] {
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let mut engines: Vec<Engine> = scores
            .into_iter()
            .map(|rules| Engine::new(Arc::new(rules)))
            .collect();
        for engine in &mut engines {
            for e in &events {
                assert!(matches!(engine.apply(e, e.timestamp), Outcome::Applied(_)));
                // Sent on at once by the runtime, not held.
                drop(engine.take_account_updates());
            }
        }
        let held = (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64;
        let leads = engines[0].lead_count() as f64;
        let dedup: f64 = engines.iter().map(|e| e.remembered_id_bytes() as f64).sum();
        println!(
            "memory ({what}): {} events over {leads} leads ({:.1} events/lead), {} message ids remembered",
            events.len(),
            events.len() as f64 / leads,
            engines.iter().map(Engine::remembered_ids).sum::<usize>()
        );
        println!(
            "memory ({what}): {:.0} heap bytes per lead in all",
            held / leads
        );
        println!(
            "memory ({what}): {:.0} heap bytes per lead of it for the dedup window",
            dedup / leads
        );
        println!(
            "memory ({what}): {:.0} heap bytes per lead without the dedup window",
            (held - dedup) / leads
        );
        drop(engines);
    }
}

/// Re-scoring in place, as a restart with new points does it per
/// partition: every lead of a realistic history (the sample generator's
/// mix) migrated, restored and re-evaluated, with the outputs of those
/// that moved. Throughput is in leads.
fn rescore(c: &mut Criterion) {
    use leadscore::core::engine::StateChange;
    use leadscore::core::migration::{Migration, RulesOutline};
    use leadscore::core::output::Cause;

    let old = Arc::new(rules());
    let decoder = Decoder::for_rules(&old);
    let mut engine = Engine::new(old.clone()).track_changes();
    for line in leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads: 20_000,
        ..Default::default()
    }) {
        for event in decoder.decode(line.as_bytes(), Encoding::Json).unwrap() {
            let event = event.unwrap();
            engine.apply(&event, event.timestamp);
        }
    }
    let mut leads = Vec::new();
    engine.take_changes(|id, change| {
        if let StateChange::Lead(state) = change {
            leads.push((id.to_string(), state.clone()));
        }
    });
    // What calibrate changes: every rule's points (caps with them), the
    // base, a tier line.
    let mut new = (*old).clone();
    for rule in &mut new.engagement {
        rule.points *= 0.8;
        if let Some(cap) = rule.cap.as_mut() {
            cap.points *= 0.8;
        }
    }
    new.settings.base += 3.0;
    let last = new.tiers.len() - 1;
    new.tiers[last].min_score -= 5.0;
    let new = Arc::new(new);
    let migration = Migration::plan(&RulesOutline::of(&old), &new).expect("in place");
    let cause = Cause::RulesChanged(new.fingerprint().into());

    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(leads.len() as u64));
    group.sample_size(20);
    group.bench_function("rescore_in_place", |b| {
        b.iter_batched(
            || leads.clone(),
            |leads| {
                let mut engine = Engine::new(new.clone()).track_changes();
                for (id, state) in leads {
                    engine.restore_lead(&id, migration.lead(state));
                }
                black_box(engine.rescore(&cause));
                engine
            },
            BatchSize::LargeInput,
        )
    });
    // The re-scoring pass alone, over leads already restored and migrated:
    // what a restart with new points adds to a restore.
    group.bench_function("rescore_restored", |b| {
        b.iter_batched(
            || {
                let mut engine = Engine::new(new.clone()).track_changes();
                for (id, state) in leads.clone() {
                    engine.restore_lead(&id, migration.lead(state));
                }
                engine
            },
            |mut engine| {
                black_box(engine.rescore(&cause));
                engine
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    throughput(&mut criterion);
    realistic(&mut criterion);
    rescore(&mut criterion);
    criterion.final_summary();
    memory_report();
}
