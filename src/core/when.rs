//! How instants and spans read to people: RFC 3339 for unix seconds, short human
//! durations. Pure: the time is passed in (`crate::clock` re-exports both).

use jiff::Timestamp;

/// Renders unix seconds as RFC 3339 (UTC), or the number itself when out of range.
pub fn format_unix(secs: i64) -> String {
    Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

/// Renders a number of seconds as a short human duration (`45s`, `12m`, `3h05m`, `2d04h`).
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}
