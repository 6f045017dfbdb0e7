//! A task's priority: the Plane work item's `priority` field (`urgent`, `high`,
//! `medium`, `low`, `none`; plane.md §3), recorded when the task starts and refreshed
//! by every reconcile listing. `dispatch` starts queued jobs by priority, then age
//! (`core::dispatch`).
//!
//! A value from outside that is not one of the five (an unknown string, a number, a
//! missing field) reads as `none` with a warning for the caller to log: a bad priority
//! never stops a start or a pass.

use std::str::FromStr;

use serde_json::Value;

/// A Plane work item priority, most urgent first (the derived order is start order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// `urgent`.
    Urgent,
    /// `high`.
    High,
    /// `medium`.
    Medium,
    /// `low`.
    Low,
    /// `none`: Plane's default, and what anything unreadable becomes.
    #[default]
    None,
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 5] = [
        Priority::Urgent,
        Priority::High,
        Priority::Medium,
        Priority::Low,
        Priority::None,
    ];

    /// Plane's spelling (and the `tasks.priority` column's).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
            Priority::None => "none",
        }
    }

    /// The start order: 0 for `urgent` to 4 for `none` (`jobs.priority_rank`, which
    /// migration 13's triggers keep equal to this for the job's task).
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// The priority of a rank; anything past `none` is `none`.
    pub fn from_rank(rank: i64) -> Priority {
        usize::try_from(rank)
            .ok()
            .and_then(|i| Priority::ALL.get(i).copied())
            .unwrap_or(Priority::None)
    }

    /// Reads a work item's `priority` value as Plane sends it (a webhook's `data` or a
    /// listed work item). Anything but one of the five strings is `none`, with the
    /// warning to log (naming `what`, e.g. the work item).
    pub fn read(value: Option<&Value>, what: &str) -> (Priority, Option<String>) {
        match value {
            Some(Value::String(s)) => match s.parse() {
                Ok(p) => (p, None),
                Err(e) => (Priority::None, Some(format!("{what}: {e}; taken as none"))),
            },
            None | Some(Value::Null) => (
                Priority::None,
                Some(format!("{what}: no priority field; taken as none")),
            ),
            Some(other) => {
                let mut shown = other.to_string();
                shown.truncate(40);
                (
                    Priority::None,
                    Some(format!(
                        "{what}: priority {shown} is not a string; taken as none"
                    )),
                )
            }
        }
    }
}

impl FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Priority, String> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let shown: String = s.chars().take(40).collect();
                format!("unknown priority {shown:?} (Plane's are urgent, high, medium, low, none)")
            })
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plane_values_round_trip_in_start_order() {
        for (i, p) in Priority::ALL.into_iter().enumerate() {
            assert_eq!(p.as_str().parse::<Priority>(), Ok(p));
            assert_eq!(usize::from(p.rank()), i);
            assert_eq!(Priority::from_rank(i64::from(p.rank())), p);
            assert_eq!(Priority::read(Some(&json!(p.as_str())), "w"), (p, None));
        }
        assert!(Priority::Urgent < Priority::Low, "urgent starts first");
        assert_eq!(Priority::from_rank(9), Priority::None);
        assert_eq!(Priority::from_rank(-1), Priority::None);
    }

    #[test]
    fn bad_values_are_none_with_a_warning() {
        let cases = [
            (Some(json!("URGENT")), "unknown priority \"URGENT\""),
            (Some(json!("critical")), "unknown priority \"critical\""),
            (Some(json!("")), "unknown priority \"\""),
            (Some(json!(1)), "priority 1 is not a string"),
            (Some(json!({"x": 1})), "is not a string"),
            (Some(Value::Null), "no priority field"),
            (None, "no priority field"),
        ];
        for (value, want) in cases {
            let (p, warning) = Priority::read(value.as_ref(), "work item w");
            assert_eq!(p, Priority::None, "{value:?}");
            let warning = warning.expect("a warning");
            assert!(warning.starts_with("work item w: "), "{warning}");
            assert!(warning.contains(want), "{warning} lacks {want}");
            assert!(warning.ends_with("taken as none"), "{warning}");
        }
    }
}
