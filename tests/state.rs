//! The global state (issue 12): the dict API against a local map,
//! namespaces, atomic updates and their rollback, every watcher kind, the
//! fast producer that watchers must not miss, the bounded history, ping,
//! and a data-only client built as another program.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use processional::state::txn::{Compare, Op, Txn};
use processional::state::{Context, ContextBuilder, Peek, Read, State, StateError, View, func};
use processional_tests::{PATIENCE, kill_hard, wait_until};

const SHORT: Duration = Duration::from_millis(50);

fn eat_cookies(state: State, count: u32) -> Result<(), StateError> {
    for _ in 0..count {
        state.when_available("cookie", Some(PATIENCE))?;
        state.atomic(
            (),
            func!(|s: &mut View<'_>, (): ()| s.remove::<String>("cookie")),
        )?;
        println!("nom nom nom");
        state.append("log", &"nom nom nom".to_string())?;
    }
    Ok(())
}

#[test]
fn the_cookie_example_takes_turns() {
    let context = Context::new().unwrap();
    let state = context.state();
    let eater = context.spawn(func!(eat_cookies), 5u32).unwrap();
    for _ in 0..5 {
        state
            .when(func!(|s: &Peek<'_>| !s.contains("cookie")), Some(PATIENCE))
            .unwrap();
        state.set("cookie", "Here's a cookie!").unwrap();
        println!("Here's a cookie!");
        state
            .append("log", &"Here's a cookie!".to_string())
            .unwrap();
    }
    eater.wait(Some(PATIENCE)).unwrap();
    let log: Vec<String> = state.get("log").unwrap().unwrap();
    let cookies = log.iter().filter(|l| *l == "Here's a cookie!").count();
    let noms = log.iter().filter(|l| *l == "nom nom nom").count();
    assert_eq!((cookies, noms), (5, 5), "{log:?}");
    // Each cookie is eaten after it was made (the lines of the two
    // processes interleave, each line written after its step).
    let mut made = 0;
    for line in &log {
        if line == "nom nom nom" {
            made -= 1;
            assert!(made >= -1, "a cookie eaten before it was made: {log:?}");
        } else {
            made += 1;
        }
    }
    assert!(!state.contains("cookie").unwrap());
}

/// A tiny deterministic generator, so the sequence is the same every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[test]
fn the_dict_api_behaves_like_a_btreemap_operation_by_operation() {
    let context = Context::new().unwrap();
    let state = context.state();
    let mut model: BTreeMap<String, u32> = BTreeMap::new();
    let mut random = Lcg(12);
    for step in 0..400 {
        let key = format!("k{}", random.next(8));
        let value = random.next(100) as u32;
        match random.next(11) {
            0 | 1 => {
                state.set(&key, &value).unwrap();
                model.insert(key.clone(), value);
            }
            2 => assert_eq!(state.remove::<u32>(&key).unwrap(), model.remove(&key)),
            3 => assert_eq!(
                state.pop(&key, 7u32).unwrap(),
                model.remove(&key).unwrap_or(7)
            ),
            4 => assert_eq!(
                state.setdefault(&key, &value).unwrap(),
                *model.entry(key.clone()).or_insert(value)
            ),
            5 => assert_eq!(state.popitem::<u32>().unwrap(), model.pop_last()),
            6 => {
                let items = vec![
                    (key.clone(), value),
                    (format!("k{}", random.next(8)), value + 1),
                ];
                state.update(items.clone()).unwrap();
                model.extend(items);
            }
            7 if step % 50 == 7 => {
                state.clear().unwrap();
                model.clear();
            }
            8 => assert_eq!(
                state.get_or(&key, 1000u32).unwrap(),
                *model.get(&key).unwrap_or(&1000)
            ),
            _ => assert_eq!(state.get::<u32>(&key).unwrap(), model.get(&key).copied()),
        }
        assert_eq!(state.contains(&key).unwrap(), model.contains_key(&key));
        assert_eq!(state.len().unwrap(), model.len());
        assert_eq!(state.is_empty().unwrap(), model.is_empty());
        if step % 20 == 0 {
            assert_eq!(
                state.keys().unwrap(),
                model.keys().cloned().collect::<Vec<_>>()
            );
            assert_eq!(
                state.values::<u32>().unwrap(),
                model.values().copied().collect::<Vec<_>>()
            );
            assert_eq!(
                state.items::<u32>().unwrap(),
                model
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect::<Vec<_>>()
            );
            assert_eq!(state.to_map::<u32>().unwrap(), model);
            assert!(state.eq_map(&model).unwrap());
        }
    }
    // A typed read of another type is a typed error.
    state.set("text", "not a number").unwrap();
    match state.get::<u64>("text") {
        Err(StateError::Value(error)) => assert_eq!(error.key, "text"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn namespaces_isolate_keys_and_revisions_are_server_wide() {
    let context = Context::new().unwrap();
    let one = context.state();
    let two = one.namespace("two");
    let r1 = one.set("key", &1u8).unwrap();
    let r2 = two.set("key", &2u8).unwrap();
    assert_eq!(r2, r1 + 1);
    assert_eq!(one.get::<u8>("key").unwrap(), Some(1));
    assert_eq!(two.get::<u8>("key").unwrap(), Some(2));
    two.clear().unwrap();
    assert_eq!(one.get::<u8>("key").unwrap(), Some(1));
    assert!(two.is_empty().unwrap());
    let mut switched = one.clone();
    switched.set_namespace("three");
    assert!(!switched.contains("key").unwrap());
    assert_eq!(one.get_with_revision::<u8>("key").unwrap(), Some((1, r1)));
    // A second context on the same address sees the same state.
    let other = Context::connect(context.address()).unwrap();
    assert_eq!(other.state().get::<u8>("key").unwrap(), Some(1));
}

#[test]
fn a_failing_or_panicking_update_is_rolled_back() {
    let context = Context::new().unwrap();
    let state = context.state();
    state.set("balance", &10u32).unwrap();
    let failed = state.atomic(
        (),
        func!(|view: &mut View<'_>, (): ()| {
            view.set("balance", &0u32)?;
            view.set("other", &1u32)?;
            Err::<(), Box<dyn std::error::Error>>("refused".into())
        }),
    );
    match failed {
        Err(StateError::Aborted(aborted)) => assert!(aborted.message.contains("refused")),
        other => panic!("{other:?}"),
    }
    let panicked = state.atomic(
        (),
        func!(|view: &mut View<'_>, (): ()| -> Result<(), StateError> {
            view.set("balance", &0u32)?;
            panic!("in the middle of an update");
        }),
    );
    match panicked {
        Err(StateError::Runtime(error)) => {
            assert!(error.to_string().contains("in the middle"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(state.get::<u32>("balance").unwrap(), Some(10));
    assert!(!state.contains("other").unwrap());
    // The server still serves, and a good update goes through.
    let doubled = state
        .atomic(
            2u32,
            func!(|view: &mut View<'_>, by: u32| {
                let value = view.get_or("balance", 0u32)? * by;
                view.set("balance", &value)?;
                Ok::<_, StateError>(value)
            }),
        )
        .unwrap();
    assert_eq!(doubled, 20);
    assert_eq!(state.increment("n", 5).unwrap(), 5);
    assert_eq!(state.decrement("n", 2).unwrap(), 3);
}

fn gate_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("state-gate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn an_interrupted_caller_does_not_undo_a_completed_update() {
    let context = Context::new().unwrap();
    let state = context.state();
    let dir = gate_dir();
    let task = state.schedule_atomic(
        dir.to_string_lossy().into_owned(),
        func!(|view: &mut View<'_>, dir: String| {
            std::fs::write(format!("{dir}/started"), b"").map_err(|e| e.to_string())?;
            let open = std::path::Path::new(&dir).join("open");
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !open.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            view.set("done", &true).map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        }),
    );
    assert!(
        wait_until(PATIENCE, || dir.join("started").exists()),
        "the update never started"
    );
    task.cancel();
    drop(task);
    std::fs::write(dir.join("open"), b"").unwrap();
    let other = Context::connect(context.address()).unwrap().state();
    other.when_equal("done", &true, Some(PATIENCE)).unwrap();
    assert_eq!(state.get::<bool>("done").unwrap(), Some(true));
    let _ = std::fs::remove_dir_all(dir);
}

fn set_later(state: State, (key, value): (String, u32)) -> Result<(), StateError> {
    state.set(&key, &value)?;
    Ok(())
}

#[test]
fn every_watcher_kind_answers_with_the_snapshot_that_satisfied_it() {
    let context = Context::new().unwrap();
    let state = context.state();
    // Already true: answered at once.
    state.set("a", &1u32).unwrap();
    let snapshot = state.when_equal("a", &1u32, Some(PATIENCE)).unwrap();
    assert_eq!(snapshot.get::<u32>("a").unwrap(), Some(1));
    assert!(state.when_not_none("a", Some(PATIENCE)).is_ok());
    assert!(state.when_none("missing", Some(PATIENCE)).is_ok());
    assert!(state.when_not_equal("a", &2u32, Some(PATIENCE)).is_ok());
    // Not true yet: timeouts fire with a typed error.
    for result in [
        state.when_equal("a", &2u32, Some(SHORT)),
        state.when_none("a", Some(SHORT)),
        state.when_available("missing", Some(SHORT)),
        state.when_change(&["a"], Some(SHORT)),
        state.when(func!(|s: &Peek<'_>| s.len() > 10), Some(SHORT)),
    ] {
        assert!(
            matches!(result, Err(StateError::TimedOut { .. })),
            "{result:?}"
        );
    }
    // Satisfied by a change made in another process.
    let revision = state.revision().unwrap();
    let setter = context
        .spawn(func!(set_later), ("b".to_string(), 7u32))
        .unwrap();
    let snapshot = state
        .when_change_after(&["b"], revision, Some(PATIENCE))
        .unwrap();
    assert_eq!(snapshot.get::<u32>("b").unwrap(), Some(7));
    assert!(snapshot.revision > revision);
    setter.wait(Some(PATIENCE)).unwrap();
    let snapshot = state
        .when(
            func!(|s: &Peek<'_>| s.contains("a") && s.contains("b")),
            Some(PATIENCE),
        )
        .unwrap();
    assert_eq!(snapshot.len(), 2);
    // A change waiter parked before the change.
    let waiter = {
        let state = state.clone();
        std::thread::spawn(move || state.when_change(&["c"], Some(PATIENCE)))
    };
    // Whenever the waiter parks, a later change wakes it: change until it
    // answers (bounded).
    let mut value = 0u32;
    while !waiter.is_finished() {
        value += 1;
        state.set("c", &value).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(value < 10_000, "the change waiter never woke");
    }
    let snapshot = waiter.join().unwrap().unwrap();
    assert!(snapshot.get::<u32>("c").unwrap().is_some());
    let available = {
        let state = state.clone();
        std::thread::spawn(move || state.when_available("d", Some(PATIENCE)))
    };
    state.set("d", &1u8).unwrap();
    assert!(available.join().unwrap().is_ok());
}

fn produce(state: State, count: i64) -> Result<(), StateError> {
    for _ in 0..count {
        state.increment("n", 1)?;
    }
    Ok(())
}

#[test]
fn watchers_never_miss_a_fast_producer() {
    const COUNT: i64 = 5_000;
    let context = ContextBuilder::new().history(100_000).start().unwrap();
    let state = context.state();
    let mut buffered = state.watch().unwrap();
    let live_state = state.clone();
    let live = std::thread::spawn(move || {
        let mut watcher = live_state.watch_live();
        let mut seen = Vec::new();
        loop {
            let change = watcher.next_timeout(Some(PATIENCE)).expect("a live change");
            let event = &change.events[0];
            if event.key == "stop" {
                return seen;
            }
            seen.push(decode_i64(event.value.as_ref().expect("a value")));
        }
    });
    let producer = context.spawn(func!(produce), COUNT).unwrap();
    let mut expected = 1;
    while expected <= COUNT {
        let change = buffered.next().unwrap().unwrap();
        let value = decode_i64(change.events[0].value.as_ref().unwrap());
        assert_eq!(value, expected, "the buffered watcher skipped or reordered");
        expected += 1;
    }
    producer.wait(Some(PATIENCE)).unwrap();
    // The live watcher sees only changes made while it waits: keep telling
    // it to stop until it has seen one such change.
    while !live.is_finished() {
        state.set("stop", &true).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let seen = live.join().unwrap();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "live values must increase: {seen:?}"
    );
    assert!(seen.iter().all(|v| (1..=COUNT).contains(v)));
    println!("the live watcher saw {} of {COUNT} values", seen.len());
}

/// The i64 a change carries (postcard: zigzag varint).
fn decode_i64(bytes: &[u8]) -> i64 {
    let mut snapshot = processional::state::Snapshot::default();
    snapshot.entries.insert(
        "v".into(),
        processional::state::Entry {
            value: bytes.to_vec(),
            created: 0,
            modified: 0,
        },
    );
    snapshot.get::<i64>("v").unwrap().unwrap()
}

#[test]
fn a_watcher_behind_the_history_gets_an_explicit_error_and_goes_on() {
    let context = ContextBuilder::new().history(5).start().unwrap();
    let state = context.state();
    let start = state.revision().unwrap();
    let mut watcher = state.watch_after(start);
    for i in 0..20u32 {
        state.set("n", &i).unwrap();
    }
    match watcher.next().unwrap() {
        Err(StateError::Compacted(compacted)) => {
            assert_eq!(compacted.snapshot.get::<u32>("n").unwrap(), Some(19));
            assert_eq!(compacted.snapshot.revision, start + 20);
            assert_eq!(compacted.asked, start);
        }
        other => panic!("expected the history error, got {other:?}"),
    }
    // From the snapshot's revision on, it sees every change again.
    state.set("n", &20u32).unwrap();
    let change = watcher.next().unwrap().unwrap();
    assert_eq!(change.revision, start + 21);
    // From a past revision still in the history: replayed in order.
    let mut replay = state.watch_after(start + 18);
    let revisions: Vec<u64> = (0..3)
        .map(|_| replay.next().unwrap().unwrap().revision)
        .collect();
    assert_eq!(revisions, [start + 19, start + 20, start + 21]);
}

#[test]
fn ping_answers_times_out_at_zero_and_fails_for_a_dead_server() {
    let context = Context::new().unwrap();
    let state = context.state();
    let pid = state.ping(PATIENCE).unwrap();
    assert_ne!(pid, std::process::id());
    assert!(matches!(
        state.ping(Duration::ZERO),
        Err(StateError::TimedOut { .. })
    ));
    kill_hard(pid);
    assert!(wait_until(
        PATIENCE,
        || !processional_tests::process_exists(pid)
    ));
    assert!(state.ping(Duration::from_secs(5)).is_err());
}

fn transact(state: State, (): ()) -> Result<bool, StateError> {
    let claim = Txn::new()
        .when(Compare::missing("leader"))
        .then(Op::set("leader", &std::process::id())?);
    Ok(state.txn(claim)?.succeeded)
}

#[test]
fn transactions_compare_several_keys_then_apply_one_branch() {
    let context = Context::new().unwrap();
    let state = context.state();
    let leaders = context.spawn_map(func!(transact), vec![(); 4]).unwrap();
    let won: usize = leaders
        .into_iter()
        .map(|p| usize::from(p.wait(Some(PATIENCE)).unwrap()))
        .sum();
    assert_eq!(won, 1, "exactly one process claims the key");
    let revision = state.get_with_revision::<u32>("leader").unwrap().unwrap().1;
    let outcome = state
        .txn(
            Txn::new()
                .when(Compare::exists("leader"))
                .when(Compare::modified(
                    "leader",
                    processional::state::txn::Ordering::Equal,
                    revision,
                ))
                .then(Op::set("a", &1u8).unwrap())
                .then(Op::remove("leader"))
                .or_else(Op::set("b", &1u8).unwrap()),
        )
        .unwrap();
    assert!(outcome.succeeded);
    assert!(state.contains("a").unwrap() && !state.contains("leader").unwrap());
    let outcome = state
        .txn(
            Txn::new()
                .when(Compare::equal("a", &2u8).unwrap())
                .or_else(Op::set("b", &1u8).unwrap()),
        )
        .unwrap();
    assert!(!outcome.succeeded);
    assert_eq!(state.get::<u8>("b").unwrap(), Some(1));
}

/// Runs the `state_client` program (another build) against `address` and
/// returns what it printed.
fn state_client(address: &str) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_state_client"));
    command.arg(address);
    processional_tests::run_to_end(&mut command).1
}

#[test]
fn a_data_only_client_of_another_build_reads_writes_transacts_and_watches() {
    let context = Context::new().unwrap();
    let state = context.state();
    state.set("greeting", "hello").unwrap();
    let out = state_client(context.address());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "greeting: hello", "{out}");
    assert_eq!(lines[1], "txn: true", "{out}");
    assert!(lines[2].starts_with("watched: "), "{out}");
    assert!(lines[3].starts_with("atomic refused: "), "{out}");
    assert_eq!(
        state.get::<String>("from-client").unwrap().as_deref(),
        Some("hi")
    );
    assert_eq!(state.get::<u32>("counter").unwrap(), Some(1));
}

#[test]
fn a_watcher_is_also_an_async_stream() {
    use futures_core::Stream;
    use std::pin::Pin;

    let context = Context::new().unwrap();
    let state = context.state();
    let mut watcher = state.watch().unwrap();
    for i in 0..3u32 {
        state.set("n", &i).unwrap();
    }
    let revisions = pollster::block_on(async {
        let mut revisions = Vec::new();
        for _ in 0..3 {
            let change = std::future::poll_fn(|cx| Pin::new(&mut watcher).poll_next(cx))
                .await
                .expect("a watcher never ends")
                .unwrap();
            revisions.push(change.revision);
        }
        revisions
    });
    let last = state.revision().unwrap();
    assert_eq!(revisions, [last - 2, last - 1, last]);
}

#[test]
fn any_server_of_this_build_can_hold_a_state() {
    let address = processional::Address::private_unix()
        .expect("a private socket path")
        .to_string();
    let server = processional::ServerBuilder::new(&address)
        .unwrap()
        .persistent(true)
        .spawn()
        .unwrap();
    let state = State::connect(&address).unwrap();
    state.set("k", &1u8).unwrap();
    assert_eq!(
        Context::connect(&address)
            .unwrap()
            .state()
            .get::<u8>("k")
            .unwrap(),
        Some(1)
    );
    server.terminate(PATIENCE);
}
