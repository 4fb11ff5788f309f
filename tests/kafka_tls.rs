//! `leadscore run` over TLS: the broker's TLS listener with a self-signed
//! certificate, the client trusting it through `[kafka.properties]`
//! (librdkafka is built with OpenSSL), and zstd-compressed input.

mod common;

use std::time::Duration;

use common::kafka::*;
use common::verify::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

#[test]
fn runs_over_tls_on_zstd_compressed_input() {
    let broker = kafka_tls();
    let names = Names::new("tls");
    create_topic(&broker.plain.bootstrap, &names.input, 4);

    // The events go in over TLS too, compressed with zstd.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.tls_bootstrap)
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", &broker.ca)
        .set("compression.type", "zstd")
        .create()
        .expect("a TLS producer");
    let lines = sample(120, 41);
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = v["userId"].as_str().unwrap().to_string();
        producer
            .send(BaseRecord::to(&names.input).key(&key).payload(line))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &broker.tls_bootstrap,
        &names,
        "exactly_once",
        "",
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[kafka.properties]\n",
        &format!(
            "[kafka.properties]\n\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{}\"\n",
            broker.ca
        ),
    );
    assert!(text.contains("security.protocol"));
    std::fs::write(&config, text).unwrap();

    let cut = now_ms();
    process_all(&broker.plain, &names, &config, Duration::from_secs(1));
    let run = read_topic(&broker.plain.bootstrap, &names.output, true);
    let (expected, _) = replay(&lines, cut);
    assert_exactly_replay(&run, &expected, cut);
}

#[test]
fn an_untrusted_certificate_is_refused() {
    let broker = kafka_tls();
    let names = Names::new("tls-untrusted");
    create_topic(&broker.plain.bootstrap, &names.input, 1);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &broker.tls_bootstrap,
        &names,
        "exactly_once",
        "",
    );
    // TLS without the broker's certificate: verification must fail.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[kafka.properties]\n",
        "[kafka.properties]\n\"security.protocol\" = \"ssl\"\n\"socket.timeout.ms\" = \"5000\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let mut instance = Instance::start(&config, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = instance.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leadscore kept running against an untrusted broker"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success());
}
