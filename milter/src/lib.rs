//! The MTA side of the Sendmail milter protocol, version 6, as Postfix
//! implements it (`src/milter/milter8.c`): option negotiation (what the
//! milter may change, which events it wants and answers, which macros it
//! wants), every event from connect to end of message, and every reply
//! and modification request.
//!
//! - [`protocol`]: the packets, encoded and decoded without I/O.
//! - [`content`]: a message as header events and body chunks.
//! - [`macros`]: the Sendmail macros sent with each event.
//! - [`session`]: one milter's async connection ([`Milter`]) and the
//!   ordered list of a session's milters ([`Milters`]).
//!
//! Modification requests come back as [`empath_common::edits::Edit`]s,
//! which cleanup applies before it seals the queue file.

pub mod content;
pub mod macros;
pub mod protocol;
pub mod session;

pub use macros::Macros;
pub use session::{Client, Milter, MilterError, MilterSettings, Milters, Verdict};
