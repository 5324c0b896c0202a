//! Driving a handshake [`Machine`] on a non-blocking socket: the step the
//! [`AuthenticatingListener`](crate::AuthenticatingListener) takes for each
//! pending connection.

use std::os::fd::BorrowedFd;

use crate::error::Error;
use crate::handshake::{FDS_DURING_HANDSHAKE, Handshake, Machine, PeerInfo};
use crate::inbound::{Fill, Inbound};
use crate::outbound::Outbound;
use crate::sys;

/// Where a handshake stands after [`advance`].
#[derive(Debug)]
pub(crate) enum Progress {
    /// It needs more bytes from the peer (the socket is drained).
    Waiting,
    /// The peer proved the key; the inbound is back to normal reading.
    Authenticated(PeerInfo),
    /// It failed; what the peer should hear is queued on the outbound.
    Failed(Error),
    /// The peer closed the connection before the end.
    PeerClosed,
}

/// The socket of one handshake and its buffers.
#[derive(Debug)]
pub(crate) struct Wire<'a> {
    pub(crate) fd: BorrowedFd<'a>,
    pub(crate) unix: bool,
    /// Input may be waiting; cleared once a read would block.
    pub(crate) readable: &'a mut bool,
    pub(crate) inbound: &'a mut Inbound,
    pub(crate) outbound: &'a mut Outbound,
}

/// Feeds `machine` every handshake frame buffered or readable without
/// blocking, queueing its answers on the outbound (the caller writes them).
pub(crate) fn advance(machine: &mut Machine, config: &Handshake, wire: Wire<'_>) -> Progress {
    loop {
        let outcome = match wire.inbound.next() {
            Ok(Some(received)) if !received.fds.is_empty() => {
                Some(Err(machine.unexpected(FDS_DURING_HANDSHAKE)))
            }
            Ok(Some(received)) => Some(machine.receive(config, received.message)),
            Ok(None) => None,
            Err(error) => Some(Err(read_failure(machine, error))),
        };
        if let Some(outcome) = outcome {
            queue_output(machine, wire.outbound, wire.unix);
            match outcome {
                Ok(None) => continue,
                Ok(Some(peer)) => {
                    return match wire.inbound.end_handshake() {
                        Ok(()) => Progress::Authenticated(peer),
                        Err(error) => Progress::Failed(error),
                    };
                }
                Err(error) => return Progress::Failed(error),
            }
        }
        if wire.inbound.at_eof() {
            return Progress::PeerClosed;
        }
        if !*wire.readable {
            return Progress::Waiting;
        }
        match wire.inbound.fill(wire.fd, sys::DONTWAIT) {
            Ok(Fill::Read(_) | Fill::Eof) => {}
            Ok(Fill::WouldBlock) => {
                *wire.readable = false;
                return Progress::Waiting;
            }
            Err(error) => {
                let error = read_failure(machine, error);
                queue_output(machine, wire.outbound, wire.unix);
                return Progress::Failed(error);
            }
        }
    }
}

/// A failure to read the peer's handshake: where it is the peer's fault
/// (bytes that do not decode, descriptors), the machine queues what the
/// peer should hear.
fn read_failure(machine: &mut Machine, error: Error) -> Error {
    match error {
        Error::Proto(error) => machine.malformed(error),
        Error::UnexpectedMessage(what) => machine.unexpected(&what),
        error => error,
    }
}

/// Moves what the machine wants to send onto the outbound.
pub(crate) fn queue_output(machine: &mut Machine, outbound: &mut Outbound, unix: bool) {
    for message in machine.outgoing() {
        if let Err(error) = outbound.push(&message, Vec::new(), unix) {
            log::error!("cannot encode a handshake message: {error}");
        }
    }
}
