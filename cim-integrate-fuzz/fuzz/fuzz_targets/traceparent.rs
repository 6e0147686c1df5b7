//! libFuzzer entry of the `traceparent` target (`cim_integrate_fuzz::traceparent`): panics when an invariant breaks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cim_integrate_fuzz::traceparent(data);
});
