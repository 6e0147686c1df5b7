//! libFuzzer entry of the `subject` target (`cim_integrate_fuzz::subject`): panics when an invariant breaks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cim_integrate_fuzz::subject(data);
});
