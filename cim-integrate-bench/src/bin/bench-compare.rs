//! Compares two result files of the benchmark runner: `bench-compare A.json B.json` prints, per
//! row found in both, the two ratios, the two values with their min-max, B's value over A's, and
//! whether the change is outside the noise (the two runs' ranges do not overlap); then the rows
//! found in one file only. See `cim_integrate_bench::compare`.

use cim_integrate_bench::compare::{Results, compare};
use std::process::ExitCode;

fn read(path: &str) -> Result<Results, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{path} is not a result file of the runner: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [a, b] = args.as_slice() else {
        eprintln!("usage: bench-compare A.json B.json");
        return ExitCode::from(2);
    };
    match read(a).and_then(|a| Ok((a, read(b)?))) {
        Ok((a, b)) => {
            print!("{}", compare(&a, &b));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
