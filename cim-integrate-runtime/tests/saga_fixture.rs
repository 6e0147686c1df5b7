//! The given/when/then saga fixture, on the embedded transport under virtual time.

use cim_integrate_runtime::saga::conformance::{Order, Shop};
use cim_integrate_runtime::saga::fixture::SagaFixture;
use cim_integrate_runtime::saga::{Moment, SagaEventKind::*, SagaOutcome, StepState, Write};
use std::time::Duration;

#[tokio::test(start_paused = true)]
async fn given_nothing_when_started_then_completed() {
    SagaFixture::new(Shop::default())
        .when_started("o-1", Order::default())
        .await
        .then_completed()
        .then_steps(&[
            ("validate", StepState::Completed),
            ("reserve", StepState::Completed),
            ("charge", StepState::Completed),
            ("publish", StepState::Completed),
        ])
        .then_events(&[
            Started,
            StepCompleted,
            StepCompleted,
            StepCompleted,
            StepCompleted,
            Completed,
        ])
        .then_data(|d| assert_eq!(d.done, ["+validate", "+reserve", "+charge", "+publish"]));
}

#[tokio::test(start_paused = true)]
async fn given_a_crash_before_recording_a_compensation_then_it_reruns_with_the_same_key() {
    let shop = Shop::default();
    let then = SagaFixture::new(shop.clone())
        .given_crash_at(|p| p.write == Write::StepCompensated && p.step == Some("charge") && p.moment == Moment::Before)
        .when_started("o-2", Order::failing_at("publish"))
        .await;
    then.then_compensated("publish")
        .then_data(|d| assert_eq!(d.done, ["+validate", "+reserve", "+charge", "-charge", "-reserve"]));
    assert!(then.crashed_at().is_some());
    assert_eq!(
        shop.script.calls_of("o-2"),
        [
            "+validate",
            "+reserve",
            "+charge",
            "+publish",
            "-charge",
            "-charge",
            "-reserve"
        ]
    );
    // The external system saw the refund's key twice and applied it once.
    assert_eq!(shop.script.applications("shop/o-2/charge/compensate"), 2);
    // Events: each published once although the crash cut off a publish.
    then.then_events(&[
        Started,
        StepCompleted,
        StepCompleted,
        StepCompleted,
        StepFailed,
        Compensating,
        StepCompensated,
        StepCompensated,
        Compensated,
    ]);
}

#[tokio::test(start_paused = true)]
async fn given_a_broken_compensation_then_needs_attention_until_retried() {
    let shop = Shop::default();
    shop.script.broken.lock().unwrap().insert("charge");
    let then = SagaFixture::new(shop.clone())
        .when_started("o-3", Order::failing_at("publish"))
        .await;
    then.then_needs_attention("charge").then_steps(&[
        ("validate", StepState::Completed),
        ("reserve", StepState::Completed),
        ("charge", StepState::CompensationFailed),
        ("publish", StepState::Failed),
    ]);
    // Virtual time: an hour passes, nothing moves.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(then.runner().resume().await.unwrap().needs_attention, ["o-3"]);
    shop.script.broken.lock().unwrap().clear();
    let outcome = then.runner().retry_compensation("o-3").await.unwrap();
    assert!(matches!(outcome, SagaOutcome::Compensated { .. }), "{outcome:?}");
}

#[tokio::test(start_paused = true)]
async fn given_a_slow_step_then_its_timeout_fails_it_in_virtual_time() {
    let shop = Shop::default();
    shop.script
        .slow
        .lock()
        .unwrap()
        .insert("charge", Duration::from_secs(600));
    let started = tokio::time::Instant::now();
    SagaFixture::new(shop)
        .when_started("o-4", Order::default())
        .await
        .then_compensated("charge")
        .then_steps(&[
            ("validate", StepState::NotCompensated),
            ("reserve", StepState::Compensated),
            ("charge", StepState::Failed),
            ("publish", StepState::Pending),
        ]);
    // Three attempts of 2 s each plus back-off, all virtual.
    assert!(started.elapsed() >= Duration::from_secs(6));
}

/// The futures of the calls that drive a saga stay small: the drive (several KiB of step
/// futures) is boxed inside, so that a caller's task or `buffer_unordered` does not move all of
/// it around.
#[tokio::test]
async fn the_futures_that_drive_a_saga_are_small() {
    use cim_integrate_runtime::saga::SagaRunner;
    use cim_integrate_runtime::transport::memory::MemoryTransport;
    let runner = SagaRunner::builder(MemoryTransport::new(), Shop::default())
        .build()
        .await
        .expect("runner");
    let data = std::mem::size_of::<Order>();
    let start = runner.start("o-size", Order::default());
    assert!(
        std::mem::size_of_val(&start) <= 512 + data,
        "start: {} bytes",
        std::mem::size_of_val(&start)
    );
    let resume = runner.resume_saga("o-size");
    assert!(
        std::mem::size_of_val(&resume) <= 512,
        "resume_saga: {} bytes",
        std::mem::size_of_val(&resume)
    );
    let retry = runner.retry_compensation("o-size");
    assert!(
        std::mem::size_of_val(&retry) <= 512,
        "retry_compensation: {} bytes",
        std::mem::size_of_val(&retry)
    );
}
