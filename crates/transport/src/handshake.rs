//! Mutual authentication and compatibility check of two peers.
//!
//! The protocol is a state machine without I/O ([`Machine`]), driven by the
//! blocking [`Connection::handshake`](crate::Connection::handshake) and by the
//! non-blocking [`AuthenticatingListener`](crate::AuthenticatingListener) alike. The transcript is
//! documented in the crate docs.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use processional_proto::{
    Challenge, Hello, Message, Proof, ProtoError, RefusalReason, RemoteError, RemoteErrorKind, Role,
};

use crate::error::Error;
use crate::key::Key;
use crate::sys;

/// Which end of the connection this side is. The handshake is symmetric:
/// both sides send and check the same messages; the side only names the
/// peer in diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Opened the connection.
    Initiator,
    /// Accepted the connection.
    Acceptor,
}

/// What this side brings to a handshake: the key, how it introduces itself,
/// the roles it accepts from the peer, and how long it waits.
///
/// ```
/// use std::time::Duration;
/// use processional_transport::{Handshake, Key};
///
/// # use processional_proto::{Fingerprint, Hello, Role, PROTOCOL_VERSION};
/// # let hello = |role| Hello {
/// #     protocol: PROTOCOL_VERSION,
/// #     fingerprint: Fingerprint([1; 32]),
/// #     role,
/// #     pid: std::process::id(),
/// #     host: "localhost".into(),
/// #     program: "example".into(),
/// # };
/// let mut handshake = Handshake::new(Key::generate(), hello(Role::Client));
/// handshake.accept_roles = vec![Role::Server]; // a client talks to servers only
/// handshake.timeout = Some(Duration::from_secs(5));
/// # drop(handshake);
/// ```
/// See [`Connection`](crate::Connection) for a whole handshake.
#[derive(Clone, Debug)]
pub struct Handshake {
    /// The shared secret both sides must hold.
    pub key: Key,
    /// Who this side is; `hello.protocol` must equal the peer's, and so must
    /// `hello.fingerprint` unless one side is a [`Role::DataClient`].
    pub hello: Hello,
    /// The roles accepted from the peer; empty accepts any.
    pub accept_roles: Vec<Role>,
    /// Bounds the whole handshake; `None` waits forever (the
    /// [`AuthenticatingListener`](crate::AuthenticatingListener) then uses
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub timeout: Option<Duration>,
}

/// The handshake timeout the authenticating listener uses
/// when [`Handshake::timeout`] is `None`: unauthenticated peers must not
/// hold resources forever.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Handshake {
    /// A handshake accepting any role, with a timeout of
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub fn new(key: Key, hello: Hello) -> Handshake {
        Handshake {
            key,
            hello,
            accept_roles: Vec::new(),
            timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
        }
    }
}

/// Why a handshake fails when the peer sends file descriptors: no
/// handshake message carries any, and an unauthenticated peer must not
/// make this process hold descriptors.
pub(crate) const FDS_DURING_HANDSHAKE: &str = "file descriptors arrived during the handshake";

/// What a successful handshake learned about the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's hello; its key is proven, so these claims come from a key
    /// holder.
    pub hello: Hello,
}

/// The two challenge nonces, agreed on before the connection is used, over a
/// channel only the two peers can read (say, the private bootstrap a master
/// writes to the child it spawned). With them each side can prove the key
/// without waiting for the other's challenge, which makes the
/// [pipelined handshake](crate::Connection::handshake_pipelined) possible.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AgreedNonces {
    /// The initiator's challenge.
    pub initiator: [u8; 32],
    /// The acceptor's challenge.
    pub acceptor: [u8; 32],
}

impl std::fmt::Debug for AgreedNonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgreedNonces(..)")
    }
}

impl AgreedNonces {
    /// Two fresh random nonces.
    pub fn generate() -> std::io::Result<AgreedNonces> {
        let mut nonces = AgreedNonces {
            initiator: [0; 32],
            acceptor: [0; 32],
        };
        sys::random_bytes(&mut nonces.initiator)?;
        sys::random_bytes(&mut nonces.acceptor)?;
        Ok(nonces)
    }
}

/// Nonces of the handshakes running in this process. A peer that claims our
/// own role and whose challenge repeats one of them is reflecting a challenge
/// of ours back at us, to make us compute the proof it owes: refused.
static LIVE_NONCES: Mutex<Vec<[u8; 32]>> = Mutex::new(Vec::new());

/// A fresh nonce, registered in [`LIVE_NONCES`] for as long as it lives.
#[derive(Debug)]
struct Nonce([u8; 32]);

impl Nonce {
    fn fresh() -> std::io::Result<Nonce> {
        let mut bytes = [0u8; 32];
        sys::random_bytes(&mut bytes)?;
        LIVE_NONCES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(bytes);
        Ok(Nonce(bytes))
    }

    fn is_live(nonce: &[u8; 32]) -> bool {
        LIVE_NONCES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(nonce)
    }
}

impl Drop for Nonce {
    fn drop(&mut self) {
        let mut live = LIVE_NONCES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = live.iter().position(|nonce| *nonce == self.0) {
            live.swap_remove(index);
        }
    }
}

/// The next message the machine expects from the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Hello,
    Challenge,
    Proof,
    Accepted,
    Done,
    Failed,
}

/// The handshake of one connection, without I/O: feed it the peer's
/// messages, send what it queues.
#[derive(Debug)]
pub(crate) struct Machine {
    side: Side,
    nonce: Nonce,
    /// The challenges were agreed beforehand (pipelined handshake):
    /// `peer_nonce` holds the peer's from the start.
    pipelined: bool,
    state: State,
    peer: Option<Hello>,
    peer_nonce: [u8; 32],
    outgoing: Vec<Message>,
}

impl Machine {
    /// Starts a handshake: queues our Hello and Challenge.
    pub(crate) fn new(side: Side, config: &Handshake) -> std::io::Result<Machine> {
        let nonce = Nonce::fresh()?;
        let outgoing = vec![
            Message::Hello(config.hello.clone()),
            Message::Challenge(Challenge { nonce: nonce.0 }),
        ];
        Ok(Machine {
            side,
            nonce,
            pipelined: false,
            state: State::Hello,
            peer: None,
            peer_nonce: [0; 32],
            outgoing,
        })
    }

    /// Starts a pipelined handshake with agreed nonces: queues our Hello,
    /// Challenge and Proof at once. The peer's challenge must then be the
    /// agreed one, and this side is done as soon as the peer's proof checks.
    pub(crate) fn pipelined(side: Side, config: &Handshake, nonces: &AgreedNonces) -> Machine {
        let (own, peer) = match side {
            Side::Initiator => (nonces.initiator, nonces.acceptor),
            Side::Acceptor => (nonces.acceptor, nonces.initiator),
        };
        let mac = config.key.prove(config.hello.role, &peer, &own);
        Machine {
            side,
            // Not registered as live: nobody can reflect a nonce that never
            // went over the wire before the peer proved itself.
            nonce: Nonce(own),
            pipelined: true,
            state: State::Hello,
            peer: None,
            peer_nonce: peer,
            outgoing: vec![
                Message::Hello(config.hello.clone()),
                Message::Challenge(Challenge { nonce: own }),
                Message::Proof(Proof { mac }),
            ],
        }
    }

    /// Whether the challenges were agreed beforehand.
    pub(crate) fn is_pipelined(&self) -> bool {
        self.pipelined
    }

    /// The messages to send now, in order.
    pub(crate) fn outgoing(&mut self) -> std::vec::Drain<'_, Message> {
        self.outgoing.drain(..)
    }

    /// Whether the handshake ended (either way).
    #[cfg(test)]
    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.state, State::Done | State::Failed)
    }

    fn finish(&mut self) -> Result<Option<PeerInfo>, Error> {
        self.state = State::Done;
        let hello = self
            .peer
            .take()
            .ok_or_else(|| Error::UnexpectedMessage("handshake finished without a hello".into()))?;
        Ok(Some(PeerInfo { hello }))
    }

    /// Handles one message of the peer. `Ok(Some(_))`: the handshake
    /// succeeded; `Err(_)`: it failed, and the refusal to send (if any) is
    /// queued.
    pub(crate) fn receive(
        &mut self,
        config: &Handshake,
        message: Message,
    ) -> Result<Option<PeerInfo>, Error> {
        match (self.state, message) {
            (State::Done | State::Failed, message) => Err(Error::UnexpectedMessage(format!(
                "{} after the handshake ended",
                message.name()
            ))),
            (_, Message::Refused { reason, detail }) => {
                self.state = State::Failed;
                Err(Error::Refused { reason, detail })
            }
            (State::Hello, Message::Hello(hello)) => {
                self.check_hello(config, &hello)?;
                self.peer = Some(hello);
                self.state = State::Challenge;
                Ok(None)
            }
            (State::Challenge, Message::Challenge(challenge)) if self.pipelined => {
                if challenge.nonce != self.peer_nonce {
                    return Err(self.refuse(
                        RefusalReason::UnexpectedMessage,
                        "the challenge is not the agreed one".into(),
                        Error::UnexpectedMessage(
                            "the peer's challenge is not the agreed one".into(),
                        ),
                    ));
                }
                // Our proof already went out with our hello.
                self.state = State::Proof;
                Ok(None)
            }
            (State::Challenge, Message::Challenge(challenge)) => {
                // A reflection only helps a peer claiming our own role (the
                // proof binds the prover's role); two ends of a legitimate
                // connection inside one process have different roles.
                let same_role = self
                    .peer
                    .as_ref()
                    .is_some_and(|peer| peer.role == config.hello.role);
                if same_role && Nonce::is_live(&challenge.nonce) {
                    return Err(self.refuse(
                        RefusalReason::UnexpectedMessage,
                        "the challenge repeats a nonce of this process".into(),
                        Error::UnexpectedMessage("the peer reflected one of our challenges".into()),
                    ));
                }
                self.peer_nonce = challenge.nonce;
                let mac = config
                    .key
                    .prove(config.hello.role, &self.peer_nonce, &self.nonce.0);
                self.outgoing.push(Message::Proof(Proof { mac }));
                self.state = State::Proof;
                Ok(None)
            }
            (State::Proof, Message::Proof(proof)) => {
                let peer_role = self.peer.as_ref().map_or(Role::Client, |peer| peer.role);
                if !config
                    .key
                    .verify(peer_role, &self.nonce.0, &self.peer_nonce, &proof.mac)
                {
                    return Err(self.refuse(
                        RefusalReason::WrongKey,
                        format!(
                            "{} could not verify the proof of the shared key: the keys differ",
                            describe(&config.hello)
                        ),
                        Error::WrongKey,
                    ));
                }
                self.outgoing.push(Message::Accepted);
                if self.side == Side::Initiator || self.pipelined {
                    // The acceptor proved the key and runs a compatible
                    // build: we may start sending. Its own verdict on our
                    // proof arrives as the first frame after the handshake
                    // (it processes nothing of ours before that verdict).
                    return self.finish();
                }
                self.state = State::Accepted;
                Ok(None)
            }
            (State::Accepted, Message::Accepted) => self.finish(),
            (state, message) => {
                let detail = format!(
                    "expected {:?} from the {}, got {}",
                    state,
                    match self.side {
                        Side::Initiator => "acceptor",
                        Side::Acceptor => "initiator",
                    },
                    message.name()
                );
                Err(self.refuse(
                    RefusalReason::UnexpectedMessage,
                    detail.clone(),
                    Error::UnexpectedMessage(detail),
                ))
            }
        }
    }

    fn check_hello(&mut self, config: &Handshake, peer: &Hello) -> Result<(), Error> {
        let ours = &config.hello;
        if peer.protocol != ours.protocol {
            return Err(self.refuse(
                RefusalReason::ProtocolVersion,
                format!(
                    "{} speaks protocol version {}, {} speaks version {}",
                    describe(ours),
                    ours.protocol,
                    describe(peer),
                    peer.protocol
                ),
                Error::ProtocolVersion {
                    ours: ours.protocol,
                    theirs: peer.protocol,
                },
            ));
        }
        if !config.accept_roles.is_empty() && !config.accept_roles.contains(&peer.role) {
            return Err(self.refuse(
                RefusalReason::WrongRole,
                format!(
                    "{} accepts peers with role {:?}, but {} has role {:?}",
                    describe(ours),
                    config.accept_roles,
                    describe(peer),
                    peer.role
                ),
                Error::WrongRole {
                    theirs: peer.role,
                    accepted: config.accept_roles.clone(),
                },
            ));
        }
        // A data client ships no code and runs none of its peer's: it may
        // run another build. Whether it is welcome is the role check's call.
        let shares_code = peer.role != Role::DataClient && ours.role != Role::DataClient;
        if shares_code && peer.fingerprint != ours.fingerprint {
            let detail = format!(
                "build mismatch: {} has fingerprint {}, {} has fingerprint {}; both sides must run the same build",
                describe(ours),
                ours.fingerprint,
                describe(peer),
                peer.fingerprint
            );
            return Err(self.refuse(
                RefusalReason::WrongFingerprint,
                detail.clone(),
                Error::Fingerprint {
                    ours: ours.fingerprint,
                    theirs: peer.fingerprint,
                    detail,
                },
            ));
        }
        Ok(())
    }

    /// Fails the handshake: queues a refusal for the peer, returns `error`.
    fn refuse(&mut self, reason: RefusalReason, detail: String, error: Error) -> Error {
        self.state = State::Failed;
        self.outgoing.push(Message::Refused { reason, detail });
        error
    }

    /// Fails the handshake because the peer's bytes did not decode: queues
    /// what the peer should hear.
    pub(crate) fn malformed(&mut self, error: ProtoError) -> Error {
        self.state = State::Failed;
        if let ProtoError::Version { ours, theirs } = error {
            self.outgoing.push(Message::Refused {
                reason: RefusalReason::ProtocolVersion,
                detail: format!("this side speaks protocol version {ours}, the peer's frames have version {theirs}"),
            });
            return Error::ProtocolVersion { ours, theirs };
        }
        self.outgoing.push(Message::Error(RemoteError {
            kind: RemoteErrorKind::Other,
            message: format!("malformed frame during the handshake: {error}"),
            location: None,
            backtrace: None,
        }));
        Error::Proto(error)
    }

    /// Fails the handshake because of a message that has no place in it.
    pub(crate) fn unexpected(&mut self, what: &str) -> Error {
        self.refuse(
            RefusalReason::UnexpectedMessage,
            what.to_owned(),
            Error::UnexpectedMessage(what.to_owned()),
        )
    }
}

/// Names a program in diagnostics: `"name" (pid N on host)`.
fn describe(hello: &Hello) -> String {
    format!("{:?} (pid {} on {})", hello.program, hello.pid, hello.host)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use processional_proto::{Fingerprint, PROTOCOL_VERSION};

    pub(crate) fn hello(role: Role, program: &str) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            fingerprint: Fingerprint([7; 32]),
            role,
            pid: std::process::id(),
            host: "testhost".into(),
            program: program.into(),
        }
    }

    /// Runs two machines against each other in memory.
    fn run(a: &Handshake, b: &Handshake) -> (Result<PeerInfo, Error>, Result<PeerInfo, Error>) {
        let mut ma = Machine::new(Side::Initiator, a).unwrap();
        let mut mb = Machine::new(Side::Acceptor, b).unwrap();
        let mut ra = None;
        let mut rb = None;
        for _ in 0..10 {
            let to_b: Vec<_> = ma.outgoing().collect();
            let to_a: Vec<_> = mb.outgoing().collect();
            for message in to_b {
                if rb.is_none() {
                    rb = mb.receive(b, message).transpose();
                }
            }
            for message in to_a {
                if ra.is_none() {
                    ra = ma.receive(a, message).transpose();
                }
            }
            if ra.is_some() && rb.is_some() {
                break;
            }
        }
        (ra.unwrap(), rb.unwrap())
    }

    #[test]
    fn same_key_succeeds() {
        let key = Key::generate();
        let a = Handshake::new(key.clone(), hello(Role::Client, "client"));
        let b = Handshake::new(key, hello(Role::Server, "server"));
        let (ra, rb) = run(&a, &b);
        assert_eq!(ra.unwrap().hello.program, "server");
        assert_eq!(rb.unwrap().hello.program, "client");
    }

    #[test]
    fn wrong_key_fails_both_sides() {
        let a = Handshake::new(Key::generate(), hello(Role::Client, "client"));
        let b = Handshake::new(Key::generate(), hello(Role::Server, "server"));
        let (ra, rb) = run(&a, &b);
        assert!(matches!(ra, Err(Error::WrongKey)), "{ra:?}");
        assert!(matches!(rb, Err(Error::WrongKey)), "{rb:?}");
    }

    #[test]
    fn fingerprint_mismatch_names_both() {
        let key = Key::generate();
        let a = Handshake::new(key.clone(), hello(Role::Client, "alpha"));
        let mut other = hello(Role::Server, "beta");
        other.fingerprint = Fingerprint([9; 32]);
        let b = Handshake::new(key, other);
        let (ra, _) = run(&a, &b);
        match ra {
            Err(Error::Fingerprint {
                ours,
                theirs,
                detail,
            }) => {
                assert_eq!(ours, Fingerprint([7; 32]));
                assert_eq!(theirs, Fingerprint([9; 32]));
                for needle in ["alpha", "beta", "0707070707070707", "0909090909090909"] {
                    assert!(detail.contains(needle), "{detail}");
                }
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_data_client_may_run_another_build_but_must_hold_the_key() {
        let key = Key::generate();
        let mut server = Handshake::new(key.clone(), hello(Role::Server, "server"));
        server.accept_roles = vec![Role::Client, Role::DataClient];
        let mut data = hello(Role::DataClient, "inspector");
        data.fingerprint = Fingerprint([9; 32]);
        let (rd, rs) = run(&Handshake::new(key.clone(), data.clone()), &server);
        assert_eq!(rs.expect("server side").hello.role, Role::DataClient);
        assert_eq!(rd.expect("data client side").hello.role, Role::Server);

        // Another build as a plain client is still refused.
        let mut client = hello(Role::Client, "other build");
        client.fingerprint = Fingerprint([9; 32]);
        let (_, rs) = run(&Handshake::new(key, client), &server);
        assert!(matches!(rs, Err(Error::Fingerprint { .. })), "{rs:?}");
        // And without the key, a data client gets nowhere.
        let (_, rs) = run(&Handshake::new(Key::generate(), data), &server);
        assert!(matches!(rs, Err(Error::WrongKey)), "{rs:?}");
    }

    #[test]
    fn version_and_role_checks() {
        let key = Key::generate();
        let a = Handshake::new(key.clone(), hello(Role::Client, "a"));
        let mut newer = hello(Role::Server, "b");
        newer.protocol += 1;
        let b = Handshake::new(key.clone(), newer);
        let (ra, _) = run(&a, &b);
        assert!(matches!(ra, Err(Error::ProtocolVersion { ours, theirs }) if theirs == ours + 1));

        let mut strict = Handshake::new(key.clone(), hello(Role::Server, "server"));
        strict.accept_roles = vec![Role::Client];
        let slave = Handshake::new(key, hello(Role::Slave, "slave"));
        let (ra, rb) = run(&strict, &slave);
        assert!(
            matches!(
                ra,
                Err(Error::WrongRole {
                    theirs: Role::Slave,
                    ..
                })
            ),
            "{ra:?}"
        );
        assert!(
            matches!(
                rb,
                Err(Error::Refused {
                    reason: RefusalReason::WrongRole,
                    ..
                })
            ),
            "{rb:?}"
        );
    }

    #[test]
    fn reflected_challenge_is_refused() {
        let key = Key::generate();
        let config = Handshake::new(key, hello(Role::Server, "server"));
        // The attacker got this nonce from another handshake of the victim.
        let other = Machine::new(Side::Acceptor, &config).unwrap();
        let mut victim = Machine::new(Side::Acceptor, &config).unwrap();
        victim.outgoing().for_each(drop);
        assert!(
            victim
                .receive(&config, Message::Hello(hello(Role::Server, "x")))
                .unwrap()
                .is_none()
        );
        let result = victim.receive(
            &config,
            Message::Challenge(Challenge {
                nonce: other.nonce.0,
            }),
        );
        assert!(
            matches!(result, Err(Error::UnexpectedMessage(_))),
            "{result:?}"
        );
        assert!(
            victim
                .outgoing()
                .all(|m| matches!(m, Message::Refused { .. }))
        );
    }

    #[test]
    fn messages_out_of_order_are_refused() {
        let config = Handshake::new(Key::generate(), hello(Role::Server, "server"));
        let mut machine = Machine::new(Side::Acceptor, &config).unwrap();
        machine.outgoing().for_each(drop);
        let result = machine.receive(&config, Message::Ping(1));
        assert!(
            matches!(result, Err(Error::UnexpectedMessage(_))),
            "{result:?}"
        );
        assert!(machine.is_finished());
        let queued: Vec<_> = machine.outgoing().collect();
        assert!(matches!(
            queued[..],
            [Message::Refused {
                reason: RefusalReason::UnexpectedMessage,
                ..
            }]
        ));
    }
}
