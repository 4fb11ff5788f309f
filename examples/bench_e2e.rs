//! End-to-end benchmark on a local Apache Kafka, all in one run:
//!
//! (a) a bare transactional consume -> produce passthrough (same batch
//!     bounds and transaction settings as leadscore), (b) `leadscore run`
//!     exactly-once, (c) `leadscore run` at-least-once, (d) (b) with
//!     `threads = 2`, each over the same backlog of N events of realistic
//!     traffic (the sample generator's mix: identify calls with a dozen
//!     traits, group calls, page views, track events, a fifth of the leads
//!     browsing anonymously before an `alias`, sales dispositions; accounts
//!     of about 20 people), and (e) (b) over N plain ~300-byte `track`
//!     events, the easy case (throughput, events/s, and the CPU time and
//!     peak resident memory of each process); where Java and Maven are
//!     present, the same job side by side over the realistic backlog: (f)
//!     the Kafka Streams application of benches/kafka-streams with a
//!     RocksDB store, (g) with an in-memory store, and (h) (b) under the
//!     shipped rules without what that application leaves out (accounts,
//!     lifecycle rules, bot filters); then event-to-output latency
//!     (p50/p99) of (a) and (b) with
//!     plain `track` events produced at a steady rate while they run, and
//!     of (b) with those events among the realistic mix produced at 70 %
//!     of the throughput (b) measured.
//!
//!     cargo build --release --bin leadscore --example bench_e2e
//!     target/release/examples/bench_e2e [EVENTS]        (default 1,000,000)
//!
//! Starts its own broker with scripts/kafka.sh; run from the repository.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[path = "support/kafka.rs"]
mod kafka;

const PARTITIONS: i32 = 4;
const LEADS: usize = 50_000;
const LATENCY_EVENTS: usize = 10_000;
const LATENCY_RATE_PER_S: u64 = 2_000;
const LOADED_SECONDS: u64 = 30;
const KAFKA_STREAMS_DIR: &str = "benches/kafka-streams";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: usize = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |a| a.parse())?;
    let broker = kafka::start_kafka()?;
    println!(
        "broker: Apache Kafka on {broker}; {events} events, {PARTITIONS} partitions, {LEADS} leads"
    );
    let start_ms = now_ms() - 3_600_000;

    // Warm the broker (JIT, page cache, coordinators) so that what runs
    // first is not penalised.
    create_topic(&broker, "bench-warm-in")?;
    create_topic(&broker, "bench-warm-out")?;
    produce(
        &broker,
        "bench-warm-in",
        track_events(0..100_000, start_ms),
        None,
    )?;
    run_passthrough(
        &broker,
        "bench-warm-in",
        "bench-warm-out",
        "bench-warm",
        100_000,
        None,
    )?;
    println!("warmed up the broker with a 100,000-event passthrough");

    let input = "bench-in";
    create_topic(&broker, input)?;
    let t = Instant::now();
    let realistic = realistic_events(events, start_ms);
    produce(&broker, input, realistic.into_iter(), None)?;
    println!(
        "produced the realistic backlog in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let track_input = "bench-track-in";
    create_topic(&broker, track_input)?;
    produce(
        &broker,
        track_input,
        track_events(0..events, start_ms),
        None,
    )?;

    create_topic(&broker, "bench-pass-out")?;
    let passthrough =
        run_passthrough(&broker, input, "bench-pass-out", "bench-pass", events, None)?;
    println!(
        "(a) passthrough, exactly-once:   {:>9.0} events/s",
        passthrough
    );
    let eos = run_leadscore(&broker, input, "bench-eos", "exactly_once", 1, events)?;
    println!(
        "(b) leadscore run, exactly-once: {:>9.0} events/s   {}",
        eos.rate,
        eos.text(events)
    );
    let alo = run_leadscore(&broker, input, "bench-alo", "at_least_once", 1, events)?;
    println!(
        "(c) leadscore run, at-least-once:{:>9.0} events/s   {}",
        alo.rate,
        alo.text(events)
    );
    let two = run_leadscore(&broker, input, "bench-eos2", "exactly_once", 2, events)?;
    println!(
        "(d) as (b), threads = 2:         {:>9.0} events/s   {}",
        two.rate,
        two.text(events)
    );
    let track = run_leadscore(
        &broker,
        track_input,
        "bench-track",
        "exactly_once",
        1,
        events,
    )?;
    println!(
        "(e) as (b), plain track events:  {:>9.0} events/s   {}",
        track.rate,
        track.text(events)
    );
    println!(
        "(b)/(a) = {:.2}   (b)/(c) = {:.2}   (d)/(b) = {:.2}   (b)/(e) = {:.2}",
        eos.rate / passthrough,
        eos.rate / alo.rate,
        two.rate / eos.rate,
        eos.rate / track.rate
    );

    // The same job side by side: Kafka Streams, and leadscore without the
    // accounts, lifecycle rules and filters the Streams application lacks.
    if build_kafka_streams() {
        let rocks = run_kafka_streams(&broker, input, "bench-kstreams-rocksdb", "rocksdb", events)?;
        println!(
            "(f) Kafka Streams, RocksDB store: {:>9.0} events/s   {}",
            rocks.rate,
            rocks.text(events)
        );
        let memory = run_kafka_streams(&broker, input, "bench-kstreams-memory", "memory", events)?;
        println!(
            "(g) Kafka Streams, in-memory:    {:>9.0} events/s   {}",
            memory.rate,
            memory.text(events)
        );
        let config = same_job_config()?;
        let same = run_leadscore_with(
            &broker,
            input,
            "bench-same-job",
            ("exactly_once", 1),
            config.path(),
            events,
        )?;
        println!(
            "(h) as (b), the same job as (f): {:>9.0} events/s   {}",
            same.rate,
            same.text(events)
        );
        println!(
            "(h)/(f) = {:.2}   (h)/(g) = {:.2}   (b)/(f) = {:.2}   CPU per event (f)/(h) = {:.2}",
            same.rate / rocks.rate,
            same.rate / memory.rate,
            eos.rate / rocks.rate,
            rocks.cpu.unwrap_or(f64::NAN) / same.cpu.unwrap_or(f64::NAN)
        );
    }

    let (p50, p99) = latency_passthrough(&broker, start_ms)?;
    println!("(a) latency event -> output: p50 {p50:.0} ms, p99 {p99:.0} ms");
    let (p50, p99) = latency_leadscore(&broker, start_ms, "bench-lat-ls", Paced::probes_only())?;
    println!("(b) latency event -> output: p50 {p50:.0} ms, p99 {p99:.0} ms");
    // Under load: the realistic mix at 70 % of (b)'s throughput, for
    // LOADED_SECONDS, with the timed probes among it.
    let rate = (eos.rate * 0.7) as u64;
    let load = realistic_events(
        (rate * LOADED_SECONDS).saturating_sub(LATENCY_EVENTS as u64) as usize,
        now_ms(),
    );
    let (p50, p99) = latency_leadscore(&broker, start_ms, "bench-lat-load", Paced { load, rate })?;
    println!(
        "(b) latency at 70 % load ({rate} realistic messages/s): p50 {p50:.0} ms, p99 {p99:.0} ms"
    );
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn create_topic(broker: &str, topic: &str) -> Result<(), Box<dyn std::error::Error>> {
    kafka::create_topic(broker, topic, PARTITIONS)
}

/// A typical `track` call (~300 bytes), like the core benchmark's.
fn event(i: usize, at_ms: i64) -> (String, String) {
    let lead = format!("lead-{:06}", (i * 7919) % LEADS);
    let names = [
        "Email Opened",
        "Email Link Clicked",
        "Whitepaper Downloaded",
        "Webinar Attended",
        "Product Viewed",
    ];
    let at = chrono::DateTime::from_timestamp_millis(at_ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let json = format!(
        r#"{{"type":"track","messageId":"bench-{i:09}","userId":"{lead}","event":"{}","properties":{{"campaign":"nurture-q4","email_id":{}}},"context":{{"ip":"203.0.113.7","library":{{"name":"analytics-node","version":"6.0.0"}}}},"timestamp":"{at}"}}"#,
        names[i % names.len()],
        i % 20
    );
    (lead, json)
}

/// Keyed plain `track` events `range` (event time start_ms + i ms).
fn track_events(
    range: std::ops::Range<usize>,
    start_ms: i64,
) -> impl Iterator<Item = (String, String)> {
    range.map(move |i| event(i, start_ms + i as i64))
}

/// The first `events` messages of the sample generator's realistic traffic
/// (about 12.6 per lead, over the 30 days before `end_ms`), keyed by lead.
fn realistic_events(events: usize, end_ms: i64) -> Vec<(String, String)> {
    let leads = events / 12 + 1;
    let lines = leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads,
        seed: 11,
        start: leadscore::core::Timestamp(end_ms - 31 * 86_400_000),
        days: 30,
        anonymous_share: 0.2,
        sales_share: 0.1,
        companies: (leads / 20).max(10),
    });
    lines
        .into_iter()
        .take(events)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(&line).expect("sample JSON");
            let key = v["userId"]
                .as_str()
                .or(v["anonymousId"].as_str())
                .expect("a lead id")
                .to_string();
            (key, line)
        })
        .collect()
}

/// Produces `records` in order; with `rate`, at that many per second.
fn produce(
    broker: &str,
    topic: &str,
    records: impl Iterator<Item = (String, String)>,
    rate: Option<u64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", if rate.is_some() { "0" } else { "20" })
        .set("batch.size", "1000000")
        .create()?;
    let began = Instant::now();
    for (n, (key, value)) in records.enumerate() {
        if let Some(rate) = rate {
            let due = Duration::from_micros(n as u64 * 1_000_000 / rate);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

/// Input messages `consumer`'s group has committed, over all partitions.
fn committed_total(consumer: &BaseConsumer, topic: &str) -> i64 {
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(topic, p);
    }
    consumer
        .committed_offsets(list, Duration::from_secs(10))
        .map(|c| {
            c.elements()
                .iter()
                .map(|e| {
                    if let Offset::Offset(o) = e.offset() {
                        o
                    } else {
                        0
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Waits until `group` has committed `events` input messages; events/s
/// from the first to the last commit seen (group start-up excluded).
fn wait_for(broker: &str, group: &str, topic: &str, events: usize) -> f64 {
    // One client for all the polling: a new one per poll would load the
    // broker enough to skew what is measured.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .create()
        .expect("a client");
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let done = committed_total(&consumer, topic);
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done));
        }
        if done >= events as i64 {
            let (t0, n0) = first.expect("progress seen");
            let seconds = t0.elapsed().as_secs_f64().max(1e-3);
            return (events as i64 - n0) as f64 / seconds;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (a): consume -> produce each message unchanged, in transactions bounded
/// like leadscore's (100 ms or 10,000 messages), offsets in the transaction,
/// flushed before the commit as leadscore flushes.
/// Reports the first failed delivery, for a clear error.
struct Deliveries;

impl rdkafka::ClientContext for Deliveries {}

impl rdkafka::producer::ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| eprintln!("delivery to {} failed: {e}", m.topic()));
        }
    }
}

fn run_passthrough(
    broker: &str,
    input: &str,
    output: &str,
    group: &str,
    events: usize,
    stop: Option<Arc<AtomicBool>>,
) -> Result<f64, Box<dyn std::error::Error>> {
    let producer: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("transactional.id", format!("{group}-txn"))
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("transaction.timeout.ms", "10000")
        .create_with_context(Deliveries)?;
    producer.init_transactions(Duration::from_secs(30))?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    consumer.subscribe(&[input])?;
    let broker_owned = broker.to_string();
    let (group_owned, input_owned) = (group.to_string(), input.to_string());
    let measure = std::thread::spawn(move || {
        if events == 0 {
            0.0
        } else {
            wait_for(&broker_owned, &group_owned, &input_owned, events)
        }
    });
    let mut consumed = 0usize;
    loop {
        if stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            break;
        }
        if stop.is_none() && consumed >= events {
            break;
        }
        let deadline = Instant::now() + Duration::from_millis(100);
        let mut batch = Vec::new();
        while batch.len() < 10_000 && Instant::now() < deadline {
            if let Some(m) = consumer.poll(deadline.saturating_duration_since(Instant::now())) {
                batch.push(m?.detach());
            }
        }
        if batch.is_empty() {
            continue;
        }
        producer.begin_transaction()?;
        let mut offsets = HashMap::new();
        for m in &batch {
            let mut record =
                BaseRecord::<[u8], [u8]>::to(output).payload(m.payload().unwrap_or_default());
            if let Some(key) = m.key() {
                record = record.key(key);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        producer.poll(Duration::from_millis(10));
                        record = back;
                    }
                }
            }
            offsets.insert(m.partition(), m.offset() + 1);
        }
        let mut list = TopicPartitionList::new();
        for (p, o) in offsets {
            list.add_partition_offset(input, p, Offset::Offset(o))?;
        }
        producer.send_offsets_to_transaction(
            &list,
            &consumer.group_metadata().ok_or("no group")?,
            Duration::from_secs(30),
        )?;
        // As leadscore does: rdkafka's own flush inside commit_transaction
        // waits in 100 ms slices.
        leadscore::kafka::flush_promptly(&producer, Duration::from_secs(30))?;
        producer.commit_transaction(Duration::from_secs(30))?;
        consumed += batch.len();
    }
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    Ok(measure.join().unwrap())
}

fn leadscore_process(
    broker: &str,
    input: &str,
    name: &str,
    guarantee: &str,
    threads: usize,
    config: &Path,
) -> std::io::Result<std::process::Child> {
    let mut command = Command::new("target/release/leadscore");
    if threads > 1 {
        command.env("LEADSCORE_PROCESSING_THREADS", threads.to_string());
    }
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .env("LEADSCORE_KAFKA_BOOTSTRAP_SERVERS", broker)
        .env("LEADSCORE_KAFKA_GROUP_ID", name)
        .env("LEADSCORE_KAFKA_TRANSACTIONAL_ID", format!("{name}-txn"))
        .env("LEADSCORE_KAFKA_INPUT_TOPIC", input)
        .env("LEADSCORE_KAFKA_OUTPUT_TOPIC", format!("{name}-out"))
        .env("LEADSCORE_KAFKA_DEAD_LETTER_TOPIC", format!("{name}-dlq"))
        .env(
            "LEADSCORE_KAFKA_CHANGELOG_TOPIC",
            format!("{name}-changelog"),
        )
        .env(
            "LEADSCORE_KAFKA_IDENTITY_TOPIC",
            format!("{name}-identities"),
        )
        .env(
            "LEADSCORE_KAFKA_ACCOUNT_UPDATES_TOPIC",
            format!("{name}-account-updates"),
        )
        .env(
            "LEADSCORE_KAFKA_ACCOUNT_CHANGELOG_TOPIC",
            format!("{name}-account-changelog"),
        )
        // This benchmark's producer is librdkafka's.
        .env("LEADSCORE_KAFKA_INPUT_PARTITIONER", "consistent_random")
        .env("LEADSCORE_PROCESSING_GUARANTEE", guarantee)
        .stdout(Stdio::null())
        .spawn()
}

/// What one run over the backlog measured: events/s, and the CPU seconds
/// (user + system) and peak resident memory of the process until it had
/// committed all of it.
struct Measured {
    rate: f64,
    cpu: Option<f64>,
    peak_rss_mb: Option<f64>,
}

impl Measured {
    fn text(&self, events: usize) -> String {
        let memory = self.peak_rss_mb.map_or_else(
            || "peak RSS unknown".into(),
            |mb| format!("peak RSS {mb:.0} MB"),
        );
        format!("{}   {memory}", cpu_text(self.cpu, events))
    }
}

/// Runs `child` until `group` has committed `events` messages of `input`,
/// then stops it with SIGTERM.
fn measure(
    mut child: std::process::Child,
    broker: &str,
    group: &str,
    input: &str,
    events: usize,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let rate = wait_for(broker, group, input, events);
    let measured = Measured {
        rate,
        cpu: cpu_seconds(child.id()),
        peak_rss_mb: peak_rss_mb(child.id()),
    };
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    child.wait()?;
    Ok(measured)
}

/// `leadscore run` over the backlog under the shipped configuration.
fn run_leadscore(
    broker: &str,
    input: &str,
    name: &str,
    guarantee: &str,
    threads: usize,
    events: usize,
) -> Result<Measured, Box<dyn std::error::Error>> {
    run_leadscore_with(
        broker,
        input,
        name,
        (guarantee, threads),
        Path::new("config/leadscore.toml"),
        events,
    )
}

fn run_leadscore_with(
    broker: &str,
    input: &str,
    name: &str,
    (guarantee, threads): (&str, usize),
    config: &Path,
    events: usize,
) -> Result<Measured, Box<dyn std::error::Error>> {
    assert!(
        Path::new("target/release/leadscore").exists(),
        "build target/release/leadscore first"
    );
    let child = leadscore_process(broker, input, name, guarantee, threads, config)?;
    measure(child, broker, name, input, events)
}

/// The shipped configuration without what the Kafka Streams application
/// does not do (accounts, lifecycle rules, bot filters), for a run of the
/// same job.
fn same_job_config() -> Result<tempfile::NamedTempFile, Box<dyn std::error::Error>> {
    let mut config: toml_edit::DocumentMut =
        std::fs::read_to_string("config/leadscore.toml")?.parse()?;
    for table in ["accounts", "lifecycle", "filters"] {
        config
            .remove(table)
            .ok_or("config/leadscore.toml changed shape")?;
    }
    let mut file = tempfile::NamedTempFile::new()?;
    std::io::Write::write_all(&mut file, config.to_string().as_bytes())?;
    Ok(file)
}

/// Builds benches/kafka-streams with Maven; false (and why, printed) when
/// Java or Maven is missing or the build fails.
fn build_kafka_streams() -> bool {
    // Maven's output is kept for a failure: even quiet, it writes colour
    // codes.
    let built = Command::new("mvn")
        .args(["-q", "-B", "-Dstyle.color=never", "package"])
        .current_dir(KAFKA_STREAMS_DIR)
        .output();
    match built {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            println!(
                "(f), (g) skipped: `mvn package` in {KAFKA_STREAMS_DIR} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            false
        }
        Err(e) => {
            println!("(f), (g) skipped: cannot run Maven ({e})");
            false
        }
    }
}

/// The Kafka Streams application (benches/kafka-streams) over the backlog,
/// with a RocksDB or an in-memory store (`store`), exactly_once_v2.
fn run_kafka_streams(
    broker: &str,
    input: &str,
    name: &str,
    store: &str,
    events: usize,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let output = format!("{name}-out");
    // Kafka Streams does not create its sink topic.
    create_topic(broker, &output)?;
    let state = tempfile::tempdir()?;
    let child = Command::new("java")
        .arg("-cp")
        .arg(format!(
            "{KAFKA_STREAMS_DIR}/target/classes:{KAFKA_STREAMS_DIR}/target/lib/*"
        ))
        .arg("dev.leadscore.streams.LeadScoreStreams")
        .args([broker, input, &output, name, store])
        .arg(state.path())
        .stdout(Stdio::null())
        .spawn()?;
    measure(child, broker, name, input, events)
}

/// Peak resident memory (VmHWM) of a running process, from /proc (Linux).
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// User plus system CPU time of a running process, from /proc (Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces): state is
    // the first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let per_second = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    Some(ticks / per_second)
}

fn cpu_text(cpu: Option<f64>, events: usize) -> String {
    match cpu {
        Some(seconds) => format!(
            "CPU {seconds:.1} s ({:.1} µs per event)",
            seconds * 1e6 / events as f64
        ),
        None => "CPU time unknown".into(),
    }
}

/// What the latency runs produce: LATENCY_EVENTS timed plain `track`
/// events (probes), among `load` (untimed messages of other traffic), all
/// at `rate` messages per second.
struct Paced {
    load: Vec<(String, String)>,
    rate: u64,
}

impl Paced {
    /// Probes alone, at LATENCY_RATE_PER_S.
    fn probes_only() -> Self {
        Paced {
            load: Vec::new(),
            rate: LATENCY_RATE_PER_S,
        }
    }
}

/// Produces `paced` to `input` while a `read_committed` reader of `output`
/// notes when each probe's output arrives; returns the p50 and p99 of
/// arrival minus send time. `key_of` maps an output record to the index of
/// the event that caused it.
fn latency(
    broker: &str,
    (input, output): (&str, &str),
    start_ms: i64,
    key_of: fn(&[u8]) -> Option<usize>,
    paced: Paced,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", format!("{output}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    reader.subscribe(&[output])?;
    let base = 10_000_000; // event indexes distinct from the backlog's
    let sent_at: Arc<std::sync::Mutex<HashMap<usize, Instant>>> = Arc::default();
    let (broker_owned, input_owned, sent) =
        (broker.to_string(), input.to_string(), sent_at.clone());
    let total = LATENCY_EVENTS + paced.load.len();
    let seconds = total as u64 / paced.rate;
    let producer = std::thread::spawn(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &broker_owned)
            .set("linger.ms", "0")
            .create()
            .unwrap();
        let began = Instant::now();
        let mut load = paced.load.into_iter();
        let mut probes = 0;
        for n in 0..total {
            let due = Duration::from_micros(n as u64 * 1_000_000 / paced.rate);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                std::thread::sleep(wait);
            }
            // Probes spread evenly among the load.
            let (key, value) = if probes * total <= n * LATENCY_EVENTS {
                let i = base + probes;
                probes += 1;
                let probe = event(i, start_ms + 3_600_000 + n as i64);
                sent.lock().unwrap().insert(i, Instant::now());
                probe
            } else {
                load.next().expect("load left")
            };
            let mut record = BaseRecord::to(&input_owned).key(&key).payload(&value);
            while let Err((_, back)) = producer.send(record) {
                producer.poll(Duration::from_millis(1));
                record = back;
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    });
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    let mut seen = std::collections::HashSet::new();
    while Instant::now() < deadline && seen.len() < LATENCY_EVENTS {
        let Some(m) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        let arrived = Instant::now();
        let Some(i) = m.payload().and_then(key_of) else {
            continue;
        };
        if i < base || !seen.insert(i) {
            continue;
        }
        if let Some(sent) = sent_at.lock().unwrap().get(&i) {
            latencies.push(arrived.duration_since(*sent).as_secs_f64() * 1000.0);
        }
    }
    producer.join().unwrap();
    latencies.sort_by(f64::total_cmp);
    if latencies.is_empty() {
        return Err("no outputs arrived".into());
    }
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!("    ({} events timed)", latencies.len());
    Ok((pick(0.5), pick(0.99)))
}

/// The event index in a message id `bench-NNNNNNNNN`.
fn index_in(text: &str, field: &str) -> Option<usize> {
    let at = text.find(field)? + field.len();
    let rest = &text[at..];
    let start = rest.find("bench-")? + "bench-".len();
    rest[start..start + 9].parse().ok()
}

fn latency_passthrough(
    broker: &str,
    start_ms: i64,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let input = "bench-lat-pass-in";
    create_topic(broker, input)?;
    create_topic(broker, "bench-lat-pass-out")?;
    let stop = Arc::new(AtomicBool::new(false));
    let (b, s) = (broker.to_string(), stop.clone());
    let runner = std::thread::spawn(move || {
        run_passthrough(
            &b,
            "bench-lat-pass-in",
            "bench-lat-pass-out",
            "bench-lat-pass",
            0,
            Some(s),
        )
        .map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_secs(5)); // group join
    let result = latency(
        broker,
        (input, "bench-lat-pass-out"),
        start_ms,
        |v| index_in(std::str::from_utf8(v).ok()?, "\"messageId\""),
        Paced::probes_only(),
    );
    stop.store(true, Ordering::SeqCst);
    runner.join().unwrap()?;
    result
}

fn latency_leadscore(
    broker: &str,
    start_ms: i64,
    name: &str,
    paced: Paced,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let input = format!("{name}-in");
    let output = format!("{name}-out");
    create_topic(broker, &input)?;
    let mut child = leadscore_process(
        broker,
        &input,
        name,
        "exactly_once",
        1,
        Path::new("config/leadscore.toml"),
    )?;
    std::thread::sleep(Duration::from_secs(5)); // group join and restore
                                                // Only events that change a score produce an output; those are timed.
    let result = latency(
        broker,
        (&input, &output),
        start_ms,
        |v| index_in(std::str::from_utf8(v).ok()?, "\"cause_event_id\""),
        paced,
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    child.wait()?;
    result
}
