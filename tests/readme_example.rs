//! The README's worked example, step by step, on the example rules file.

mod common;

use common::*;
use leadscore::core::{Direction, Engine, Outcome, Output, Timestamp};

fn apply(engine: &mut Engine, event: leadscore::core::Event) -> Vec<Output> {
    let now = event.timestamp;
    match engine.apply(&event, now) {
        Outcome::Applied(outputs) => outputs,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_worked_example_in_the_readme_holds() {
    let mut engine = Engine::new(arc(example_rules()));
    let profile = identify(
        "i1",
        "vp",
        T0,
        &[
            ("title", "VP Marketing"),
            ("department", "marketing"),
            ("email", "ada@acme.example"),
        ],
    )
    .with_trait("company.employees", 300.0)
    .with_trait("company.industry", "software");
    apply(&mut engine, profile);
    let s = engine.explain("vp", Timestamp(T0)).unwrap();
    assert_eq!(
        (s.fit, s.grade.as_str(), s.tier.as_ref()),
        (46.0, "A", "cold")
    );

    let out = apply(
        &mut engine,
        track("d1", "vp", "Demo Requested", T0 + 60_000),
    );
    let crossed = crossings(&out);
    assert_eq!(crossed.len(), 1);
    assert_eq!(
        (
            crossed[0].previous_tier.as_ref(),
            crossed[0].tier.as_ref(),
            crossed[0].score
        ),
        ("cold", "mql", 76.0)
    );

    apply(&mut engine, page("p1", "vp", "/pricing", T0 + 120_000));
    let out = apply(&mut engine, page("p2", "vp", "/pricing", T0 + 120_000));
    assert!(
        crossings(&out).is_empty(),
        "96 points but no budget or authority"
    );
    let s = engine.explain("vp", Timestamp(T0 + 120_000)).unwrap();
    assert!((s.score - 96.0).abs() < 1e-3, "{}", s.score);
    assert_eq!(s.tier.as_ref(), "mql");

    let out = apply(
        &mut engine,
        identify("i2", "vp", T0 + 180_000, &[("budget", "50k+")]),
    );
    assert_eq!(crossings(&out)[0].tier.as_ref(), "sql");

    let later = engine
        .explain("vp", Timestamp(T0 + 120_000 + 21 * DAY))
        .unwrap();
    let pricing = later
        .contributions
        .iter()
        .find(|c| c.rule.as_ref() == "pricing_page")
        .unwrap();
    assert!(
        (pricing.points - 10.0).abs() < 0.01,
        "pricing points halve in 21 days: {}",
        pricing.points
    );

    let out = engine.advance(Timestamp(T0 + 60 * DAY));
    let down = crossings(&out);
    assert_eq!(
        (
            down[0].previous_tier.as_ref(),
            down[0].tier.as_ref(),
            down[0].direction
        ),
        ("sql", "mql", Direction::Down)
    );
    assert!(
        down[0].score < 80.0 && down[0].score > 79.99,
        "{}",
        down[0].score
    );
    let days = (down[0].at.millis() - T0) as f64 / DAY as f64;
    assert!((14.0..15.0).contains(&days), "after {days} days");
}
