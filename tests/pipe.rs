//! Pipes between processes: an end travels to a slave as a call argument
//! (a file descriptor beside the call), and every message carries the pid
//! of the process that really sent it (pymulproc stamps the parent's).

use std::time::Duration;

use processional::channel::{PipeEnd, RecvError, Request, SendError, pipe};
use processional::{func, slave};
use processional_tests::PATIENCE;

#[test]
fn ping_pong_carries_each_senders_own_pid() {
    let child = slave().expect("spawn");
    let (parent_end, child_end) = pipe::<u64>().expect("pipe");
    let pong = child.schedule_with(
        child_end,
        func!(|end: PipeEnd<u64>| -> Result<(u32, u32), String> {
            let ping = end
                .recv_timeout(std::time::Duration::from_secs(60))
                .map_err(|e| e.to_string())?;
            end.send(Request::Finished, ping.data.map(|x| x + 1))
                .map_err(|e| e.to_string())?;
            Ok((ping.sender, std::process::id()))
        }),
    );
    parent_end.send(Request::Do, Some(41)).expect("ping");
    let answer = parent_end.recv_timeout(PATIENCE).expect("pong");
    assert_eq!(answer.data, Some(42));
    assert_eq!(answer.request, Request::Finished);
    assert_eq!(
        answer.sender,
        child.pid(),
        "the child's message carries the child's pid"
    );
    let (ping_sender, child_pid) = pong
        .wait_timeout(PATIENCE)
        .expect("in time")
        .expect("call")
        .expect("child");
    assert_eq!(
        ping_sender,
        std::process::id(),
        "the parent's message carries the parent's pid"
    );
    assert_eq!(child_pid, child.pid());
    child.terminate(PATIENCE);
}

#[test]
fn many_round_trips_in_order() {
    let child = slave().expect("spawn");
    let (parent_end, child_end) = pipe::<u64>().expect("pipe");
    let echo = child.schedule_with(
        child_end,
        func!(|end: PipeEnd<u64>| {
            while let Ok(m) = end.recv() {
                if m.request == Request::Die {
                    break;
                }
                let _ = end.send(Request::Finished, m.data);
            }
        }),
    );
    for i in 0..1000 {
        parent_end.send(Request::Do, Some(i)).expect("send");
        assert_eq!(
            parent_end.recv_timeout(PATIENCE).expect("echo").data,
            Some(i)
        );
    }
    parent_end.send(Request::Die, None).expect("die");
    echo.wait_timeout(PATIENCE)
        .expect("in time")
        .expect("echo ends");
    child.terminate(PATIENCE);
}

#[test]
fn a_dead_child_disconnects_and_hands_the_message_back() {
    let child = slave().expect("spawn");
    let (parent_end, child_end) = pipe::<String>().expect("pipe");
    // The child holds its end while it lives, then dies.
    let held = child.schedule_with(
        child_end,
        func!(|end: PipeEnd<String>| -> u8 {
            let _ = end.send(Request::Finished, Some("bye".into()));
            std::process::exit(0)
        }),
    );
    assert_eq!(
        parent_end
            .recv_timeout(PATIENCE)
            .expect("bye")
            .data
            .as_deref(),
        Some("bye")
    );
    assert!(matches!(
        parent_end.recv_timeout(PATIENCE),
        Err(RecvError::Disconnected)
    ));
    match parent_end.send(Request::Do, Some("unsent".into())) {
        Err(SendError::Disconnected(message)) => {
            assert_eq!(message.data.as_deref(), Some("unsent"))
        }
        other => panic!("{other:?}"),
    }
    let ended = held.wait_timeout(PATIENCE).expect("in time");
    assert!(
        ended.is_err_and(|e| e.is_worker_lost()),
        "the child exited under its call"
    );
    let _ = child.terminate(Duration::from_secs(1));
}

#[test]
fn try_recv_and_async_recv() {
    let (a, b) = pipe::<u8>().expect("pipe");
    assert!(b.try_recv().expect("empty is not a failure").is_none());
    a.send(Request::User(7), Some(1)).expect("send");
    let got = pollster::block_on(b.recv_async()).expect("async");
    assert_eq!(got.request, Request::User(7));
}
