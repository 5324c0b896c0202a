//! Test-only message samples and proptest strategies.

use proptest::prelude::*;

use crate::encode::encode_with_fds;
use crate::header::{FrameHeader, HEADER_LEN, MAGIC, PROTOCOL_VERSION};
use crate::message::*;

/// One value of every variant of [`Message`], covering every variant of the
/// types inside, with edge values.
pub(crate) fn every_variant() -> Vec<Message> {
    let fingerprint = Fingerprint(std::array::from_fn(|i| i as u8));
    let remote_error = RemoteError {
        kind: RemoteErrorKind::Panicked,
        message: "attempt to divide by zero ∅".into(),
        location: Some("src/main.rs:3:5".into()),
        backtrace: Some("0: main\n1: start".into()),
    };
    let mut messages = vec![
        Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            fingerprint,
            role: Role::Master,
            pid: u32::MAX,
            host: "host.example".into(),
            program: "ünïcode program".into(),
        }),
        Message::Challenge(Challenge { nonce: [0xa5; 32] }),
        Message::Proof(Proof { mac: [0x5a; 32] }),
        Message::Accepted,
        Message::Call(Call {
            task: 0,
            function: FunctionRef {
                offset: i64::MIN,
                signature: u64::MAX,
            },
            mode: RunMode::Queued,
            args: Payload::Inline(Vec::new()),
        }),
        Message::Call(Call {
            task: u64::MAX,
            function: FunctionRef {
                offset: -123_456,
                signature: 42,
            },
            mode: RunMode::Thread,
            args: Payload::Segment {
                fd: 0,
                len: u64::MAX,
            },
        }),
        Message::Reply(Reply {
            task: 1,
            outcome: Outcome::Value(Payload::Inline(vec![0, 1, 2, 255])),
        }),
        Message::Reply(Reply {
            task: 2,
            outcome: Outcome::Value(Payload::Segment { fd: 3, len: 4096 }),
        }),
        Message::Reply(Reply {
            task: 3,
            outcome: Outcome::Error(remote_error.clone()),
        }),
        Message::Release { object: 77 },
        Message::Cancel { task: 78 },
        Message::Shutdown,
        Message::ShutdownAck,
        Message::Ping(0),
        Message::Pong(u64::MAX),
        Message::Error(RemoteError {
            kind: RemoteErrorKind::Other,
            message: String::new(),
            location: None,
            backtrace: None,
        }),
        Message::Item {
            task: 4,
            payload: Payload::Inline(vec![9, 8, 7]),
        },
        Message::Item {
            task: u64::MAX,
            payload: Payload::Segment {
                fd: 1,
                len: 1 << 20,
            },
        },
        Message::Credit { task: 4, items: 0 },
        Message::Credit {
            task: u64::MAX,
            items: u32::MAX,
        },
        Message::ServiceCall(ServiceCall {
            task: 5,
            service: "processional.example.v1.get".into(),
            args: Payload::Inline(vec![1, 2]),
        }),
        Message::Reclaim { task: 5 },
    ];
    for role in [Role::Slave, Role::Client, Role::Server, Role::DataClient] {
        messages.push(Message::Hello(Hello {
            protocol: 0,
            fingerprint: Fingerprint::default(),
            role,
            pid: 0,
            host: String::new(),
            program: String::new(),
        }));
    }
    for reason in [
        RefusalReason::ProtocolVersion,
        RefusalReason::WrongKey,
        RefusalReason::WrongFingerprint,
        RefusalReason::UnexpectedMessage,
        RefusalReason::WrongRole,
    ] {
        messages.push(Message::Refused {
            reason,
            detail: format!("refused: {reason:?}"),
        });
    }
    for kind in [
        RemoteErrorKind::Cancelled,
        RemoteErrorKind::Codec,
        RemoteErrorKind::InvalidFunction,
        RemoteErrorKind::UnknownObject,
        RemoteErrorKind::WrongObjectType,
        RemoteErrorKind::Stopped,
        RemoteErrorKind::NotFound,
        RemoteErrorKind::Overloaded,
    ] {
        messages.push(Message::Error(RemoteError {
            kind,
            ..remote_error.clone()
        }));
    }
    messages
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..48),
        // Now and then a payload bigger than a read chunk, built cheaply.
        1 => (any::<u8>(), 0..150_000usize)
            .prop_map(|(seed, len)| (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        bytes().prop_map(Payload::Inline),
        (any::<u32>(), any::<u64>()).prop_map(|(fd, len)| Payload::Segment { fd, len }),
    ]
}

fn remote_error() -> impl Strategy<Value = RemoteError> {
    let kind = prop::sample::select(vec![
        RemoteErrorKind::Panicked,
        RemoteErrorKind::Cancelled,
        RemoteErrorKind::Codec,
        RemoteErrorKind::InvalidFunction,
        RemoteErrorKind::UnknownObject,
        RemoteErrorKind::WrongObjectType,
        RemoteErrorKind::Stopped,
        RemoteErrorKind::NotFound,
        RemoteErrorKind::Other,
        RemoteErrorKind::Overloaded,
    ]);
    (
        kind,
        text(),
        prop::option::of(text()),
        prop::option::of(text()),
    )
        .prop_map(|(kind, message, location, backtrace)| RemoteError {
            kind,
            message,
            location,
            backtrace,
        })
}

/// Any [`Message`].
pub(crate) fn message() -> impl Strategy<Value = Message> {
    let role = prop::sample::select(vec![
        Role::Master,
        Role::Slave,
        Role::Client,
        Role::Server,
        Role::DataClient,
    ]);
    let hello = (
        any::<u16>(),
        any::<[u8; 32]>(),
        role,
        any::<u32>(),
        text(),
        text(),
    )
        .prop_map(|(protocol, fingerprint, role, pid, host, program)| {
            Message::Hello(Hello {
                protocol,
                fingerprint: Fingerprint(fingerprint),
                role,
                pid,
                host,
                program,
            })
        });
    let reason = prop::sample::select(vec![
        RefusalReason::ProtocolVersion,
        RefusalReason::WrongKey,
        RefusalReason::WrongFingerprint,
        RefusalReason::UnexpectedMessage,
        RefusalReason::WrongRole,
    ]);
    let mode = prop::sample::select(vec![RunMode::Queued, RunMode::Thread]);
    let call = (any::<u64>(), any::<i64>(), any::<u64>(), mode, payload()).prop_map(
        |(task, offset, signature, mode, args)| {
            Message::Call(Call {
                task,
                function: FunctionRef { offset, signature },
                mode,
                args,
            })
        },
    );
    let outcome = prop_oneof![
        payload().prop_map(Outcome::Value),
        remote_error().prop_map(Outcome::Error),
    ];
    let reply =
        (any::<u64>(), outcome).prop_map(|(task, outcome)| Message::Reply(Reply { task, outcome }));
    prop_oneof![
        1 => hello,
        1 => any::<[u8; 32]>().prop_map(|nonce| Message::Challenge(Challenge { nonce })),
        1 => any::<[u8; 32]>().prop_map(|mac| Message::Proof(Proof { mac })),
        1 => Just(Message::Accepted),
        1 => (reason, text()).prop_map(|(reason, detail)| Message::Refused { reason, detail }),
        3 => call,
        3 => reply,
        1 => any::<u64>().prop_map(|object| Message::Release { object }),
        1 => any::<u64>().prop_map(|task| Message::Cancel { task }),
        1 => Just(Message::Shutdown),
        1 => Just(Message::ShutdownAck),
        1 => any::<u64>().prop_map(Message::Ping),
        1 => any::<u64>().prop_map(Message::Pong),
        1 => remote_error().prop_map(Message::Error),
        3 => (any::<u64>(), payload()).prop_map(|(task, payload)| Message::Item { task, payload }),
        1 => (any::<u64>(), any::<u32>()).prop_map(|(task, items)| Message::Credit { task, items }),
        2 => (any::<u64>(), text(), payload())
            .prop_map(|(task, service, args)| Message::ServiceCall(ServiceCall { task, service, args })),
        1 => any::<u64>().prop_map(|task| Message::Reclaim { task }),
    ]
}

/// A piece of a hostile stream: a valid frame, a frame with a plausible
/// header and a garbage payload, a header with random fields, or random
/// bytes.
pub(crate) fn hostile_piece() -> impl Strategy<Value = Vec<u8>> {
    let garbage = || prop::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        3 => (message(), 0..3u8).prop_map(|(message, fds)| {
            let mut frame = Vec::new();
            encode_with_fds(&message, fds, &mut frame).unwrap();
            frame
        }),
        1 => garbage().prop_map(|payload| {
            let mut frame = FrameHeader::new(payload.len() as u32, 0)
                .unwrap()
                .encode()
                .to_vec();
            frame.extend_from_slice(&payload);
            frame
        }),
        1 => (
            any::<u8>(),
            any::<u8>(),
            prop_oneof![0..200u32, any::<u32>()],
            garbage()
        )
            .prop_map(|(flags, fd_count, len, tail)| {
                let header = FrameHeader {
                    version: PROTOCOL_VERSION,
                    flags,
                    fd_count,
                    len,
                };
                let mut piece = header.encode().to_vec();
                piece.extend_from_slice(&tail);
                piece
            }),
        1 => (any::<[u8; HEADER_LEN - 4]>(), any::<bool>(), garbage()).prop_map(
            |(fields, magic, tail)| {
                let mut piece = if magic { MAGIC.to_vec() } else { Vec::new() };
                piece.extend_from_slice(&fields);
                piece.extend_from_slice(&tail);
                piece
            }
        ),
        1 => garbage(),
    ]
}
