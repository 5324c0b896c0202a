//! The process context of the global state (issue 12): retries counted in
//! the state, typed exit codes, stopping a whole process tree, 8 × 10 000
//! increments, the parallel map and its results kept on the server, and
//! what dropping a context stops.

use std::time::Duration;

use processional::state::{Context, ContextBuilder, Failure, Retry, State, StateError, func};
use processional_tests::{PATIENCE, process_exists, wait_until};

fn fail_and_count(state: State, (): ()) -> Result<(), StateError> {
    state.increment("tries", 1)?;
    Err(StateError::Stopped)
}

#[test]
fn at_most_five_retries_make_six_tries_counted_in_the_state() {
    let context = Context::new().unwrap();
    let state = context.state();
    let process = context
        .spawn_with(
            Retry::times(5).delay(Duration::from_millis(1)),
            func!(fail_and_count),
            (),
        )
        .unwrap();
    match process.wait(Some(PATIENCE)).unwrap_err() {
        StateError::Process {
            failure: Failure::Error(message),
            ..
        } => assert!(message.contains("stopped"), "{message}"),
        other => panic!("{other:?}"),
    }
    let tries_seen = state.get::<i64>("tries").unwrap();
    assert_eq!(tries_seen, Some(6));
}

fn exit_with(_state: State, code: i32) -> Result<(), StateError> {
    std::process::exit(code)
}

fn exit_once_then_succeed(state: State, (): ()) -> Result<i64, StateError> {
    let tries = state.increment("tries", 1)?;
    if tries == 1 {
        std::process::exit(3);
    }
    Ok(tries)
}

#[test]
fn an_exit_code_comes_back_typed_and_can_be_retried_on() {
    let context = Context::new().unwrap();
    let error = context
        .spawn(func!(exit_with), 7)
        .unwrap()
        .wait(Some(PATIENCE))
        .unwrap_err();
    assert_eq!(error.exit_code(), Some(7), "{error:?}");
    assert!(context.wait(Some(PATIENCE)).is_err());
    let retried = context
        .spawn_with(
            Retry::forever().on_exit_codes(&[3]),
            func!(exit_once_then_succeed),
            (),
        )
        .unwrap();
    assert_eq!(retried.wait(Some(PATIENCE)).unwrap(), 2);
}

fn start_a_tree(state: State, (): ()) -> Result<(), StateError> {
    processional_tests::start_a_grandchild(&state)?;
    // Wait for a key nobody sets: the context must kill us.
    state.when_available("never", None)?;
    Ok(())
}

#[test]
fn stopping_a_process_kills_its_tree_grandchild_included() {
    let context = ContextBuilder::new()
        .grace(Duration::from_millis(200))
        .start()
        .unwrap();
    let state = context.state();
    let process = context.spawn(func!(start_a_tree), ()).unwrap();
    let snapshot = state.when_available("child", Some(PATIENCE)).unwrap();
    let child: u32 = processional::state::Read::get(&snapshot, "child")
        .unwrap()
        .unwrap();
    let grandchild: u32 = state.get("grandchild").unwrap().unwrap();
    assert!(process_exists(child) && process_exists(grandchild));
    process.stop();
    assert!(
        wait_until(PATIENCE, || !process_exists(grandchild)),
        "the grandchild survived its parent's stop"
    );
    assert!(
        wait_until(PATIENCE, || !process_exists(child)),
        "the child survived"
    );
    assert!(matches!(
        process.wait(Some(PATIENCE)),
        Err(StateError::Stopped)
    ));
}

#[test]
fn dropping_the_context_stops_its_processes_and_its_server() {
    let context = ContextBuilder::new()
        .grace(Duration::from_millis(200))
        .start()
        .unwrap();
    let state = context.state();
    let server = state.ping(PATIENCE).unwrap();
    let _process = context.spawn(func!(start_a_tree), ()).unwrap();
    state.when_available("child", Some(PATIENCE)).unwrap();
    let child: u32 = state.get("child").unwrap().unwrap();
    let grandchild: u32 = state.get("grandchild").unwrap().unwrap();
    drop(context);
    for (what, pid) in [
        ("child", child),
        ("grandchild", grandchild),
        ("server", server),
    ] {
        assert!(
            wait_until(PATIENCE, || !process_exists(pid)),
            "the {what} survived"
        );
    }
}

fn increment_many(state: State, count: u32) -> Result<(), StateError> {
    for _ in 0..count {
        state.increment("total", 1)?;
    }
    Ok(())
}

#[test]
fn eight_processes_times_ten_thousand_increments_make_eighty_thousand() {
    let context = Context::new().unwrap();
    context
        .spawn_map(func!(increment_many), vec![10_000u32; 8])
        .unwrap();
    context.wait(Some(Duration::from_secs(300))).unwrap();
    assert_eq!(context.state().get::<i64>("total").unwrap(), Some(80_000));
}

fn pow(x: u64) -> u64 {
    x.wrapping_pow(3)
}

fn fetch_sum(state: State, id: String) -> Result<u64, StateError> {
    let results: Vec<u64> = state.map_results(&id)?.unwrap_or_default();
    Ok(results.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
}

#[test]
fn the_parallel_map_equals_the_local_map_and_keeps_results_by_id() {
    let context = Context::new().unwrap();
    let inputs: Vec<u64> = (0..100_000).collect();
    let local: Vec<u64> = inputs.iter().copied().map(pow).collect();
    assert_eq!(context.map(func!(pow), inputs.clone(), 4).unwrap(), local);
    let lazy: Vec<u64> = context
        .map_lazy(func!(pow), inputs.clone(), 2)
        .unwrap()
        .flat_map(|chunk| chunk.unwrap())
        .collect();
    assert_eq!(lazy, local);
    let id = context.map_keep(func!(pow), inputs, 2).unwrap();
    let fetched = context.spawn(func!(fetch_sum), id).unwrap();
    let sum = local.iter().fold(0u64, |a, b| a.wrapping_add(*b));
    assert_eq!(fetched.wait(Some(PATIENCE)).unwrap(), sum);
}

fn killed_once(state: State, (): ()) -> Result<i64, StateError> {
    let tries = state.increment("tries", 1)?;
    if tries == 1 {
        let _ = std::process::Command::new("kill")
            .args(["-USR1", &std::process::id().to_string()])
            .status();
        // The signal ends the process; wait for it.
        state.when_available("never", Some(PATIENCE))?;
    }
    Ok(tries)
}

fn always_fail(state: State, (): ()) -> Result<(), StateError> {
    state.increment("forever", 1)?;
    Err(StateError::Stopped)
}

#[test]
fn retries_cover_chosen_signals_and_end_when_the_context_stops_the_process() {
    let context = Context::new().unwrap();
    let state = context.state();
    const SIGUSR1: i32 = 10;
    let retried = context
        .spawn_with(Retry::times(1).on_signal(SIGUSR1), func!(killed_once), ())
        .unwrap();
    assert_eq!(retried.wait(Some(PATIENCE)).unwrap(), 2);
    state.set("tries", &0i64).unwrap();
    let not_retried = context.spawn(func!(killed_once), ()).unwrap();
    match not_retried.wait(Some(PATIENCE)) {
        Err(StateError::Process {
            failure: Failure::Signal(SIGUSR1),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // Unbounded retries, until stopped.
    let forever = context
        .spawn_with(
            Retry::forever().delay(Duration::from_millis(1)),
            func!(always_fail),
            (),
        )
        .unwrap();
    state
        .when(
            func!(|s: &processional::state::Peek<'_>| {
                processional::state::Read::get::<i64>(s, "forever")
                    .ok()
                    .flatten()
                    .unwrap_or(0)
                    >= 3
            }),
            Some(PATIENCE),
        )
        .unwrap();
    forever.stop();
    assert!(matches!(
        forever.wait(Some(PATIENCE)),
        Err(StateError::Stopped)
    ));
}

fn add_one(_state: State, x: u32) -> Result<u32, StateError> {
    Ok(x + 1)
}

#[test]
fn waiting_for_a_process_then_for_the_context_is_no_failure() {
    let context = Context::new().unwrap();
    let process = context.spawn(func!(add_one), 1).unwrap();
    assert_eq!(process.wait(Some(PATIENCE)).unwrap(), 2);
    context.wait(Some(PATIENCE)).unwrap();
}

/// Waits for `go`, then answers what it holds.
fn answer_after_go(state: State, (): ()) -> Result<u32, StateError> {
    state.when_available("go", Some(PATIENCE))?;
    Ok(state.get::<u32>("go")?.unwrap_or(0))
}

/// A wait that timed out leaves the process to be waited for again; the
/// value goes to the first wait that gets it.
#[test]
fn a_process_can_be_waited_for_again_after_a_timeout() {
    let context = Context::new().unwrap();
    let state = context.state();
    let process = context.spawn(func!(answer_after_go), ()).unwrap();
    // It cannot end before `go` is set.
    assert!(matches!(
        process.wait(Some(Duration::from_millis(1))),
        Err(StateError::TimedOut { .. })
    ));
    state.set("go", &42u32).unwrap();
    assert_eq!(process.wait(Some(PATIENCE)).unwrap(), 42);
    assert!(matches!(
        process.wait(Some(PATIENCE)),
        Err(StateError::Stopped)
    ));
}
