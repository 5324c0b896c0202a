//! Helpers shared by the integration tests.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use processional_proto::{Fingerprint, Hello, PROTOCOL_VERSION, Role};
use processional_transport::{Handshake, Key};

/// Every wait in the tests is bounded by this, so nothing hangs.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn hello(role: Role, program: &str) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        fingerprint: Fingerprint([0x42; 32]),
        role,
        pid: std::process::id(),
        host: "testhost".into(),
        program: program.into(),
    }
}

pub fn config(key: &Key, role: Role, program: &str) -> Handshake {
    let mut config = Handshake::new(key.clone(), hello(role, program));
    config.timeout = Some(PATIENCE);
    config
}
