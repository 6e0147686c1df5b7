//! A time-bounded run of the mutation driver (`cim-fuzz`) over every target, as part of the test
//! suite: 3 s by default, `CIM_FUZZ_SECONDS` to choose (CI runs 30 s). Running the driver's
//! binary from here (`CARGO_BIN_EXE_cim-fuzz`) builds it with the suite, with the workspace's
//! features, instead of in a `cargo run` of its own that resolved other features and compiled
//! half the workspace again.

use std::process::Command;

#[test]
fn fuzz_targets_survive_a_timed_run() {
    let seconds = std::env::var("CIM_FUZZ_SECONDS").unwrap_or_else(|_| String::from("3"));
    let out = Command::new(env!("CARGO_BIN_EXE_cim-fuzz"))
        .args(["--seconds", &seconds])
        .output()
        .expect("run cim-fuzz");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "cim-fuzz found a crash ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("crashes 0"), "no run summary:\n{stdout}");
}
