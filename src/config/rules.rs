//! The rules part of the TOML file: raw serde shapes, their validation and
//! their compilation into [`crate::core::Rules`].

use std::collections::HashSet;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use crate::core::account::{AccountRules, Committee};
use crate::core::decay::HalfLife;
use crate::core::event::{EventKind, Value};
use crate::core::filters::{AfterSend, Burst, Filters};
use crate::core::rules::{
    Cap, EngagementRule, EventCondition, EventField, FitRule, Grade, GradeThresholds,
    LifecycleRule, Op, Rules, Settings, Tier, TraitCondition, TraitKey, MAX_OPS_PER_TRAIT,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRulesFile {
    /// Carried into every output so subscribers know which rules scored it.
    version: Spanned<String>,
    #[serde(default)]
    scoring: RawScoring,
    #[serde(default)]
    events: RawEvents,
    /// Required unless every `[[scores]]` entry has its own.
    grades: Option<Spanned<RawGrades>>,
    #[serde(default)]
    tiers: Vec<Spanned<RawTier>>,
    #[serde(default)]
    fit: Vec<Spanned<RawFitRule>>,
    #[serde(default)]
    engagement: Vec<Spanned<RawEngagementRule>>,
    /// Several scores, each with engagement rules, tiers and grades of its
    /// own; absent: the file is one score.
    #[serde(default)]
    scores: Vec<Spanned<RawScore>>,
    /// Account scoring; absent: leads only.
    accounts: Option<Spanned<RawAccounts>>,
    /// Dispositions from sales and the CRM.
    #[serde(default)]
    lifecycle: Vec<Spanned<RawLifecycleRule>>,
    /// Bot and scanner traffic kept out of scores.
    filters: Option<Spanned<RawFilters>>,
    /// Runtime sections, checked by `super::load` (not part of the rules).
    #[serde(default)]
    kafka: Option<Spanned<toml::Table>>,
    #[serde(default)]
    processing: Option<Spanned<toml::Table>>,
    #[serde(default)]
    http: Option<Spanned<toml::Table>>,
    #[serde(default)]
    logging: Option<Spanned<toml::Table>>,
}

/// The runtime sections as written, with where they start.
pub(super) struct RuntimeSections {
    pub kafka: Option<(usize, toml::Table)>,
    pub processing: Option<(usize, toml::Table)>,
    pub http: Option<(usize, toml::Table)>,
    pub logging: Option<(usize, toml::Table)>,
}

/// One `[[scores]]` entry: what its score has of its own. The rest of the
/// file (`[scoring]` defaults, `[events]`, shared `[[fit]]` rules,
/// `[accounts]`, `[[lifecycle]]`, `[filters]`) applies to every score.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScore {
    name: Spanned<String>,
    /// Whether the file's top-level `[[fit]]` rules count in this score.
    #[serde(default = "default_shared_fit")]
    shared_fit: bool,
    /// Overrides of `[scoring]` for this score.
    #[serde(default)]
    scoring: RawScoringOverrides,
    grades: Option<Spanned<RawGrades>>,
    #[serde(default)]
    tiers: Vec<Spanned<RawTier>>,
    #[serde(default)]
    fit: Vec<Spanned<RawFitRule>>,
    #[serde(default)]
    engagement: Vec<Spanned<RawEngagementRule>>,
    /// Dispositions for this score alone, after the file's: say, the
    /// outcome (`won`/`lost`) calibration fits this score against.
    #[serde(default)]
    lifecycle: Vec<Spanned<RawLifecycleRule>>,
}

fn default_shared_fit() -> bool {
    true
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScoringOverrides {
    half_life: Option<Spanned<String>>,
    base: Option<Spanned<f64>>,
    clamp: Option<Spanned<RawClamp>>,
    step: Option<Spanned<f64>>,
    hysteresis: Option<Spanned<f64>>,
    top_contributions: Option<usize>,
}

impl RawScoringOverrides {
    fn over(self, shared: &RawScoring) -> RawScoring {
        RawScoring {
            half_life: self.half_life.unwrap_or_else(|| shared.half_life.clone()),
            base: self.base.unwrap_or_else(|| shared.base.clone()),
            clamp: self.clamp.or_else(|| shared.clamp.clone()),
            step: self.step.unwrap_or_else(|| shared.step.clone()),
            hysteresis: self.hysteresis.unwrap_or_else(|| shared.hysteresis.clone()),
            top_contributions: self.top_contributions.unwrap_or(shared.top_contributions),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScoring {
    /// Global engagement half-life ("30d", "2w", "none").
    #[serde(default = "default_half_life")]
    half_life: Spanned<String>,
    /// Points every lead starts with.
    #[serde(default = "default_base")]
    base: Spanned<f64>,
    /// Score range, e.g. `{ min = 0, max = 100 }`; no clamp when absent.
    clamp: Option<Spanned<RawClamp>>,
    #[serde(default = "default_step")]
    step: Spanned<f64>,
    #[serde(default = "default_hysteresis")]
    hysteresis: Spanned<f64>,
    #[serde(default = "default_top_contributions")]
    top_contributions: usize,
}

impl Default for RawScoring {
    fn default() -> Self {
        RawScoring {
            half_life: default_half_life(),
            base: default_base(),
            clamp: None,
            step: default_step(),
            hysteresis: default_hysteresis(),
            top_contributions: default_top_contributions(),
        }
    }
}

fn default_half_life() -> Spanned<String> {
    Spanned::new(0..0, "30d".to_string())
}
fn default_base() -> Spanned<f64> {
    Spanned::new(0..0, 0.0)
}
fn default_step() -> Spanned<f64> {
    Spanned::new(0..0, 5.0)
}
fn default_hysteresis() -> Spanned<f64> {
    Spanned::new(0..0, 5.0)
}
fn default_top_contributions() -> usize {
    5
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClamp {
    min: f64,
    max: f64,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    /// Events further behind the latest event time seen are rejected.
    #[serde(default = "default_allowed_lateness")]
    allowed_lateness: Spanned<String>,
    /// Events further than this in the future are rejected.
    #[serde(default = "default_max_future_skew")]
    max_future_skew: Spanned<String>,
    /// How long a lead remembers message ids, in event time.
    #[serde(default = "default_dedup_window")]
    dedup_window: Spanned<String>,
    /// At most this many remembered ids per lead.
    #[serde(default = "default_dedup_max_ids")]
    dedup_max_ids: usize,
    /// Leads in the lowest tier with no event for this long are dropped.
    inactive_after: Option<Spanned<String>>,
    /// Publish `lead_expired` when one is.
    #[serde(default)]
    announce_expiry: bool,
}

impl Default for RawEvents {
    fn default() -> Self {
        RawEvents {
            allowed_lateness: default_allowed_lateness(),
            max_future_skew: default_max_future_skew(),
            dedup_window: default_dedup_window(),
            dedup_max_ids: default_dedup_max_ids(),
            inactive_after: None,
            announce_expiry: false,
        }
    }
}

fn default_allowed_lateness() -> Spanned<String> {
    Spanned::new(0..0, "7d".to_string())
}
fn default_max_future_skew() -> Spanned<String> {
    Spanned::new(0..0, "10m".to_string())
}
fn default_dedup_window() -> Spanned<String> {
    Spanned::new(0..0, "8d".to_string())
}
fn default_dedup_max_ids() -> usize {
    1000
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrades {
    #[serde(rename = "A")]
    a: f64,
    #[serde(rename = "B")]
    b: f64,
    #[serde(rename = "C")]
    c: f64,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccounts {
    /// Leads with a business email join the account named by its domain
    /// (unless a `group` call or `account_id` put them in one).
    #[serde(default)]
    from_email_domain: bool,
    /// Domains that never form an account; a built-in list when absent.
    personal_domains: Option<Vec<String>>,
    /// Points every account starts with.
    #[serde(default)]
    base: f64,
    /// A lead adds at most this much engagement to its account.
    #[serde(default = "default_lead_engagement_cap")]
    lead_engagement_cap: f64,
    /// Leads scoring at least this count toward the buying committee.
    #[serde(default = "default_engaged_lead_score")]
    engaged_lead_score: f64,
    #[serde(default = "default_per_engaged_lead")]
    per_engaged_lead: f64,
    #[serde(default = "default_max_engaged_leads")]
    max_engaged_leads: usize,
    #[serde(default = "default_per_department")]
    per_department: f64,
    #[serde(default = "default_per_seniority")]
    per_seniority: f64,
    /// The lead fit-rule group whose matched rule names a lead's department.
    department_group: Option<String>,
    /// The lead fit-rule group whose matched rule names a lead's seniority.
    seniority_group: Option<String>,
    grades: Option<Spanned<RawGrades>>,
    #[serde(default)]
    fit: Vec<Spanned<RawFitRule>>,
    #[serde(default)]
    tiers: Vec<Spanned<RawTier>>,
}

fn default_lead_engagement_cap() -> f64 {
    40.0
}
fn default_engaged_lead_score() -> f64 {
    50.0
}
fn default_per_engaged_lead() -> f64 {
    5.0
}
fn default_max_engaged_leads() -> usize {
    6
}
fn default_per_department() -> f64 {
    4.0
}
fn default_per_seniority() -> f64 {
    3.0
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: String,
    min_score: f64,
    min_grade: Option<String>,
    #[serde(default)]
    require_all_traits: Vec<String>,
    #[serde(default)]
    require_any_trait: Vec<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFitRule {
    name: String,
    points: f64,
    group: Option<String>,
    when: Vec<Spanned<RawCondition>>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngagementRule {
    name: String,
    points: f64,
    #[serde(rename = "type")]
    kinds: Option<OneOrMany>,
    event: Option<OneOrMany>,
    #[serde(default)]
    when: Vec<Spanned<RawCondition>>,
    cap: Option<RawCap>,
    #[serde(default)]
    once: bool,
    half_life: Option<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifecycleRule {
    name: String,
    #[serde(rename = "type")]
    kinds: Option<OneOrMany>,
    event: Option<OneOrMany>,
    #[serde(default)]
    when: Vec<Spanned<RawCondition>>,
    stage: Option<String>,
    #[serde(default)]
    terminal: bool,
    #[serde(default)]
    reset: bool,
    suppress: Option<String>,
    outcome: Option<String>,
}

#[derive(Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilters {
    /// The bot and scanner signatures kept in `config/bot-user-agents.txt`.
    #[serde(default)]
    bot_user_agents: bool,
    /// More user agent substrings (`!` for exceptions).
    #[serde(default)]
    user_agents: Vec<String>,
    /// Address ranges (CIDR) whose events are not people's.
    #[serde(default)]
    ip_ranges: Vec<String>,
    #[serde(default)]
    burst: Vec<RawBurst>,
    #[serde(default)]
    after_send: Vec<RawAfterSend>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBurst {
    rule: String,
    max_hits: u32,
    within: String,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAfterSend {
    send: OneOrMany,
    rules: Vec<String>,
    within: String,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCap {
    points: f64,
    per: String,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    field: String,
    equals: Option<toml::Value>,
    one_of: Option<Vec<toml::Value>>,
    prefix: Option<String>,
    suffix: Option<String>,
    contains: Option<String>,
    regex: Option<String>,
    range: Option<RawRange>,
    exists: Option<bool>,
    #[serde(default)]
    not: bool,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    at_least: Option<f64>,
    below: Option<f64>,
}

/// Collects errors with positions while compiling.
struct Ctx<'a> {
    file: &'a Path,
    source: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: &Range<usize>, message: impl Into<String>) -> ConfigError {
        let offset = (span.end > 0).then_some(span.start);
        ConfigError::at(self.file, self.source, offset, message)
    }
}

/// Parses and validates the text of a rules file that holds one score
/// (no `[[scores]]`, or one entry). `file` is only used in errors.
pub fn parse_rules(source: &str, file: &Path) -> Result<Rules, ConfigError> {
    let mut scores = parse_scores(source, file)?;
    if scores.len() > 1 {
        return Err(ConfigError::at(
            file,
            source,
            None,
            format!(
                "the file holds {} scores ([[scores]]: {}); this command reads a file with one",
                scores.len(),
                score_names(&scores)
            ),
        ));
    }
    Ok(scores.remove(0))
}

/// The names of a file's scores, for messages: `a, b`.
pub(super) fn score_names(scores: &[Rules]) -> String {
    scores
        .iter()
        .filter_map(|rules| rules.score_name.as_deref())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses and validates a rules file's text: its scores, in file order
/// (one, unnamed, for a file without `[[scores]]`).
pub fn parse_scores(source: &str, file: &Path) -> Result<Vec<Rules>, ConfigError> {
    parse_file(source, file).map(|(scores, _)| scores)
}

pub(super) fn parse_file(
    source: &str,
    file: &Path,
) -> Result<(Vec<Rules>, RuntimeSections), ConfigError> {
    let mut raw: RawRulesFile = toml::from_str(source).map_err(|e| {
        ConfigError::at(
            file,
            source,
            e.span().map(|s| s.start),
            e.message().trim_end().to_string(),
        )
    })?;
    let ctx = Ctx { file, source };
    let runtime = RuntimeSections {
        kafka: raw.kafka.take().map(|t| (t.span().start, t.into_inner())),
        processing: raw
            .processing
            .take()
            .map(|t| (t.span().start, t.into_inner())),
        http: raw.http.take().map(|t| (t.span().start, t.into_inner())),
        logging: raw.logging.take().map(|t| (t.span().start, t.into_inner())),
    };
    compile_scores(&ctx, raw).map(|scores| (scores, runtime))
}

/// A file without `[[scores]]` is one score; with it, each entry is
/// compiled as the file it stands for: the shared sections plus its own.
fn compile_scores(ctx: &Ctx, mut raw: RawRulesFile) -> Result<Vec<Rules>, ConfigError> {
    let scores = std::mem::take(&mut raw.scores);
    if scores.is_empty() {
        return compile(ctx, raw).map(|rules| vec![rules]);
    }
    if let Some(rule) = raw.engagement.first() {
        return Err(ctx.err(
            &rule.span(),
            "with [[scores]], engagement rules belong to a score: move [[engagement]] into \
             [[scores.engagement]] of each score it is for",
        ));
    }
    if let Some(tier) = raw.tiers.first() {
        return Err(ctx.err(
            &tier.span(),
            "with [[scores]], tiers belong to a score: move [[tiers]] into [[scores.tiers]] of \
             each score",
        ));
    }
    let mut names = HashSet::new();
    let mut compiled = Vec::new();
    for spanned in scores {
        let span = spanned.span();
        let score = spanned.into_inner();
        let name_span = score.name.span();
        let name = score.name.into_inner().trim().to_string();
        if !is_score_name(&name) {
            return Err(ctx.err(
                &name_span,
                format!(
                    "score name {name:?}: use letters, digits, `_` and `-` (at most \
                     {MAX_SCORE_NAME} characters); it goes into every output and metric"
                ),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(ctx.err(&name_span, format!("score `{name}` is defined twice")));
        }
        if score.tiers.is_empty() {
            return Err(ctx.err(
                &span,
                format!("score `{name}`: at least one tier is needed ([[scores.tiers]])"),
            ));
        }
        let Some(grades) = score.grades.or_else(|| raw.grades.clone()) else {
            return Err(ctx.err(
                &span,
                format!("score `{name}`: no grades: give it [scores.grades] or the file [grades]"),
            ));
        };
        let mut fit = if score.shared_fit {
            raw.fit.clone()
        } else {
            Vec::new()
        };
        fit.extend(score.fit);
        let mut lifecycle = raw.lifecycle.clone();
        lifecycle.extend(score.lifecycle);
        let file_of_one = RawRulesFile {
            version: raw.version.clone(),
            scoring: score.scoring.over(&raw.scoring),
            events: raw.events.clone(),
            grades: Some(grades),
            tiers: score.tiers,
            fit,
            engagement: score.engagement,
            scores: Vec::new(),
            accounts: raw.accounts.clone(),
            lifecycle,
            filters: raw.filters.clone(),
            kafka: None,
            processing: None,
            http: None,
            logging: None,
        };
        let mut rules = compile(ctx, file_of_one).map_err(|mut e| {
            e.message = format!("score `{name}`: {}", e.message);
            e
        })?;
        rules.score_name = Some(name.into());
        compiled.push(rules);
    }
    Ok(compiled)
}

/// Score names go into outputs, metric labels and changelog keys.
const MAX_SCORE_NAME: usize = 64;

fn is_score_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SCORE_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn compile(ctx: &Ctx, raw: RawRulesFile) -> Result<Rules, ConfigError> {
    let version = raw.version.get_ref().trim();
    if version.is_empty() {
        return Err(ctx.err(&raw.version.span(), "`version` must not be empty"));
    }
    let settings = compile_settings(ctx, &raw.scoring, &raw.events)?;

    let Some(grades) = raw.grades else {
        return Err(ctx.err(&(0..0), "[grades] is missing: give A, B and C minimums"));
    };
    let grades = compile_grades(ctx, grades)?;

    let mut trait_keys: Vec<TraitKey> = Vec::new();
    let mut rule_names = HashSet::new();
    let fit = compile_fit(ctx, raw.fit, &mut trait_keys, &mut rule_names)?;

    let mut engagement = Vec::new();
    for spanned in raw.engagement {
        let span = spanned.span();
        let rule = spanned.into_inner();
        check_rule_header(ctx, &span, &rule.name, rule.points, &mut rule_names)?;
        let (kinds, names, conditions) =
            compile_matcher(ctx, &span, &rule.name, rule.kinds, rule.event, rule.when)?;
        let cap = match rule.cap {
            None => None,
            Some(cap) => {
                if rule.once {
                    return Err(ctx.err(
                        &span,
                        format!("rule `{}`: `cap` and `once` exclude each other", rule.name),
                    ));
                }
                if !(in_points_range(cap.points) && cap.points > 0.0) {
                    return Err(ctx.err(
                        &span,
                        format!(
                            "rule `{}`: cap points must be positive and at most {MAX_POINTS}",
                            rule.name
                        ),
                    ));
                }
                let per = parse_duration_at_least(&cap.per, MIN_CAP_WINDOW)
                    .map_err(|m| ctx.err(&span, format!("rule `{}`: cap `per`: {m}", rule.name)))?;
                Some(Cap {
                    points: cap.points,
                    window_ms: duration_ms(per),
                })
            }
        };
        let half_life = match &rule.half_life {
            None => HalfLife::Inherit,
            Some(text) => parse_half_life(text)
                .map_err(|m| ctx.err(&span, format!("rule `{}`: `half_life`: {m}", rule.name)))?,
        };
        engagement.push(EngagementRule {
            name: rule.name.into(),
            points: rule.points,
            kinds,
            names,
            conditions,
            cap,
            once: rule.once,
            half_life,
        });
    }

    let tiers = compile_tiers(ctx, raw.tiers, &mut trait_keys, "lead")?;
    let accounts = match raw.accounts {
        None => None,
        Some(accounts) => Some(Arc::new(compile_accounts(
            ctx,
            accounts,
            version,
            &settings,
            &fit,
            &mut rule_names,
        )?)),
    };

    let lifecycle = compile_lifecycle(ctx, raw.lifecycle)?;
    let filters = match raw.filters {
        None => None,
        Some(filters) => Some(Arc::new(compile_filters(ctx, filters, &engagement)?)),
    };
    // State and fit readings keep rule indexes in 16 bits.
    for (what, count) in [("fit", fit.len()), ("engagement", engagement.len())] {
        if count > usize::from(u16::MAX) {
            return Err(ctx.err(
                &(0..0),
                format!("{count} {what} rules: at most {} are supported", u16::MAX),
            ));
        }
    }
    let mut rules = Rules::new(
        version, settings, grades, tiers, fit, engagement, trait_keys,
    );
    rules.accounts = accounts;
    rules.lifecycle = lifecycle;
    rules.filters = filters;
    Ok(rules)
}

/// `[filters]`: bots by user agent and address, velocity by rule.
fn compile_filters(
    ctx: &Ctx,
    raw: Spanned<RawFilters>,
    engagement: &[EngagementRule],
) -> Result<Filters, ConfigError> {
    let span = raw.span();
    let raw = raw.into_inner();
    let err = |message: String| ctx.err(&span, format!("[filters]: {message}"));
    let rule_index = |name: &str, what: &str| {
        engagement
            .iter()
            .position(|r| *r.name == *name.trim())
            .ok_or_else(|| err(format!("{what}: no engagement rule is named `{name}`")))
    };
    let mut agents = if raw.bot_user_agents {
        Filters::bot_user_agents()
    } else {
        Vec::new()
    };
    if let Some(empty) = raw
        .user_agents
        .iter()
        .find(|a| a.trim().trim_start_matches('!').trim().is_empty())
    {
        return Err(err(format!(
            "user_agents: {empty:?} would match every user agent"
        )));
    }
    agents.extend(raw.user_agents);
    let ip_ranges = raw
        .ip_ranges
        .iter()
        .map(|text| {
            text.trim().parse::<ipnet::IpNet>().map_err(|_| {
                err(format!(
                    "ip_ranges: {text:?} is not an address range like \"192.0.2.0/24\" or \"2001:db8::/32\""
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let within = |text: &str, what: &str| {
        parse_duration_at_least(text, MIN_FILTER_WINDOW)
            .map(duration_ms)
            .map_err(|m| err(format!("{what} `within`: {m}")))
    };
    let mut bursts = Vec::new();
    for burst in raw.burst {
        if burst.max_hits == 0 {
            return Err(err(format!(
                "burst on `{}`: `max_hits` must be at least 1",
                burst.rule
            )));
        }
        bursts.push(Burst {
            rule: rule_index(&burst.rule, "burst")?,
            max_hits: burst.max_hits,
            within_ms: within(&burst.within, "burst")?,
        });
    }
    let mut after_send = Vec::new();
    for after in raw.after_send {
        let send: Vec<String> = after
            .send
            .into_vec()
            .iter()
            .map(|s| s.trim().to_ascii_lowercase())
            .collect();
        if send.iter().any(String::is_empty) {
            return Err(err("after_send: an empty `send` event name".into()));
        }
        if after.rules.is_empty() {
            return Err(err(
                "after_send: give the `rules` whose hits it judges".into()
            ));
        }
        after_send.push(AfterSend {
            send,
            rules: after
                .rules
                .iter()
                .map(|r| rule_index(r, "after_send"))
                .collect::<Result<_, _>>()?,
            within_ms: within(&after.within, "after_send")?,
        });
    }
    if agents.is_empty() && ip_ranges.is_empty() && bursts.is_empty() && after_send.is_empty() {
        return Err(err(
            "filters nothing: set bot_user_agents, user_agents, ip_ranges, [[filters.burst]] or [[filters.after_send]]".into(),
        ));
    }
    let rule_name = |index: usize| engagement[index].name.to_string();
    Filters::new(&agents, ip_ranges, bursts, after_send, &rule_name).map_err(err)
}

/// Call types, event names and conditions.
type Matcher = (Vec<EventKind>, Vec<String>, Vec<EventCondition>);

/// What an engagement or lifecycle rule matches: call types, event names
/// and conditions, at least one of them.
fn compile_matcher(
    ctx: &Ctx,
    span: &Range<usize>,
    rule_name: &str,
    kinds_raw: Option<OneOrMany>,
    event: Option<OneOrMany>,
    when: Vec<Spanned<RawCondition>>,
) -> Result<Matcher, ConfigError> {
    let mut kinds = Vec::new();
    for name in kinds_raw.map(OneOrMany::into_vec).unwrap_or_default() {
        match EventKind::parse(&name) {
            Some(EventKind::Alias | EventKind::Erase) | None => {
                return Err(ctx.err(
                    span,
                    format!(
                        "rule `{rule_name}`: unknown `type` \"{name}\" (use track, page, screen, identify or group)"
                    ),
                ))
            }
            Some(kind) => kinds.push(kind),
        }
    }
    let names = event.map(OneOrMany::into_vec).unwrap_or_default();
    if names.iter().any(|n| n.trim().is_empty()) {
        return Err(ctx.err(span, format!("rule `{rule_name}`: empty `event` name")));
    }
    let mut conditions = Vec::new();
    for cond in when {
        let cspan = cond.span();
        let cond = cond.into_inner();
        let Some(field) = EventField::parse(cond.field.trim()) else {
            return Err(ctx.err(
                &cspan,
                format!(
                    "rule `{rule_name}`: unknown field `{}` (use event, properties.NAME, context.NAME or traits.NAME)",
                    cond.field
                ),
            ));
        };
        let (op, negate) = compile_op(ctx, &cspan, cond)?;
        conditions.push(EventCondition { field, op, negate });
    }
    if kinds.is_empty() && names.is_empty() && conditions.is_empty() {
        return Err(ctx.err(
            span,
            format!(
                "rule `{rule_name}` would match every event: give a `type`, an `event` or a `when`"
            ),
        ));
    }
    Ok((kinds, names, conditions))
}

/// Dispositions: `[[lifecycle]]` rules.
fn compile_lifecycle(
    ctx: &Ctx,
    raw: Vec<Spanned<RawLifecycleRule>>,
) -> Result<Vec<LifecycleRule>, ConfigError> {
    let mut names = HashSet::new();
    let mut rules = Vec::new();
    for spanned in raw {
        let span = spanned.span();
        let rule = spanned.into_inner();
        let name = rule.name.trim().to_string();
        if name.is_empty() {
            return Err(ctx.err(&span, "a lifecycle rule needs a `name`"));
        }
        if !names.insert(name.clone()) {
            return Err(ctx.err(&span, format!("lifecycle rule `{name}` is defined twice")));
        }
        let (kinds, event_names, conditions) =
            compile_matcher(ctx, &span, &name, rule.kinds, rule.event, rule.when)?;
        let stage = match rule.stage.as_deref().map(str::trim) {
            Some("") => {
                return Err(ctx.err(&span, format!("lifecycle rule `{name}`: empty `stage`")))
            }
            other => other.map(Arc::<str>::from),
        };
        if rule.terminal && stage.is_none() {
            return Err(ctx.err(
                &span,
                format!("lifecycle rule `{name}`: `terminal` marks a `stage`; give one"),
            ));
        }
        let suppress_ms = match &rule.suppress {
            None => None,
            Some(text) => Some(duration_ms(
                parse_duration_at_least(text, MIN_CAP_WINDOW).map_err(|m| {
                    ctx.err(&span, format!("lifecycle rule `{name}`: `suppress`: {m}"))
                })?,
            )),
        };
        let outcome = match rule.outcome.as_deref().map(str::trim) {
            None => None,
            Some("won" | "converted") => Some(true),
            Some("lost" | "not_converted") => Some(false),
            Some(other) => {
                return Err(ctx.err(
                    &span,
                    format!(
                        "lifecycle rule `{name}`: `outcome` \"{other}\" (use \"won\" or \"lost\")"
                    ),
                ))
            }
        };
        if stage.is_none() && !rule.reset && suppress_ms.is_none() && outcome.is_none() {
            return Err(ctx.err(
                &span,
                format!(
                    "lifecycle rule `{name}` does nothing: give a `stage`, `reset`, `suppress` or `outcome`"
                ),
            ));
        }
        rules.push(LifecycleRule {
            name: name.into(),
            kinds,
            names: event_names,
            conditions,
            stage,
            terminal: rule.terminal,
            reset: rule.reset,
            suppress_ms,
            outcome,
        });
    }
    Ok(rules)
}

fn compile_grades(ctx: &Ctx, raw: Spanned<RawGrades>) -> Result<GradeThresholds, ConfigError> {
    let grades_span = raw.span();
    let g = raw.into_inner();
    for (name, value) in [("A", g.a), ("B", g.b), ("C", g.c)] {
        if !in_points_range(value) {
            return Err(ctx.err(
                &grades_span,
                format!("grade {name} must be a number within ±{MAX_POINTS}"),
            ));
        }
    }
    if !(g.a >= g.b && g.b >= g.c) {
        return Err(ctx.err(
            &grades_span,
            format!(
                "grade thresholds must satisfy A >= B >= C (fit points), got A = {}, B = {}, C = {}",
                g.a, g.b, g.c
            ),
        ));
    }
    Ok(GradeThresholds {
        a: g.a,
        b: g.b,
        c: g.c,
    })
}

fn compile_fit(
    ctx: &Ctx,
    raw: Vec<Spanned<RawFitRule>>,
    trait_keys: &mut Vec<TraitKey>,
    rule_names: &mut HashSet<String>,
) -> Result<Vec<FitRule>, ConfigError> {
    let mut fit = Vec::new();
    for spanned in raw {
        let span = spanned.span();
        let rule = spanned.into_inner();
        check_rule_header(ctx, &span, &rule.name, rule.points, rule_names)?;
        if rule.when.is_empty() {
            return Err(ctx.err(
                &span,
                format!(
                    "fit rule `{}` needs at least one `when` condition",
                    rule.name
                ),
            ));
        }
        let mut conditions = Vec::new();
        for cond in rule.when {
            let cspan = cond.span();
            let cond = cond.into_inner();
            let trait_name = cond.field.trim().to_string();
            if let Some(bare) = trait_name.strip_prefix("traits.") {
                return Err(ctx.err(
                    &cspan,
                    format!(
                        "fit conditions name a trait directly: use `{bare}`, not `{trait_name}`"
                    ),
                ));
            }
            if trait_name.is_empty() {
                return Err(ctx.err(&cspan, "`field` must name a trait"));
            }
            let (op, negate) = compile_op(ctx, &cspan, cond)?;
            let key = trait_key(trait_keys, &trait_name);
            let slot = trait_keys[key].ops.len();
            if slot >= MAX_OPS_PER_TRAIT {
                return Err(ctx.err(
                    &cspan,
                    format!("trait `{trait_name}` has more than {MAX_OPS_PER_TRAIT} conditions"),
                ));
            }
            trait_keys[key].ops.push(op);
            conditions.push(TraitCondition { key, slot, negate });
        }
        fit.push(FitRule {
            name: rule.name.into(),
            points: rule.points,
            group: rule.group.map(Into::into),
            conditions,
        });
    }
    Ok(fit)
}

fn compile_tiers(
    ctx: &Ctx,
    raw: Vec<Spanned<RawTier>>,
    trait_keys: &mut Vec<TraitKey>,
    what: &str,
) -> Result<Vec<Tier>, ConfigError> {
    let mut tiers: Vec<Tier> = Vec::new();
    if raw.is_empty() {
        return Err(ctx.err(&(0..1), format!("at least one {what} tier is needed")));
    }
    for spanned in raw {
        let span = spanned.span();
        let tier = spanned.into_inner();
        if tier.name.trim().is_empty() {
            return Err(ctx.err(&span, "tier `name` must not be empty"));
        }
        if tiers.iter().any(|t| t.name.as_ref() == tier.name) {
            return Err(ctx.err(&span, format!("tier `{}` is defined twice", tier.name)));
        }
        if !in_points_range(tier.min_score) {
            return Err(ctx.err(
                &span,
                format!(
                    "tier `{}`: min_score must be a number within ±{MAX_POINTS}",
                    tier.name
                ),
            ));
        }
        if let Some(prev) = tiers.last() {
            if tier.min_score <= prev.min_score {
                return Err(ctx.err(
                    &span,
                    format!(
                        "tiers out of order: `{}` (min_score {}) must be above `{}` (min_score {}); list tiers from lowest to highest",
                        tier.name, tier.min_score, prev.name, prev.min_score
                    ),
                ));
            }
        }
        let min_grade = match &tier.min_grade {
            None => None,
            Some(g) => Some(Grade::parse(g).ok_or_else(|| {
                ctx.err(
                    &span,
                    format!(
                        "tier `{}`: min_grade must be A, B, C or D, not \"{g}\"",
                        tier.name
                    ),
                )
            })?),
        };
        let first = tiers.is_empty();
        if first
            && (min_grade.is_some()
                || !tier.require_all_traits.is_empty()
                || !tier.require_any_trait.is_empty())
        {
            return Err(ctx.err(
                &span,
                format!(
                    "the lowest tier `{}` holds every {what} and cannot have gates",
                    tier.name
                ),
            ));
        }
        let mut keys = |names: &[String]| -> Result<Vec<usize>, ConfigError> {
            names
                .iter()
                .map(|n| {
                    if n.trim().is_empty() {
                        Err(ctx.err(&span, format!("tier `{}`: empty trait name", tier.name)))
                    } else {
                        Ok(trait_key(trait_keys, n.trim()))
                    }
                })
                .collect()
        };
        let require_all_traits = keys(&tier.require_all_traits)?;
        let require_any_trait = keys(&tier.require_any_trait)?;
        tiers.push(Tier {
            name: tier.name.into(),
            min_score: tier.min_score,
            min_grade,
            require_all_traits,
            require_any_trait,
        });
    }
    Ok(tiers)
}

/// Domains of free mail providers: a lead's email there says nothing about
/// an employer, so it never forms an account.
const PERSONAL_DOMAINS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "hotmail.com",
    "outlook.com",
    "live.com",
    "msn.com",
    "aol.com",
    "icloud.com",
    "me.com",
    "proton.me",
    "protonmail.com",
    "gmx.com",
    "gmx.de",
    "web.de",
    "mail.com",
    "yandex.com",
    "qq.com",
    "163.com",
];

fn compile_accounts(
    ctx: &Ctx,
    raw: Spanned<RawAccounts>,
    version: &str,
    lead_settings: &Settings,
    lead_fit: &[FitRule],
    rule_names: &mut HashSet<String>,
) -> Result<AccountRules, ConfigError> {
    let span = raw.span();
    let raw = raw.into_inner();
    let grades = match raw.grades {
        Some(g) => compile_grades(ctx, g)?,
        None => GradeThresholds {
            a: 0.0,
            b: 0.0,
            c: 0.0,
        },
    };
    let mut trait_keys = Vec::new();
    let fit = compile_fit(ctx, raw.fit, &mut trait_keys, rule_names)?;
    let tiers = compile_tiers(ctx, raw.tiers, &mut trait_keys, "account")?;
    for (name, value) in [
        ("base", raw.base),
        ("lead_engagement_cap", raw.lead_engagement_cap),
        ("engaged_lead_score", raw.engaged_lead_score),
        ("per_engaged_lead", raw.per_engaged_lead),
        ("per_department", raw.per_department),
        ("per_seniority", raw.per_seniority),
    ] {
        if !in_points_range(value) {
            return Err(ctx.err(
                &span,
                format!("[accounts] {name} must be a number within ±{MAX_POINTS}"),
            ));
        }
    }
    if raw.lead_engagement_cap <= 0.0 {
        return Err(ctx.err(&span, "[accounts] lead_engagement_cap must be positive"));
    }
    let group = |name: Option<String>, key: &str| -> Result<Option<Arc<str>>, ConfigError> {
        match name {
            None => Ok(None),
            Some(group) => {
                if lead_fit
                    .iter()
                    .any(|r| r.group.as_deref() == Some(group.as_str()))
                {
                    Ok(Some(group.into()))
                } else {
                    Err(ctx.err(
                        &span,
                        format!("[accounts] {key} = \"{group}\" names no group of [[fit]] rules"),
                    ))
                }
            }
        }
    };
    let department_group = group(raw.department_group, "department_group")?;
    let seniority_group = group(raw.seniority_group, "seniority_group")?;
    let mut settings = lead_settings.clone();
    settings.base = raw.base;
    let personal_domains = raw
        .personal_domains
        .unwrap_or_else(|| PERSONAL_DOMAINS.iter().map(|d| d.to_string()).collect())
        .into_iter()
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    Ok(AccountRules {
        profile: Rules::new(
            version,
            settings,
            grades,
            tiers,
            fit,
            Vec::new(),
            trait_keys,
        ),
        from_email_domain: raw.from_email_domain,
        personal_domains,
        lead_engagement_cap: raw.lead_engagement_cap,
        engaged_lead_score: raw.engaged_lead_score,
        committee: Committee {
            per_engaged_lead: raw.per_engaged_lead,
            max_engaged_leads: raw.max_engaged_leads,
            per_department: raw.per_department,
            per_seniority: raw.per_seniority,
        },
        department_group,
        seniority_group,
    })
}

fn check_rule_header(
    ctx: &Ctx,
    span: &Range<usize>,
    name: &str,
    points: f64,
    names: &mut HashSet<String>,
) -> Result<(), ConfigError> {
    if name.trim().is_empty() {
        return Err(ctx.err(span, "rule `name` must not be empty"));
    }
    if !names.insert(name.to_string()) {
        return Err(ctx.err(
            span,
            format!(
                "rule name `{name}` is used twice (names must be unique across fit and engagement)"
            ),
        ));
    }
    if !in_points_range(points) {
        return Err(ctx.err(
            span,
            format!("rule `{name}`: points must be a number within ±{MAX_POINTS}"),
        ));
    }
    Ok(())
}

fn trait_key(keys: &mut Vec<TraitKey>, name: &str) -> usize {
    match keys.iter().position(|k| k.name == name) {
        Some(i) => i,
        None => {
            keys.push(TraitKey {
                name: name.to_string(),
                ops: Vec::new(),
            });
            keys.len() - 1
        }
    }
}

fn compile_op(ctx: &Ctx, span: &Range<usize>, c: RawCondition) -> Result<(Op, bool), ConfigError> {
    let field = c.field.clone();
    let mut ops: Vec<Op> = Vec::new();
    if let Some(v) = c.equals {
        ops.push(Op::Equals(scalar(ctx, span, &field, v)?));
    }
    if let Some(vs) = c.one_of {
        if vs.is_empty() {
            return Err(ctx.err(span, format!("condition on `{field}`: `one_of` is empty")));
        }
        let values = vs
            .into_iter()
            .map(|v| scalar(ctx, span, &field, v))
            .collect::<Result<_, _>>()?;
        ops.push(Op::OneOf(values));
    }
    for (text, make) in [
        (c.prefix, Op::Prefix as fn(String) -> Op),
        (c.suffix, Op::Suffix),
        (c.contains, Op::Contains),
    ] {
        if let Some(text) = text {
            if text.is_empty() {
                return Err(ctx.err(
                    span,
                    format!("condition on `{field}`: empty text to compare"),
                ));
            }
            ops.push(make(text));
        }
    }
    if let Some(pattern) = c.regex {
        let re = regex::Regex::new(&pattern).map_err(|e| {
            ctx.err(
                span,
                format!(
                    "condition on `{field}`: bad regex: {}",
                    one_line(&e.to_string())
                ),
            )
        })?;
        ops.push(Op::Regex(re));
    }
    if let Some(r) = c.range {
        if r.at_least.is_none() && r.below.is_none() {
            return Err(ctx.err(
                span,
                format!("condition on `{field}`: `range` needs `at_least` or `below`"),
            ));
        }
        if r.at_least.is_some_and(|v| !v.is_finite()) || r.below.is_some_and(|v| !v.is_finite()) {
            return Err(ctx.err(
                span,
                format!("condition on `{field}`: range bounds must be finite"),
            ));
        }
        if let (Some(lo), Some(hi)) = (r.at_least, r.below) {
            if lo >= hi {
                return Err(ctx.err(
                    span,
                    format!("condition on `{field}`: empty range (at_least {lo} >= below {hi})"),
                ));
            }
        }
        ops.push(Op::Range {
            at_least: r.at_least,
            below: r.below,
        });
    }
    if let Some(e) = c.exists {
        ops.push(Op::Exists(e));
    }
    match ops.len() {
        1 => Ok((ops.pop().expect("one op"), c.not)),
        0 => Err(ctx.err(
            span,
            format!("condition on `{field}` needs one of equals, one_of, prefix, suffix, contains, regex, range, exists"),
        )),
        _ => Err(ctx.err(
            span,
            format!("condition on `{field}` has several comparisons; write one condition per comparison"),
        )),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn scalar(
    ctx: &Ctx,
    span: &Range<usize>,
    field: &str,
    v: toml::Value,
) -> Result<Value, ConfigError> {
    match v {
        toml::Value::String(s) => Ok(Value::Text(s.into())),
        toml::Value::Integer(i) => Ok(Value::Number(i as f64)),
        toml::Value::Float(f) if f.is_finite() => Ok(Value::Number(f)),
        toml::Value::Boolean(b) => Ok(Value::Bool(b)),
        other => Err(ctx.err(
            span,
            format!(
                "condition on `{field}`: compare with a string, number or boolean, not {}",
                other.type_str()
            ),
        )),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!(
            "\"{text}\" is negative; durations must be positive"
        ));
    }
    let d = humantime::parse_duration(text).map_err(|e| {
        format!("\"{text}\" is not a duration like \"30d\", \"12h\" or \"90s\" ({e})")
    })?;
    if d.is_zero() {
        return Err(format!("\"{text}\" is zero; durations must be positive"));
    }
    Ok(d)
}

/// The largest points, caps, thresholds and scores a rules file may
/// name. Far beyond any real scoring scale, and small enough that no sum
/// of them over any number of events leaves the finite floats.
const MAX_POINTS: f64 = 1e6;

fn in_points_range(value: f64) -> bool {
    value.is_finite() && value.abs() <= MAX_POINTS
}

/// Cap windows are counted in whole windows of event time.
const MIN_CAP_WINDOW: Duration = Duration::from_secs(1);

/// Velocity filters judge bursts of milliseconds to hours.
const MIN_FILTER_WINDOW: Duration = Duration::from_millis(1);

/// Decay is `2^(-elapsed / half_life)`: a half-life of milliseconds would
/// make a value from minutes away overflow or vanish in one step.
const MIN_HALF_LIFE: Duration = Duration::from_secs(60);

fn parse_duration_at_least(text: &str, least: Duration) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < least {
        return Err(format!(
            "\"{}\" is too short; it must be at least {}",
            text.trim(),
            humantime::format_duration(least)
        ));
    }
    Ok(d)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn parse_half_life(text: &str) -> Result<HalfLife, String> {
    if text.trim() == "none" {
        return Ok(HalfLife::Never);
    }
    parse_duration_at_least(text, MIN_HALF_LIFE).map(|d| HalfLife::Millis(d.as_millis() as f64))
}

fn compile_settings(ctx: &Ctx, s: &RawScoring, e: &RawEvents) -> Result<Settings, ConfigError> {
    let half_life = parse_half_life(s.half_life.get_ref())
        .map_err(|m| ctx.err(&s.half_life.span(), format!("`scoring.half_life`: {m}")))?;
    let clamp = match &s.clamp {
        None => None,
        Some(c) => {
            let r = c.get_ref();
            if !(in_points_range(r.min) && in_points_range(r.max) && r.min < r.max) {
                return Err(ctx.err(
                    &c.span(),
                    format!("`scoring.clamp` needs min < max, both within ±{MAX_POINTS}"),
                ));
            }
            Some((r.min, r.max))
        }
    };
    let base = *s.base.get_ref();
    if !in_points_range(base) {
        return Err(ctx.err(
            &s.base.span(),
            format!("`scoring.base` must be a number within ±{MAX_POINTS}"),
        ));
    }
    let step = *s.step.get_ref();
    if !(in_points_range(step) && step >= 0.0) {
        return Err(ctx.err(
            &s.step.span(),
            format!("`scoring.step` must be zero or positive, at most {MAX_POINTS}"),
        ));
    }
    let hysteresis = *s.hysteresis.get_ref();
    if !(in_points_range(hysteresis) && hysteresis >= 0.0) {
        return Err(ctx.err(
            &s.hysteresis.span(),
            format!("`scoring.hysteresis` must be zero or positive, at most {MAX_POINTS}"),
        ));
    }
    let dur = |v: &Spanned<String>, name: &str| {
        parse_duration(v.get_ref())
            .map(duration_ms)
            .map_err(|m| ctx.err(&v.span(), format!("`events.{name}`: {m}")))
    };
    let allowed_lateness_ms = dur(&e.allowed_lateness, "allowed_lateness")?;
    let max_future_skew_ms = dur(&e.max_future_skew, "max_future_skew")?;
    let dedup_window_ms = dur(&e.dedup_window, "dedup_window")?;
    if dedup_window_ms < allowed_lateness_ms.saturating_add(max_future_skew_ms) {
        return Err(ctx.err(
            &e.dedup_window.span(),
            "`events.dedup_window` must be at least allowed_lateness + max_future_skew, or a late duplicate could be counted twice",
        ));
    }
    let inactive_after_ms = match &e.inactive_after {
        None => None,
        Some(text) => {
            let ms = dur(text, "inactive_after")?;
            // An expired lead's dedup memory goes with it: a duplicate must
            // be too late to be accepted by then.
            if ms < dedup_window_ms {
                return Err(ctx.err(
                    &text.span(),
                    "`events.inactive_after` must be at least dedup_window, or a late duplicate of an expired lead's event could bring it back",
                ));
            }
            Some(ms)
        }
    };
    Ok(Settings {
        half_life,
        base,
        clamp,
        step,
        hysteresis,
        top_contributions: s.top_contributions,
        allowed_lateness_ms: Some(allowed_lateness_ms),
        max_future_skew_ms,
        dedup_window_ms,
        dedup_max_ids: e.dedup_max_ids.max(1),
        inactive_after_ms,
        announce_expiry: e.announce_expiry,
    })
}

/// A human summary of a validated rule set, for `leadscore check`.
pub fn summarize(rules: &Rules) -> String {
    let mut out = String::new();
    let s = &rules.settings;
    let days = |ms: f64| ms / crate::core::time::MS_PER_DAY as f64;
    if let Some(name) = &rules.score_name {
        let _ = writeln!(out, "score: {name}");
    }
    let _ = writeln!(
        out,
        "rules version: {} (fingerprint {})",
        rules.version,
        rules.fingerprint()
    );
    let half_life = match s.half_life {
        HalfLife::Millis(ms) => format!("{} days", days(ms)),
        _ => "none (no decay)".to_string(),
    };
    let _ = writeln!(out, "engagement half-life: {half_life}");
    if s.base != 0.0 {
        let _ = writeln!(out, "base points: {}", s.base);
    }
    match s.clamp {
        Some((lo, hi)) => {
            let _ = writeln!(out, "score clamp: {lo} to {hi}");
        }
        None => {
            let _ = writeln!(out, "score clamp: none");
        }
    }
    let _ = writeln!(
        out,
        "score-change step: {}, hysteresis: {}, contributions per output: {}",
        s.step, s.hysteresis, s.top_contributions
    );
    let _ = writeln!(
        out,
        "grades (fit): A >= {}, B >= {}, C >= {}, else D",
        rules.grades.a, rules.grades.b, rules.grades.c
    );
    let _ = writeln!(out, "tiers ({}):", rules.tiers.len());
    for tier in &rules.tiers {
        let mut gates = Vec::new();
        if let Some(g) = tier.min_grade {
            gates.push(format!("grade {} or better", g.as_str()));
        }
        let names = |keys: &[usize]| {
            keys.iter()
                .map(|k| rules.trait_keys[*k].name.as_str())
                .collect::<Vec<_>>()
        };
        if !tier.require_all_traits.is_empty() {
            gates.push(format!(
                "all of [{}] known",
                names(&tier.require_all_traits).join(", ")
            ));
        }
        if !tier.require_any_trait.is_empty() {
            gates.push(format!(
                "any of [{}] known",
                names(&tier.require_any_trait).join(", ")
            ));
        }
        let gates = if gates.is_empty() {
            String::new()
        } else {
            format!(" if {}", gates.join(" and "))
        };
        let _ = writeln!(
            out,
            "  {:<12} score >= {}{gates}",
            tier.name, tier.min_score
        );
    }
    let _ = writeln!(out, "fit rules ({}):", rules.fit.len());
    for r in &rules.fit {
        let group = r
            .group
            .as_deref()
            .map(|g| format!(" [group {g}]"))
            .unwrap_or_default();
        let _ = writeln!(out, "  {:<28} {:>+7}{group}", r.name, r.points);
    }
    let _ = writeln!(out, "engagement rules ({}):", rules.engagement.len());
    for (i, r) in rules.engagement.iter().enumerate() {
        let mut notes = Vec::new();
        if let Some(cap) = r.cap {
            notes.push(format!(
                "cap {} per {} days",
                cap.points,
                days(cap.window_ms as f64)
            ));
        }
        if r.once {
            notes.push("once".to_string());
        }
        match rules.half_life_of(i) {
            HalfLife::Millis(ms) if r.half_life != HalfLife::Inherit => {
                notes.push(format!("half-life {} days", days(ms)))
            }
            HalfLife::Never => notes.push("no decay".to_string()),
            _ => {}
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        };
        let _ = writeln!(out, "  {:<28} {:>+7}{notes}", r.name, r.points);
    }
    if !rules.lifecycle.is_empty() {
        let _ = writeln!(out, "lifecycle rules:");
        for rule in &rules.lifecycle {
            let mut acts = Vec::new();
            if let Some(stage) = &rule.stage {
                acts.push(format!(
                    "stage {stage}{}",
                    if rule.terminal { " (terminal)" } else { "" }
                ));
            }
            if rule.reset {
                acts.push("recycle".to_string());
            }
            if let Some(ms) = rule.suppress_ms {
                acts.push(format!("suppress {} days", days(ms as f64)));
            }
            if let Some(converted) = rule.outcome {
                acts.push(format!(
                    "outcome {}",
                    if converted { "won" } else { "lost" }
                ));
            }
            let _ = writeln!(out, "  {:<32} {}", rule.name, acts.join(", "));
        }
    }
    let _ = writeln!(
        out,
        "events: allowed lateness {} days, future skew {} s, dedup window {} days (max {} ids per lead)",
        days(s.allowed_lateness_ms.unwrap_or(0) as f64),
        s.max_future_skew_ms / 1000,
        days(s.dedup_window_ms as f64),
        s.dedup_max_ids
    );
    if let Some(filters) = rules.filters.as_deref() {
        let mut kinds = Vec::new();
        if filters.reads_user_agent() {
            kinds.push("user agents".to_string());
        }
        if filters.reads_ip() {
            kinds.push("address ranges".to_string());
        }
        for burst in &filters.bursts {
            kinds.push(format!(
                "more than {} `{}` in {} s",
                burst.max_hits,
                rules.engagement[burst.rule].name,
                burst.within_ms as f64 / 1000.0
            ));
        }
        for after in &filters.after_send {
            kinds.push(format!(
                "hits within {} s of {}",
                after.within_ms as f64 / 1000.0,
                after.send.join(" / ")
            ));
        }
        let _ = writeln!(out, "filters: {}", kinds.join("; "));
    }
    out
}
