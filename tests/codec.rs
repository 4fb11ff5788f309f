//! Decoding Segment JSON and protobuf into events: what is accepted, and a
//! typed reason for everything that is not.

use leadscore::codec::proto::{decode_lead_state, encode_lead_state, event_to_wire};
use leadscore::codec::{DecodeError, Decoder, Encoding, Limits};
use leadscore::core::{Event, EventKind, Timestamp, Value};
use prost::Message;

fn one(json: &str) -> Result<Event, DecodeError> {
    let mut items = Decoder::keep_all().decode(json.as_bytes(), Encoding::Json)?;
    assert_eq!(items.len(), 1);
    items.pop().unwrap()
}

#[test]
fn decodes_a_segment_track_call() {
    let e = one(
        r#"{"type":"track","messageId":"m-1","userId":"u-1","anonymousId":"a-1",
        "event":"Demo Requested","properties":{"plan":"pro","seats":25,"trial":true,"extra":null},
        "context":{"page":{"path":"/pricing","url":"https://x.example/pricing"},"ip":"203.0.113.7"},
        "timestamp":"2026-11-25T10:00:00.123+01:00","integrations":{"All":true},"version":2}"#,
    )
    .unwrap();
    assert_eq!(e.kind, EventKind::Track);
    assert_eq!(
        (e.message_id.as_str(), e.lead_id.as_str()),
        ("m-1", "u-1"),
        "userId wins"
    );
    assert_eq!(e.name.as_deref(), Some("Demo Requested"));
    assert_eq!(
        e.timestamp,
        Timestamp::parse_rfc3339("2026-11-25T09:00:00.123Z").unwrap()
    );
    assert_eq!(e.properties.get("seats"), Some(&Value::Number(25.0)));
    assert_eq!(e.properties.get("trial"), Some(&Value::Bool(true)));
    assert_eq!(e.properties.get("extra"), Some(&Value::Null));
    assert_eq!(e.context.get("page.path"), Some(&Value::from("/pricing")));
}

#[test]
fn identify_traits_flatten_and_context_traits_count_as_traits() {
    let e = one(r#"{"type":"identify","messageId":"m","anonymousId":"anon",
        "traits":{"title":"VP","company":{"name":"Acme","employees":1200}},
        "context":{"traits":{"email":"x@acme.example","title":"old"}},
        "timestamp":"2026-11-25T10:00:00Z"}"#)
    .unwrap();
    assert_eq!(e.lead_id, "anon");
    assert_eq!(
        e.traits.get("company.employees"),
        Some(&Value::Number(1200.0))
    );
    assert_eq!(e.traits.get("email"), Some(&Value::from("x@acme.example")));
    assert_eq!(
        e.traits.get("title"),
        Some(&Value::from("VP")),
        "the call's own traits win"
    );
    assert!(e.context.get("traits.email").is_none());
}

#[test]
fn page_group_alias_and_numeric_ids() {
    let p = one(r#"{"type":"page","messageId":7,"userId":42,"name":"Pricing","timestamp":"2026-11-25T10:00:00Z"}"#).unwrap();
    assert_eq!(
        (p.message_id.as_str(), p.lead_id.as_str(), p.name.as_deref()),
        ("7", "42", Some("Pricing"))
    );
    let g = one(r#"{"type":"group","messageId":"g","userId":"u","groupId":"acct-9","traits":{"employees":50},"timestamp":"2026-11-25T10:00:00Z"}"#).unwrap();
    assert_eq!(g.account_id.as_deref(), Some("acct-9"));
    let a = one(r#"{"type":"alias","messageId":"a","userId":"u","previousId":"anon","timestamp":"2026-11-25T10:00:00Z"}"#).unwrap();
    assert_eq!(a.previous_id.as_deref(), Some("anon"));
    let t = one(r#"{"type":"track","messageId":"t","userId":"u","event":"X","traits":{"account_id":"acct-1"},"timestamp":"2026-11-25T10:00:00Z"}"#).unwrap();
    assert_eq!(
        t.account_id.as_deref(),
        Some("acct-1"),
        "explicit account_id"
    );
}

#[test]
fn a_batch_decodes_item_by_item() {
    let items = Decoder::keep_all().decode(
        br#"{"batch":[
            {"type":"track","messageId":"1","userId":"u","event":"A","timestamp":"2026-11-25T10:00:00Z"},
            {"type":"track","messageId":"2","userId":"u","timestamp":"2026-11-25T10:00:00Z"},
            {"type":"page","messageId":"3","userId":"u","timestamp":"2026-11-25T10:00:00Z","context":{"ip":"1.2.3.4"}}
        ],"context":{"library":{"name":"analytics-python"}}}"#,
        Encoding::Json,
    )
    .unwrap();
    assert_eq!(items.len(), 3);
    assert!(items[0].is_ok());
    assert_eq!(items[1], Err(DecodeError::MissingField("event")));
    let third = items[2].as_ref().unwrap();
    assert_eq!(
        third.context.get("library.name"),
        Some(&Value::from("analytics-python")),
        "envelope context applies"
    );
    assert_eq!(third.context.get("ip"), Some(&Value::from("1.2.3.4")));
}

#[test]
fn bad_messages_get_a_typed_reason() {
    let cases: &[(&str, &str)] = &[
        ("{not json", "invalid_json"),
        (r#"[1,2]"#, "invalid_json"),
        (
            r#"{"type":"track","userId":"u","event":"A","timestamp":"2026-11-25T10:00:00Z"}"#,
            "missing_field",
        ),
        (
            r#"{"type":"track","messageId":"m","event":"A","timestamp":"2026-11-25T10:00:00Z"}"#,
            "missing_field",
        ),
        (
            r#"{"type":"track","messageId":"m","userId":"u","event":"A"}"#,
            "missing_field",
        ),
        (
            r#"{"type":"track","messageId":"m","userId":"u","event":"A","timestamp":"yesterday"}"#,
            "invalid_field",
        ),
        (
            r#"{"type":"track","messageId":"m","userId":"u","event":"A","timestamp":"2026-11-25T10:00:00"}"#,
            "invalid_field",
        ),
        (
            r#"{"type":"track","messageId":"m","userId":"u","event":"A","timestamp":12}"#,
            "invalid_json",
        ),
        (
            r#"{"type":"track","messageId":"m","userId":"u","event":"A","timestamp":"2026-11-25T10:00:00Z","properties":5}"#,
            "invalid_field",
        ),
        (
            r#"{"type":"track","messageId":"m","userId":"u","event":"A","timestamp":"2026-11-25T10:00:00Z","properties":{"n":1e999}}"#,
            "invalid_json",
        ),
        (
            r#"{"type":"launch","messageId":"m","userId":"u","timestamp":"2026-11-25T10:00:00Z"}"#,
            "unsupported_type",
        ),
        (
            r#"{"messageId":"m","userId":"u","timestamp":"2026-11-25T10:00:00Z"}"#,
            "missing_field",
        ),
        (
            r#"{"type":"group","messageId":"m","userId":"u","timestamp":"2026-11-25T10:00:00Z"}"#,
            "missing_field",
        ),
        (
            r#"{"type":"alias","messageId":"m","userId":"u","timestamp":"2026-11-25T10:00:00Z"}"#,
            "missing_field",
        ),
        (
            r#"{"type":"track","messageId":{"a":1},"userId":"u","event":"A","timestamp":"2026-11-25T10:00:00Z"}"#,
            "invalid_json",
        ),
    ];
    for (json, code) in cases {
        let result = Decoder::keep_all()
            .decode(json.as_bytes(), Encoding::Json)
            .and_then(|mut items| items.pop().unwrap());
        match result {
            Err(e) => assert_eq!(e.reason_code(), *code, "{json}: {e}"),
            Ok(event) => panic!("{json} decoded to {event:?}"),
        }
    }
}

#[test]
fn limits_bound_size_depth_and_fields() {
    let limits = Limits {
        max_message_bytes: 200,
        max_depth: 3,
        max_fields: 4,
    };
    let limited = Decoder { limits, keep: None };
    let big = format!(
        r#"{{"type":"track","messageId":"m","userId":"u","event":"{}","timestamp":"2026-11-25T10:00:00Z"}}"#,
        "x".repeat(300)
    );
    assert!(matches!(
        limited.decode(big.as_bytes(), Encoding::Json),
        Err(DecodeError::Oversized { .. })
    ));
    let deep = r#"{"type":"track","messageId":"m","userId":"u","event":"A","timestamp":"2026-11-25T10:00:00Z","properties":{"a":{"b":{"c":{"d":1}}}}}"#;
    let err = limited.decode(deep.as_bytes(), Encoding::Json).unwrap_err();
    assert!(err.to_string().contains("nested deeper"), "{err}");
    let wide = r#"{"type":"track","messageId":"m","userId":"u","event":"A","timestamp":"2026-11-25T10:00:00Z","properties":{"a":1,"b":2,"c":3,"d":4,"e":5}}"#;
    let err = limited.decode(wide.as_bytes(), Encoding::Json).unwrap_err();
    assert!(err.to_string().contains("more than 4 fields"), "{err}");
}

#[test]
fn protobuf_round_trips_and_validates() {
    let event = Event::new("m-1", "u-1", EventKind::Track, Timestamp(1_764_547_200_000))
        .named("Demo Requested")
        .with_property("seats", 25.0)
        .with_context("page.path", "/pricing");
    let bytes = event_to_wire(&event).encode_to_vec();
    let decoded = Decoder::keep_all()
        .decode(&bytes, Encoding::Protobuf)
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(decoded, event);

    let mut wire = event_to_wire(&event);
    wire.properties.insert(
        "bad".into(),
        leadscore::codec::proto::wire::Value {
            kind: Some(leadscore::codec::proto::wire::value::Kind::Number(f64::NAN)),
        },
    );
    let err = Decoder::keep_all()
        .decode(&wire.encode_to_vec(), Encoding::Protobuf)
        .unwrap_err();
    assert!(err.to_string().contains("not a finite number"), "{err}");
    let err = Decoder::keep_all()
        .decode(b"\xff\xff\xff", Encoding::Protobuf)
        .unwrap_err();
    assert_eq!(err.reason_code(), "invalid_protobuf");
}

#[test]
fn a_decoder_for_rules_keeps_only_the_fields_they_read() {
    let rules = leadscore::config::load_rules(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/leadscore.toml"
    )))
    .unwrap();
    let json = br#"{"type":"page","messageId":"m","userId":"u","timestamp":"2026-11-25T10:00:00Z",
        "properties":{"path":"/pricing","form_type":"contact","junk":{"deep":[1,2,3]}},
        "context":{"page":{"path":"/pricing","referrer":"x"},"ip":"203.0.113.7","traits":{"title":"VP","favourite":"tea"},"groupId":"acct-1"},
        "traits":{"email":"a@b.example","company":{"employees":300,"founded":1999}}}"#;
    let e = Decoder::for_rules(&rules)
        .decode(json, Encoding::Json)
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    let keys =
        |f: &leadscore::core::Fields| f.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>();
    assert_eq!(keys(&e.properties), ["form_type"]);
    assert_eq!(keys(&e.context), ["page.path", "groupId"]);
    assert_eq!(keys(&e.traits), ["title", "email", "company.employees"]);
    assert_eq!(e.account_id.as_deref(), Some("acct-1"));
    let all = Decoder::keep_all()
        .decode(json, Encoding::Json)
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(all.properties.len(), 5, "path, form_type, junk.deep.0..2");
}

#[test]
fn content_types_choose_the_codec() {
    assert_eq!(
        Encoding::from_content_type("application/json; charset=utf-8"),
        Ok(Encoding::Json)
    );
    assert_eq!(
        Encoding::from_content_type("application/x-protobuf"),
        Ok(Encoding::Protobuf)
    );
    assert!(Encoding::from_content_type("text/csv").is_err());
}

#[test]
fn lead_state_round_trips_through_its_changelog_record() {
    let rules = leadscore::config::load_rules(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/leadscore.toml"
    )))
    .unwrap();
    let mut engine = leadscore::core::Engine::new(std::sync::Arc::new(rules));
    let t = 1_764_547_200_000;
    for line in leadscore::sample::generate(&leadscore::sample::SampleConfig {
        leads: 30,
        ..Default::default()
    }) {
        for event in Decoder::keep_all()
            .decode(line.as_bytes(), Encoding::Json)
            .unwrap()
        {
            let event = event.unwrap();
            let now = event.timestamp;
            assert!(matches!(
                engine.apply(&event, now),
                leadscore::core::Outcome::Applied(_)
            ));
        }
    }
    let mut checked = 0;
    for snapshot in engine.snapshot(Timestamp(t)) {
        let state = engine.lead(&snapshot.lead_id).unwrap();
        let stamp = leadscore::core::RulesStamp {
            version: "v1".into(),
            fingerprint: "0123456789abcdef".into(),
        };
        let (back, written_by) = decode_lead_state(&encode_lead_state(state, &stamp)).unwrap();
        assert_eq!(&back, state);
        assert_eq!(written_by, stamp);
        checked += 1;
    }
    assert!(checked >= 20, "{checked}");
}

#[test]
fn an_erase_call_decodes_from_json_and_protobuf_and_rules_cannot_match_it() {
    let e = one(
        r#"{"type":"erase","messageId":"gdpr-1","userId":"lead-42","timestamp":"2026-11-25T10:00:00Z"}"#,
    )
    .unwrap();
    assert_eq!(e.kind, EventKind::Erase);
    assert_eq!(
        (e.message_id.as_str(), e.lead_id.as_str()),
        ("gdpr-1", "lead-42")
    );
    let bytes = event_to_wire(&e).encode_to_vec();
    let decoded = Decoder::keep_all()
        .decode(&bytes, Encoding::Protobuf)
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(decoded, e);

    let text = r#"
version = "t"
[grades]
A = 30
B = 20
C = 10
[[tiers]]
name = "cold"
min_score = 0
[[engagement]]
name = "erased"
points = 5
type = "erase"
"#;
    let err = leadscore::config::parse_rules(text, std::path::Path::new("t.toml")).unwrap_err();
    assert!(
        err.to_string().contains("unknown `type` \"erase\""),
        "{err}"
    );
}

#[test]
fn lead_erased_names_the_lead_and_the_request_and_no_numbers() {
    use leadscore::core::{Engine, Outcome};
    let rules = std::sync::Arc::new(
        leadscore::config::parse_rules(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/config/leadscore.toml"
            ))
            .unwrap(),
            std::path::Path::new("leadscore.toml"),
        )
        .unwrap(),
    );
    let mut engine = Engine::new(rules);
    let at = Timestamp(1_764_547_200_000);
    let erase = Event::new("gdpr-1", "lead-42", EventKind::Erase, at);
    let Outcome::Applied(outputs) = engine.apply(&erase, at) else {
        panic!("applied");
    };
    let json: serde_json::Value =
        serde_json::from_str(&leadscore::codec::output::output_to_json(&outputs[0])).unwrap();
    let keys: std::collections::BTreeSet<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected = [
        "type",
        "event_id",
        "lead_id",
        "account_id",
        "at",
        "cause",
        "cause_event_id",
        "rules_version",
    ];
    assert_eq!(keys, expected.into_iter().collect());
    assert_eq!(json["type"], "lead_erased");
    assert_eq!(json["lead_id"], "lead-42");
    assert_eq!(json["cause_event_id"], "gdpr-1");
}
