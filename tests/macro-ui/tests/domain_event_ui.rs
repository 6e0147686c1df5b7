//! Compile-fail and pass cases of `#[domain_event]` (trybuild). Each fail case makes one mistake;
//! its `.stderr` is the error users see. Regenerate with `TRYBUILD=overwrite` only after a
//! deliberate change, then read every changed `.stderr`.

#[test]
fn domain_event_ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/domain_event/fail/*.rs");
    t.pass("tests/ui/domain_event/pass/*.rs");
}
