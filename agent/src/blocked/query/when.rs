//! `--since` and `--until`: a duration ago (`5m`, `1h30m`, `2d`) or a
//! point in time (RFC 3339, `2026-11-23T09:59:29Z`; a space for the `T`
//! and no zone (UTC) are accepted too), as `hubble observe` takes them.

use std::time::{Duration, SystemTime};

pub fn parse_when(s: &str) -> Result<SystemTime, String> {
    parse_when_at(s, SystemTime::now())
}

pub fn parse_when_at(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let t = s.trim();
    if t.starts_with(|c: char| c.is_ascii_digit()) && !t.contains(['-', ':']) {
        let d = humantime::parse_duration(t)
            .map_err(|e| format!("{s:?}: {e} (a duration ago like 5m or 1h30m, or an RFC 3339 time)"))?;
        return now.checked_sub(d).ok_or_else(|| format!("{s:?} is before the epoch"));
    }
    let zoned = t.strip_suffix('Z').or_else(|| t.strip_suffix('z')).unwrap_or(t);
    if let Some(i) = zoned.rfind(['+', '-']).filter(|i| *i > 10) {
        return parse_offset(zoned, i).map_err(|e| format!("{s:?}: {e}"));
    }
    humantime::parse_rfc3339_weak(zoned)
        .map_err(|e| format!("{s:?}: {e} (a duration ago like 5m or 1h30m, or an RFC 3339 time like 2026-11-23T09:59:29Z)"))
}

/// `2026-11-23T10:59:29+01:00`: the local time less its offset.
fn parse_offset(t: &str, at: usize) -> Result<SystemTime, String> {
    let (local, off) = t.split_at(at);
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let (h, m) = off[1..].split_once(':').unwrap_or((&off[1..], "0"));
    let (h, m): (i64, i64) = (h.parse().map_err(|_| "bad zone offset")?, m.parse().map_err(|_| "bad zone offset")?);
    let base = humantime::parse_rfc3339_weak(local).map_err(|e| e.to_string())?;
    let secs = sign * (h * 3600 + m * 60);
    let d = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 { base.checked_sub(d) } else { base.checked_add(d) }.ok_or_else(|| "out of range".into())
}

/// A record's time (RFC 3339 as the log writes it).
pub fn parse_record_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.strip_suffix('Z').unwrap_or(s)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn durations_ago_and_points_in_time() {
        let now = at("2026-11-23T10:00:00Z");
        assert_eq!(parse_when_at("5m", now), Ok(at("2026-11-23T09:55:00Z")));
        assert_eq!(parse_when_at("1h30m", now), Ok(at("2026-11-23T08:30:00Z")));
        assert_eq!(parse_when_at("2d", now), Ok(at("2026-11-21T10:00:00Z")));
        assert_eq!(parse_when_at("90s", now), Ok(at("2026-11-23T09:58:30Z")));
        assert_eq!(parse_when_at("2026-11-23T09:59:29Z", now), Ok(at("2026-11-23T09:59:29Z")));
        assert_eq!(parse_when_at("2026-11-23T09:59:29.814Z", now), Ok(at("2026-11-23T09:59:29.814Z")));
        assert_eq!(parse_when_at("2026-11-23 09:59:29", now), Ok(at("2026-11-23T09:59:29Z")));
        assert_eq!(parse_when_at("2026-11-23T10:59:29+01:00", now), Ok(at("2026-11-23T09:59:29Z")));
        assert_eq!(parse_when_at("2026-11-23T04:59:29-05:00", now), Ok(at("2026-11-23T09:59:29Z")));
        for bad in ["", "yesterday", "5 parsecs", "2026-13-01T00:00:00Z", "-5m", "10:00"] {
            let e = parse_when_at(bad, now).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn record_times() {
        assert_eq!(parse_record_time("2026-11-23T09:59:29.814Z"), Some(at("2026-11-23T09:59:29.814Z")));
        assert_eq!(parse_record_time("garbage"), None);
    }
}
