//! The state crate after its security review: limits that belong to whoever
//! starts the server (a data-only client cannot change them), a stop that
//! never signals a process group it cannot vouch for, and links made to
//! one address without holding up those to another.

use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::time::Duration;

use processional::state::{Context, ContextBuilder, State, StateError, func};
use processional_tests::{PATIENCE, process_exists, wait_until};
use serde::{Deserialize, Serialize};

/// The state server's request as a raw client of another build sends it:
/// the variants in their wire order, the last one the old `Configure`.
#[derive(Serialize)]
#[allow(dead_code)]
enum RawRequest {
    Get,
    Set,
    Remove,
    Contains,
    Len,
    Snapshot,
    Clear,
    Update,
    SetDefault,
    PopItem,
    Txn,
    Revision,
    Namespaces,
    Increment,
    Append,
    Configure { history: u64 },
}

/// Enough of the answer to see a `Bool`.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
enum RawResponse {
    Entry,
    Revision,
    Snapshot,
    Bool(bool),
}

#[test]
fn a_data_only_client_cannot_change_the_history_limit() {
    let context = Context::new().unwrap();
    let state = context.state();
    let stranger = processional::ClientBuilder::new(state.address())
        .unwrap()
        .data_only(true)
        .connect()
        .unwrap();
    // Before any change: the old door let anyone set a history of 1.
    let answer = stranger
        .call_service::<_, RawResponse>(
            "processional.state.v1.request",
            RawRequest::Configure { history: 1 },
        )
        .wait_timeout(PATIENCE)
        .expect("the server answers");
    assert!(!matches!(answer, Ok(RawResponse::Bool(true))), "{answer:?}");
    state.set("a", &1u32).unwrap();
    state.set("a", &2u32).unwrap();
    let mut watcher = state.watch_after(0);
    let first = watcher.next().expect("a change");
    assert_eq!(
        first
            .expect("the history keeps more than one change")
            .revision,
        1
    );
}

fn leave_a_child_and_end(state: State, (): ()) -> Result<(), StateError> {
    processional_tests::start_a_grandchild(&state)?;
    Ok(())
}

/// Whether `pid` is gone, ending, or has a signal pending (one was sent).
fn signalled(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    status.lines().any(|line| {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim();
        match name {
            "State" => value.starts_with('Z') || value.starts_with('X'),
            "SigPnd" | "ShdPnd" => value.chars().any(|c| c != '0'),
            _ => false,
        }
    })
}

fn process_wait_done<R>(process: &processional::state::Process<R>) {
    assert!(
        wait_until(PATIENCE, || process.is_finished()),
        "the context's process did not finish"
    );
}

#[test]
fn a_stop_after_the_leader_was_reaped_signals_no_group() {
    let context = ContextBuilder::new()
        .grace(Duration::from_millis(200))
        .start()
        .unwrap();
    let state = context.state();
    let process = context.spawn(func!(leave_a_child_and_end), ()).unwrap();
    let grandchild: u32 = {
        // "child" is set last: once it is there, both are.
        state.when_available("child", Some(PATIENCE)).unwrap();
        state.get("grandchild").unwrap().unwrap()
    };
    // Teardown, even if an assertion fails: the orphan is ours to end.
    struct KillAtEnd(u32);
    impl Drop for KillAtEnd {
        fn drop(&mut self) {
            processional_tests::kill_hard(self.0);
        }
    }
    let _orphan = KillAtEnd(grandchild);
    let pid: u32 = state.get("child").unwrap().unwrap();
    process_wait_done(&process);
    assert_eq!(process.pid(), pid);
    // Its leader ended and was reaped: its group id may now be anyone's
    // (here it is still the orphan's, which stands in for a stranger).
    assert!(
        wait_until(PATIENCE, || !std::path::Path::new(&format!("/proc/{pid}"))
            .exists()),
        "the context's process was not reaped"
    );
    assert!(process_exists(grandchild));
    process.stop();
    let hit = signalled(grandchild);
    assert!(!hit, "stop signalled a group whose leader was reaped");
}

#[test]
fn a_connection_past_its_wait_cap_is_told_so() {
    let context = ContextBuilder::new().max_waits(2).start().unwrap();
    let state = context.state();
    // Two watchers whose polls stay parked (a buffered watcher that times
    // out keeps its poll); calls on one connection are served in order.
    let mut watchers = [state.watch_after(0), state.watch_after(0)];
    for watcher in &mut watchers {
        assert!(matches!(
            watcher.next_timeout(Some(Duration::from_millis(1))),
            Err(StateError::TimedOut { .. })
        ));
    }
    match state.when_change(&["x"], Some(PATIENCE)) {
        Err(StateError::TooManyWaits { limit: 2 }) => {}
        other => panic!("{other:?}"),
    }
    // Answered polls make room again.
    state.set("x", &1u32).unwrap();
    for watcher in &mut watchers {
        assert_eq!(watcher.next_timeout(Some(PATIENCE)).unwrap().revision, 1);
    }
}

#[test]
fn a_silent_address_holds_up_no_link_to_another() {
    let context = Context::new().expect("a state server");
    let live = context.address().to_owned();
    // A server that accepts and never speaks: a link to it waits in its
    // handshake for as long as the connection stays open.
    let dir = std::env::temp_dir().join(format!("processional-silent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let path = dir.join("silent.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    // It holds the live server's key, so the link gets as far as the
    // handshake.
    let live_path = live.strip_prefix("unix:").expect("a unix address");
    std::fs::copy(format!("{live_path}.key"), dir.join("silent.sock.key")).expect("the key");
    let (accepted, held) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if accepted.send(stream).is_err() {
                return;
            }
        }
    });
    let silent = format!("unix:{}", path.display());
    let (silent_done, silent_outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = silent_done.send(State::connect(&silent).is_ok());
    });
    let held = held
        .recv_timeout(PATIENCE)
        .expect("the link to the silent server connected");
    // While that link waits, one to the live server is made and works.
    let (live_done, live_outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let linked = State::connect(&live).and_then(|state| state.set("k", &1u8));
        let _ = live_done.send(linked.is_ok());
    });
    assert_eq!(
        live_outcome.recv_timeout(PATIENCE),
        Ok(true),
        "the live link was made"
    );
    assert!(
        silent_outcome.try_recv().is_err(),
        "the live link waited for the silent one to give up"
    );
    // Hung up on, the silent link fails.
    drop(held);
    assert_eq!(silent_outcome.recv_timeout(PATIENCE), Ok(false));
    let _ = std::fs::remove_dir_all(&dir);
}
