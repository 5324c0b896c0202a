//! Server streams: a call pushes items to its caller, in order, within the
//! credit the caller grants, and ends with a value or an error.

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_core::Stream;
use processional::{
    Error, ItemSink, ItemStream, NobodyListening, SlaveProcess, TrySendError, func, slave,
};
use processional_tests::{PATIENCE, wait_until};

/// In the slave: items the endless stream has sent, whether it waits for
/// credit, and the item its sink handed back once nobody listened.
static SENT: AtomicU64 = AtomicU64::new(0);
static WAITING: AtomicBool = AtomicBool::new(false);
static GIVEN_BACK: AtomicU64 = AtomicU64::new(u64::MAX);

/// Streams 0, 1, 2, … until nobody listens; records its progress.
fn endless(_: (), items: ItemSink<u64>) -> u64 {
    let mut next = 0;
    loop {
        let item = match items.try_send(next) {
            Ok(()) => {
                SENT.store(items.sent(), Ordering::SeqCst);
                next += 1;
                continue;
            }
            Err(TrySendError::Full(item)) => item,
            Err(TrySendError::NobodyListening(item)) => {
                GIVEN_BACK.store(item, Ordering::SeqCst);
                return next;
            }
        };
        // The window is full: wait for credit.
        WAITING.store(true, Ordering::SeqCst);
        match items.send(item) {
            Ok(()) => {
                WAITING.store(false, Ordering::SeqCst);
                SENT.store(items.sent(), Ordering::SeqCst);
                next += 1;
            }
            Err(NobodyListening(item)) => {
                GIVEN_BACK.store(item, Ordering::SeqCst);
                return next;
            }
        }
    }
}

/// The endless stream's progress, asked on a thread of the slave (its
/// executor is inside the stream).
fn progress(process: &SlaveProcess) -> (u64, bool, u64) {
    process
        .thread(func!(|| (
            SENT.load(Ordering::SeqCst),
            WAITING.load(Ordering::SeqCst),
            GIVEN_BACK.load(Ordering::SeqCst)
        )))
        .wait_timeout(PATIENCE)
        .expect("the slave answers")
        .unwrap()
}

/// Starts the endless stream with a window of `window` and consumes
/// `consumed` items of it.
fn consume_some(process: &SlaveProcess, window: u32, consumed: u64) -> ItemStream<u64, u64> {
    let mut stream = process
        .stream_with_window((), window, func!(endless))
        .unwrap();
    for expected in 0..consumed {
        assert_eq!(stream.next().unwrap().unwrap(), expected);
    }
    stream
}

#[test]
fn items_arrive_in_order_then_the_value() {
    const ITEMS: u64 = 10_000;
    let process = slave().expect("spawn");
    let mut stream = process
        .stream_with(
            ITEMS,
            func!(|n: u64, items: ItemSink<u64>| {
                for i in 0..n {
                    items.send(i).unwrap();
                }
                format!("{n} sent")
            }),
        )
        .unwrap();
    let mut expected = 0;
    for item in stream.by_ref() {
        assert_eq!(item.unwrap(), expected);
        expected += 1;
    }
    assert_eq!(expected, ITEMS);
    assert_eq!(stream.finish().unwrap(), "10000 sent");

    // Items larger than the inline limit travel in shared memory.
    let big: Vec<Vec<u8>> = process
        .stream(func!(|items: ItemSink<Vec<u8>>| {
            for round in 0..3u8 {
                items.send(vec![round; 300 * 1024]).unwrap();
            }
        }))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(big.len(), 3);
    for (round, item) in big.iter().enumerate() {
        assert_eq!(item.len(), 300 * 1024);
        assert!(item.iter().all(|&b| b == round as u8));
    }
}

#[test]
fn a_consumer_that_stops_reading_holds_the_server_back() {
    const WINDOW: u32 = 8;
    const CONSUMED: u64 = 10;
    let process = slave().expect("spawn");
    let stream = consume_some(&process, WINDOW, CONSUMED);
    // Wait until the server waits for credit it will not get.
    let mut last = (0, false, 0);
    assert!(
        wait_until(PATIENCE, || {
            last = progress(&process);
            last.1 && last.0 >= CONSUMED
        }),
        "the stream never waited for credit: {last:?}"
    );
    let (sent, _, _) = last;
    assert!(
        sent <= CONSUMED + u64::from(WINDOW),
        "{sent} items sent for {CONSUMED} consumed with a window of {WINDOW}"
    );
    // Other calls are served meanwhile, and the bound still holds.
    assert_eq!(process.thread(func!(|| 3u8)).wait().unwrap(), 3);
    let (sent, waiting, _) = progress(&process);
    assert!(waiting && sent <= CONSUMED + u64::from(WINDOW), "{sent}");
    drop(stream);
}

#[test]
fn dropping_the_stream_cancels_it_and_the_sink_hands_the_item_back() {
    let process = slave().expect("spawn");
    let stream = consume_some(&process, 4, 3);
    assert!(
        wait_until(PATIENCE, || progress(&process).1),
        "the stream never waited for credit"
    );
    drop(stream);
    let mut last = (0, false, 0);
    assert!(
        wait_until(PATIENCE, || {
            last = progress(&process);
            last.2 != u64::MAX
        }),
        "the sink never noticed the cancellation: {last:?}"
    );
    let (sent, _, given_back) = last;
    // The item it was waiting to send is the next one.
    assert_eq!(given_back, sent);
    // The connection serves on; the stream's late reply was ignored.
    assert_eq!(process.invoke(func!(|| 11u8)).unwrap(), 11);
}

#[test]
fn an_error_ends_the_stream_after_its_items() {
    let process = slave().expect("spawn");
    let mut stream = process
        .stream_with(
            3u64,
            func!(|n: u64, items: ItemSink<u64>| -> u64 {
                for i in 0..n {
                    items.send(i).unwrap();
                }
                panic!("failed after {n} items");
            }),
        )
        .unwrap();
    for expected in 0..3 {
        assert_eq!(stream.next().unwrap().unwrap(), expected);
    }
    let error = stream.next().unwrap().expect_err("the panic");
    assert!(error.is_panic(), "{error:?}");
    assert_eq!(error.message(), Some("failed after 3 items"));
    assert!(stream.next().is_none());
    let error = stream.finish().expect_err("the panic again");
    assert_eq!(error.message(), Some("failed after 3 items"));

    // A function's own error is its value: the items, then `Err`.
    let mut stream = process
        .stream(func!(|items: ItemSink<u64>| -> Result<u64, String> {
            items.send(1).unwrap();
            items.send(2).unwrap();
            Err("no third".to_string())
        }))
        .unwrap();
    let items: Vec<u64> = stream.by_ref().map(Result::unwrap).collect();
    assert_eq!(items, [1, 2]);
    assert_eq!(stream.finish().unwrap(), Err("no third".to_string()));

    // So does the death of the process, after the items that arrived.
    let mut stream = process
        .stream(func!(|items: ItemSink<u64>| -> u8 {
            items.send(7).unwrap();
            std::process::exit(3)
        }))
        .unwrap();
    assert_eq!(stream.next().unwrap().unwrap(), 7);
    let error = stream.next().unwrap().expect_err("died");
    assert!(
        matches!(error, Error::Exited(_) | Error::Disconnected { .. }),
        "{error:?}"
    );
}

/// In the slave: a sink handed over by a stream's function, fed later.
static HANDED_OVER: Mutex<Option<ItemSink<String>>> = Mutex::new(None);

#[test]
fn a_sink_is_fed_later_by_other_calls_and_threads() {
    let process = slave().expect("spawn");
    let mut stream = process
        .stream(func!(|items: ItemSink<String>| {
            *HANDED_OVER.lock().unwrap() = Some(items);
            "ended when the sink is dropped".to_string()
        }))
        .unwrap();
    // The slave moved on: it serves these calls, which feed the stream.
    for word in ["one", "two"] {
        process
            .invoke_with(
                word.to_string(),
                func!(|word: String| {
                    let guard = HANDED_OVER.lock().unwrap();
                    guard.as_ref().unwrap().send(word).unwrap();
                }),
            )
            .unwrap();
        assert_eq!(stream.next().unwrap().unwrap(), word);
    }
    // The last items come from another thread, which then drops the sink.
    process
        .invoke(func!(|| {
            let items = HANDED_OVER.lock().unwrap().take().unwrap();
            std::thread::spawn(move || {
                items.send("three".into()).unwrap();
                items.send("four".into()).unwrap();
            });
        }))
        .unwrap();
    let rest: Vec<String> = stream.by_ref().map(Result::unwrap).collect();
    assert_eq!(rest, ["three", "four"]);
    assert_eq!(stream.finish().unwrap(), "ended when the sink is dropped");
}

#[test]
fn streams_and_calls_share_a_connection() {
    let process = slave().expect("spawn");
    // Each stream is fed by a thread of its own: the executor moves on.
    let feed = func!(|(start, n): (u64, u64), items: ItemSink<u64>| {
        std::thread::spawn(move || {
            for i in start..start + n {
                if items.send(i).is_err() {
                    break;
                }
            }
        });
        start
    });
    // Windows smaller than the streams: they take turns on the connection.
    let mut first = process.stream_with_window((0, 50), 3, feed).unwrap();
    let mut second = process.stream_with_window((1000, 50), 5, feed).unwrap();
    for i in 0..50 {
        assert_eq!(first.next().unwrap().unwrap(), i);
        assert_eq!(second.next().unwrap().unwrap(), 1000 + i);
        if i % 10 == 0 {
            assert_eq!(
                process
                    .thread_with(i, func!(|i: u64| i + 1))
                    .wait()
                    .unwrap(),
                i + 1
            );
        }
    }
    assert_eq!(first.finish().unwrap(), 0);
    assert_eq!(second.finish().unwrap(), 1000);
    assert_eq!(process.invoke(func!(|| 1u8)).unwrap(), 1);
}

#[test]
fn an_item_stream_is_a_futures_stream() {
    let process = slave().expect("spawn");
    let mut stream = process
        .stream_with_window(
            100u64,
            7,
            func!(|n: u64, items: ItemSink<u64>| {
                for i in 0..n {
                    items.send(i).unwrap();
                }
                n
            }),
        )
        .unwrap();
    let next = |stream: &mut ItemStream<u64, u64>| {
        pollster::block_on(std::future::poll_fn(|cx| {
            Pin::new(&mut *stream).poll_next(cx)
        }))
    };
    let mut got = Vec::new();
    while let Some(item) = next(&mut stream) {
        got.push(item.unwrap());
    }
    assert!(got.into_iter().eq(0..100));
    assert_eq!(stream.finish().unwrap(), 100);
}
