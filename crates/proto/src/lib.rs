//! The wire format of processional: how [`Message`]s become bytes on a
//! connection and back.
//!
//! **Internal crate.** This is a layer of [processional](https://docs.rs/processional);
//! its API is not stable and may change in any release. Depend on the
//! `processional` crate, which re-exports what users need (this crate as
//! `processional::proto`).
//!
//! ```
//! use processional_proto::{Call, Decoder, FunctionRef, Message, Payload, RunMode, encode};
//!
//! let call = Message::Call(Call {
//!     task: 7,
//!     function: FunctionRef { offset: -4096, signature: 0x5eed },
//!     mode: RunMode::Queued,
//!     args: Payload::Inline(vec![1, 2, 3]),
//! });
//! let mut wire = Vec::new();
//! encode(&call, &mut wire)?;
//!
//! // The bytes may arrive in any pieces.
//! let (first, second) = wire.split_at(wire.len() / 2);
//! let mut decoder = Decoder::new();
//! decoder.feed(first);
//! assert_eq!(decoder.next()?, None); // needs more bytes
//! decoder.feed(second);
//! assert_eq!(decoder.next()?, Some(call));
//! assert!(decoder.is_empty());
//! # Ok::<(), processional_proto::ProtoError>(())
//! ```
//!
//! # Frame layout
//!
//! A connection carries a sequence of frames. Each is a 12-byte
//! [`FrameHeader`] followed by the payload: one [`Message`] in
//! [postcard](https://docs.rs/postcard) encoding.
//!
//! | Offset | Size | Field      | Value                                                          |
//! |-------:|-----:|------------|----------------------------------------------------------------|
//! |      0 |    4 | magic      | [`MAGIC`], the bytes `b"PRCL"`                                 |
//! |      4 |    2 | version    | [`PROTOCOL_VERSION`], `u16` little-endian                      |
//! |      6 |    1 | flags      | bit 0 = [`FLAG_FDS`]; the other bits are zero                  |
//! |      7 |    1 | fd_count   | descriptors the transport attaches to the frame, 0 unless [`FLAG_FDS`], at most [`MAX_FDS_PER_FRAME`] |
//! |      8 |    4 | len        | payload length in bytes, `u32` little-endian, at most the receiver's limit ([`DEFAULT_MAX_FRAME`] = 64 MiB) |
//! |     12 |  len | payload    | the postcard encoding of exactly one [`Message`]               |
//!
//! [`FLAG_FDS`] is set if and only if `fd_count` is not zero. The descriptors
//! themselves travel out of band (`SCM_RIGHTS` on unix sockets), sent with
//! the frame's first byte; [`Payload::Segment`] refers to them by index.
//!
//! # Invariants
//!
//! - **No I/O.** This crate only turns values into bytes and bytes into
//!   values; sockets, descriptors and polling belong to the transport.
//! - **Bounded allocation.** A [`Decoder`] refuses a header announcing more
//!   than its maximum frame size as soon as the header is complete, before
//!   allocating for the payload, and otherwise grows its buffer only with the
//!   bytes it actually receives (see [`Decoder`] for the exact bound).
//! - **No panic on any input.** Malformed bytes produce a [`ProtoError`] and
//!   poison the decoder; the connection is then closed.
//! - **Few allocations.** [`encode`] serializes straight into the caller's
//!   buffer; decoding allocates only what the decoded [`Message`] owns.
//!
//! # Fuzzing
//!
//! `crates/proto/fuzz` is a [cargo-fuzz](https://github.com/rust-fuzz/cargo-fuzz)
//! project, outside the workspace, with a target `decoder` that feeds
//! arbitrary bytes to a [`Decoder`] in arbitrary chunks. With `cargo-fuzz`
//! installed (`cargo install cargo-fuzz`) and a nightly toolchain:
//!
//! ```text
//! cd crates/proto/fuzz
//! cargo +nightly fuzz run decoder
//! ```

// Examples are tested as code: a warning in one fails the build.
#![doc(test(attr(deny(warnings))))]

pub mod custom;
mod decoder;
mod encode;
mod error;
mod header;
pub mod message;
#[cfg(test)]
mod strategy;

pub use decoder::{Decoder, Frame, READ_CHUNK};
pub use encode::{encode, encode_split, encode_with_fds};
pub use error::ProtoError;
pub use header::{
    DEFAULT_MAX_FRAME, FLAG_FDS, FrameHeader, HEADER_LEN, MAGIC, MAX_FDS_PER_FRAME,
    PROTOCOL_VERSION,
};
pub use message::*;
