//! Two result files of the runner side by side (`bench-compare A.json B.json`): per row, both
//! ratios and both values, and whether the change of the value is outside the noise, that is,
//! whether the two runs' min-max ranges of the value do not overlap.
//!
//! A row is matched by its section, its name and its baseline's name. The ratio is the figure the
//! issue's targets are set on, but between two runs it moves with the baseline as much as with
//! the row; the value's ranges tell a change from drift. A row renamed since an older file was
//! written is matched under its new name ([`RENAMED`]).

use crate::fmt_num;
use serde::Deserialize;
use std::fmt::Write as _;

/// A result file of the runner (the fields this comparison reads).
#[derive(Debug, Clone, Deserialize)]
pub struct Results {
    /// The commit measured, if the runner could tell.
    #[serde(default)]
    pub commit: Option<String>,
    /// The server's version line.
    #[serde(default)]
    pub nats_server: Option<String>,
    /// The rows.
    pub rows: Vec<Row>,
}

/// One row of a result file.
#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    /// Its section.
    pub section: String,
    /// What it measures.
    pub name: String,
    /// The value (the median over the rounds, where there were rounds); `None` (`null`) from a
    /// run of the baseline side alone.
    pub value: Option<f64>,
    /// The value's unit.
    pub unit: String,
    /// What it is measured against.
    pub baseline_name: String,
    /// `value / baseline`; `None` (`null`) from a run of one side alone.
    pub ratio: Option<f64>,
    /// Whether a higher value is better (throughput), or lower (time, memory).
    pub higher_is_better: bool,
    /// The value's min-max over the rounds, where there were rounds.
    #[serde(default)]
    pub value_range: Option<[Option<f64>; 2]>,
}

/// How a row's value changed between two runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The second run's range lies wholly on the better side of the first's.
    Better,
    /// Wholly on the worse side.
    Worse,
    /// The ranges overlap: no change is resolved.
    WithinNoise,
    /// A row without rounds: one value per run, so no range to tell noise by.
    Unresolved,
}

impl Change {
    fn of(a: &Row, b: &Row) -> Self {
        let (Some([Some(a_lo), Some(a_hi)]), Some([Some(b_lo), Some(b_hi)])) = (a.value_range, b.value_range) else {
            return Self::Unresolved;
        };
        let (up, down) = (b_lo > a_hi, b_hi < a_lo);
        match (up, down, a.higher_is_better) {
            (true, _, true) | (_, true, false) => Self::Better,
            (true, _, false) | (_, true, true) => Self::Worse,
            _ => Self::WithinNoise,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Better => "better",
            Self::Worse => "worse",
            Self::WithinNoise => "within noise",
            Self::Unresolved => "one value each",
        }
    }
}

/// Rows whose name changed, as `(old, new)`: a file written before the change is read as if it
/// named the row anew, so that older results still compare.
pub const RENAMED: &[(&str, &str)] = &[(
    "Service (NATS), key-value dedup, started over the backlog (every mark read)",
    "Service (NATS), key-value dedup, started over the backlog (catching up)",
)];

/// The name of a row as this runner writes it now (see [`RENAMED`]).
fn current_name(name: &str) -> &str {
    RENAMED
        .iter()
        .find(|(old, _)| *old == name)
        .map_or(name, |(_, new)| new)
}

/// Compares `b` with `a`: a table of the rows found in both, then the rows found in one only.
pub fn compare(a: &Results, b: &Results) -> String {
    let mut out = String::new();
    let label = |r: &Results| match r.commit.as_deref() {
        Some(c) if !c.is_empty() => c.chars().take(10).collect(),
        _ => "?".to_owned(),
    };
    let (la, lb) = (label(a), label(b));
    let _ = writeln!(out, "A: {la} ({}), B: {lb} ({})", server(a), server(b));
    let _ = writeln!(
        out,
        "| section | measured | against | ratio A | ratio B | value A | value B | B/A | change |"
    );
    let _ = writeln!(out, "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |");
    let key = |r: &Row| {
        (
            r.section.clone(),
            current_name(&r.name).to_owned(),
            r.baseline_name.clone(),
        )
    };
    let mut only_a = Vec::new();
    for ra in &a.rows {
        let Some(rb) = b.rows.iter().find(|rb| key(rb) == key(ra)) else {
            only_a.push(ra);
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ra.section,
            current_name(&ra.name),
            ra.baseline_name,
            fixed(ra.ratio, 2),
            fixed(rb.ratio, 2),
            value(ra),
            value(rb),
            fixed(ra.value.zip(rb.value).map(|(a, b)| b / a), 3),
            Change::of(ra, rb).label(),
        );
    }
    let only_b: Vec<&Row> = b
        .rows
        .iter()
        .filter(|rb| !a.rows.iter().any(|ra| key(ra) == key(rb)))
        .collect();
    for (which, rows) in [("A", only_a), ("B", only_b)] {
        for r in rows {
            let _ = writeln!(
                out,
                "only in {which}: {} / {} / {}: ratio {}",
                r.section,
                r.name,
                r.baseline_name,
                fixed(r.ratio, 2)
            );
        }
    }
    out
}

fn server(r: &Results) -> &str {
    r.nats_server.as_deref().unwrap_or("server ?")
}

/// `v` with `places` decimals; `-` for a side not measured.
fn fixed(v: Option<f64>, places: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.places$}"))
}

fn value(r: &Row) -> String {
    let Some(v) = r.value else { return "-".to_owned() };
    match r.value_range {
        Some([Some(lo), Some(hi)]) => format!("{} ({}-{}) {}", fmt_num(v), fmt_num(lo), fmt_num(hi), r.unit),
        _ => format!("{} {}", fmt_num(v), r.unit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, value: f64, range: Option<[f64; 2]>, higher_is_better: bool) -> Row {
        Row {
            section: "dispatch".into(),
            name: name.into(),
            value: Some(value),
            unit: "events/s".into(),
            baseline_name: "mpsc".into(),
            ratio: Some(value / 1_000_000.0),
            higher_is_better,
            value_range: range.map(|[lo, hi]| [Some(lo), Some(hi)]),
        }
    }

    #[test]
    fn a_change_is_resolved_only_when_the_ranges_do_not_overlap() {
        let a = row("r", 500_000.0, Some([450_000.0, 550_000.0]), true);
        let up = row("r", 600_000.0, Some([560_000.0, 640_000.0]), true);
        let overlap = row("r", 600_000.0, Some([540_000.0, 640_000.0]), true);
        let down = row("r", 400_000.0, Some([380_000.0, 440_000.0]), true);
        assert_eq!(Change::of(&a, &up), Change::Better);
        assert_eq!(Change::of(&a, &overlap), Change::WithinNoise);
        assert_eq!(Change::of(&a, &down), Change::Worse);
        // Lower is better (time, memory): the same ranges read the other way.
        let (a, up) = (
            row("t", 5.0, Some([4.5, 5.5]), false),
            row("t", 6.0, Some([5.6, 6.4]), false),
        );
        assert_eq!(Change::of(&a, &up), Change::Worse);
        assert_eq!(Change::of(&up, &a), Change::Better);
        assert_eq!(
            Change::of(&row("x", 1.0, None, true), &row("x", 2.0, None, true)),
            Change::Unresolved
        );
    }

    #[test]
    fn rows_are_matched_by_section_name_and_baseline() {
        let a = Results {
            commit: Some("aaaaaaaaaaaaaaaa".into()),
            nats_server: None,
            rows: vec![
                row("both", 500_000.0, Some([450_000.0, 550_000.0]), true),
                row("gone", 1.0, None, true),
            ],
        };
        let b = Results {
            commit: Some("bbbbbbbbbbbbbbbb".into()),
            nats_server: None,
            rows: vec![
                row("both", 600_000.0, Some([560_000.0, 640_000.0]), true),
                row("new", 2.0, None, true),
            ],
        };
        let text = compare(&a, &b);
        assert!(
            text.starts_with("A: aaaaaaaaaa (server ?), B: bbbbbbbbbb (server ?)"),
            "{text}"
        );
        assert!(
            text.contains(
                "| dispatch | both | mpsc | 0.50 | 0.60 | 500,000 (450,000-550,000) events/s | 600,000 (560,000-640,000) events/s | 1.200 | better |"
            ),
            "{text}"
        );
        assert!(text.contains("only in A: dispatch / gone / mpsc: ratio 0.00"), "{text}");
        assert!(text.contains("only in B: dispatch / new / mpsc: ratio 0.00"), "{text}");
    }

    #[test]
    fn a_renamed_row_is_matched_under_its_new_name() {
        let (old, new) = RENAMED[0];
        let results = |name: &str| Results {
            commit: None,
            nats_server: None,
            rows: vec![row(name, 500_000.0, None, true)],
        };
        let text = compare(&results(old), &results(new));
        assert!(text.contains(&format!("| dispatch | {new} | mpsc |")), "{text}");
        assert!(!text.contains("only in"), "{text}");
    }

    #[test]
    fn reads_what_the_runner_writes() {
        let json = r#"{"commit":"7f97de75b61adaa92249a885ba4fc8fe92bc9ed3","cpus":2,"nats_server":"nats-server: v2.9.10",
            "rows":[{"allocs_per_msg":45.0,"baseline":71505.8,"baseline_name":"raw","count":50000,
            "higher_is_better":true,"name":"typed publish","ratio":0.957,"section":"publish","unit":"msgs/s",
            "value":68467.1,"value_range":[60994.7,95515.7]}],"notes":[],"scale":1.0,"seconds":318.1}"#;
        let r: Results = serde_json::from_str(json).expect("parse");
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].value_range, Some([Some(60994.7), Some(95515.7)]));
        // A run of one side alone writes `null` for what it did not measure.
        let one_side = r#"{"commit":"","rows":[{"baseline":null,"baseline_name":"mpsc","baseline_range":[null,null],
            "higher_is_better":true,"name":"c1","ratio":null,"section":"dispatch","unit":"events/s",
            "value":573868.3,"value_range":[510158.9,623783.5]}]}"#;
        let r: Results = serde_json::from_str(one_side).expect("parse one side");
        assert_eq!((r.rows[0].ratio, r.rows[0].value), (None, Some(573868.3)));
        let text = compare(&r, &r);
        assert!(text.starts_with("A: ? (server ?)"), "{text}");
        assert!(
            text.contains("| dispatch | c1 | mpsc | - | - | 573,868 (510,159-623,784) events/s"),
            "{text}"
        );
        assert_eq!(fmt_num(1_234_567.4), "1,234,567");
        assert_eq!(fmt_num(-4_567.0), "-4,567");
        assert_eq!(fmt_num(-456_789.0), "-456,789");
        assert_eq!(fmt_num(4.456), "4.46");
    }
}
