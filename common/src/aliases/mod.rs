//! Aliases: the aliases(5) source format, the compiled index that lookups
//! read (`FILE.cdb`, a constant database: one hashed lookup reads a few
//! pages, never the whole file), and the targets an alias, a `.forward`
//! or an `:include:` file lists.
//!
//! `newaliases` compiles; smtpd (is this recipient known?) and
//! empath-local (what does it expand to?) look up. Each reader notices a
//! rebuilt index by its inode and reopens it.

mod index;
mod source;
mod targets;

pub use index::{AliasMap, AliasMaps, Found, LookupError, compile, index_path};
pub use source::{AliasEntry, SourceError, parse_source};
pub use targets::{Target, TargetError, parse_targets};
