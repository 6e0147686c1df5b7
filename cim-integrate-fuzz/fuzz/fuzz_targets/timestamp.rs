//! libFuzzer entry of the `timestamp` target (`cim_integrate_fuzz::timestamp`): panics when an invariant breaks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cim_integrate_fuzz::timestamp(data);
});
