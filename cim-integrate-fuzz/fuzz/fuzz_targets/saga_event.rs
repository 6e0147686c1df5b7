//! libFuzzer entry of the `saga_event` target (`cim_integrate_fuzz::saga_event`): panics when an invariant breaks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cim_integrate_fuzz::saga_event(data);
});
