//! Lifetimes of spawned servers without races: a new client keeps a
//! non-persistent server alive even if the master leaves right after it
//! connected.

use std::path::PathBuf;

use processional::{client, server};
use processional_tests::{PATIENCE, process_exists, wait_until};

/// A fresh unix socket address in a private directory, its socket path and
/// the path of the key file beside it.
fn unix_address() -> (String, PathBuf, PathBuf) {
    let address = processional::Address::private_unix().expect("a private socket path");
    let processional::Address::Unix(socket) = &address else {
        unreachable!("private_unix makes unix socket paths")
    };
    let mut key = socket.as_os_str().to_owned();
    key.push(".key");
    (address.to_string(), socket.clone(), PathBuf::from(key))
}

#[test]
fn a_new_client_keeps_a_non_persistent_server_when_the_master_leaves_at_once() {
    for round in 0..50u32 {
        let (address, _, _) = unix_address();
        let master = server(&address).expect("spawn the server");
        let pid = master.pid();
        let second = client(&address).expect("connect a second client");
        drop(master);
        let answer = second.invoke_with(round, |x: u32| x + 1);
        assert_eq!(
            answer.as_ref().ok(),
            Some(&(round + 1)),
            "round {round}: the server stopped under its new client: {answer:?}"
        );
        drop(second);
        assert!(
            wait_until(PATIENCE, || !process_exists(pid)),
            "round {round}: server {pid} still runs after its last client left"
        );
    }
}
