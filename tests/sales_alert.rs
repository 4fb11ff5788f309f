//! `examples/sales_alert` against Apache Kafka and a local webhook: upward
//! crossings are posted once each, repeats and aborted records are not,
//! other outputs are ignored. The example's own unit tests run here too.

mod common;
#[allow(dead_code)] // its `main`
#[path = "../examples/sales_alert.rs"]
mod sales_alert;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use common::kafka::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

fn output(event_id: &str, kind: &str, direction: &str, tier: &str) -> Value {
    json!({"type": kind, "event_id": event_id, "lead_id": format!("lead-{event_id}"),
           "tier": tier, "previous_tier": "warm", "direction": direction, "score": 80.0,
           "grade": "B", "at": "2026-11-25T10:00:00.000Z", "rules_version": "v1",
           "contributions": [{"rule": "demo_requested", "points": 30.0}]})
}

#[test]
fn upward_crossings_are_posted_once_and_nothing_else() {
    let broker = kafka();
    let names = Names::new("alert");
    create_topic(&broker.bootstrap, &names.output, 2);

    // The webhook: records every body it is sent.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let webhook = format!("http://{}/hook", listener.local_addr().unwrap());
    let sink = received.clone();
    let app = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    runtime.spawn(async move { axum::serve(listener, app).await });

    let outputs = [
        output("up-1", "threshold_crossed", "up", "mql"),
        output("chg-1", "score_changed", "up", "mql"),
        output("down-1", "threshold_crossed", "down", "warm"),
        output("up-2", "threshold_crossed", "up", "sql"),
        output("up-1", "threshold_crossed", "up", "mql"), // a repeat
        output("up-3", "threshold_crossed", "up", "mql"),
    ];
    let records: Vec<InputRecord> = outputs
        .iter()
        .map(|o| {
            let key = o["lead_id"].as_str().map(str::to_string);
            (key, o.to_string().into_bytes(), vec![])
        })
        .collect();
    produce(&broker.bootstrap, &names.output, &records);
    // A crossing in an aborted transaction: a read_committed reader never sees it.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("transactional.id", format!("{}-aborter", names.group))
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    let aborted = output("aborted-1", "threshold_crossed", "up", "mql").to_string();
    producer
        .send(
            BaseRecord::to(&names.output)
                .key("lead-aborted")
                .payload(&aborted),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    producer.abort_transaction(Duration::from_secs(30)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let options = sales_alert::Options {
        bootstrap: broker.bootstrap.clone(),
        topic: names.output.clone(),
        webhook,
        tiers: vec!["mql".into(), "sql".into()],
        group: names.group.clone(),
    };
    let service = {
        let stop = stop.clone();
        std::thread::spawn(move || sales_alert::run(&options, &stop))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "alerts not posted in time");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Anything else would arrive by now.
    std::thread::sleep(Duration::from_secs(3));
    let bodies = received.lock().unwrap().clone();
    let mut texts: Vec<&str> = bodies.iter().map(|b| b["text"].as_str().unwrap()).collect();
    texts.sort_unstable();
    assert_eq!(
        texts,
        [
            "Lead lead-up-1 is now mql (from warm): score 80, grade B\nWhy: demo_requested +30",
            "Lead lead-up-2 is now sql (from warm): score 80, grade B\nWhy: demo_requested +30",
            "Lead lead-up-3 is now mql (from warm): score 80, grade B\nWhy: demo_requested +30",
        ]
    );
    for body in &bodies {
        assert_eq!(body["blocks"][0]["type"], "section", "Slack blocks: {body}");
    }
    stop.store(true, Ordering::Relaxed);
    let posted = service
        .join()
        .unwrap()
        .expect("the service ran without error");
    assert_eq!(posted, 3);
}
