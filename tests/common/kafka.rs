//! Real brokers for integration tests: Apache Kafka started once per test
//! binary by `scripts/kafka.sh` (stopped when the test process exits), and
//! helpers for topics, producing, reading and running `leadscore run`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use leadscore::core::Timestamp;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Header name/value pairs of a record to produce.
pub type HeaderList = Vec<(String, String)>;
/// A record to produce: key, value, headers.
pub type InputRecord = (Option<String>, Vec<u8>, HeaderList);

pub struct Broker {
    pub bootstrap: String,
}

/// The shared Apache Kafka broker of this test binary.
pub fn kafka() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(|| start_broker("kafka.sh", "KAFKA_BOOTSTRAP="))
}

/// The shared tansu broker (weak transactions) of this test binary.
pub fn tansu() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(|| start_broker("tansu.sh", "TANSU_BOOTSTRAP="))
}

/// An Apache Kafka with a TLS listener besides the plaintext one.
pub struct TlsBroker {
    /// The plaintext listener, for the test's own admin, produce and read.
    pub plain: Broker,
    pub tls_bootstrap: String,
    /// The broker's self-signed certificate (PEM), for `ssl.ca.location`.
    pub ca: String,
}

pub fn kafka_tls() -> &'static TlsBroker {
    static BROKER: OnceLock<TlsBroker> = OnceLock::new();
    BROKER.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(["start", "--tls", "--watch", &std::process::id().to_string()])
            .stderr(Stdio::inherit())
            .output()
            .expect("the broker script runs");
        assert!(out.status.success(), "kafka.sh start --tls failed");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let value = |prefix: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {stdout}"))
                .to_string()
        };
        TlsBroker {
            plain: Broker {
                bootstrap: value("KAFKA_BOOTSTRAP="),
            },
            tls_bootstrap: value("KAFKA_TLS_BOOTSTRAP="),
            ca: value("KAFKA_TLS_CA="),
        }
    })
}

/// Starts a broker with the project's script; it stops when this test
/// process exits.
fn start_broker(script: &str, prefix: &str) -> Broker {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let out = Command::new("bash")
        .arg(&script)
        .args(["start", "--watch", &std::process::id().to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("the broker script runs");
    assert!(
        out.status.success(),
        "{} did not start a broker",
        script.display()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bootstrap = stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .expect("bootstrap address")
        .to_string();
    Broker { bootstrap }
}

/// Topic and group names unique to one test.
#[derive(Clone, Debug)]
pub struct Names {
    pub input: String,
    pub output: String,
    pub dead_letter: String,
    pub changelog: String,
    pub group: String,
}

impl Names {
    pub fn new(test: &str) -> Names {
        let tag = format!("{test}-{:08x}", fastrand::u32(..));
        Names {
            input: format!("{tag}-in"),
            output: format!("{tag}-out"),
            dead_letter: format!("{tag}-dlq"),
            changelog: format!("{tag}-changelog"),
            group: format!("{tag}-group"),
        }
    }
}

impl Names {
    /// The topics and group of `run --score NAME` (see
    /// `KafkaSettings::for_score`): input, output and dead letters shared.
    pub fn for_score(&self, score: &str) -> Names {
        Names {
            changelog: format!("{}-{score}", self.changelog),
            group: format!("{}-{score}", self.group),
            ..self.clone()
        }
    }

    /// The shadow's topics and group (see `KafkaSettings::shadow`).
    pub fn shadow(&self) -> Names {
        let shadow = |name: &str| format!("{name}-shadow");
        Names {
            input: self.input.clone(),
            output: shadow(&self.output),
            dead_letter: shadow(&self.dead_letter),
            changelog: shadow(&self.changelog),
            group: shadow(&self.group),
        }
    }
}

/// `text` (a config file of the example rules) under new rules that
/// kept state cannot answer (a new engagement rule, version
/// b2b-saas-2026.12.0), with new points and a lower MQL line.
pub fn rules_needing_history(text: &str) -> String {
    let new = text
        .replace(
            "version = \"b2b-saas-2026.11.1\"",
            "version = \"b2b-saas-2026.12.0\"",
        )
        .replacen(
            "[[engagement]]",
            "[[engagement]]\nname = \"any_page\"\ntype = \"page\"\npoints = 2\ncap = { points = 10, per = \"7d\" }\n\n[[engagement]]",
            1,
        )
        .replacen("points = 30", "points = 24", 1)
        .replacen("min_score = 70", "min_score = 60", 1);
    assert_ne!(new, text);
    new
}

pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot create {t}: {e}"));
    }
}

/// The example rules plus runtime sections for these topics.
pub fn write_config(
    dir: &Path,
    bootstrap: &str,
    names: &Names,
    guarantee: &str,
    extra: &str,
) -> PathBuf {
    let rules = super::example_lead_rules_text();
    write_config_with_rules(dir, &rules, bootstrap, names, guarantee, extra)
}

/// `rules` (a rules file's text) plus runtime sections for these topics.
pub fn write_config_with_rules(
    dir: &Path,
    rules: &str,
    bootstrap: &str,
    names: &Names,
    guarantee: &str,
    extra: &str,
) -> PathBuf {
    let text = format!(
        "{rules}\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"{}\"\ninput_topic = \"{}\"\n\
         output_topic = \"{}\"\ndead_letter_topic = \"{}\"\nchangelog_topic = \"{}\"\npartitions = 4\n\
         input_partitioner = \"consistent_random\"\n\
         [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [processing]\nguarantee = \"{guarantee}\"\n{extra}",
        names.group, names.input, names.output, names.dead_letter, names.changelog
    );
    let path = dir.join(format!("{}.toml", names.group));
    std::fs::write(&path, text).unwrap();
    path
}

/// Produces lines keyed by their lead id, in order.
pub fn produce_lines(bootstrap: &str, topic: &str, lines: &[String]) {
    let records: Vec<InputRecord> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            let key = v["userId"]
                .as_str()
                .or(v["anonymousId"].as_str())
                .map(str::to_string);
            (key, l.clone().into_bytes(), Vec::new())
        })
        .collect();
    produce(bootstrap, topic, &records);
}

pub fn produce(bootstrap: &str, topic: &str, records: &[InputRecord]) {
    let records: Vec<Produced> = records.iter().cloned().map(Produced::Value).collect();
    produce_all(bootstrap, topic, &records);
}

/// A record to produce: a value (keyed or not, with headers), or a
/// tombstone (a key and no value) with its timestamp.
pub enum Produced {
    Value(InputRecord),
    Tombstone { key: String, at_ms: i64 },
}

/// Produces lines keyed by their lead id, in order; an `erase` call whose
/// index `as_tombstone` picks goes as the tombstone that asks the same
/// (its lead id as the key, its time as the record's).
pub fn produce_lines_erasing(
    bootstrap: &str,
    topic: &str,
    lines: &[String],
    as_tombstone: impl Fn(usize) -> bool,
) {
    let records: Vec<Produced> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            let key = v["userId"]
                .as_str()
                .or(v["anonymousId"].as_str())
                .map(str::to_string);
            if v["type"] == "erase" && as_tombstone(i) {
                let at = v["timestamp"].as_str().and_then(Timestamp::parse_rfc3339);
                return Produced::Tombstone {
                    key: key.expect("an erase call names its lead"),
                    at_ms: at.expect("an erase call has a time").millis(),
                };
            }
            Produced::Value((key, l.clone().into_bytes(), Vec::new()))
        })
        .collect();
    produce_all(bootstrap, topic, &records);
}

pub fn produce_all(bootstrap: &str, topic: &str, records: &[Produced]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .set("message.max.bytes", "10000000")
        .create()
        .unwrap();
    for record in records {
        let (key, value, headers) = match record {
            Produced::Value(record) => record,
            Produced::Tombstone { key, at_ms } => {
                let mut record = BaseRecord::<str, [u8]>::to(topic)
                    .key(key.as_str())
                    .timestamp(*at_ms);
                while let Err((_, back)) = producer.send(record) {
                    producer.poll(Duration::from_millis(20));
                    record = back;
                }
                continue;
            }
        };
        let mut hs = rdkafka::message::OwnedHeaders::new();
        for (k, v) in headers {
            hs = hs.insert(rdkafka::message::Header {
                key: k,
                value: Some(v.as_str()),
            });
        }
        let mut record = BaseRecord::<str, [u8]>::to(topic)
            .payload(value.as_slice())
            .headers(hs);
        if let Some(k) = key {
            record = record.key(k.as_str());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(20));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("JSON value")
    }
}

/// Every record of `topic`, read from the start to the end of each
/// partition (by a `read_committed` reader unless told otherwise).
pub fn read_topic(bootstrap: &str, topic: &str, read_committed: bool) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "leadscore-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut open: std::collections::BTreeSet<i32> = partitions.into_iter().collect();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !open.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} took too long");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    records
}

/// Input messages the group has committed, over all partitions (None
/// while the coordinator cannot say).
pub fn committed_total(bootstrap: &str, names: &Names) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &names.group)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(&names.input), Duration::from_secs(10))
        .ok()?;
    let mut list = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        list.add_partition(&names.input, p.id());
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .ok()?;
    Some(
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum(),
    )
}

/// Kills and restarts `instance` five times, each time once the group has
/// committed past another stretch of the `total` input messages, so every
/// kill lands mid-stream (almost always inside an open transaction).
pub fn kill_five_times_mid_stream(
    broker: &Broker,
    names: &Names,
    config: &Path,
    env: &[(&str, &str)],
    total: usize,
    seed: u64,
) -> Instance {
    kill_five_times_mid_stream_with(broker, names, (config, &[]), env, total, seed)
}

/// [`kill_five_times_mid_stream`] of `run --config CONFIG ARGS...`.
pub fn kill_five_times_mid_stream_with(
    broker: &Broker,
    names: &Names,
    (config, args): (&Path, &[&str]),
    env: &[(&str, &str)],
    total: usize,
    seed: u64,
) -> Instance {
    let mut rng = fastrand::Rng::with_seed(seed);
    let start = || Instance::spawn_with(config, env, Stdio::inherit(), args);
    let mut instance = start();
    for stage in 1..=5 {
        let target = (total as f64 * (0.12 * stage as f64 + rng.f64() * 0.05)) as i64;
        let deadline = Instant::now() + Duration::from_secs(300);
        while committed_total(&broker.bootstrap, names).unwrap_or(0) < target {
            assert!(
                Instant::now() < deadline,
                "no progress to {target} committed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(0..150)));
        instance.kill9();
        instance = start();
    }
    instance
}

/// Waits until the group has committed offsets at the end of every input
/// partition, and past every committed record of the identity topic
/// (handoffs between partitions for alias merges; written in transactions,
/// so its end is a commit marker no consumer commits past).
pub fn wait_caught_up(bootstrap: &str, names: &Names, timeout: Duration) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &names.group)
        .create()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let identities = format!("{}-identities", names.group);
    loop {
        let committed = |topic: &str| -> Option<Vec<(i32, i64, i64)>> {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .ok()?;
            // A topic not created yet has nothing to catch up on.
            if metadata.topics()[0].error().is_some() {
                return Some(Vec::new());
            }
            let mut list = TopicPartitionList::new();
            let mut ends = BTreeMap::new();
            for p in metadata.topics()[0].partitions() {
                list.add_partition(topic, p.id());
                let (_, high) = consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .ok()?;
                ends.insert(p.id(), high);
            }
            // The group coordinator may be moving while the group starts.
            let committed = consumer
                .committed_offsets(list, Duration::from_secs(10))
                .ok()?;
            Some(
                committed
                    .elements()
                    .iter()
                    .map(|e| {
                        let at = match e.offset() {
                            Offset::Offset(o) => o,
                            _ => 0,
                        };
                        (e.partition(), at, ends[&e.partition()])
                    })
                    .collect(),
            )
        };
        let input = committed(&names.input);
        let input_done = input
            .as_ref()
            .is_some_and(|parts| parts.iter().all(|(_, at, end)| at >= end));
        // The identity topic is written in transactions: its end is a
        // commit marker no consumer commits past, and tansu does not move
        // its end for records of transactions that never ended (it shows
        // them all the same). So look for records after the committed
        // offsets instead.
        let handoffs = if input_done {
            committed(&identities)
        } else {
            None
        };
        let done = handoffs.as_ref().is_some_and(|parts| {
            !has_records(
                bootstrap,
                &identities,
                &parts.iter().map(|&(p, at, _)| (p, at)).collect::<Vec<_>>(),
            )
        });
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the processor did not catch up within {timeout:?}: input (partition, \
             committed, end) {input:?}; identities {handoffs:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether a `read_committed` reader finds a record in any of `from`'s
/// (partition, offset) pairs at or after the offset within two seconds.
fn has_records(bootstrap: &str, topic: &str, from: &[(i32, i64)]) -> bool {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-probe"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for &(partition, offset) in from {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))
            .unwrap();
    }
    reader.assign(&list).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Some(Ok(_)) = reader.poll(Duration::from_millis(200)) {
            return true;
        }
    }
    false
}

/// Runs one `leadscore run` until the group has committed every input
/// message, lets it run `settle` longer (decay timers), then stops it with
/// SIGTERM and checks it exits 0.
pub fn process_all(broker: &Broker, names: &Names, config: &Path, settle: Duration) {
    let instance = Instance::start(config, &[]);
    wait_caught_up(&broker.bootstrap, names, Duration::from_secs(300));
    std::thread::sleep(settle);
    assert!(instance.terminate().success(), "exit 0 on SIGTERM");
}

/// A `leadscore run` child process.
pub struct Instance {
    pub child: Child,
}

impl Instance {
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Instance {
        Instance::spawn(config, env, Stdio::inherit())
    }

    /// Like `start`, with the log appended to `log` instead of shown.
    pub fn start_logging(config: &Path, env: &[(&str, &str)], log: &Path) -> Instance {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("a log file");
        Instance::spawn(config, env, Stdio::from(file))
    }

    /// `run --shadow` on `config`, the log appended to `log`.
    pub fn start_shadow(config: &Path, env: &[(&str, &str)], log: &Path) -> Instance {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("a log file");
        Instance::spawn_with(config, env, Stdio::from(file), &["--shadow"])
    }

    fn spawn(config: &Path, env: &[(&str, &str)], stderr: Stdio) -> Instance {
        Instance::spawn_with(config, env, stderr, &[])
    }

    /// `run --config CONFIG ARGS...`.
    pub fn spawn_with(
        config: &Path,
        env: &[(&str, &str)],
        stderr: Stdio,
        args: &[&str],
    ) -> Instance {
        let mut command = Command::new(env!("CARGO_BIN_EXE_leadscore"));
        command
            .args(["run", "--config", config.to_str().unwrap()])
            .args(args)
            .env("RUST_LOG", "info,librdkafka=error,rdkafka=error")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        Instance {
            child: command.spawn().expect("leadscore starts"),
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status (within 30 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe_sigterm(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "leadscore did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The value of one series (`name{labels}` as exposed) from the `/metrics`
/// of the instance listening on `listen`; 0 while unreachable or absent.
pub fn metric(listen: &str, series: &str) -> f64 {
    let Ok(mut response) = ureq::get(&format!("http://{listen}/metrics")).call() else {
        return 0.0;
    };
    let text = response.body_mut().read_to_string().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A GET's status and body (any status; a connection error panics).
pub fn http_get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent.get(url).call().expect("the instance answers");
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}
