//! The fingerprint of a rule set: a digest of everything that scores,
//! independent of comments, formatting and the `version` people give it.
//! State carries the fingerprint of the rules that wrote it, because its
//! rule and trait indexes mean something only under those rules: a file
//! edited without a new `version` must not be restored against old state.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use super::account::AccountRules;
use super::rules::{EngagementRule, FitRule, Op, Rules, Tier, TraitKey};

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

fn describe_into(rules: &Rules, out: &mut String) {
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
}

fn op(op: &Op) -> String {
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

fn describe_engagement(rule: &EngagementRule, out: &mut String) {
    let conditions: Vec<String> = rule
        .conditions
        .iter()
        .map(|c| {
            format!(
                "{:?} {}{}",
                c.field,
                op(&c.op),
                if c.negate { " negated" } else { "" }
            )
        })
        .collect();
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
        conditions.join("; ")
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
    out.push_str("account profile\n");
    describe_into(&accounts.profile, out);
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
