//! How stale the other side's copy of a side's rows can be: the source
//! clock now minus the upper bound of the last change window that was
//! read in full. Measured from the window, not from the last change, so a
//! quiet table is not "behind"; `status` shows it and the metrics file
//! exports it.

use crate::endpoint::Endpoint;
use crate::plan::Side;
use crate::state::WatermarkInfo;
use crate::value::{SqlType, Value};
use std::time::Duration;

/// A side's clock in both forms a change column can take.
#[derive(Debug, Clone)]
pub struct Clock {
    /// `timestamp` (and SQL Server's `datetime`, which follows
    /// `GETDATE()` the same way).
    naive: Value,
    tz: Value,
}

impl Clock {
    /// The clock of the database behind `ep`, or `None` when it does not
    /// answer (lag is shown where it can be).
    pub async fn read(ep: &dyn Endpoint) -> Option<Clock> {
        let naive = ep.clock(&SqlType::Timestamp { precision: 6 }).await.ok()?;
        let tz = ep.clock(&SqlType::TimestampTz).await.ok()?;
        Some(Clock { naive, tz })
    }

    /// Seconds from `t` to this clock's now, in `t`'s own form.
    fn seconds_since(&self, t: &Value) -> Option<f64> {
        let ms = match (t, &self.naive, &self.tz) {
            (Value::Timestamp(t), Value::Timestamp(now), _) => (*now - *t).num_milliseconds(),
            (Value::TimestampTz(t), _, Value::TimestampTz(now)) => (*now - *t).num_milliseconds(),
            _ => return None,
        };
        Some(ms as f64 / 1000.0)
    }
}

/// The side a watermark belongs to.
pub fn side_of(w: &WatermarkInfo) -> Option<Side> {
    match w.side.as_str() {
        "crm" => Some(Side::Crm),
        "external" => Some(Side::External),
        _ => None,
    }
}

/// The upper bound of the last window read in full up to `w`: its read
/// time minus `settle` (the window's end), never before the position
/// itself. Without a read time (a backfill's watermark, whose time is its
/// snapshot's upper bound, or an old state schema) the position's time.
pub fn window_end(w: &WatermarkInfo, settle: Duration) -> Value {
    match &w.read_at {
        Some(read_at) => {
            let end = read_at.minus(settle);
            match end.cmp_same(&w.ts_value) {
                Some(std::cmp::Ordering::Less) | None => w.ts_value.clone(),
                _ => end,
            }
        }
        None => w.ts_value.clone(),
    }
}

/// Seconds the other side's copy of `w`'s side can be behind, by `now`
/// (that side's clock); `None` when the forms do not match.
pub fn lag_seconds(w: &WatermarkInfo, settle: Duration, now: &Clock) -> Option<f64> {
    now.seconds_since(&window_end(w, settle))
        .map(|s| s.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(sec: u32) -> Value {
        Value::Timestamp(
            NaiveDate::from_ymd_opt(2026, 1, 1)
                .unwrap()
                .and_hms_opt(0, sec / 60, sec % 60)
                .unwrap(),
        )
    }

    fn mark(ts: u32, read_at: Option<u32>) -> WatermarkInfo {
        WatermarkInfo {
            entity: "supplier".into(),
            side: "crm".into(),
            ts: String::new(),
            ts_value: at(ts),
            key: "1".into(),
            read_at: read_at.map(at),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn lag_runs_from_the_window_end_not_from_the_last_change() {
        let now = Clock {
            naive: at(50),
            tz: Value::Null,
        };
        let settle = Duration::from_secs(2);
        // Last change at 10, last read began at 40: 12 s, not 40.
        assert_eq!(lag_seconds(&mark(10, Some(40)), settle, &now), Some(12.0));
        // No read time: from the position.
        assert_eq!(lag_seconds(&mark(10, None), settle, &now), Some(40.0));
        // A window end before the position (settle raised since): the
        // position holds.
        assert_eq!(
            lag_seconds(&mark(39, Some(40)), Duration::from_secs(5), &now),
            Some(11.0)
        );
        // Clocks apart the other way: never negative.
        assert_eq!(lag_seconds(&mark(10, Some(60)), settle, &now), Some(0.0));
        // A change column of another form than the clock read.
        let tz_only = Clock {
            naive: Value::Null,
            tz: Value::Null,
        };
        assert_eq!(lag_seconds(&mark(10, Some(40)), settle, &tz_only), None);
    }
}
