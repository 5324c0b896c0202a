//! Findings of a review of the wave-2 crates (worker, state, channel): each
//! test failed before its fix.
//!
//! Every wait is bounded by `PATIENCE`; servers and workers stop when their
//! handles drop at the end of each test.

use std::time::Duration;

use processional::func;
use processional::worker::{RemoteContext, spawn_server};
use processional_tests::PATIENCE;

/// `RemoteContext::wait` right after a worker's `enqueue` and `close` (its
/// own doc example): the input was enqueued before the wait, so it must run
/// to its end, whether or not the worker's feeder had sent its batch when
/// the wait closed the context.
#[test]
fn waiting_on_a_context_right_after_enqueue_loses_no_input() {
    let server = spawn_server("tcp://127.0.0.1:0").expect("a remote-worker server");
    for round in 0..10u64 {
        let context = RemoteContext::register(
            server.address(),
            &format!("double-{round}"),
            func!(|x: u64| 2 * x),
        )
        .unwrap();
        let worker = context.worker().unwrap();
        worker.enqueue(round).unwrap();
        worker.close();
        assert!(
            context.wait(Some(PATIENCE)).unwrap(),
            "round {round}: drained"
        );
        assert!(
            worker.wait(Some(PATIENCE)),
            "round {round}: the worker ends"
        );
        let results: Vec<_> = worker.results().collect();
        assert!(
            matches!(results.as_slice(), [Ok(v)] if *v == 2 * round),
            "round {round}: the input enqueued before the wait ran: {results:?}"
        );
    }
    let _ = Duration::ZERO;
}
