//! The `cleanup` section: what cleanup checks in every message before it
//! is queued, whatever its source.

use serde::Deserialize;

use super::{Invalid, check};

/// Postfix's `hopcount_limit` default.
pub const DEFAULT_HOPCOUNT_LIMIT: usize = 50;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cleanup {
    /// A message with more `Received:` header fields than this has been
    /// around a mail loop: it is refused with `554 5.4.6`.
    pub hopcount_limit: usize,
}

impl Default for Cleanup {
    fn default() -> Self {
        Self {
            hopcount_limit: DEFAULT_HOPCOUNT_LIMIT,
        }
    }
}

pub(super) fn validate(cleanup: &Cleanup) -> Result<(), Invalid> {
    check(
        cleanup.hopcount_limit > 0,
        "cleanup.hopcount_limit",
        "must be at least 1",
    )
}
