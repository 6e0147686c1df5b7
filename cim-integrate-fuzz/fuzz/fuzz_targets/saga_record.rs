//! libFuzzer entry of the `saga_record` target (`cim_integrate_fuzz::saga_record`): panics when an invariant breaks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cim_integrate_fuzz::saga_record(data);
});
