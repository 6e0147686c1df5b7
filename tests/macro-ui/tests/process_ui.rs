//! Compile-fail and pass cases of `#[process]` (trybuild). Each fail case makes one mistake;
//! its `.stderr` is the error users see. Regenerate with `TRYBUILD=overwrite` only after a
//! deliberate change, then read every changed `.stderr`.

#[test]
fn process_ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/process/fail/*.rs");
    t.pass("tests/ui/process/pass/*.rs");
}
