//! Configuration at the edge: the TOML file in, validated core types out.
//! Every error names the file, the line and the reason.

mod rules;
mod runtime;

use std::fmt;
use std::path::{Path, PathBuf};

pub use rules::{parse_rules, parse_scores, summarize};
pub use runtime::{
    Guarantee, HttpSettings, KafkaSettings, LogFormat, LoggingSettings, OutputEncoding,
    Partitioner, ProcessingSettings, TimerClock,
};

/// Everything one configuration file holds.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file's first score (its only one, without `[[scores]]`).
    pub rules: crate::core::Rules,
    /// The second and later `[[scores]]` entries, each scored on its own.
    pub more_scores: Vec<crate::core::Rules>,
    pub kafka: KafkaSettings,
    pub processing: ProcessingSettings,
    pub http: HttpSettings,
    pub logging: LoggingSettings,
    /// Environment variables that overrode a setting.
    pub overridden_by_env: Vec<String>,
    /// `run --shadow`: topics and ids of its own (see
    /// [`KafkaSettings::shadow`]).
    pub shadow: bool,
    /// For `leadscore promote`: process each input partition up to (not
    /// including) this offset, and the internal topics to their end, then
    /// stop.
    pub drain_to: Option<std::collections::BTreeMap<i32, i64>>,
    /// The named score this configuration runs, one of a file of several
    /// (`run` runs each side by side, `run --score` one; see
    /// [`Config::run_score`]).
    pub running_score: Option<RunningScore>,
}

/// A named score that `run` scores.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningScore {
    pub name: String,
    /// The file's first score publishes the dead letters and filtered
    /// events of the input; the others, reading the same input, count them
    /// only, so each is published once.
    pub publishes_rejects: bool,
}

/// A configuration problem, located in its file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no single place (e.g. unreadable).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

impl ConfigError {
    fn at(file: &Path, source: &str, offset: Option<usize>, message: impl Into<String>) -> Self {
        let (line, column) = match offset {
            Some(offset) => line_and_column(source, offset),
            None => (0, 0),
        };
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }
}

fn line_and_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    (line, column)
}

impl Config {
    /// The file's scores, in file order.
    pub fn scores(&self) -> impl Iterator<Item = &crate::core::Rules> {
        std::iter::once(&self.rules).chain(&self.more_scores)
    }

    /// Keeps the one score that a run of the file scores: `name`'s, with a
    /// group, changelogs, account and identity topics and transactional id
    /// of its own (each gets `-NAME`; the input and output topics stay the
    /// file's: outputs say which score they are about); none: the file's
    /// only score, under the file's names.
    pub fn run_score(&mut self, name: Option<&str>) -> Result<(), String> {
        let scores = std::iter::once(self.rules.clone())
            .chain(std::mem::take(&mut self.more_scores))
            .collect();
        let (index, rules) = score_named(scores, name)?;
        self.rules = rules;
        if let Some(name) = name {
            self.kafka.for_score(name);
            self.running_score = Some(RunningScore {
                name: name.to_string(),
                publishes_rejects: index == 0,
            });
        }
        Ok(())
    }

    /// Whether this process publishes dead letters and filtered events
    /// (see [`RunningScore::publishes_rejects`]).
    pub fn publishes_rejects(&self) -> bool {
        self.running_score
            .as_ref()
            .is_none_or(|score| score.publishes_rejects)
    }
}

/// The score of a file's `scores` (in file order) that `name` names, with
/// its place; no name: the file's only score. The error says which names
/// the file has.
pub fn score_named(
    mut scores: Vec<crate::core::Rules>,
    name: Option<&str>,
) -> Result<(usize, crate::core::Rules), String> {
    let names = rules::score_names;
    let Some(name) = name else {
        if scores.len() == 1 {
            return Ok((0, scores.remove(0)));
        }
        return Err(format!(
            "the file holds {} scores ({}): choose one with --score NAME",
            scores.len(),
            names(&scores)
        ));
    };
    match scores
        .iter()
        .position(|rules| rules.score_name.as_deref() == Some(name))
    {
        Some(index) => Ok((index, scores.swap_remove(index))),
        None => Err(match names(&scores) {
            known if known.is_empty() => {
                format!("--score {name}: the file names no scores ([[scores]]); leave --score out")
            }
            known => format!("--score {name}: the file's scores are {known}"),
        }),
    }
}

/// Reads and validates the rules of a configuration file that holds one
/// score.
pub fn load_rules(path: &Path) -> Result<crate::core::Rules, ConfigError> {
    parse_rules(&read(path)?, path)
}

/// Reads and validates the scores of a configuration file, in file order.
pub fn load_scores(path: &Path) -> Result<Vec<crate::core::Rules>, ConfigError> {
    parse_scores(&read(path)?, path)
}

/// Reads and validates a whole configuration file, applying environment
/// overrides from `env` (pass `std::env::vars().collect()`).
pub fn load(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
    parse(&read(path)?, path, env)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        message: format!("cannot read: {e}"),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]);
        ConfigError::at(
            path,
            &prefix,
            Some(valid),
            "not UTF-8: a configuration file must be UTF-8 text",
        )
    })
}

/// A dead letter holds the original key and headers, the reason headers
/// and as much of the value as fits.
const MIN_DEAD_LETTER_BYTES: usize = 16 * 1024;
/// Stream threads per process; each holds a consumer, a producer and their
/// connections.
pub const MAX_THREADS: usize = 64;

/// An error about one setting of the file at `path`, placed at its key
/// (for problems found after loading, such as a `[kafka.properties]`
/// entry librdkafka refuses).
pub fn setting_error(path: &Path, section: &str, key: &str, message: String) -> ConfigError {
    let source = read(path).unwrap_or_default();
    ConfigError::at(path, &source, key_offset(&source, section, key), message)
}

/// Where `key` of the table `section` (dotted for a sub-table, e.g.
/// `kafka.properties`) is written in `source`; `None` where it is not (a
/// default, or a value from the environment).
fn key_offset(source: &str, section: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::Document::parse(source).ok()?;
    let mut item = doc.as_item();
    for part in section.split('.') {
        item = item.as_table_like()?.get(part)?;
    }
    item.as_table_like()?
        .key(key)?
        .span()
        .map(|span| span.start)
}

/// One runtime section: its table from the file (if any) with environment
/// overrides applied, deserialised; errors point at the section and name
/// the variables involved. Also returns where the section starts.
fn runtime_section<T: serde::de::DeserializeOwned>(
    file: &Path,
    source: &str,
    env: &[(String, String)],
    name: &str,
    raw: Option<(usize, toml::Table)>,
    overridden_by_env: &mut Vec<String>,
) -> Result<(T, Option<usize>), ConfigError> {
    let (offset, mut table) = raw.map_or((None, toml::Table::new()), |(o, t)| (Some(o), t));
    let applied = runtime::apply_env(name, &mut table, env);
    let from_file_alone = applied.is_empty();
    let blame = if from_file_alone {
        format!("[{name}]")
    } else {
        format!("[{name}] (with {})", applied.join(", "))
    };
    overridden_by_env.extend(applied);
    let settings = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            // The table has no places; the file does. Without overrides
            // the same section read from the file fails the same way, at
            // the offending key or value.
            let place = if from_file_alone {
                section_error_offset::<T>(source, name)
            } else {
                None
            };
            ConfigError::at(
                file,
                source,
                place.or(offset),
                format!("{blame}: {}", e.message().trim_end()),
            )
        })?;
    Ok((settings, offset))
}

/// Where reading `[name]` straight from `source` fails.
fn section_error_offset<T: serde::de::DeserializeOwned>(source: &str, name: &str) -> Option<usize> {
    match toml::from_str::<std::collections::BTreeMap<String, T>>(&only_section(source, name)) {
        Ok(_) => None,
        Err(e) => e.span().map(|span| span.start),
    }
}

/// `source` with every line outside the table `[name]` and its sub-tables
/// blanked out byte for byte, so that offsets stay those of `source`.
/// Line-based: a multi-line value with a line starting with `[` could
/// mislead it, which only costs an error its exact place.
fn only_section(source: &str, name: &str) -> String {
    let own = format!("{name}]");
    let sub = format!("{name}.");
    let mut inside = false;
    let mut out = Vec::with_capacity(source.len());
    for line in source.split_inclusive('\n') {
        let head = line.trim_start();
        if let Some(header) = head.strip_prefix('[') {
            let header = header.trim_start();
            inside =
                !header.starts_with('[') && (header.starts_with(&own) || header.starts_with(&sub));
        }
        if inside {
            out.extend_from_slice(line.as_bytes());
        } else {
            out.extend(line.bytes().map(|b| if b == b'\n' { b'\n' } else { b' ' }));
        }
    }
    String::from_utf8(out).expect("whole lines of UTF-8 text, and spaces")
}

/// The sections of the rules whose scalar settings the environment may
/// override (`LEADSCORE_SCORING_HALF_LIFE`, `LEADSCORE_GRADES_A`...).
const OVERRIDABLE_RULES_SECTIONS: [&str; 3] = ["scoring", "events", "grades"];

/// The rules text with `LEADSCORE_<SECTION>_<KEY>` overrides of the
/// scalar rules settings written in, and the variables applied. Layout and
/// comments are kept, so errors still point at the right lines.
fn with_rules_overrides(
    source: &str,
    env: &[(String, String)],
) -> Result<(String, Vec<String>), String> {
    let wanted: Vec<(&str, String, &str, &String)> = env
        .iter()
        .filter_map(|(name, value)| {
            OVERRIDABLE_RULES_SECTIONS.iter().find_map(|section| {
                let prefix = format!("LEADSCORE_{}_", section.to_ascii_uppercase());
                let key = name.strip_prefix(&prefix)?;
                // Grades are named A, B, C; everything else is lowercase.
                let key = if *section == "grades" {
                    key.to_string()
                } else {
                    key.to_ascii_lowercase()
                };
                Some((*section, key, name.as_str(), value))
            })
        })
        .collect();
    if wanted.is_empty() {
        return Ok((source.to_string(), Vec::new()));
    }
    let mut doc: toml_edit::DocumentMut = source.parse().map_err(|e| format!("{e}"))?;
    let mut applied = Vec::new();
    for (section, key, name, value) in wanted {
        let parsed = format!("v = {value}")
            .parse::<toml_edit::DocumentMut>()
            .ok()
            .and_then(|d| d.get("v").and_then(|v| v.as_value().cloned()))
            .filter(|v| !v.is_array())
            .unwrap_or_else(|| toml_edit::Value::from(value.as_str()));
        if doc.get(section).is_none() {
            doc[section] = toml_edit::table();
        }
        let table = doc[section]
            .as_table_like_mut()
            .ok_or_else(|| format!("[{section}] is not a table, so {name} cannot override it"))?;
        table.insert(&key, toml_edit::Item::Value(parsed));
        applied.push(name.to_string());
    }
    Ok((doc.to_string(), applied))
}

/// The text of a configuration file after `leadscore promote`: `source`
/// (the new rules' file) with its `[kafka]` names set to where the
/// promoted deployment keeps its state (the shadow's group, changelogs,
/// identity topic and explicit ids) and publishes (the live deployment's
/// output, dead-letter and filtered topics). Comments and everything else
/// are kept.
pub fn promoted_text(
    source: &str,
    promoted: &KafkaSettings,
    live: &KafkaSettings,
) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = source.parse().map_err(|e| format!("{e}"))?;
    if doc.get("kafka").is_none() {
        doc["kafka"] = toml_edit::table();
    }
    let kafka = doc["kafka"]
        .as_table_like_mut()
        .ok_or("[kafka] is not a table")?;
    let identity_topic = promoted.identity_topic();
    let names: [(&str, Option<&String>); 10] = [
        ("group_id", Some(&promoted.group_id)),
        ("changelog_topic", Some(&promoted.changelog_topic)),
        (
            "account_updates_topic",
            Some(&promoted.account_updates_topic),
        ),
        (
            "account_changelog_topic",
            Some(&promoted.account_changelog_topic),
        ),
        ("identity_topic", Some(&identity_topic)),
        ("transactional_id", promoted.transactional_id.as_ref()),
        ("group_instance_id", promoted.group_instance_id.as_ref()),
        ("output_topic", Some(&live.output_topic)),
        ("dead_letter_topic", Some(&live.dead_letter_topic)),
        ("filtered_topic", live.filtered_topic.as_ref()),
    ];
    for (key, value) in names {
        match value {
            Some(value) => {
                kafka.insert(key, toml_edit::value(value.as_str()));
            }
            None => {
                kafka.remove(key);
            }
        }
    }
    Ok(doc.to_string())
}

/// [`load`] over a file's text.
pub fn parse(source: &str, file: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let (source, rules_overrides) = with_rules_overrides(source, env)
        .map_err(|message| ConfigError::at(file, source, None, message))?;
    let source = source.as_str();
    let (scores, sections) = rules::parse_file(source, file).map_err(|mut e| {
        if !rules_overrides.is_empty() {
            e.message = format!("{} (with {})", e.message, rules_overrides.join(", "));
        }
        e
    })?;
    let mut overridden_by_env = rules_overrides;
    let (kafka, kafka_offset): (KafkaSettings, _) = runtime_section(
        file,
        source,
        env,
        "kafka",
        sections.kafka,
        &mut overridden_by_env,
    )?;
    let (processing, processing_offset): (ProcessingSettings, _) = runtime_section(
        file,
        source,
        env,
        "processing",
        sections.processing,
        &mut overridden_by_env,
    )?;
    let (http, http_offset): (HttpSettings, _) = runtime_section(
        file,
        source,
        env,
        "http",
        sections.http,
        &mut overridden_by_env,
    )?;
    let (logging, logging_offset): (LoggingSettings, _) = runtime_section(
        file,
        source,
        env,
        "logging",
        sections.logging,
        &mut overridden_by_env,
    )?;
    // A setting's own place in the file; else its section's (a default
    // or an environment override has none).
    let at_key = |section: &str, key: &str, section_offset: Option<usize>, message: String| {
        let place = key_offset(source, section, key).or(section_offset);
        Err(ConfigError::at(file, source, place, message))
    };
    if !http.listen.is_empty() && http.listen.parse::<std::net::SocketAddr>().is_err() {
        return at_key(
            "http",
            "listen",
            http_offset,
            format!(
                "[http] listen = {:?} is not an address such as 127.0.0.1:9464 (\"\" turns the server off)",
                http.listen
            ),
        );
    }
    if http.max_connections == 0 {
        return at_key(
            "http",
            "max_connections",
            http_offset,
            "[http] max_connections must be at least 1".into(),
        );
    }
    if http.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return at_key(
            "http",
            "token",
            http_offset,
            "[http] token is empty; remove it to leave the query API open".into(),
        );
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&logging.level) {
        return at_key(
            "logging",
            "level",
            logging_offset,
            format!("[logging] level = {:?}: {e}", logging.level),
        );
    }
    let problem =
        |key: &str, message: String| at_key("processing", key, processing_offset, message);
    if processing.commit_interval_ms == 0 {
        return problem(
            "commit_interval_ms",
            "[processing] commit_interval_ms must be positive".into(),
        );
    }
    if processing.dead_letter_max_bytes < MIN_DEAD_LETTER_BYTES {
        return problem(
            "dead_letter_max_bytes",
            format!(
                "[processing] dead_letter_max_bytes must be at least {MIN_DEAD_LETTER_BYTES} \
                 (room for the key and the reason headers)"
            ),
        );
    }
    if !(1..=MAX_THREADS).contains(&processing.threads) {
        return problem(
            "threads",
            format!("[processing] threads must be from 1 to {MAX_THREADS}"),
        );
    }
    if processing.max_batch == 0 {
        return problem(
            "max_batch",
            "[processing] max_batch must be positive".into(),
        );
    }
    if processing.commit_interval_ms >= processing.transaction_timeout_ms {
        return problem(
            "commit_interval_ms",
            format!(
                "[processing] commit_interval_ms ({}) must be below transaction_timeout_ms ({})",
                processing.commit_interval_ms, processing.transaction_timeout_ms
            ),
        );
    }
    if let Err(e) = crate::codec::Encoding::from_content_type(&processing.default_content_type) {
        return problem(
            "default_content_type",
            format!("[processing] default_content_type: {e}"),
        );
    }
    // Both ids must differ per instance; one written among the properties
    // is the same for every instance that reads this file.
    for (property, setting) in [
        ("group.instance.id", "group_instance_id"),
        ("transactional.id", "transactional_id"),
    ] {
        if kafka.properties.contains_key(property) {
            return at_key(
                "kafka.properties",
                property,
                kafka_offset,
                format!(
                    "[kafka.properties] \"{property}\" would give every instance the same id: \
                     set [kafka] {setting} per instance instead (or LEADSCORE_KAFKA_{})",
                    setting.to_ascii_uppercase()
                ),
            );
        }
    }
    if kafka.partitions < 1 {
        return at_key(
            "kafka",
            "partitions",
            kafka_offset,
            "[kafka] partitions must be at least 1".into(),
        );
    }
    let mut scores = scores.into_iter();
    let rules = scores
        .next()
        .expect("a rules file holds at least one score");
    Ok(Config {
        rules,
        more_scores: scores.collect(),
        kafka,
        processing,
        http,
        logging,
        overridden_by_env,
        shadow: false,
        drain_to: None,
        running_score: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "version = \"t\"\n[grades]\nA = 3\nB = 2\nC = 1\n[[tiers]]\nname = \"all\"\nmin_score = 0\n";

    #[test]
    fn runtime_sections_default_and_take_environment_overrides() {
        let file = Path::new("t.toml");
        let config = parse(RULES, file, &[]).unwrap();
        assert_eq!(config.kafka, KafkaSettings::default());
        assert_eq!(config.processing.guarantee, Guarantee::ExactlyOnce);
        let text = format!(
            "{RULES}[kafka]\ninput_topic = \"events\"\n[processing]\ncommit_interval_ms = 250\n"
        );
        let env = vec![
            (
                "LEADSCORE_KAFKA_TRANSACTIONAL_ID".to_string(),
                "leadscore-7".to_string(),
            ),
            (
                "LEADSCORE_PROCESSING_GUARANTEE".to_string(),
                "at_least_once".to_string(),
            ),
            (
                "LEADSCORE_PROCESSING_MAX_BATCH".to_string(),
                "500".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let config = parse(&text, file, &env).unwrap();
        assert_eq!(config.kafka.input_topic, "events");
        assert_eq!(config.kafka.transactional_id(), "leadscore-7");
        assert_eq!(config.processing.guarantee, Guarantee::AtLeastOnce);
        assert_eq!(
            (
                config.processing.commit_interval_ms,
                config.processing.max_batch
            ),
            (250, 500)
        );
        assert_eq!(config.overridden_by_env.len(), 3);
    }

    #[test]
    fn bad_runtime_settings_name_the_setting_at_its_key() {
        let file = Path::new("t.toml");
        let text = format!("{RULES}[kafka]\nbootstrap = \"x\"\n");
        let e = parse(&text, file, &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("t.toml:10:1: [kafka]: unknown field `bootstrap`"),
            "{e}"
        );
        let env = vec![(
            "LEADSCORE_PROCESSING_GUARANTEE".to_string(),
            "maybe".to_string(),
        )];
        let e = parse(RULES, file, &env).unwrap_err();
        assert!(
            e.to_string().contains("LEADSCORE_PROCESSING_GUARANTEE"),
            "{e}"
        );
        assert!(e.to_string().contains("maybe"), "{e}");
        let env = vec![(
            "LEADSCORE_PROCESSING_COMMIT_INTERVAL_MS".to_string(),
            "60000".to_string(),
        )];
        let e = parse(RULES, file, &env).unwrap_err();
        assert!(
            e.to_string()
                .contains("must be below transaction_timeout_ms"),
            "{e}"
        );
    }

    #[test]
    fn instance_ids_come_from_their_own_settings() {
        let file = Path::new("t.toml");
        let config = parse(RULES, file, &[]).unwrap();
        assert_eq!(
            config.kafka.group_instance_id(),
            Some(config.kafka.transactional_id()),
            "static membership under the transactional id by default"
        );
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let config = parse(
            RULES,
            file,
            &env(&[("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "leadscore-3")]),
        )
        .unwrap();
        assert_eq!(
            config.kafka.group_instance_id().as_deref(),
            Some("leadscore-3")
        );
        let config = parse(
            RULES,
            file,
            &env(&[("LEADSCORE_KAFKA_GROUP_INSTANCE_ID", "")]),
        )
        .unwrap();
        assert_eq!(
            config.kafka.group_instance_id(),
            None,
            "\"\" is dynamic membership"
        );
        for property in ["group.instance.id", "transactional.id"] {
            let text = format!("{RULES}[kafka.properties]\n\"{property}\" = \"x\"\n");
            let e = parse(&text, file, &[]).unwrap_err().to_string();
            assert!(e.contains(property) && e.contains("per instance"), "{e}");
        }
    }

    #[test]
    fn rules_settings_take_environment_overrides_too() {
        let file = Path::new("t.toml");
        let text = format!("{RULES}[scoring]\nhalf_life = \"30d\" # kept comment\nstep = 5\n");
        let env = vec![
            ("LEADSCORE_SCORING_STEP".to_string(), "2".to_string()),
            ("LEADSCORE_SCORING_HALF_LIFE".to_string(), "7d".to_string()),
            ("LEADSCORE_GRADES_A".to_string(), "5".to_string()),
            (
                "LEADSCORE_EVENTS_DEDUP_MAX_IDS".to_string(),
                "10".to_string(),
            ),
        ];
        let config = parse(&text, file, &env).unwrap();
        let s = &config.rules.settings;
        assert_eq!(s.step, 2.0);
        assert_eq!(s.half_life, crate::core::decay::HalfLife::days(7.0));
        assert_eq!(config.rules.grades.a, 5.0);
        assert_eq!(s.dedup_max_ids, 10);
        assert_eq!(config.overridden_by_env.len(), 4);
        let env = vec![("LEADSCORE_SCORING_HYSTERESIS".to_string(), "-1".to_string())];
        let e = parse(&text, file, &env).unwrap_err();
        assert!(e.to_string().contains("hysteresis"), "{e}");
        assert!(
            e.to_string().contains("LEADSCORE_SCORING_HYSTERESIS"),
            "{e}"
        );
    }

    #[test]
    fn lines_and_columns_are_one_based() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_and_column(src, 0), (1, 1));
        assert_eq!(line_and_column(src, 6), (2, 1));
        assert_eq!(line_and_column(src, 9), (2, 4));
    }
}
