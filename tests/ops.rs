//! Operating `leadscore run` on Apache Kafka: `/metrics` counts what
//! happened (and passes `promtool check metrics`), the probes, and the
//! query API on one instance and across two.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::*;
use common::verify::*;
use common::{free_port, promtool};
use leadscore::core::Timestamp;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Status and body of a GET, or `None` while nothing listens.
fn get(url: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut request = agent().get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().ok()?;
    let status = response.status().as_u16();
    Some((status, response.body_mut().read_to_string().unwrap()))
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `name{labels} value` lines of an exposition, by name and label text.
fn samples(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sum_of(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| *series == name || series.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// `promtool check metrics` on an exposition: the verdict and its words.
pub fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let words = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), words)
}

#[test]
fn metrics_probes_and_query_api_tell_the_truth() {
    let broker = kafka();
    let names = Names::new("ops");
    create_topic(&broker.bootstrap, &names.input, 4);
    let lines = sample(150, 31);
    produce_lines(&broker.bootstrap, &names.input, &lines);
    let garbage: Vec<InputRecord> = (0..3)
        .map(|i| (Some(format!("junk-{i}")), b"{not json".to_vec(), vec![]))
        .collect();
    produce(&broker.bootstrap, &names.input, &garbage);

    let dir = tempfile::tempdir().unwrap();
    // Event-time timers: no cool-down is published after the input is
    // read, so the output topic and the counters can be compared.
    let config = write_config(
        dir.path(),
        &broker.bootstrap,
        &names,
        "exactly_once",
        "timer_clock = \"event_time\"\n",
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let instance = Instance::start(
        &config,
        &[
            ("LEADSCORE_HTTP_LISTEN", listen.as_str()),
            ("LEADSCORE_HTTP_TOKEN", "s3cret"),
        ],
    );
    wait_for("/healthz", Duration::from_secs(60), || {
        get(&format!("{base}/healthz"), None).is_some_and(|(s, _)| s == 200)
    });
    wait_for("/readyz", Duration::from_secs(60), || {
        get(&format!("{base}/readyz"), None).is_some_and(|(s, _)| s == 200)
    });
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(120));
    let cut = now_ms();
    let (_, replayer) = replay(&lines, cut);

    // Counters, once the lag gauges (librdkafka statistics, every 5 s)
    // show every partition read to the end.
    let mut exposition = String::new();
    wait_for("consumer lag 0", Duration::from_secs(30), || {
        exposition = get(&format!("{base}/metrics"), None).unwrap().1;
        let s = samples(&exposition);
        let lags: Vec<f64> = (0..4)
            .filter_map(|p| {
                s.get(&format!(
                    "leadscore_consumer_lag_messages{{partition=\"{p}\"}}"
                ))
                .copied()
            })
            .collect();
        lags.len() == 4 && lags.iter().all(|&l| l == 0.0)
    });
    let (ok, words) = promtool_check_metrics(&exposition);
    assert!(ok, "promtool check metrics: {words}\n{exposition}");
    assert_deploy_queries_name_scraped_metrics(&exposition);
    let s = samples(&exposition);
    let produced = (lines.len() + garbage.len()) as f64;
    assert_eq!(sum_of(&s, "leadscore_events_consumed_total"), produced);
    assert_eq!(
        sum_of(&s, "leadscore_events_scored_total"),
        replayer.stats.applied as f64
    );
    assert_eq!(
        s.get("leadscore_events_rejected_total{reason=\"invalid_json\"}"),
        Some(&3.0)
    );
    assert_eq!(sum_of(&s, "leadscore_dead_letters_total"), 3.0);
    assert_eq!(
        sum_of(&s, "leadscore_leads"),
        replayer.engine().lead_count() as f64,
        "{exposition}"
    );
    assert_eq!(sum_of(&s, "leadscore_partitions_assigned"), 4.0);
    assert_eq!(sum_of(&s, "leadscore_ready"), 1.0);
    assert!(sum_of(&s, "leadscore_transactions_total") >= 1.0);
    assert_eq!(
        s.get("leadscore_transactions_total{result=\"aborted\"}")
            .copied()
            .unwrap_or(0.0),
        0.0
    );
    assert!(s.contains_key("leadscore_batch_duration_seconds_count"));
    assert_eq!(
        sum_of(&s, "leadscore_event_lag_seconds_count"),
        replayer.stats.applied as f64
    );
    let outputs = read_topic(&broker.bootstrap, &names.output, true);
    for kind in ["score_changed", "threshold_crossed"] {
        let in_topic = outputs.iter().filter(|r| r.json()["type"] == kind).count() as f64;
        assert_eq!(
            s.get(&format!("leadscore_outputs_total{{type=\"{kind}\"}}"))
                .copied()
                .unwrap_or(0.0),
            in_topic,
            "{kind}"
        );
    }
    let crossings = outputs
        .iter()
        .filter(|r| r.json()["type"] == "threshold_crossed")
        .count() as f64;
    assert_eq!(sum_of(&s, "leadscore_threshold_crossings_total"), crossings);
    assert!(!exposition.contains("lead-0"), "no lead id in any label");

    // The query API: bearer token, then a lead's state and why.
    let snapshot = replayer.engine().snapshot(Timestamp(cut));
    let lead = snapshot
        .iter()
        .filter(|l| l.fit != 0.0)
        .max_by(|a, b| a.engagement.total_cmp(&b.engagement))
        .expect("a lead with fit");
    assert!(lead.engagement > 0.0, "{lead:?}");
    let url = format!("{base}/v1/leads/{}", lead.lead_id);
    assert_eq!(get(&url, None).unwrap().0, 401);
    assert_eq!(get(&url, Some("wrong")).unwrap().0, 401);
    let (status, body) = get(&url, Some("s3cret")).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_lead_answer(&v, &replayer);
    assert_eq!(v["lead_id"], lead.lead_id.as_str());
    // The tier is the one last published for the lead (timers follow
    // event time here, so no cool-down since).
    let last_published = outputs
        .iter()
        .map(|r| r.json())
        .rfind(|o| o["lead_id"] == lead.lead_id.as_str())
        .expect("the lead has outputs");
    assert_eq!(v["tier"], last_published["tier"]);
    let (status, body) = get(&format!("{base}/v1/leads/nobody-at-all"), Some("s3cret")).unwrap();
    assert_eq!(status, 404, "{body}");

    // Right after a new lead's event is committed, the API knows it.
    let fresh = format!(
        r#"{{"type":"track","event":"Demo Requested","messageId":"fresh-1","userId":"fresh-lead","timestamp":"{}"}}"#,
        Timestamp(now_ms()).to_rfc3339()
    );
    produce_lines(&broker.bootstrap, &names.input, &[fresh]);
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(60));
    let (status, body) = get(&format!("{base}/v1/leads/fresh-lead"), Some("s3cret")).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["why"]["engagement"][0]["rule"], "demo_requested");
    assert!(
        (v["engagement"].as_f64().unwrap() - 30.0).abs() < 0.01,
        "{v}"
    );

    assert!(instance.terminate().success(), "exit 0 on SIGTERM");
}

/// Every `leadscore_*` metric the Grafana dashboard and the alert rules in
/// `deploy/` query is a family in a real scrape.
fn assert_deploy_queries_name_scraped_metrics(exposition: &str) {
    let families: std::collections::BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut checked = 0;
    let names = regex::Regex::new(r"leadscore_[a-z_]+").unwrap();
    for file in ["grafana/dashboards/leadscore.json", "prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        for name in names.find_iter(&text).map(|m| m.as_str()) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|f| families.contains(f)))
                .unwrap_or(name);
            assert!(
                families.contains(family),
                "{file} queries {name}, which no scrape exports; families: {families:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} metric references found");
}

/// The answer's numbers agree with themselves and with `replay`.
fn assert_lead_answer(v: &serde_json::Value, replayer: &leadscore::replay::Replayer) {
    let sum = |kind: &str| -> f64 {
        v["why"][kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["points"].as_f64().unwrap())
            .sum()
    };
    let (fit, engagement) = (
        v["fit"].as_f64().unwrap(),
        v["engagement"].as_f64().unwrap(),
    );
    assert!((sum("engagement") - engagement).abs() < 1e-9, "{v}");
    assert!((sum("fit") - fit).abs() < 1e-9, "{v}");
    let score = (v["base"].as_f64().unwrap() + fit + engagement).clamp(0.0, 100.0);
    assert!((v["score"].as_f64().unwrap() - score).abs() < 1e-9, "{v}");
    let as_of = Timestamp::parse_rfc3339(v["as_of"].as_str().unwrap()).unwrap();
    let expected = replayer
        .engine()
        .explain(v["lead_id"].as_str().unwrap(), as_of)
        .unwrap();
    assert!((expected.engagement - engagement).abs() < 1e-6, "{v}");
    assert_eq!(expected.fit, fit);
}

#[test]
fn a_lead_held_by_another_instance_is_answered_with_its_partition() {
    let broker = kafka();
    let names = Names::new("ops-two");
    create_topic(&broker.bootstrap, &names.input, 4);
    let lines = sample(60, 32);
    produce_lines(&broker.bootstrap, &names.input, &lines);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &broker.bootstrap, &names, "exactly_once", "");
    let ports = [free_port(), free_port()];
    let listens: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let _a = Instance::start(
        &config,
        &[
            ("LEADSCORE_HTTP_LISTEN", listens[0].as_str()),
            ("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "ops-two-a"),
        ],
    );
    let _b = Instance::start(
        &config,
        &[
            ("LEADSCORE_HTTP_LISTEN", listens[1].as_str()),
            ("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "ops-two-b"),
        ],
    );
    wait_caught_up(&broker.bootstrap, &names, Duration::from_secs(120));
    let partitions_of = |port: u16| -> f64 {
        get(&format!("http://127.0.0.1:{port}/metrics"), None)
            .map(|(_, text)| sum_of(&samples(&text), "leadscore_partitions_assigned"))
            .unwrap_or(0.0)
    };
    let ready = |port: u16| {
        get(&format!("http://127.0.0.1:{port}/readyz"), None).is_some_and(|(s, _)| s == 200)
    };
    wait_for(
        "both instances ready with two partitions each",
        Duration::from_secs(90),
        || ports.iter().all(|&p| ready(p) && partitions_of(p) == 2.0),
    );

    let (_, replayer) = replay(&lines, now_ms());
    let mut answered = 0;
    for lead in replayer
        .engine()
        .snapshot(Timestamp(now_ms()))
        .iter()
        .take(20)
    {
        let answers: Vec<(u16, serde_json::Value)> = ports
            .iter()
            .map(|port| {
                let (status, body) = get(
                    &format!("http://127.0.0.1:{port}/v1/leads/{}", lead.lead_id),
                    None,
                )
                .unwrap();
                (status, serde_json::from_str(&body).unwrap())
            })
            .collect();
        let mut statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 421], "{answers:?}");
        let found = &answers.iter().find(|(s, _)| *s == 200).unwrap().1;
        let elsewhere = &answers.iter().find(|(s, _)| *s == 421).unwrap().1;
        assert_eq!(found["partition"], elsewhere["partition"], "{answers:?}");
        assert_eq!(elsewhere["error"], "other_instance");
        answered += 1;
    }
    assert_eq!(answered, 20);
}

/// Exposed beyond loopback: without a token the query API is off while
/// metrics and probes answer; idle connections by the thousand do not stop
/// `/metrics`; an overlong id is refused without being echoed.
#[test]
fn exposed_without_a_token_serves_metrics_and_probes_only_and_shrugs_off_idle_connections() {
    use std::io::Write as _;

    let broker = kafka();
    let names = Names::new("exposed");
    create_topic(&broker.bootstrap, &names.input, 2);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &broker.bootstrap, &names, "exactly_once", "");
    let port = free_port();
    // Any address of this machine: the wildcard. Reached over loopback.
    let listen = format!("0.0.0.0:{port}");
    let base = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("exposed.log");
    let instance = Instance::start_logging(
        &config,
        &[
            ("LEADSCORE_HTTP_LISTEN", listen.as_str()),
            ("LEADSCORE_HTTP_MAX_CONNECTIONS", "64"),
        ],
        &log,
    );
    wait_for("/readyz", Duration::from_secs(60), || {
        get(&format!("{base}/readyz"), None).is_some_and(|(s, _)| s == 200)
    });
    let (status, body) = get(&format!("{base}/v1/leads/lead-000001"), None).unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("query_api_off"), "{body}");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("the query API (/v1/...) is off"));

    // 2,000 connections that never send a request, and some that send
    // half a header and stall.
    let mut idle = Vec::new();
    for i in 0..2000 {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            continue; // the accept queue is full: shed, as intended
        };
        if i % 10 == 0 {
            let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
        }
        idle.push(stream);
    }
    let asked = Instant::now();
    wait_for(
        "/metrics among idle connections",
        Duration::from_secs(20),
        || {
            get(&format!("{base}/metrics"), None).is_some_and(|(s, body)| {
                s == 200 && body.contains("leadscore_http_connections_refused_total")
            })
        },
    );
    eprintln!(
        "/metrics answered {:.1} s after {} idle connections were opened",
        asked.elapsed().as_secs_f64(),
        idle.len()
    );
    let (_, metrics) = get(&format!("{base}/metrics"), None).unwrap();
    let refused = sum_of(
        &samples(&metrics),
        "leadscore_http_connections_refused_total",
    );
    assert!(refused > 0.0, "connections over the cap were refused");
    drop(idle);

    assert!(instance.terminate().success());

    // With a token on the same address, the API answers, and an overlong
    // id gets 414 without being echoed.
    let instance = Instance::start(
        &config,
        &[
            ("LEADSCORE_HTTP_LISTEN", listen.as_str()),
            ("LEADSCORE_HTTP_TOKEN", "s3cret"),
        ],
    );
    wait_for("/readyz", Duration::from_secs(60), || {
        get(&format!("{base}/readyz"), None).is_some_and(|(s, _)| s == 200)
    });
    let long_id = "x".repeat(600);
    let (status, body) = get(&format!("{base}/v1/leads/{long_id}"), Some("s3cret")).unwrap();
    assert_eq!(status, 414, "{body}");
    assert!(!body.contains(&long_id), "the id is not echoed: {body}");
    let (status, _) = get(&format!("{base}/v1/leads/lead-000001"), Some("s3cret")).unwrap();
    assert_eq!(status, 404, "unknown lead, API on");
    assert!(instance.terminate().success());
}
