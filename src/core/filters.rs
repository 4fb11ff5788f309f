//! Traffic no person made, kept out of every score: crawlers, uptime
//! monitors, link previews, and the security gateways that open and click
//! every link of an email seconds after it is delivered.
//!
//! In order of evidence: the event's `context.userAgent` against a list of
//! bot and scanner signatures, its `context.ip` against address ranges
//! (both judge the event alone), then velocity (a rule hit more often than
//! a person could, or a click too soon after the email was sent), which
//! needs the lead's recent hits. Filters judge `track`, `page` and `screen`
//! calls only: traits, account links, merges and erasures are facts, not
//! behaviour.

use std::net::IpAddr;

use aho_corasick::AhoCorasick;
use ipnet::IpNet;

use crate::core::event::{Event, EventKind};
use crate::core::time::Timestamp;

/// The signatures `bot_user_agents = true` reads (see the file's header).
pub const BOT_USER_AGENTS: &str = include_str!("../../config/bot-user-agents.txt");

/// Why an event was filtered: the label of `leadscore_events_filtered_total`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FilterReason {
    UserAgent,
    IpRange,
    Burst,
    AfterSend,
}

impl FilterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FilterReason::UserAgent => "user_agent",
            FilterReason::IpRange => "ip_range",
            FilterReason::Burst => "burst",
            FilterReason::AfterSend => "after_send",
        }
    }
}

/// More than `max_hits` hits of engagement rule `rule` within `within_ms`
/// is not a person: the hits past `max_hits` are filtered.
#[derive(Clone, Debug, PartialEq)]
pub struct Burst {
    pub rule: usize,
    pub max_hits: u32,
    pub within_ms: i64,
}

/// A hit of one of `rules` within `within_ms` after a `send` event (a
/// `track` call, by name) is a scanner's, not the reader's.
#[derive(Clone, Debug, PartialEq)]
pub struct AfterSend {
    /// Lowercased `track` event names.
    pub send: Vec<String>,
    pub rules: Vec<usize>,
    pub within_ms: i64,
}

/// The `[filters]` of a rules file, compiled.
#[derive(Clone, Debug)]
pub struct Filters {
    agents: Option<AhoCorasick>,
    agent_exceptions: Option<AhoCorasick>,
    ip_ranges: Vec<IpNet>,
    pub bursts: Vec<Burst>,
    pub after_send: Vec<AfterSend>,
    /// Everything above in one canonical text: for the rules fingerprint
    /// and outline (the matchers themselves compare as their sources).
    pub description: String,
}

/// What velocity filters remember of a lead: its recent hits of each
/// burst-filtered rule, and when each send event last came.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FilterState {
    pub marks: Vec<FilterMark>,
}

#[derive(Copy, Clone, Debug, PartialEq)]
pub struct FilterMark {
    pub kind: MarkKind,
    /// Index of the burst or after-send filter.
    pub filter: u16,
    pub at: Timestamp,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MarkKind {
    Hit,
    Send,
}

impl Filters {
    /// `agents`: case-insensitive substrings, `!`-prefixed ones exceptions.
    /// `rule_name`: an engagement rule's name by index (the description
    /// names rules, so that moving them is no change).
    pub fn new(
        agents: &[String],
        ip_ranges: Vec<IpNet>,
        bursts: Vec<Burst>,
        after_send: Vec<AfterSend>,
        rule_name: &dyn Fn(usize) -> String,
    ) -> Result<Filters, String> {
        let (exceptions, signatures): (Vec<&str>, Vec<&str>) = agents
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .partition(|a| a.starts_with('!'));
        let exceptions: Vec<&str> = exceptions.iter().map(|e| e[1..].trim()).collect();
        let matcher = |patterns: &[&str]| -> Result<Option<AhoCorasick>, String> {
            if patterns.is_empty() {
                return Ok(None);
            }
            AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(patterns)
                .map(Some)
                .map_err(|e| e.to_string())
        };
        let mut description = String::new();
        if !signatures.is_empty() {
            let mut sorted: Vec<String> = signatures.iter().map(|s| s.to_lowercase()).collect();
            sorted.sort();
            sorted.dedup();
            let mut except: Vec<String> = exceptions.iter().map(|s| s.to_lowercase()).collect();
            except.sort();
            except.dedup();
            description += &format!(
                "user_agents {} except {}\n",
                sorted.join("|"),
                except.join("|")
            );
        }
        for net in &ip_ranges {
            description += &format!("ip_range {net}\n");
        }
        for b in &bursts {
            description += &format!(
                "burst rule={} max_hits={} within_ms={}\n",
                rule_name(b.rule),
                b.max_hits,
                b.within_ms
            );
        }
        for a in &after_send {
            description += &format!(
                "after_send send={} rules={} within_ms={}\n",
                a.send.join("|"),
                a.rules
                    .iter()
                    .map(|&r| rule_name(r))
                    .collect::<Vec<_>>()
                    .join("|"),
                a.within_ms
            );
        }
        Ok(Filters {
            agents: matcher(&signatures)?,
            agent_exceptions: matcher(&exceptions)?,
            ip_ranges,
            bursts,
            after_send,
            description,
        })
    }

    /// The signatures of [`BOT_USER_AGENTS`].
    pub fn bot_user_agents() -> Vec<String> {
        BOT_USER_AGENTS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    /// Whether the filters read `context.userAgent` / `context.ip`.
    pub fn reads_user_agent(&self) -> bool {
        self.agents.is_some()
    }

    pub fn reads_ip(&self) -> bool {
        !self.ip_ranges.is_empty()
    }

    /// Whether some filter needs the lead's recent hits.
    pub fn has_velocity(&self) -> bool {
        !self.bursts.is_empty() || !self.after_send.is_empty()
    }

    /// What the event alone shows: a bot's user agent, an address in a
    /// listed range.
    pub fn judge_event(&self, event: &Event) -> Option<FilterReason> {
        if !judged(event) {
            return None;
        }
        if let Some(agents) = &self.agents {
            let agent = event.context.get("userAgent").and_then(|v| v.as_text());
            if let Some(agent) = agent {
                let excepted = || {
                    self.agent_exceptions
                        .as_ref()
                        .is_some_and(|e| e.is_match(agent))
                };
                if agents.is_match(agent) && !excepted() {
                    return Some(FilterReason::UserAgent);
                }
            }
        }
        if !self.ip_ranges.is_empty() {
            let ip = event
                .context
                .get("ip")
                .and_then(|v| v.as_text())
                .and_then(|ip| ip.trim().parse::<IpAddr>().ok());
            if let Some(ip) = ip {
                if self.ip_ranges.iter().any(|net| net.contains(&ip)) {
                    return Some(FilterReason::IpRange);
                }
            }
        }
        None
    }

    /// What the lead's recent hits show, for an event at `t` that matches
    /// engagement rules `matched`: records the event's hits and sends in
    /// `state` (a filtered hit counts toward the burst it belongs to) and
    /// says whether to filter it.
    pub fn judge_velocity(
        &self,
        state: &mut FilterState,
        event: &Event,
        matched: &[usize],
        t: Timestamp,
    ) -> Option<FilterReason> {
        if !judged(event) {
            return None;
        }
        let mut reason = None;
        for (index, after) in self.after_send.iter().enumerate() {
            let index = index as u16;
            if after.rules.iter().any(|r| matched.contains(r)) {
                let sent = state
                    .marks
                    .iter()
                    .find(|m| m.kind == MarkKind::Send && m.filter == index);
                if sent.is_some_and(|m| m.at <= t && t.millis() - m.at.millis() <= after.within_ms)
                {
                    reason = reason.or(Some(FilterReason::AfterSend));
                }
            }
        }
        for (index, burst) in self.bursts.iter().enumerate() {
            if !matched.contains(&burst.rule) {
                continue;
            }
            let index = index as u16;
            let hits = |m: &&FilterMark| m.kind == MarkKind::Hit && m.filter == index;
            let since = t.saturating_sub_ms(burst.within_ms);
            let recent = state
                .marks
                .iter()
                .filter(hits)
                .filter(|m| m.at >= since && m.at <= t)
                .count();
            if recent >= burst.max_hits as usize {
                reason = reason.or(Some(FilterReason::Burst));
            }
            // Kept: the hits a later event's window can still reach, and no
            // more than the burst needs to decide.
            let newest = state
                .marks
                .iter()
                .filter(hits)
                .map(|m| m.at)
                .fold(t, Timestamp::max);
            let horizon = newest.saturating_sub_ms(burst.within_ms);
            state
                .marks
                .retain(|m| !(m.kind == MarkKind::Hit && m.filter == index && m.at < horizon));
            state.marks.push(FilterMark {
                kind: MarkKind::Hit,
                filter: index,
                at: t,
            });
            let held = state.marks.iter().filter(hits).count();
            if held > burst.max_hits as usize {
                let oldest = state
                    .marks
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| hits(m))
                    .min_by_key(|(_, m)| m.at)
                    .map(|(i, _)| i);
                if let Some(oldest) = oldest {
                    state.marks.remove(oldest);
                }
            }
        }
        if event.kind == EventKind::Track {
            let name = event.name.as_deref().unwrap_or_default();
            for (index, after) in self.after_send.iter().enumerate() {
                if after.send.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                    let index = index as u16;
                    state
                        .marks
                        .retain(|m| !(m.kind == MarkKind::Send && m.filter == index));
                    state.marks.push(FilterMark {
                        kind: MarkKind::Send,
                        filter: index,
                        at: t,
                    });
                }
            }
        }
        reason
    }
}

/// Behaviour is judged; facts (traits, links, merges, erasures) are not.
fn judged(event: &Event) -> bool {
    matches!(
        event.kind,
        EventKind::Track | EventKind::Page | EventKind::Screen
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters() -> Filters {
        let mut agents = Filters::bot_user_agents();
        agents.push("Acme-Monitor".into());
        Filters::new(
            &agents,
            vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            vec![Burst {
                rule: 0,
                max_hits: 3,
                within_ms: 2_000,
            }],
            vec![AfterSend {
                send: vec!["email delivered".into()],
                rules: vec![0],
                within_ms: 10_000,
            }],
            &|rule| format!("rule{rule}"),
        )
        .unwrap()
    }

    fn page(agent: &str, ip: &str) -> Event {
        Event::new("m", "l", EventKind::Page, Timestamp(0))
            .with_context("userAgent", agent)
            .with_context("ip", ip)
    }

    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                          (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

    #[test]
    fn user_agents_and_addresses_judge_the_event_alone() {
        let f = filters();
        assert_eq!(f.judge_event(&page(CHROME, "203.0.113.9")), None);
        let googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
        assert_eq!(
            f.judge_event(&page(googlebot, "203.0.113.9")),
            Some(FilterReason::UserAgent)
        );
        assert_eq!(
            f.judge_event(&page("acme-monitor/1.0", "203.0.113.9")),
            Some(FilterReason::UserAgent),
            "extended in the rules file, case-insensitively"
        );
        let cubot =
            "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 Chrome/120 Mobile";
        assert_eq!(
            f.judge_event(&page(cubot, "203.0.113.9")),
            None,
            "an exception"
        );
        assert_eq!(
            f.judge_event(&page(CHROME, "192.0.2.77")),
            Some(FilterReason::IpRange)
        );
        assert_eq!(
            f.judge_event(&page(CHROME, "2001:db8::1")),
            Some(FilterReason::IpRange)
        );
        assert_eq!(f.judge_event(&page(CHROME, "not an address")), None);
        let identify = Event::new("m", "l", EventKind::Identify, Timestamp(0))
            .with_context("userAgent", googlebot);
        assert_eq!(f.judge_event(&identify), None, "facts are not judged");
    }

    #[test]
    fn hits_past_the_burst_and_clicks_right_after_a_send_are_filtered() {
        let f = filters();
        let mut state = FilterState::default();
        let click = |ms: i64| {
            Event::new("m", "l", EventKind::Track, Timestamp(ms)).named("Email Link Clicked")
        };
        let judge = |state: &mut FilterState, ms: i64| {
            f.judge_velocity(state, &click(ms), &[0], Timestamp(ms))
        };
        // Three hits in two seconds pass, the fourth and fifth do not.
        assert_eq!(judge(&mut state, 100_000), None);
        assert_eq!(judge(&mut state, 100_500), None);
        assert_eq!(judge(&mut state, 101_000), None);
        assert_eq!(judge(&mut state, 101_500), Some(FilterReason::Burst));
        assert_eq!(judge(&mut state, 102_000), Some(FilterReason::Burst));
        // Once the window has passed, a person again.
        assert_eq!(judge(&mut state, 200_000), None);
        assert!(state.marks.len() <= 3, "no more marks than the burst needs");

        let sent =
            Event::new("s", "l", EventKind::Track, Timestamp(300_000)).named("Email Delivered");
        assert_eq!(
            f.judge_velocity(&mut state, &sent, &[], Timestamp(300_000)),
            None
        );
        assert_eq!(judge(&mut state, 303_000), Some(FilterReason::AfterSend));
        assert_eq!(judge(&mut state, 400_000), None, "a reader, later");
    }
}
