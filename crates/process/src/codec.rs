//! Turning arguments and values into bytes and back (postcard).
//!
//! `Vec<u8>` gets a fast path: postcard encodes a sequence of bytes as a
//! varint length followed by the bytes, so a `Vec<u8>` is written and read
//! with one copy instead of one serializer call per byte. The bytes on the
//! wire are exactly postcard's.
//!
//! Large inline payloads are the other thing this module is careful about.
//! The encoding buffer of a payload is recycled once its frame is written
//! ([`buffer`] / [`recycle`]), and a `Vec<u8>` received inline becomes the
//! value itself ([`decode_owned`]): each inline transfer then allocates one
//! buffer on each side, the value's own, as a plain socket transfer would.
//! Each extra transient copy of 64 to 128 KiB used to leave enough free
//! memory at the top of the heap for glibc to trim it (`brk`) after every
//! call, and to fault it in again (zeroed) on the next: that doubled the
//! cost per byte of inline payloads between 64 and 128 KiB.

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::fmt::Display;
use std::sync::Mutex;

use processional_proto::custom;
use processional_proto::{RemoteError, RemoteErrorKind};
use processional_shm::SegmentView;
use processional_task::{CodecDirection, CodecError, Error};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{MalformedBytes, PayloadError};

/// Where encoded bytes go: any growable byte buffer.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]) -> Result<(), CodecError>;
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), CodecError> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// postcard's error as ours. postcard drops the message of a `custom`
/// error; the value's implementation may have left it in
/// [`custom`]'s slot (processional's own types do), where it is taken.
/// What postcard cannot do by design (a map or sequence of unknown length,
/// `deserialize_any`) says so, and names the way out ([`crate::Json`]).
fn format_error(error: postcard::Error) -> CodecError {
    if matches!(
        error,
        postcard::Error::WontImplement | postcard::Error::SerializeSeqLengthUnknown
    ) {
        return CodecError::NotSelfDescribing(Box::new(error));
    }
    let custom = matches!(
        error,
        postcard::Error::SerdeSerCustom | postcard::Error::SerdeDeCustom
    );
    match custom.then(custom::take_message).flatten() {
        Some(message) => CodecError::Custom(message),
        None => CodecError::Format(Box::new(error)),
    }
}

fn encode_error<T: ?Sized>(source: CodecError) -> Error {
    Error::codec::<T>(CodecDirection::Encode, source)
}

fn decode_error<T: ?Sized>(source: CodecError) -> Error {
    Error::codec::<T>(CodecDirection::Decode, source)
}

fn varint(mut value: usize, out: &mut [u8; 10]) -> &[u8] {
    let mut len = 0;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out[len] = byte;
            return &out[..=len];
        }
        out[len] = byte | 0x80;
        len += 1;
    }
}

fn read_varint(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value: usize = 0;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        let part = usize::from(byte & 0x7f);
        value |= part.checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// The encoded size of `value` if it takes the fast path.
pub(crate) fn fast_len<T: Any>(value: &T) -> Option<usize> {
    (value as &dyn Any)
        .downcast_ref::<Vec<u8>>()
        .map(|bytes| bytes.len() + varint(bytes.len(), &mut [0; 10]).len())
}

/// Buffers smaller than this are not worth keeping.
const SPARE_MIN: usize = 4 << 10;

/// Buffers larger than this are not kept: 1 MiB, as large as the receive
/// buffer a connection keeps between frames. On unix sockets payloads this
/// large travel in shared memory; over TCP (or with the inline limit
/// raised) those up to here reuse one buffer, larger ones allocate theirs.
const SPARE_MAX: usize = 1 << 20;

/// Whether an encoding buffer of `capacity` bytes is kept for the next one.
fn worth_keeping(capacity: usize) -> bool {
    (SPARE_MIN..=SPARE_MAX).contains(&capacity)
}

/// The process's spare encoding buffer (at most one, at most [`SPARE_MAX`]
/// bytes): a written frame's payload comes back here for the next one.
static SPARE: Mutex<Vec<u8>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's spare buffer for small encodings (under
    /// [`SPARE_MIN`]): a thread that encodes and writes a small value takes
    /// it back for its next one, with no lock shared with other threads and
    /// no regrowth from an empty buffer.
    static SMALL_SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// An empty buffer for an encoding of `capacity` bytes (`None`: of a size
/// not known yet): a spare one when it is free and large enough, else a
/// new one of that capacity.
pub(crate) fn buffer(capacity: Option<usize>) -> Vec<u8> {
    if capacity.is_none_or(|wanted| wanted < SPARE_MIN) {
        let mut bytes = SMALL_SPARE.take();
        if bytes.capacity() >= capacity.unwrap_or(1) {
            bytes.clear();
            return bytes;
        }
        // Too small for this one: kept for the next.
        SMALL_SPARE.set(bytes);
    }
    let wanted = capacity.unwrap_or(SPARE_MIN);
    if worth_keeping(wanted)
        && let Ok(mut spare) = SPARE.try_lock()
        && spare.capacity() >= wanted
    {
        let mut bytes = std::mem::take(&mut *spare);
        bytes.clear();
        return bytes;
    }
    Vec::with_capacity(capacity.unwrap_or(SMALL_START))
}

/// The capacity a buffer for an encoding of unknown size starts with.
const SMALL_START: usize = 64;

/// Gives an encoding buffer back once its bytes were written, for
/// [`buffer`] to hand out again.
pub(crate) fn recycle(bytes: Vec<u8>) {
    if bytes.capacity() < SPARE_MIN {
        // The larger of the two stays: small buffers recycled after a
        // decode (a reply's few bytes) must not push out the one that
        // encodings grew, or every encoding grows again from there.
        let spare = SMALL_SPARE.take();
        SMALL_SPARE.set(if spare.capacity() >= bytes.capacity() {
            spare
        } else {
            bytes
        });
        return;
    }
    if !worth_keeping(bytes.capacity()) {
        return;
    }
    if let Ok(mut spare) = SPARE.try_lock()
        && spare.capacity() < bytes.capacity()
    {
        *spare = bytes;
    }
}

/// Encodes `value` into `sink`.
pub(crate) fn encode_into<T: Serialize + Any>(
    value: &T,
    sink: &mut impl Sink,
) -> Result<(), Error> {
    if let Some(bytes) = (value as &dyn Any).downcast_ref::<Vec<u8>>() {
        return sink
            .put(varint(bytes.len(), &mut [0; 10]))
            .and_then(|()| sink.put(bytes))
            .map_err(encode_error::<T>);
    }
    // A message an earlier failure left is not this value's.
    custom::take_message();
    let bytes =
        postcard::to_stdvec(value).map_err(|error| encode_error::<T>(format_error(error)))?;
    sink.put(&bytes).map_err(encode_error::<T>)
}

/// Serializes `value` (into a recycled buffer when one is free: see
/// [`buffer`]).
pub(crate) fn encode<T: Serialize + Any>(value: &T) -> Result<Vec<u8>, Error> {
    if let Some(len) = fast_len(value) {
        let mut out = buffer(Some(len));
        encode_into(value, &mut out)?;
        return Ok(out);
    }
    // A message an earlier failure left is not this value's.
    custom::take_message();
    let out = buffer(None);
    postcard::to_extend(value, out).map_err(|error| encode_error::<T>(format_error(error)))
}

/// Deserializes a `T` from `bytes`, like [`decode`]; a `Vec<u8>` is made of
/// `bytes` itself (its length prefix moved out), without a second buffer.
pub(crate) fn decode_owned<T: DeserializeOwned + Any>(mut bytes: Vec<u8>) -> Result<T, Error> {
    if TypeId::of::<T>() != TypeId::of::<Vec<u8>>() {
        let decoded = decode(&bytes);
        recycle(bytes);
        return decoded;
    }
    let prefix = match read_varint(&bytes) {
        Some((len, rest)) if rest.len() == len => bytes.len() - rest.len(),
        Some((announced, rest)) => {
            let error = MalformedBytes::Mismatch {
                announced,
                following: rest.len(),
            };
            return Err(decode_error::<T>(CodecError::Format(Box::new(error))));
        }
        None => {
            let error = MalformedBytes::Length;
            return Err(decode_error::<T>(CodecError::Format(Box::new(error))));
        }
    };
    bytes.drain(..prefix);
    let boxed: Box<dyn Any> = Box::new(bytes);
    Ok(*boxed.downcast::<T>().expect("T is Vec<u8>"))
}

/// Deserializes a `T` from `bytes`, which it must use up entirely.
pub(crate) fn decode<T: DeserializeOwned + Any>(bytes: &[u8]) -> Result<T, Error> {
    if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        let decoded = match read_varint(bytes) {
            Some((len, rest)) if rest.len() == len => Ok(fresh_copy(rest)),
            Some((announced, rest)) => Err(MalformedBytes::Mismatch {
                announced,
                following: rest.len(),
            }),
            None => Err(MalformedBytes::Length),
        }
        .map_err(|error| decode_error::<T>(CodecError::Format(Box::new(error))))?;
        let boxed: Box<dyn Any> = Box::new(decoded);
        return Ok(*boxed.downcast::<T>().expect("T is Vec<u8>"));
    }
    // A message an earlier failure left is not this value's.
    custom::take_message();
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(decode_error::<T>(CodecError::TrailingBytes {
            count: rest.len(),
        })),
        Err(error) => Err(decode_error::<T>(format_error(error))),
    }
}

/// Deserializes a `T` from a mapped segment the sender may still write.
///
/// The bytes are copied into private memory first and decoded from there,
/// so no reference to peer-writable memory is ever made: a `Vec<u8>` is
/// copied straight into its own buffer (one copy, as inline), anything else
/// into a scratch buffer that postcard then reads.
pub(crate) fn decode_mapped<T: DeserializeOwned + Any>(view: &SegmentView) -> Result<T, Error> {
    if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        let decoded = decode_mapped_bytes(view).map_err(decode_error::<T>)?;
        let boxed: Box<dyn Any> = Box::new(decoded);
        return Ok(*boxed.downcast::<T>().expect("T is Vec<u8>"));
    }
    decode(&copy_range(view, 0, view.len()).map_err(decode_error::<T>)?)
}

/// The fast path of [`decode_mapped`]: a varint length, then the bytes.
fn decode_mapped_bytes(view: &SegmentView) -> Result<Vec<u8>, CodecError> {
    let mut header = [std::mem::MaybeUninit::uninit(); 10];
    let header = view
        .copy_to(0, &mut header[..view.len().min(10)])
        .map_err(|e| CodecError::Payload(Box::new(PayloadError::Read(e))))?;
    let Some((len, rest)) = read_varint(header) else {
        return Err(CodecError::Format(Box::new(MalformedBytes::Length)));
    };
    let start = header.len() - rest.len();
    let following = view.len() - start;
    if following != len {
        return Err(CodecError::Format(Box::new(MalformedBytes::Mismatch {
            announced: len,
            following,
        })));
    }
    copy_range(view, start, len)
}

/// A new `Vec<u8>` holding `len` bytes of `view` from `start`. Large ones ask
/// for transparent huge pages first, as [`fresh_copy`] does. The length is
/// the peer's (its segment's size): memory that cannot be had fails the
/// decoding, not the process.
fn copy_range(view: &SegmentView, start: usize, len: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    out.try_reserve_exact(len)
        .map_err(|_| CodecError::Payload(Box::new(PayloadError::TooLong(len as u64))))?;
    if len >= crate::sys::HUGE_PAGE * 4 {
        crate::sys::advise_huge_pages(out.as_mut_ptr(), out.capacity());
    }
    view.copy_to(start, &mut out.spare_capacity_mut()[..len])
        .map_err(|e| CodecError::Payload(Box::new(PayloadError::Read(e))))?;
    // SAFETY: `copy_to` initialized the first `len` bytes of the spare
    // capacity, which is at least `len`.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// A new `Vec<u8>` holding `bytes`. Large ones ask for transparent huge
/// pages first: a fresh 100 MiB buffer then costs 50 page faults, not 25 600.
fn fresh_copy(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    if bytes.len() >= crate::sys::HUGE_PAGE * 4 {
        crate::sys::advise_huge_pages(out.as_mut_ptr(), out.capacity());
    }
    out.extend_from_slice(bytes);
    out
}

/// A codec failure on the serving side, as sent back to the caller.
pub(crate) fn remote_codec_error(error: impl Display) -> RemoteError {
    RemoteError {
        kind: RemoteErrorKind::Codec,
        message: error.to_string(),
        location: None,
        backtrace: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use processional_shm::SharedMutBuf;

    use super::*;

    /// A segment holding `bytes`, which this process can keep writing.
    fn writable_segment(bytes: &[u8]) -> (SharedMutBuf, SegmentView) {
        let buf = SharedMutBuf::new(bytes.len()).unwrap();
        for (cell, &byte) in buf.atomic_u8s().iter().zip(bytes) {
            cell.store(byte, Ordering::Relaxed);
        }
        let view = SegmentView::map(buf.try_clone_fd().unwrap(), bytes.len()).unwrap();
        (buf, view)
    }

    #[test]
    fn mapped_payloads_decode_like_inline_ones() {
        let value = (7u64, "seven".to_string(), vec![7u8; 300]);
        let (_buf, view) = writable_segment(&encode(&value).unwrap());
        assert_eq!(
            decode_mapped::<(u64, String, Vec<u8>)>(&view).unwrap(),
            value
        );
        let bytes = vec![9u8; 70_000];
        let (_buf, view) = writable_segment(&encode(&bytes).unwrap());
        assert_eq!(decode_mapped::<Vec<u8>>(&view).unwrap(), bytes);
        let (_buf, view) = writable_segment(&encode(&bytes).unwrap()[..1000]);
        assert!(
            decode_mapped::<Vec<u8>>(&view)
                .unwrap_err()
                .to_string()
                .contains("follow")
        );
    }

    /// A sender that breaks the lending protocol and writes its segment while
    /// the receiver decodes it can garble the value, but never hand the
    /// receiver a `String` that is not UTF-8 (which decoding in place, after
    /// validation, could).
    #[test]
    fn a_segment_written_during_decoding_never_yields_invalid_text() {
        let text = "a".repeat(1 << 20);
        let encoded = encode(&text).unwrap();
        let (buf, view) = writable_segment(&encoded);
        let (stop, writing) = (AtomicBool::new(false), AtomicBool::new(false));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let cells = &buf.atomic_u8s()[encoded.len() - text.len()..];
                let mut at = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    // One byte turns invalid for a moment, then valid again.
                    at = (at + 7919) % cells.len();
                    cells[at].store(0xff, Ordering::Relaxed);
                    writing.store(true, Ordering::Relaxed);
                    for _ in 0..200 {
                        std::hint::spin_loop();
                    }
                    cells[at].store(b'a', Ordering::Relaxed);
                }
            });
            while !writing.load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
            let invalid = (0..300)
                .filter_map(|_| decode_mapped::<String>(&view).ok())
                .filter(|decoded| std::str::from_utf8(decoded.as_bytes()).is_err())
                .count();
            stop.store(true, Ordering::Relaxed);
            assert_eq!(invalid, 0, "decoded Strings that are not UTF-8");
        });
    }

    #[test]
    fn round_trip_and_trailing_bytes() {
        let bytes = encode(&(1u32, "two".to_string())).unwrap();
        assert_eq!(
            decode::<(u32, String)>(&bytes).unwrap(),
            (1, "two".to_string())
        );
        assert!(matches!(
            decode::<u8>(&bytes),
            Err(Error::Codec {
                type_name: "u8",
                source: CodecError::TrailingBytes { count: 4 },
                ..
            })
        ));
        assert!(decode::<(u32, String)>(&bytes[..2]).is_err());
    }

    /// Refuses to be encoded or decoded, saying why the way processional's
    /// own types do.
    #[derive(Debug)]
    struct Refuses;

    impl Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(custom::serialize_error("Refuses stays here"))
        }
    }

    impl<'de> serde::Deserialize<'de> for Refuses {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            Err(custom::deserialize_error("Refuses never arrives"))
        }
    }

    /// Fails with a plain `custom` error, whose message postcard drops.
    struct Plain;

    impl Serialize for Plain {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("lost on the way"))
        }
    }

    #[test]
    fn the_messages_of_refusing_values_reach_the_error() {
        let error = encode(&Refuses).unwrap_err();
        assert!(
            matches!(&error, Error::Codec {
                direction: CodecDirection::Encode,
                source: CodecError::Custom(message),
                ..
            } if message == "Refuses stays here"),
            "{error:?}"
        );
        assert!(error.to_string().contains("Refuses"), "{error}");
        let error = decode::<Refuses>(&[]).unwrap_err();
        assert!(
            matches!(&error, Error::Codec {
                direction: CodecDirection::Decode,
                source: CodecError::Custom(message),
                ..
            } if message == "Refuses never arrives"),
            "{error:?}"
        );
        // A message left behind is not taken for another value's.
        let _ = custom::serialize_error::<postcard::Error>("stale");
        let error = encode(&Plain).unwrap_err();
        assert!(
            matches!(
                &error,
                Error::Codec {
                    source: CodecError::Format(_),
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn encoding_buffers_up_to_a_mebibyte_are_kept() {
        // Over TCP every payload is inline: a 300 KiB one must not pay for
        // a fresh buffer at each call (it cost 3.7 times as much per byte as
        // a 255 KiB one when the bound was 256 KiB).
        assert!(worth_keeping(300 << 10));
        assert!(worth_keeping(1 << 20));
        assert!(!worth_keeping((1 << 20) + 1));
        assert!(!worth_keeping(SPARE_MIN - 1));
    }

    #[test]
    fn a_thread_reuses_its_small_encoding_buffer() {
        // Its own thread: the spare is per thread.
        std::thread::spawn(|| {
            let first = encode(&(7u64, "key".to_string())).unwrap();
            let (address, capacity) = (first.as_ptr(), first.capacity());
            assert!(capacity < SPARE_MIN);
            recycle(first);
            let second = encode(&(8u64, "other".to_string())).unwrap();
            assert_eq!(second.as_ptr(), address, "a new buffer was made");
            assert_eq!(decode::<(u64, String)>(&second).unwrap().1, "other");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_smaller_recycled_buffer_does_not_push_out_the_spare() {
        // Its own thread: the spare is per thread.
        std::thread::spawn(|| {
            let grown = encode(&"a key long enough to grow the buffer".to_string()).unwrap();
            let (address, capacity) = (grown.as_ptr(), grown.capacity());
            recycle(grown);
            // A reply's few bytes, recycled after it was decoded.
            recycle(Vec::with_capacity(2));
            let next = encode(&"another".to_string()).unwrap();
            assert_eq!(next.as_ptr(), address, "the grown buffer was lost");
            assert_eq!(next.capacity(), capacity);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_received_byte_vector_is_decoded_in_place() {
        let value: Vec<u8> = (0..70_000).map(|i| i as u8).collect();
        let encoded = encode(&value).unwrap();
        let at = encoded.as_ptr();
        let decoded: Vec<u8> = decode_owned(encoded).unwrap();
        assert_eq!(decoded, value);
        assert_eq!(decoded.as_ptr(), at, "the frame's buffer became the value");
        let pair: (u32, String) = decode_owned(encode(&(3u32, "x".to_string())).unwrap()).unwrap();
        assert_eq!(pair, (3, "x".to_string()));
        let mut short = encode(&value).unwrap();
        short.truncate(1000);
        assert!(decode_owned::<Vec<u8>>(short).is_err());
        assert!(decode_owned::<Vec<u8>>(vec![0xff; 12]).is_err());
    }

    #[test]
    fn the_byte_vector_fast_path_is_postcard() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let value: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let fast = encode(&value).unwrap();
            assert_eq!(fast, postcard::to_stdvec(&value).unwrap());
            assert_eq!(fast.len(), fast_len(&value).unwrap());
            assert_eq!(decode::<Vec<u8>>(&fast).unwrap(), value);
            assert_eq!(postcard::from_bytes::<Vec<u8>>(&fast).unwrap(), value);
        }
        assert!(decode::<Vec<u8>>(&[5, 1, 2]).is_err());
        assert!(decode::<Vec<u8>>(&[0xff; 12]).is_err());
    }
}
