//! libFuzzer entry of the `decode` target (`cim_integrate_fuzz::decode`): panics when an invariant breaks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cim_integrate_fuzz::decode(data);
});
