//! libFuzzer entry of the `dedup_block` target (`cim_integrate_fuzz::dedup_block`): panics when an invariant breaks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cim_integrate_fuzz::dedup_block(data);
});
