//! The pure scoring core: event model, rules, decay, lead state, tiers,
//! explanations and the partition engine.
//!
//! Nothing in here performs I/O or reads a clock: every function that needs
//! "now" takes it as a parameter, so the live processor, `replay` and
//! `calibrate` run the same code and get the same answers for the same input.

pub mod account;
pub mod decay;
pub mod engine;
pub mod event;
pub mod filters;
pub mod fingerprint;
pub mod handoff;
pub mod lead;
pub mod migration;
pub mod output;
pub mod prefetch;
pub mod rules;
pub mod time;

pub use engine::{Engine, Outcome, Rejection};
pub use event::{Event, EventKind, Fields, Value};
pub use fingerprint::RulesStamp;
pub use handoff::Handoff;
pub use output::{Contribution, Direction, Output, OutputKind};
pub use rules::Rules;
pub use time::Timestamp;
