//! The fingerprint of a rule set: a digest of everything that scores,
//! independent of comments, formatting and the `version` people give it.
//! State carries the fingerprint of the rules that wrote it, because its
//! rule and trait indexes mean something only under those rules: a file
//! edited without a new `version` must not be restored against old state.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use super::account::AccountRules;
use super::rules::{
    EngagementRule, EventCondition, FitRule, LifecycleRule, Op, Rules, Tier, TraitKey,
};

/// Which rules wrote a piece of state: the version people named them by
/// and the fingerprint of their content. An empty fingerprint: written
/// before state carried one (only the version is known).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulesStamp {
    pub version: String,
    pub fingerprint: String,
}

impl RulesStamp {
    /// Whether state written under these rules reads the same under
    /// `running`: the same content, whatever the versions say; for state
    /// written before fingerprints were kept, the same version.
    pub fn readable_by(&self, running: &RulesStamp) -> bool {
        if self.fingerprint.is_empty() {
            self.version == running.version
        } else {
            self.fingerprint == running.fingerprint
        }
    }
}

impl Rules {
    /// 16 hex digits of the SHA-256 of a canonical description of the
    /// rules' content (see [`describe`]).
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(describe(self).as_bytes());
        digest[..8].iter().fold(String::new(), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
    }

    pub fn stamp(&self) -> RulesStamp {
        RulesStamp {
            version: self.version.to_string(),
            fingerprint: self.fingerprint(),
        }
    }
}

/// Every setting, grade, trait comparison, tier and rule, one per line, in
/// file order (indexes into state follow it). Written out field by field,
/// not derived, so that the fingerprint moves only when what scores does.
pub fn describe(rules: &Rules) -> String {
    let mut out = String::from("leadscore rules fingerprint 1\n");
    describe_into(rules, &mut out);
    out
}

/// What differs between the content of two rule sets, one line per
/// setting, trait, tier or rule that was added, removed or changed (with
/// both descriptions), and one for each kept at another position (state
/// refers to rules, tiers and traits by position). Empty: the same content.
pub fn differences(old: &Rules, new: &Rules) -> Vec<String> {
    let items = |rules: &Rules| -> Vec<(String, String)> {
        describe(rules)
            .lines()
            .skip(1)
            .map(|line| (item_key(line), line.to_string()))
            .collect()
    };
    let (old_items, new_items) = (items(old), items(new));
    let find = |items: &[(String, String)], key: &str| -> Option<String> {
        items
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, line)| line.clone())
    };
    let mut out = Vec::new();
    for (key, line) in &old_items {
        match find(&new_items, key) {
            None => out.push(format!("removed: {key}\n  - {line}")),
            Some(now) if now != *line => out.push(format!("changed: {key}\n  - {line}\n  + {now}")),
            Some(_) => {}
        }
    }
    for (key, line) in &new_items {
        if find(&old_items, key).is_none() {
            out.push(format!("added: {key}\n  + {line}"));
        }
    }
    // State refers to rules, tiers and traits by their position among
    // their kind: one kept but at another position reads other state.
    let position = |items: &[(String, String)], key: &str| -> Option<usize> {
        let kind = kind_of(key);
        items
            .iter()
            .filter(|(k, _)| kind_of(k) == kind)
            .position(|(k, _)| k == key)
    };
    for (key, _) in &old_items {
        if let (Some(was), Some(is)) = (position(&old_items, key), position(&new_items, key)) {
            if was != is && key.contains('"') {
                out.push(format!(
                    "moved: {key} from position {} to {} (state refers to it by position)",
                    was + 1,
                    is + 1
                ));
            }
        }
    }
    out
}

/// The kind part of an item key: `engagement`, `account fit`, `trait`.
fn kind_of(key: &str) -> &str {
    key.split(" \"").next().unwrap_or(key)
}

/// What a description line is about: its kind and name (a trait by name,
/// not by its position).
fn item_key(line: &str) -> String {
    if let Some(profile_line) = line.strip_prefix("account ") {
        return format!("account {}", item_key(profile_line));
    }
    let mut words = line.split(' ');
    let kind = words.next().unwrap_or_default();
    match kind {
        "trait" => {
            let _position = words.next();
            format!("trait {}", words.next().unwrap_or_default())
        }
        "tier" | "fit" | "engagement" | "lifecycle" => {
            // Names are written quoted and may hold spaces.
            let rest = &line[kind.len() + 1..];
            let name_end = rest[1..].find('"').map_or(rest.len(), |i| i + 2);
            format!("{kind} {}", &rest[..name_end])
        }
        _ => kind.to_string(),
    }
}

fn describe_into(rules: &Rules, out: &mut String) {
    if let Some(name) = &rules.score_name {
        // Only named scores get this line: a file with one score keeps
        // its fingerprint.
        let _ = writeln!(out, "score {name:?}");
    }
    let s = &rules.settings;
    let _ = writeln!(
        out,
        "settings half_life={:?} base={:?} clamp={:?} step={:?} hysteresis={:?} \
         top_contributions={} allowed_lateness_ms={:?} max_future_skew_ms={} \
         dedup_window_ms={} dedup_max_ids={}",
        s.half_life,
        s.base,
        s.clamp,
        s.step,
        s.hysteresis,
        s.top_contributions,
        s.allowed_lateness_ms,
        s.max_future_skew_ms,
        s.dedup_window_ms,
        s.dedup_max_ids
    );
    if let Some(ms) = s.inactive_after_ms {
        // Only files that expire leads get this line.
        let _ = writeln!(
            out,
            "expiry inactive_after_ms={ms} announce={}",
            s.announce_expiry
        );
    }
    if let Some(filters) = rules.filters.as_deref() {
        // Only files with filters get these lines.
        out.push_str(&filters.description);
    }
    let g = &rules.grades;
    let _ = writeln!(out, "grades a={:?} b={:?} c={:?}", g.a, g.b, g.c);
    for (index, key) in rules.trait_keys.iter().enumerate() {
        describe_trait(index, key, out);
    }
    for tier in &rules.tiers {
        describe_tier(tier, out);
    }
    for rule in &rules.fit {
        describe_fit(rule, out);
    }
    for rule in &rules.engagement {
        describe_engagement(rule, out);
    }
    if let Some(accounts) = &rules.accounts {
        describe_accounts(accounts, out);
    }
    // Only files with lifecycle rules get these lines: fingerprints of
    // files without any stay what they were.
    for rule in &rules.lifecycle {
        describe_lifecycle(rule, out);
    }
}

fn describe_lifecycle(rule: &LifecycleRule, out: &mut String) {
    let _ = writeln!(
        out,
        "lifecycle {:?} kinds={:?} names={:?} stage={:?} terminal={} reset={} suppress_ms={:?} \
         outcome={:?} [{}]",
        rule.name.as_ref(),
        rule.kinds,
        rule.names,
        rule.stage.as_deref(),
        rule.terminal,
        rule.reset,
        rule.suppress_ms,
        rule.outcome,
        conditions_text(&rule.conditions)
    );
}

pub(crate) fn op(op: &Op) -> String {
    match op {
        Op::Equals(v) => format!("equals {v:?}"),
        Op::OneOf(vs) => format!("one_of {vs:?}"),
        Op::Prefix(t) => format!("prefix {t:?}"),
        Op::Suffix(t) => format!("suffix {t:?}"),
        Op::Contains(t) => format!("contains {t:?}"),
        Op::Regex(re) => format!("regex {:?}", re.as_str()),
        Op::Range { at_least, below } => format!("range {at_least:?}..{below:?}"),
        Op::Exists(e) => format!("exists {e}"),
    }
}

fn describe_trait(index: usize, key: &TraitKey, out: &mut String) {
    let ops: Vec<String> = key.ops.iter().map(op).collect();
    let _ = writeln!(out, "trait {index} {:?} [{}]", key.name, ops.join("; "));
}

fn describe_tier(tier: &Tier, out: &mut String) {
    let _ = writeln!(
        out,
        "tier {:?} min_score={:?} min_grade={:?} all={:?} any={:?}",
        tier.name.as_ref(),
        tier.min_score,
        tier.min_grade,
        tier.require_all_traits,
        tier.require_any_trait
    );
}

fn describe_fit(rule: &FitRule, out: &mut String) {
    let conditions: Vec<String> = rule
        .conditions
        .iter()
        .map(|c| format!("{}:{}{}", c.key, c.slot, if c.negate { "!" } else { "" }))
        .collect();
    let _ = writeln!(
        out,
        "fit {:?} points={:?} group={:?} [{}]",
        rule.name.as_ref(),
        rule.points,
        rule.group.as_deref(),
        conditions.join(" ")
    );
}

/// An engagement or lifecycle rule's conditions, `; `-separated.
pub(crate) fn conditions_text(conditions: &[EventCondition]) -> String {
    let each: Vec<String> = conditions
        .iter()
        .map(|c| {
            let negated = if c.negate { " negated" } else { "" };
            format!("{:?} {}{negated}", c.field, op(&c.op))
        })
        .collect();
    each.join("; ")
}

fn describe_engagement(rule: &EngagementRule, out: &mut String) {
    let _ = writeln!(
        out,
        "engagement {:?} points={:?} kinds={:?} names={:?} cap={:?} once={} half_life={:?} [{}]",
        rule.name.as_ref(),
        rule.points,
        rule.kinds,
        rule.names,
        rule.cap,
        rule.once,
        rule.half_life,
        conditions_text(&rule.conditions)
    );
}

fn describe_accounts(accounts: &AccountRules, out: &mut String) {
    let c = &accounts.committee;
    let _ = writeln!(
        out,
        "accounts from_email_domain={} personal_domains={:?} lead_engagement_cap={:?} \
         engaged_lead_score={:?} committee={:?}/{}/{:?}/{:?} department_group={:?} \
         seniority_group={:?}",
        accounts.from_email_domain,
        accounts.personal_domains,
        accounts.lead_engagement_cap,
        accounts.engaged_lead_score,
        c.per_engaged_lead,
        c.max_engaged_leads,
        c.per_department,
        c.per_seniority,
        accounts.department_group.as_deref(),
        accounts.seniority_group.as_deref()
    );
    let mut profile = String::new();
    describe_into(&accounts.profile, &mut profile);
    for line in profile.lines() {
        let _ = writeln!(out, "account {line}");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse_rules;

    const RULES: &str = r#"
version = "v1"
[scoring]
half_life = "30d"
[grades]
A = 40
B = 25
C = 10
[[tiers]]
name = "mql"
min_score = 50
[[fit]]
name = "vp"
points = 15
when = [{ field = "title", contains = "vp" }]
[[engagement]]
name = "demo"
points = 30
type = "track"
event = "Demo Requested"
"#;

    fn fingerprint(text: &str) -> String {
        parse_rules(text, Path::new("rules.toml"))
            .unwrap()
            .fingerprint()
    }

    fn rules(text: &str) -> crate::core::Rules {
        parse_rules(text, Path::new("rules.toml")).unwrap()
    }

    #[test]
    fn differences_name_what_was_added_removed_changed_and_moved() {
        let old = rules(RULES);
        assert!(super::differences(&old, &old).is_empty());
        let renamed = RULES.replace("version = \"v1\"", "version = \"v2\"");
        assert!(super::differences(&old, &rules(&renamed)).is_empty());

        let edited = RULES.replace("points = 30", "points = 7").replace(
            "[[engagement]]",
            "[[engagement]]\nname = \"pricing page\"\npoints = 5\ntype = \"page\"\n\n[[engagement]]",
        );
        let found = super::differences(&old, &rules(&edited));
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(
            found[0].starts_with("changed: engagement \"demo\""),
            "{found:#?}"
        );
        assert!(found[0].contains("points=30.0") && found[0].contains("points=7.0"));
        assert!(
            found[1].starts_with("added: engagement \"pricing page\""),
            "{found:#?}"
        );
        assert!(
            found[2].starts_with("moved: engagement \"demo\" from position 1 to 2"),
            "{found:#?}"
        );

        let without_fit = RULES.replace("[[fit]]\nname = \"vp\"", "[[fit]]\nname = \"vice\"");
        let found = super::differences(&old, &rules(&without_fit));
        assert!(
            found.iter().any(|d| d.starts_with("removed: fit \"vp\"")),
            "{found:#?}"
        );
        assert!(
            found.iter().any(|d| d.starts_with("added: fit \"vice\"")),
            "{found:#?}"
        );
    }

    #[test]
    fn the_fingerprint_follows_content_not_version_comments_or_layout() {
        let original = fingerprint(RULES);
        assert_eq!(original.len(), 16);
        let renamed = RULES.replace("version = \"v1\"", "version = \"v2\"  # a new name");
        assert_eq!(fingerprint(&renamed), original);
        let relaid = RULES.replace("points = 30", "points   =   30.0\n# the big one");
        assert_eq!(fingerprint(&relaid), original);
        for edit in [
            RULES.replace("points = 30", "points = 31"),
            RULES.replace("min_score = 50", "min_score = 55"),
            RULES.replace("contains = \"vp\"", "contains = \"vice\""),
            RULES.replace("half_life = \"30d\"", "half_life = \"14d\""),
            RULES.replace("A = 40", "A = 45"),
        ] {
            assert_ne!(fingerprint(&edit), original, "{edit}");
        }
    }
}
