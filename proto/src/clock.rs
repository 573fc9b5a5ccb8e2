//! Wall-clock time as the wire and the stored records carry it: milliseconds since the Unix
//! epoch (publish times, deliver-at times, record timestamps). The one place that reads it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch now (0 if the clock is before the epoch).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
