//! libFuzzer entry of the `envelope` target (`cim_integrate_fuzz::envelope`): panics when an invariant breaks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cim_integrate_fuzz::envelope(data);
});
