//! libFuzzer entry of the `json` target (`cim_integrate_fuzz::json`): panics when an invariant breaks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cim_integrate_fuzz::json(data);
});
