//! A rules file of two scores from a file of one: for tests and benches
//! (`benches/core.rs` includes this file by path).

/// `rules_text` (a file of one score, without `[[scores]]`) as a file of
/// two: `enterprise`, its rules as they are, and `self_serve`, with its
/// engagement worth half (caps too), tiers 20 points lower and base 10.
/// Every other section is shared.
pub fn two_scores(rules_text: &str) -> String {
    use toml::{Table, Value};
    let number = |v: &Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
    let mut file: Table = rules_text.parse().unwrap();
    let grades = file.remove("grades").unwrap();
    let tiers = file.remove("tiers").unwrap();
    let engagement = file.remove("engagement").unwrap();
    let entry = |name: &str| {
        let mut entry = Table::new();
        entry.insert("name".into(), name.into());
        entry.insert("grades".into(), grades.clone());
        entry.insert("tiers".into(), tiers.clone());
        entry.insert("engagement".into(), engagement.clone());
        entry
    };
    let mut second = entry("self_serve");
    second.insert(
        "scoring".into(),
        Value::Table(Table::from_iter([("base".to_string(), Value::from(10.0))])),
    );
    for rule in second["engagement"].as_array_mut().unwrap() {
        let rule = rule.as_table_mut().unwrap();
        let points = number(&rule["points"]).unwrap();
        rule.insert("points".into(), (points / 2.0).into());
        if let Some(cap) = rule.get_mut("cap").and_then(Value::as_table_mut) {
            let points = number(&cap["points"]).unwrap();
            cap.insert("points".into(), (points / 2.0).into());
        }
    }
    for tier in second["tiers"].as_array_mut().unwrap().iter_mut().skip(1) {
        let tier = tier.as_table_mut().unwrap();
        let min = number(&tier["min_score"]).unwrap();
        tier.insert("min_score".into(), (min - 20.0).into());
    }
    file.insert(
        "scores".into(),
        Value::Array(vec![
            Value::Table(entry("enterprise")),
            Value::Table(second),
        ]),
    );
    toml::to_string(&file).unwrap()
}
