//! Feeds arbitrary bytes to a `Decoder` in arbitrary chunks and drains every
//! frame, checking the decoder's invariants on the way.
//!
//! The first input byte picks the delivery: bit 7 chooses between
//! `spare_capacity`/`commit` and `feed`, bit 6 a small or the default maximum
//! frame size, and the low bits seed the sequence of chunk sizes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use processional_proto::{Decoder, Message, ProtoError, encode_with_fds};

fuzz_target!(|input: &[u8]| {
    let Some((&control, stream)) = input.split_first() else {
        return;
    };
    let use_spare = control & 0x80 != 0;
    let mut decoder = if control & 0x40 != 0 {
        Decoder::with_max_frame(1024)
    } else {
        Decoder::new()
    };
    // A small linear congruential sequence of chunk sizes in 1..=256.
    let mut state = u32::from(control & 0x3f) | 1;
    let mut next_chunk = move || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (state >> 16) as usize % 256 + 1
    };

    let mut rest = stream;
    let mut failure: Option<ProtoError> = None;
    while !rest.is_empty() && failure.is_none() {
        let chunk = next_chunk().min(rest.len());
        if use_spare {
            let spare = decoder.spare_capacity(chunk);
            let n = spare.len().min(chunk);
            spare[..n].copy_from_slice(&rest[..n]);
            decoder.commit(n);
            rest = &rest[n..];
            if n == 0 {
                // Frames are drained after every chunk, so only a poisoned
                // decoder refuses room.
                failure = Some(decoder.next_frame().expect_err("room refused while healthy"));
                break;
            }
        } else {
            decoder.feed(&rest[..chunk]);
            rest = &rest[chunk..];
        }
        assert!(decoder.capacity() <= decoder.max_capacity());
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => check_round_trip(&frame.message, frame.header.fd_count),
                Ok(None) => break,
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
    }
    if let Some(error) = failure {
        // A poisoned decoder keeps failing the same way and holds no memory.
        assert_eq!(decoder.next_frame(), Err(error.clone()));
        assert_eq!(decoder.next(), Err(error));
        assert_eq!(decoder.capacity(), 0);
    }
});

/// Whatever decodes must encode and decode back to itself.
fn check_round_trip(message: &Message, fd_count: u8) {
    let mut wire = Vec::new();
    encode_with_fds(message, fd_count, &mut wire).expect("a decoded message encodes");
    let mut decoder = Decoder::with_max_frame(usize::MAX);
    decoder.feed(&wire);
    let frame = decoder.next_frame().expect("re-encoded frame decodes");
    let frame = frame.expect("re-encoded frame is complete");
    assert_eq!(&frame.message, message);
    assert_eq!(frame.header.fd_count, fd_count);
    assert!(decoder.is_empty());
}
