//! Compile-fail and pass cases of `#[command]` (trybuild). Each fail case makes one mistake;
//! its `.stderr` is the error users see. Regenerate with `TRYBUILD=overwrite` only after a
//! deliberate change, then read every changed `.stderr`.

#[test]
fn command_ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/command/fail/*.rs");
    t.pass("tests/ui/command/pass/*.rs");
}
