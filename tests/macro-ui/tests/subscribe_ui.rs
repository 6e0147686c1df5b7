//! Compile-fail and pass cases of `#[subscribe]` / `#[handlers]` (trybuild). Each fail case makes
//! one mistake; its `.stderr` is the error users see. Regenerate with `TRYBUILD=overwrite` only
//! after a deliberate change, then read every changed `.stderr`.

#[test]
fn subscribe_ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/subscribe/fail/*.rs");
    t.pass("tests/ui/subscribe/pass/*.rs");
}
