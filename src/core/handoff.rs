//! Work one partition engine hands to another when an `alias` joins
//! identities whose events live on different input partitions.
//!
//! An `alias` call is keyed by the user id, the anonymous history by the
//! anonymous id; with more than one partition they usually land apart. The
//! engine holding the user asks the engine holding the anonymous id for
//! its history (`MergeRequest`); that engine hands the history over
//! (`History`), remembers the alias, and forwards the identity's later
//! events (`Event`). The receiving lead keeps each history apart, with the
//! position it covers in its own partition, so a copy handed over again or
//! an event forwarded again (after a crash, on a broker whose aborted
//! transactions show) changes nothing, and a later copy that covers more
//! replaces an earlier one: the final state equals a single engine's.

use crate::core::event::Event;
use crate::core::lead::LeadState;
use crate::core::time::Timestamp;

/// Handoffs further than this many hops are refused: only contradictory
/// alias calls crossing in flight (a into b while b into a) can chain them.
pub const MAX_HOPS: u32 = 8;

#[derive(Clone, Debug, PartialEq)]
pub enum Handoff {
    /// `alias` said `from` is `into`: the holder of `from` hands over.
    MergeRequest {
        from: Box<str>,
        into: Box<str>,
        /// The `alias` call's message id.
        cause: Box<str>,
        at: Timestamp,
        hops: u32,
    },
    /// Everything `from` did, for the lead `into`.
    History {
        from: Box<str>,
        into: Box<str>,
        state: LeadState,
        cause: Box<str>,
        at: Timestamp,
        hops: u32,
    },
    /// An event of an identity merged into `into`, to add to the history
    /// `via` (the identity whose history was handed over) at `position`
    /// (of the partition the event came in on).
    Event {
        into: Box<str>,
        via: Box<str>,
        event: Event,
        position: Option<i64>,
        hops: u32,
    },
    /// An erasure request for an identity merged into `lead`, held
    /// elsewhere: the lead's partition erases the whole lead.
    Erase {
        lead: Box<str>,
        at: Timestamp,
        /// The erasure request's message id.
        cause: Box<str>,
        hops: u32,
    },
    /// `identity` was merged into a lead now erased: its partition forgets
    /// the alias and drops its events from before `at`.
    Forget {
        identity: Box<str>,
        /// The lead erased.
        lead: Box<str>,
        at: Timestamp,
        hops: u32,
    },
}

impl Handoff {
    /// The identity whose input partition the handoff must go to.
    pub fn destination(&self) -> &str {
        match self {
            Handoff::MergeRequest { from, .. } => from,
            Handoff::History { into, .. } | Handoff::Event { into, .. } => into,
            Handoff::Erase { lead, .. } => lead,
            Handoff::Forget { identity, .. } => identity,
        }
    }

    pub fn hops(&self) -> u32 {
        match self {
            Handoff::MergeRequest { hops, .. }
            | Handoff::History { hops, .. }
            | Handoff::Event { hops, .. }
            | Handoff::Erase { hops, .. }
            | Handoff::Forget { hops, .. } => *hops,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Handoff::MergeRequest { .. } => "merge_request",
            Handoff::History { .. } => "history",
            Handoff::Event { .. } => "event",
            Handoff::Erase { .. } => "erase",
            Handoff::Forget { .. } => "forget",
        }
    }
}
