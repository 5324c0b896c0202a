//! Incremental decoding of a byte stream into frames.

use crate::error::ProtoError;
use crate::header::{DEFAULT_MAX_FRAME, FrameHeader, HEADER_LEN};
use crate::message::Message;

/// The read size a [`Decoder`] plans for: the space it offers beyond what the
/// frame being received still needs, so one read can finish a frame and catch
/// the start of the next ones.
pub const READ_CHUNK: usize = 64 << 10;

/// The size of the first allocation of a decoder's buffer.
const INITIAL_BUFFER: usize = 8 << 10;

/// A buffer longer than this is released when it drains completely, so one
/// big frame does not pin its memory for the rest of the connection.
const SHRINK_ABOVE: usize = 1 << 20;

/// A decoded frame: its header and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The header; `header.fd_count` file descriptors arrived with the frame.
    pub header: FrameHeader,
    /// The payload.
    pub message: Message,
}

/// Turns a byte stream, received in chunks of any size, into [`Frame`]s.
///
/// Bytes go in either by copy, with [`feed`](Self::feed), or without a copy:
/// the transport reads straight into [`spare_capacity`](Self::spare_capacity)
/// and then [`commit`](Self::commit)s how many bytes it read. Frames come out
/// of [`next_frame`](Self::next_frame) (or [`next`](Self::next) for just the
/// message) until it returns `Ok(None)`, which means more bytes are needed.
///
/// ```
/// use processional_proto::{Decoder, Message, READ_CHUNK, encode};
///
/// let mut wire = Vec::new();
/// encode(&Message::Ping(1), &mut wire)?;
/// encode(&Message::Ping(2), &mut wire)?;
/// let mut socket = &wire[..]; // stands for a non-blocking socket
///
/// let mut decoder = Decoder::new();
/// let mut received = Vec::new();
/// while !socket.is_empty() {
///     // A transport would call `read(2)` on the spare capacity.
///     let spare = decoder.spare_capacity(READ_CHUNK);
///     let n = spare.len().min(socket.len());
///     spare[..n].copy_from_slice(&socket[..n]);
///     socket = &socket[n..];
///     decoder.commit(n);
///     while let Some(frame) = decoder.next_frame()? {
///         received.push(frame.message);
///     }
/// }
/// assert_eq!(received, [Message::Ping(1), Message::Ping(2)]);
/// # Ok::<(), processional_proto::ProtoError>(())
/// ```
///
/// # Bounded memory
///
/// The buffer grows geometrically with the bytes actually received, never
/// beyond what the frame being received needs plus [`READ_CHUNK`]. A header
/// announcing a payload longer than the maximum frame size is refused as soon
/// as its 12 bytes are in, before anything is allocated for the payload, so a
/// peer cannot make the decoder allocate much more than twice what it really
/// sent (plus one [`READ_CHUNK`]).
///
/// Driven through `spare_capacity`/`commit` with frames drained after every
/// commit, the buffer never exceeds [`max_capacity`](Self::max_capacity)
/// (`max_frame + HEADER_LEN + READ_CHUNK`) bytes. `feed` must store what it is
/// given, so the same bound holds for it when the fed chunks are at most
/// [`READ_CHUNK`] bytes and frames are drained between feeds.
///
/// Consumed bytes are reclaimed without copying when the buffer drains, and
/// otherwise by moving the unconsumed tail to the front when space runs out
/// (at most once per buffer-full, never once per frame). A buffer grown past
/// 1 MiB for a big frame is released when it drains.
///
/// # Errors and poisoning
///
/// A malformed header or payload returns its error from `next_frame` (or
/// `next`) and poisons the decoder: its buffer is released, every later call
/// to `next_frame` or `next` returns the same error again, `feed` and
/// `commit` ignore their input and `spare_capacity` returns an empty slice.
/// The stream has lost its framing (or the peer is broken), so the transport
/// must close the connection. A `commit` of more bytes than the last
/// `spare_capacity` handed out poisons the decoder with
/// [`ProtoError::Poisoned`]. No input makes the decoder panic.
pub struct Decoder {
    /// Received bytes live in `buf[start..end]`; `buf[end..]` is spare
    /// capacity, zero-initialized or stale. `start <= end <= buf.len()`.
    buf: Vec<u8>,
    /// Where the first unconsumed byte is.
    start: usize,
    /// Where the received bytes end.
    end: usize,
    /// The largest payload accepted, at most `u32::MAX`.
    max_frame: usize,
    /// The validated header of the frame at `start`, once its bytes are in.
    head: Option<FrameHeader>,
    /// The error that poisoned the decoder; `buf` is empty when set.
    error: Option<ProtoError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("buffered", &self.buffered())
            .field("capacity", &self.buf.capacity())
            .field("max_frame", &self.max_frame)
            .field("head", &self.head)
            .field("error", &self.error)
            .finish()
    }
}

impl Decoder {
    /// A decoder accepting payloads of up to [`DEFAULT_MAX_FRAME`] bytes.
    /// Allocates nothing until bytes arrive.
    pub fn new() -> Self {
        Self::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A decoder accepting payloads of up to `max_frame` bytes (values above
    /// `u32::MAX`, the largest length a header can announce, act as
    /// `u32::MAX`).
    pub fn with_max_frame(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_frame: max_frame.min(u32::MAX as usize),
            head: None,
            error: None,
        }
    }

    /// The largest payload this decoder accepts, in bytes.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// How many received bytes are not consumed yet.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Whether no received byte is waiting: the stream is between frames.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The bytes currently allocated for the buffer.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The bound on [`capacity`](Self::capacity) (see the type's
    /// documentation for when it holds): `max_frame + HEADER_LEN + READ_CHUNK`.
    pub fn max_capacity(&self) -> usize {
        self.max_frame
            .saturating_add(HEADER_LEN)
            .saturating_add(READ_CHUNK)
    }

    /// The error that poisoned the decoder, if any.
    pub fn error(&self) -> Option<&ProtoError> {
        self.error.as_ref()
    }

    /// Appends received bytes.
    ///
    /// Ignored once the decoder is poisoned.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.error.is_some() || bytes.is_empty() {
            return;
        }
        if self.buf.len() - self.end < bytes.len() {
            let Ok(frame_len) = self.head_frame_len() else {
                return;
            };
            self.make_room(bytes.len(), frame_len, false);
        }
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Writable space at the end of the buffer for a transport to read into;
    /// report how much it wrote with [`commit`](Self::commit).
    ///
    /// The slice has at least `min(min, READ_CHUNK)` bytes, and may be longer
    /// when the buffer already has room. To make room the decoder first moves
    /// the unconsumed bytes to the front, then grows its buffer
    /// geometrically, never beyond what the frame being received needs plus
    /// [`READ_CHUNK`]. Asking for [`READ_CHUNK`] is the usual choice: however
    /// much is asked, allocation follows the bytes actually received.
    ///
    /// The slice can be shorter than asked, even empty, only when the decoder
    /// is poisoned, or when the buffer already holds complete frames and has
    /// reached [`max_capacity`](Self::max_capacity): drain them with
    /// [`next_frame`](Self::next_frame) after every commit.
    pub fn spare_capacity(&mut self, min: usize) -> &mut [u8] {
        let Ok(frame_len) = self.head_frame_len() else {
            return &mut [];
        };
        let wanted = min.min(READ_CHUNK);
        if self.buf.len() - self.end < wanted {
            self.make_room(wanted, frame_len, true);
        }
        &mut self.buf[self.end..]
    }

    /// Marks the first `n` bytes of the last [`spare_capacity`](Self::spare_capacity)
    /// slice as received.
    ///
    /// Committing more bytes than that slice held poisons the decoder with
    /// [`ProtoError::Poisoned`]. Ignored once the decoder is poisoned.
    pub fn commit(&mut self, n: usize) {
        if self.error.is_some() {
            return;
        }
        if n > self.buf.len() - self.end {
            self.poison(ProtoError::Poisoned);
            return;
        }
        self.end += n;
    }

    /// The next complete frame, or `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    ///
    /// Any header error of [`FrameHeader::decode`], or
    /// [`ProtoError::Payload`] if the payload is not exactly one valid
    /// [`Message`]. The decoder is then poisoned: this and every later call
    /// return the same error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        let Some(header) = self.parse_head()? else {
            return Ok(None);
        };
        let body_start = self.start + HEADER_LEN;
        let body_end = body_start.saturating_add(header.len as usize);
        if body_end > self.end {
            return Ok(None);
        }
        let message = match decode_message(&self.buf[body_start..body_end]) {
            Ok(message) => message,
            Err(error) => return Err(self.poison(error)),
        };
        self.head = None;
        self.start = body_end;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > SHRINK_ABOVE {
                self.buf = Vec::new();
            }
        }
        Ok(Some(Frame { header, message }))
    }

    /// The message of the next complete frame, or `Ok(None)` if more bytes
    /// are needed; the frame's header is dropped (use
    /// [`next_frame`](Self::next_frame) when descriptors travel with frames).
    ///
    /// # Errors
    ///
    /// As [`next_frame`](Self::next_frame).
    #[expect(
        clippy::should_implement_trait,
        reason = "a fallible pull, not an Iterator: Ok(None) means \"need more bytes\", not the end"
    )]
    pub fn next(&mut self) -> Result<Option<Message>, ProtoError> {
        Ok(self.next_frame()?.map(|frame| frame.message))
    }

    /// The validated header of the frame at `start`, parsing it if its bytes
    /// are in; poisons the decoder if it is invalid.
    fn parse_head(&mut self) -> Result<Option<FrameHeader>, ProtoError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        if self.head.is_some() {
            return Ok(self.head);
        }
        let Some(bytes) = self.buf[self.start..self.end].first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        match FrameHeader::decode(bytes, self.max_frame) {
            Ok(header) => {
                self.head = Some(header);
                Ok(self.head)
            }
            Err(error) => Err(self.poison(error)),
        }
    }

    /// The size of the frame at `start`: known once its header is in, else
    /// just the header's.
    fn head_frame_len(&mut self) -> Result<usize, ProtoError> {
        Ok(self
            .parse_head()?
            .map_or(HEADER_LEN, |header| header.frame_len()))
    }

    /// Ensures `buf.len() - end >= extra`, except that with `capped` the
    /// buffer does not grow beyond [`max_capacity`](Self::max_capacity).
    /// `frame_len` is the size of the frame at `start`.
    fn make_room(&mut self, extra: usize, frame_len: usize, capped: bool) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end >= extra {
                return;
            }
        }
        let limit = self.max_capacity();
        let mut needed = self.end.saturating_add(extra);
        if capped {
            needed = needed.min(limit);
        }
        if needed <= self.buf.len() {
            return;
        }
        // Grow geometrically, but only as far as the frame being received
        // (and whatever else is already buffered) plus one read chunk.
        let useful = (self.end.max(frame_len) + READ_CHUNK).min(limit);
        let doubled = (self.buf.len() * 2).max(INITIAL_BUFFER);
        let new_len = doubled.min(useful).max(needed);
        // Drop the stale spare bytes first so a reallocation copies only the
        // received ones.
        self.buf.truncate(self.end);
        self.buf.reserve_exact(new_len - self.end);
        self.buf.resize(new_len, 0);
    }

    /// Records `error`, releases the buffer and returns the error.
    fn poison(&mut self, error: ProtoError) -> ProtoError {
        self.buf = Vec::new();
        self.start = 0;
        self.end = 0;
        self.head = None;
        self.error = Some(error.clone());
        error
    }
}

/// Decodes a payload that must be exactly one message.
fn decode_message(payload: &[u8]) -> Result<Message, ProtoError> {
    match postcard::take_from_bytes::<Message>(payload) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(ProtoError::Payload(format!(
            "{} unexpected bytes after the message",
            rest.len()
        ))),
        Err(error) => Err(ProtoError::Payload(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::encode::{encode, encode_with_fds};
    use crate::header::{FLAG_FDS, MAGIC, PROTOCOL_VERSION};
    use crate::message::{Call, FunctionRef, Payload, RunMode};
    use crate::strategy;

    fn frames_of(messages: &[Message]) -> Vec<u8> {
        let mut wire = Vec::new();
        for message in messages {
            encode(message, &mut wire).unwrap();
        }
        wire
    }

    fn drain(decoder: &mut Decoder, into: &mut Vec<Message>) -> Result<(), ProtoError> {
        while let Some(message) = decoder.next()? {
            into.push(message);
        }
        Ok(())
    }

    /// Feeds `wire` cut after each of `cuts` (offsets, any order, clamped),
    /// draining after every chunk and checking the memory bound.
    fn decode_fed(
        decoder: &mut Decoder,
        wire: &[u8],
        cuts: &[usize],
    ) -> Result<Vec<Message>, ProtoError> {
        let mut cuts: Vec<usize> = cuts.iter().map(|&cut| cut.min(wire.len())).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut received = Vec::new();
        let mut from = 0;
        for cut in cuts {
            decoder.feed(&wire[from..cut]);
            if cut - from <= READ_CHUNK {
                assert!(decoder.capacity() <= decoder.max_capacity());
            }
            from = cut;
            drain(decoder, &mut received)?;
        }
        Ok(received)
    }

    /// Delivers `wire` through `spare_capacity`/`commit`, the transport way,
    /// in reads of the given sizes (cycled), checking the memory bound.
    fn decode_read(
        decoder: &mut Decoder,
        mut wire: &[u8],
        reads: &[usize],
    ) -> Result<Vec<Message>, ProtoError> {
        let mut received = Vec::new();
        let mut sizes = reads.iter().copied().cycle();
        while !wire.is_empty() {
            let ask = sizes.next().unwrap_or(READ_CHUNK).max(1);
            let spare = decoder.spare_capacity(ask);
            let n = spare.len().min(ask).min(wire.len());
            spare[..n].copy_from_slice(&wire[..n]);
            assert!(decoder.capacity() <= decoder.max_capacity());
            if n == 0 {
                // Frames are drained after every read: only a poisoned
                // decoder refuses room.
                return Err(decoder.next_frame().unwrap_err());
            }
            wire = &wire[n..];
            decoder.commit(n);
            drain(decoder, &mut received)?;
            assert!(decoder.capacity() <= decoder.max_capacity());
        }
        Ok(received)
    }

    fn call(task: u64, args: Vec<u8>) -> Message {
        Message::Call(Call {
            task,
            function: FunctionRef {
                offset: -4096,
                signature: 0xfeed_f00d,
            },
            mode: RunMode::Queued,
            args: Payload::Inline(args),
        })
    }

    fn small_call(task: u64) -> Message {
        call(task, vec![7; 24])
    }

    #[test]
    fn round_trips_every_variant() {
        for message in strategy::every_variant() {
            let mut wire = Vec::new();
            encode(&message, &mut wire).unwrap();
            let mut decoder = Decoder::new();
            decoder.feed(&wire);
            let frame = decoder.next_frame().unwrap().unwrap();
            assert_eq!(frame.message, message);
            assert_eq!(frame.header.fd_count, 0);
            assert_eq!(frame.header.len as usize, wire.len() - HEADER_LEN);
            assert!(decoder.is_empty());
            assert_eq!(decoder.next_frame(), Ok(None));
        }
    }

    #[test]
    fn carries_the_fd_count() {
        let mut wire = Vec::new();
        encode_with_fds(&small_call(1), 3, &mut wire).unwrap();
        encode(&small_call(2), &mut wire).unwrap();
        let mut decoder = Decoder::new();
        decoder.feed(&wire);
        let first = decoder.next_frame().unwrap().unwrap();
        assert_eq!((first.header.flags, first.header.fd_count), (FLAG_FDS, 3));
        let second = decoder.next_frame().unwrap().unwrap();
        assert_eq!((second.header.flags, second.header.fd_count), (0, 0));
    }

    #[test]
    fn one_byte_at_a_time_and_all_at_once_agree() {
        let messages = strategy::every_variant();
        let wire = frames_of(&messages);
        let mut one_by_one = Decoder::new();
        let mut received = Vec::new();
        for byte in &wire {
            one_by_one.feed(std::slice::from_ref(byte));
            drain(&mut one_by_one, &mut received).unwrap();
        }
        assert_eq!(received, messages);
        let mut at_once = Decoder::new();
        assert_eq!(decode_fed(&mut at_once, &wire, &[]).unwrap(), messages);
        let mut read = Decoder::new();
        assert_eq!(decode_read(&mut read, &wire, &[1]).unwrap(), messages);
    }

    #[test]
    fn refuses_a_4_gib_header_before_allocating() {
        let header = FrameHeader::new(u32::MAX, 0).unwrap().encode();
        let expected = ProtoError::FrameTooLarge {
            len: u32::MAX.into(),
            max: DEFAULT_MAX_FRAME,
        };

        let mut fed = Decoder::new();
        fed.feed(&header);
        assert_eq!(fed.next_frame(), Err(expected.clone()));
        assert_eq!(fed.capacity(), 0, "poisoning releases the buffer");

        let mut read = Decoder::new();
        let spare = read.spare_capacity(HEADER_LEN);
        spare[..HEADER_LEN].copy_from_slice(&header);
        read.commit(HEADER_LEN);
        assert!(read.capacity() <= INITIAL_BUFFER);
        // The next request for room finds the header and refuses it.
        assert!(read.spare_capacity(READ_CHUNK).is_empty());
        assert_eq!(read.capacity(), 0);
        assert_eq!(read.next_frame(), Err(expected));
    }

    #[test]
    fn a_big_announced_frame_costs_only_what_arrives() {
        let header = FrameHeader::new(60 << 20, 0).unwrap().encode();
        let mut decoder = Decoder::new();
        decoder.feed(&header);
        for _ in 0..300 {
            let spare = decoder.spare_capacity(1024);
            assert!(spare.len() >= 1024);
            spare[..1024].fill(0xaa);
            decoder.commit(1024);
            assert_eq!(decoder.next_frame(), Ok(None));
            let bound = (2 * (decoder.buffered() + 1024)).max(INITIAL_BUFFER);
            assert!(decoder.capacity() <= bound, "{decoder:?}");
        }
        assert_eq!(decoder.buffered(), HEADER_LEN + 300 * 1024);
    }

    #[test]
    fn errors_poison_the_decoder() {
        let mut wire = frames_of(&[Message::Accepted]);
        let good = wire.len();
        wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut decoder = Decoder::new();
        decoder.feed(&wire);
        assert_eq!(decoder.next(), Ok(Some(Message::Accepted)));
        let error = ProtoError::BadMagic { found: *b"GET " };
        assert_eq!(decoder.next(), Err(error.clone()));
        assert_eq!(decoder.error(), Some(&error));
        // Everything afterwards repeats the error and ignores input.
        decoder.feed(&wire[..good]);
        decoder.commit(5);
        assert!(decoder.spare_capacity(100).is_empty());
        assert_eq!(decoder.buffered(), 0);
        assert_eq!(decoder.next_frame(), Err(error.clone()));
        assert_eq!(decoder.next(), Err(error));
    }

    #[test]
    fn refuses_other_versions() {
        let mut wire = frames_of(&[Message::Accepted]);
        let theirs = PROTOCOL_VERSION + 1;
        wire[4..6].copy_from_slice(&theirs.to_le_bytes());
        let mut decoder = Decoder::new();
        decoder.feed(&wire);
        assert_eq!(
            decoder.next(),
            Err(ProtoError::Version {
                ours: PROTOCOL_VERSION,
                theirs
            })
        );
    }

    #[test]
    fn refuses_malformed_payloads() {
        // An unknown variant index.
        let mut wire = FrameHeader::new(1, 0).unwrap().encode().to_vec();
        wire.push(200);
        let mut decoder = Decoder::new();
        decoder.feed(&wire);
        assert!(matches!(decoder.next(), Err(ProtoError::Payload(_))));

        // A valid message followed by stray bytes inside the frame.
        let mut payload = postcard::to_stdvec(&Message::Ping(5)).unwrap();
        payload.push(0);
        let mut wire = FrameHeader::new(payload.len() as u32, 0)
            .unwrap()
            .encode()
            .to_vec();
        wire.extend_from_slice(&payload);
        let mut decoder = Decoder::new();
        decoder.feed(&wire);
        assert_eq!(
            decoder.next(),
            Err(ProtoError::Payload(
                "1 unexpected bytes after the message".into()
            ))
        );

        // A string whose length runs past the end of the frame.
        let mut wire = FrameHeader::new(3, 0).unwrap().encode().to_vec();
        // Refused { reason: ProtocolVersion, detail: a string of 127 bytes… }
        wire.extend_from_slice(&[4, 0, 0x7f]);
        let mut decoder = Decoder::new();
        decoder.feed(&wire);
        assert!(matches!(decoder.next(), Err(ProtoError::Payload(_))));
    }

    #[test]
    fn over_committing_poisons() {
        let mut decoder = Decoder::new();
        let room = decoder.spare_capacity(16).len();
        decoder.commit(room + 1);
        assert_eq!(decoder.next_frame(), Err(ProtoError::Poisoned));
        assert_eq!(decoder.next_frame(), Err(ProtoError::Poisoned));
    }

    #[test]
    fn honours_a_custom_limit() {
        let big = call(1, vec![1; 200]);
        let wire = frames_of(std::slice::from_ref(&big));
        let len = (wire.len() - HEADER_LEN) as u64;
        let mut tight = Decoder::with_max_frame(100);
        tight.feed(&wire);
        assert_eq!(
            tight.next(),
            Err(ProtoError::FrameTooLarge { len, max: 100 })
        );
        let mut exact = Decoder::with_max_frame(len as usize);
        exact.feed(&wire);
        assert_eq!(exact.next(), Ok(Some(big)));
        assert_eq!(
            Decoder::with_max_frame(usize::MAX).max_frame(),
            u32::MAX as usize
        );
    }

    #[test]
    fn steady_small_frames_keep_a_small_buffer() {
        let messages: Vec<Message> = (0..20_000).map(small_call).collect();
        let wire = frames_of(&messages);
        let mut decoder = Decoder::new();
        let received = decode_read(&mut decoder, &wire, &[READ_CHUNK]).unwrap();
        assert_eq!(received, messages);
        let largest_frame = wire.len() / messages.len();
        assert!(decoder.capacity() <= largest_frame + READ_CHUNK);
    }

    #[test]
    fn big_frames_grow_then_release_the_buffer() {
        let big = |seed: u8| {
            Message::Reply(crate::message::Reply {
                task: seed.into(),
                outcome: crate::message::Outcome::Value(Payload::Inline(
                    (0..3_000_000u32).map(|i| i as u8 ^ seed).collect(),
                )),
            })
        };
        let messages = vec![big(1), Message::Accepted, big(2)];
        let wire = frames_of(&messages);
        let mut decoder = Decoder::new();
        let received = decode_read(&mut decoder, &wire, &[READ_CHUNK, 100, 7]).unwrap();
        assert_eq!(received, messages);
        assert!(decoder.is_empty());
        assert_eq!(decoder.capacity(), 0, "drained big buffer is released");

        let mut fed = Decoder::new();
        let cuts: Vec<usize> = (0..wire.len()).step_by(READ_CHUNK).collect();
        assert_eq!(decode_fed(&mut fed, &wire, &cuts).unwrap(), messages);
    }

    #[test]
    fn spare_capacity_never_exceeds_the_limit_with_undrained_frames() {
        let mut decoder = Decoder::with_max_frame(64);
        let wire = frames_of(&vec![Message::Ping(1); 100_000]);
        let mut offset = 0;
        // Never drains: room runs out at the limit instead of growing.
        loop {
            let spare = decoder.spare_capacity(4096);
            if spare.is_empty() {
                break;
            }
            let n = spare.len().min(wire.len() - offset);
            spare[..n].copy_from_slice(&wire[offset..offset + n]);
            offset += n;
            decoder.commit(n);
            assert!(decoder.capacity() <= decoder.max_capacity());
        }
        assert_eq!(decoder.buffered(), decoder.max_capacity());
        let mut received = Vec::new();
        drain(&mut decoder, &mut received).unwrap();
        assert!(received.iter().all(|message| *message == Message::Ping(1)));
        assert!(!decoder.spare_capacity(4096).is_empty());
    }

    #[test]
    fn spare_capacity_grows_with_the_data_not_with_the_request() {
        let mut decoder = Decoder::new();
        assert_eq!(decoder.spare_capacity(usize::MAX).len(), READ_CHUNK);

        let message = call(3, vec![0x42; 1 << 20]);
        let wire = frames_of(std::slice::from_ref(&message));
        let mut rest = &wire[..];
        let mut received = Vec::new();
        while !rest.is_empty() {
            let spare = decoder.spare_capacity(usize::MAX);
            assert!(spare.len() >= READ_CHUNK);
            let n = spare.len().min(rest.len());
            spare[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            decoder.commit(n);
            drain(&mut decoder, &mut received).unwrap();
            // Allocation follows the bytes received, however much is asked.
            assert!(decoder.capacity() <= 2 * (decoder.buffered() + READ_CHUNK));
            assert!(decoder.capacity() <= wire.len() + READ_CHUNK);
        }
        assert_eq!(received, [message]);
    }

    #[test]
    fn debug_shows_state_not_bytes() {
        let mut decoder = Decoder::new();
        decoder.feed(&MAGIC);
        let shown = format!("{decoder:?}");
        assert!(shown.contains("buffered: 4"), "{shown}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any split of a stream of frames decodes to the frames' messages,
        /// by feeding or by reading into spare capacity.
        #[test]
        fn any_split_decodes_the_same(
            messages in prop::collection::vec(strategy::message(), 1..8),
            cuts in prop::collection::vec(any::<usize>(), 0..16),
            reads in prop::collection::vec(1..200usize, 1..8),
        ) {
            let wire = frames_of(&messages);
            let cuts: Vec<usize> = cuts.iter().map(|cut| cut % (wire.len() + 1)).collect();
            let mut fed = Decoder::new();
            prop_assert_eq!(&decode_fed(&mut fed, &wire, &cuts).unwrap(), &messages);
            prop_assert!(fed.is_empty());
            let mut read = Decoder::new();
            prop_assert_eq!(&decode_read(&mut read, &wire, &reads).unwrap(), &messages);
            prop_assert!(read.is_empty());
        }

        /// Arbitrary bytes (including frames with plausible headers and
        /// garbage payloads) in arbitrary chunks never panic and never grow
        /// the buffer beyond its bound.
        #[test]
        fn arbitrary_input_is_harmless(
            pieces in prop::collection::vec(strategy::hostile_piece(), 0..12),
            chunks in prop::collection::vec(0..3000usize, 1..12),
            max_frame in prop::sample::select(vec![0usize, 16, 1000, DEFAULT_MAX_FRAME]),
        ) {
            let wire = pieces.concat();
            let cuts: Vec<usize> = chunks
                .iter()
                .scan(0, |at, chunk| { *at += chunk; Some(*at) })
                .collect();
            let fed = decode_fed(&mut Decoder::with_max_frame(max_frame), &wire, &cuts);
            let read = decode_read(&mut Decoder::with_max_frame(max_frame), &wire, &chunks);
            // Both paths agree on what the bytes mean.
            prop_assert_eq!(fed, read);
        }

        /// A header announcing 4 GiB is refused as soon as it is complete,
        /// however it is split, and nothing is allocated for its payload.
        #[test]
        fn a_4_gib_header_is_refused_before_allocation(
            split in 0..=HEADER_LEN,
            fds in 0..=1u8,
            trailing in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let header = FrameHeader::new(u32::MAX, fds).unwrap().encode();
            let mut decoder = Decoder::new();
            decoder.feed(&header[..split]);
            if split < HEADER_LEN {
                prop_assert_eq!(decoder.next_frame(), Ok(None));
            }
            let spare = decoder.spare_capacity(HEADER_LEN - split);
            spare[..HEADER_LEN - split].copy_from_slice(&header[split..]);
            decoder.commit(HEADER_LEN - split);
            prop_assert!(decoder.capacity() <= INITIAL_BUFFER);
            decoder.feed(&trailing);
            prop_assert!(decoder.capacity() <= INITIAL_BUFFER);
            let refused = ProtoError::FrameTooLarge { len: u32::MAX.into(), max: DEFAULT_MAX_FRAME };
            prop_assert_eq!(decoder.next_frame(), Err(refused));
            prop_assert_eq!(decoder.capacity(), 0);
        }
    }
}
