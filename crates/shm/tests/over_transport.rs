//! Usable alone: shared memory sent over a `processional-transport` unix connection, without the
//! runtimes.

use std::os::fd::AsFd;

use processional_proto::{Message, Outcome, Payload, Reply};
use processional_shm::{Pool, PoolLimits, SegmentView, ShmBuf, ShmVec, transfer};
use processional_transport::Connection;

#[test]
fn a_buffer_sent_by_descriptor_maps_the_same_pages() {
    let (mut sender, mut receiver) = Connection::pair().unwrap();
    let mut buf = ShmBuf::new(10 << 20).unwrap();
    buf.as_mut_slice().unwrap()[(10 << 20) - 1] = 42;

    sender
        .send_with_fds(
            &Message::Ping(buf.len() as u64),
            &[buf.shared_fd().unwrap()],
        )
        .unwrap();

    let mut received = receiver.recv().unwrap();
    assert_eq!(received.message, Message::Ping(10 << 20));
    assert_eq!(received.fds.len(), 1);
    let mapped = ShmBuf::from_fd(received.fds.pop().unwrap()).unwrap();
    assert_eq!(mapped.len(), 10 << 20);
    assert_eq!(mapped[(10 << 20) - 1], 42);
    assert!(buf.as_mut_slice().is_err(), "sending sealed it");
}

#[test]
fn serde_values_travel_with_their_descriptors() {
    let (mut sender, mut receiver) = Connection::pair().unwrap();
    let samples = ShmVec::<f64>::from_slice(&[0.5; 100_000]).unwrap();
    let value = ("samples", samples);

    let (bytes, fds) = transfer::collect_fds(|| postcard::to_stdvec(&value).unwrap());
    assert!(bytes.len() < 32);
    let message = Message::Reply(Reply {
        task: 1,
        outcome: Outcome::Value(Payload::Inline(bytes)),
    });
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    sender.send_with_fds(&message, &borrowed).unwrap();
    drop(fds);

    let received = receiver.recv().unwrap();
    let Message::Reply(Reply {
        outcome: Outcome::Value(Payload::Inline(bytes)),
        ..
    }) = received.message
    else {
        panic!("unexpected message");
    };
    let (name, samples): (String, ShmVec<f64>) =
        transfer::provide_fds(received.fds, || postcard::from_bytes(&bytes)).unwrap();
    assert_eq!(name, "samples");
    assert_eq!(samples.len(), 100_000);
    assert!(samples.iter().all(|&x| x == 0.5));
}

#[test]
fn a_pooled_segment_is_lent_and_reused_after_the_reply() {
    let (mut sender, mut receiver) = Connection::pair().unwrap();
    let pool = Pool::new(PoolLimits::default());

    let mut first_address = None;
    for round in 0..3u8 {
        let mut segment = pool.take(5 << 20).unwrap();
        first_address.get_or_insert(segment.as_ptr());
        assert_eq!(
            Some(segment.as_ptr()),
            first_address,
            "the same segment and mapping each round"
        );
        segment.fill(round);
        let loan = segment.lend();
        let payload = Payload::Segment {
            fd: 0,
            len: loan.len() as u64,
        };
        let message = Message::Reply(Reply {
            task: round.into(),
            outcome: Outcome::Value(payload),
        });
        sender.send_with_fds(&message, &[loan.as_fd()]).unwrap();

        // The other side maps the segment, reads it, and answers.
        let mut received = receiver.recv().unwrap();
        let Message::Reply(Reply {
            outcome: Outcome::Value(Payload::Segment { fd, len }),
            ..
        }) = received.message
        else {
            panic!("unexpected message");
        };
        let view = SegmentView::map(received.fds.remove(fd as usize), len as usize).unwrap();
        // SAFETY: the sender does not write the lent segment before our reply.
        assert!(unsafe { view.as_slice() }.iter().all(|&b| b == round));
        drop(view);
        receiver.send(&Message::Pong(round.into())).unwrap();

        assert_eq!(sender.recv().unwrap().message, Message::Pong(round.into()));
        drop(loan.reclaim());
        assert_eq!(pool.idle_segments(), 1);
    }
}
