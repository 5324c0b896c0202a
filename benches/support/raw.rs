//! The plainest ping-pong over a byte stream, used by the baselines.

use std::io::{self, Read, Write};

/// The size of one raw ping.
pub const PING_BYTES: usize = 8;

/// Sends `value` as [`PING_BYTES`] bytes and waits for them to come back.
pub fn round_trip_raw<S: Read + Write>(stream: &mut S, value: u64) -> io::Result<()> {
    let ping = value.to_le_bytes();
    stream.write_all(&ping)?;
    let mut pong = [0; PING_BYTES];
    stream.read_exact(&mut pong)?;
    if pong != ping {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("echo returned {pong:?} for {ping:?}"),
        ));
    }
    Ok(())
}

/// Writes back every [`PING_BYTES`] bytes it reads, until the other side
/// closes the stream.
pub fn echo_raw<S: Read + Write>(mut stream: S) -> io::Result<()> {
    let mut buffer = [0; PING_BYTES];
    loop {
        match stream.read_exact(&mut buffer) {
            Ok(()) => stream.write_all(&buffer)?,
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn round_trips_through_an_echo() {
        let (mut near, far) = UnixStream::pair().expect("socketpair");
        let echo = std::thread::spawn(move || echo_raw(far));
        for value in [0, 1, u64::MAX] {
            round_trip_raw(&mut near, value).expect("round trip");
        }
        drop(near);
        echo.join()
            .expect("echo thread")
            .expect("echo ends cleanly");
    }

    #[test]
    fn a_wrong_echo_is_an_error() {
        let (mut near, mut far) = UnixStream::pair().expect("socketpair");
        far.write_all(&[9; PING_BYTES]).expect("write");
        let error = round_trip_raw(&mut near, 1).expect_err("mismatch");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
