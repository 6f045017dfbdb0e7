//! Spend: the usage an agent reports for one job (tokens in and out, cost), the
//! decimal amounts of `ORCH_TASK_BUDGET` and the budget rule `dispatch` applies.
//!
//! Money is kept as integer micro-units (millionths of the currency the agents report)
//! so sums never drift the way floats do; amounts with more than six decimals are
//! rounded half up to the nearest micro-unit.

use serde::Deserialize;

/// Micro-units in one unit of currency.
pub const MICROS: i64 = 1_000_000;

/// The largest usage file `run-job` reads; a bigger one is a bad form.
pub const USAGE_MAX_BYTES: u64 = 4096;

/// The usage file an agent may write for its job: `usage-<job id>.json` in the task's
/// artefact folder.
pub fn usage_file_name(job_id: i64) -> String {
    format!("usage-{job_id}.json")
}

/// One job's reported usage, every part optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Input tokens (prompt, cache reads included as the agent counts them).
    pub tokens_in: Option<i64>,
    /// Output tokens.
    pub tokens_out: Option<i64>,
    /// Cost in micro-units.
    pub cost_micros: Option<i64>,
    /// The currency code the agent reported (`USD` when it said nothing).
    pub currency: Option<String>,
}

impl Usage {
    /// One line for people: `tokens in 1200, out 300, cost 0.40 USD` (`-` for a part
    /// not reported).
    pub fn describe(&self) -> String {
        format!(
            "tokens in {}, out {}, cost {} {}",
            self.tokens_in.map_or("-".into(), |n| n.to_string()),
            self.tokens_out.map_or("-".into(), |n| n.to_string()),
            self.cost_micros.map_or("-".into(), format_micros),
            self.currency.as_deref().unwrap_or("USD")
        )
    }

    /// The form `task show --json` prints on each job (`cost` as a decimal too).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_micros": self.cost_micros,
            "cost": self.cost_micros.map(format_micros),
            "currency": self.currency.as_deref().unwrap_or("USD"),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageForm {
    tokens_in: Option<i64>,
    tokens_out: Option<i64>,
    cost: Option<serde_json::Value>,
    currency: Option<String>,
}

/// Parses a usage file's text: `{"tokens_in": int, "tokens_out": int, "cost": "1.25" or
/// 1.25, "currency": "USD"}`, all optional, nothing else.
///
/// # Errors
/// Why the form is bad (not JSON, an unknown key, a negative or non-integer count, a
/// cost that is not a non-negative decimal, a currency that is not 3 letters).
pub fn parse_usage(text: &str) -> Result<Usage, String> {
    let form: UsageForm = serde_json::from_str(text).map_err(|e| e.to_string())?;
    for (name, v) in [
        ("tokens_in", form.tokens_in),
        ("tokens_out", form.tokens_out),
    ] {
        if v.is_some_and(|n| n < 0) {
            return Err(format!("{name} is negative"));
        }
    }
    let cost_micros = match &form.cost {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(parse_micros(s)?),
        Some(serde_json::Value::Number(n)) => Some(parse_micros(&n.to_string())?),
        Some(other) => return Err(format!("cost is {other}, not a decimal")),
    };
    if let Some(c) = &form.currency {
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!("currency {c:?} is not a 3-letter code such as USD"));
        }
    }
    Ok(Usage {
        tokens_in: form.tokens_in,
        tokens_out: form.tokens_out,
        cost_micros,
        currency: form.currency,
    })
}

/// Parses a non-negative decimal (`10`, `2.5`, `0.0123456789`, `1e-3`) into micro-units,
/// rounding half up past six decimals.
///
/// # Errors
/// When the text is not a non-negative decimal or is too large.
pub fn parse_micros(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a non-negative decimal amount");
    let t = text.trim();
    if t.contains(['e', 'E']) {
        // serde_json writes small numbers with an exponent; go through f64 for those.
        let f: f64 = t.parse().map_err(|_| bad())?;
        if !(0.0..=1e12).contains(&f) {
            return Err(bad());
        }
        #[allow(clippy::cast_possible_truncation)]
        return Ok((f * MICROS as f64).round() as i64);
    }
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if (whole.is_empty() && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || whole.len() > 12
    {
        return Err(bad());
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let mut micros = 0i64;
    for d in frac.bytes().chain(std::iter::repeat(b'0')).take(6) {
        micros = micros * 10 + i64::from(d - b'0');
    }
    if frac.as_bytes().get(6).is_some_and(|d| *d >= b'5') {
        micros += 1;
    }
    Ok(whole * MICROS + micros)
}

/// Renders micro-units as a decimal with at least two places (`2.50`, `0.012346`).
pub fn format_micros(micros: i64) -> String {
    let whole = micros / MICROS;
    let frac = format!("{:06}", (micros % MICROS).abs());
    let frac = frac.trim_end_matches('0');
    let frac = if frac.len() < 2 {
        format!("{frac:0<2}")
    } else {
        frac.to_string()
    };
    format!("{whole}.{frac}")
}

/// A task's (or project's) spend so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SpendTotals {
    /// Jobs that reported usage.
    pub jobs: i64,
    /// Input tokens.
    pub tokens_in: i64,
    /// Output tokens.
    pub tokens_out: i64,
    /// Cost in micro-units.
    pub cost_micros: i64,
}

impl SpendTotals {
    /// Tokens in and out together (what `ORCH_TASK_TOKEN_BUDGET` caps).
    pub fn tokens(&self) -> i64 {
        self.tokens_in.saturating_add(self.tokens_out)
    }
}

/// The caps of `ORCH_TASK_BUDGET` (micro-units) and `ORCH_TASK_TOKEN_BUDGET`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Cost cap in micro-units; `None`: no cap.
    pub cost_micros: Option<i64>,
    /// Token cap (in and out together); `None`: no cap.
    pub tokens: Option<i64>,
}

/// Why a task whose totals reached a cap gets no further job; `None` while under both.
/// Reaching a cap exactly counts as reached.
pub fn over_budget(t: &SpendTotals, b: &Budget) -> Option<String> {
    if let Some(cap) = b.cost_micros.filter(|c| t.cost_micros >= *c) {
        return Some(format!(
            "spend {} reached ORCH_TASK_BUDGET {} over {} job(s)",
            format_micros(t.cost_micros),
            format_micros(cap),
            t.jobs
        ));
    }
    if let Some(cap) = b.tokens.filter(|c| t.tokens() >= *c) {
        return Some(format!(
            "tokens {} reached ORCH_TASK_TOKEN_BUDGET {cap} over {} job(s)",
            t.tokens(),
            t.jobs
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_become_micro_units_without_drift() {
        assert_eq!(parse_micros("10"), Ok(10_000_000));
        assert_eq!(parse_micros("2.5"), Ok(2_500_000));
        assert_eq!(parse_micros(".5"), Ok(500_000));
        assert_eq!(parse_micros("0.0123454"), Ok(12_345));
        assert_eq!(parse_micros("0.0123455"), Ok(12_346));
        assert_eq!(parse_micros("1e-3"), Ok(1_000));
        for bad in ["", ".", "-1", "1,5", "abc", "1.2.3", "1234567890123"] {
            assert!(parse_micros(bad).is_err(), "{bad}");
        }
        // Ten jobs of 0.1 sum to exactly 1 (floats would not).
        let sum: i64 = (0..10).map(|_| parse_micros("0.1").unwrap()).sum();
        assert_eq!(sum, MICROS);
        assert_eq!(format_micros(2_500_000), "2.50");
        assert_eq!(format_micros(12_346), "0.012346");
        assert_eq!(format_micros(0), "0.00");
    }

    #[test]
    fn the_usage_form_accepts_strings_numbers_and_nothing_else() {
        let u = parse_usage(
            r#"{"tokens_in": 1200, "tokens_out": 300, "cost": "0.25", "currency": "USD"}"#,
        )
        .unwrap();
        assert_eq!(
            (u.tokens_in, u.tokens_out, u.cost_micros),
            (Some(1200), Some(300), Some(250_000))
        );
        assert_eq!(
            parse_usage(r#"{"cost": 0.0421}"#).unwrap().cost_micros,
            Some(42_100)
        );
        assert_eq!(parse_usage("{}").unwrap(), Usage::default());
        for bad in [
            "",
            "[]",
            r#"{"tokens_in": -1}"#,
            r#"{"tokens_in": 1.5}"#,
            r#"{"cost": "-0.1"}"#,
            r#"{"cost": true}"#,
            r#"{"currency": "dollars"}"#,
            r#"{"total_cost_usd": 1}"#,
        ] {
            assert!(parse_usage(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_cap_reached_exactly_counts() {
        let t = SpendTotals {
            jobs: 2,
            tokens_in: 900,
            tokens_out: 100,
            cost_micros: 2_500_000,
        };
        assert_eq!(over_budget(&t, &Budget::default()), None);
        let money = Budget {
            cost_micros: Some(2_500_000),
            tokens: None,
        };
        assert!(over_budget(&t, &money)
            .unwrap()
            .contains("ORCH_TASK_BUDGET 2.50"));
        let under = Budget {
            cost_micros: Some(2_500_001),
            tokens: Some(1001),
        };
        assert_eq!(over_budget(&t, &under), None);
        let tokens = Budget {
            cost_micros: None,
            tokens: Some(1000),
        };
        assert!(over_budget(&t, &tokens).unwrap().contains("tokens 1000"));
    }
}
