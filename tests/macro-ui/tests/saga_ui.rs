//! Compile-fail and pass cases of `#[saga]` (trybuild). Each fail case makes one mistake; its
//! `.stderr` is the error users see. Regenerate with `TRYBUILD=overwrite` only after a deliberate
//! change, then read every changed `.stderr`.

#[test]
fn saga_ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/saga/fail/*.rs");
    t.pass("tests/ui/saga/pass/*.rs");
}
