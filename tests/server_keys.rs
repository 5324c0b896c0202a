//! What a client trusts: key files only if nobody else could have written or
//! read them, and unix-socket servers only if they run as this user or
//! root. The search order of keys is unit-tested beside `resolve_key`.

use processional::func;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use processional::{ClientBuilder, Error, KeyFileProblem, ServerBuilder, client, server};
use processional_tests::{KillOnDrop, PATIENCE, is_helper};

/// A fresh unix socket address in a private directory, and its key file.
fn unix_address() -> (String, PathBuf) {
    let address = processional::Address::private_unix().expect("a private socket path");
    let processional::Address::Unix(socket) = &address else {
        unreachable!("private_unix makes unix socket paths")
    };
    let mut key = socket.as_os_str().to_owned();
    key.push(".key");
    (address.to_string(), PathBuf::from(key))
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    // The owner of a file we just made is our effective user.
    let (_, key) = unix_address();
    std::fs::write(&key, b"").unwrap();
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&key).unwrap()) == 0;
    std::fs::remove_file(&key).unwrap();
    root
}

#[test]
fn a_key_file_beside_the_socket_open_to_others_is_refused() {
    let (address, key_file) = unix_address();
    let process = server(&address).expect("spawn");
    chmod(&key_file, 0o644);
    match client(&address) {
        Err(Error::UntrustedKeyFile { path, problem }) => {
            assert_eq!(path, key_file);
            assert_eq!(problem, KeyFileProblem::OpenToOthers { mode: 0o644 });
        }
        other => panic!("expected the key file refused, got {other:?}"),
    }
    chmod(&key_file, 0o600);
    let second = client(&address).expect("a private key file is used");
    assert_eq!(second.invoke(func!(|| 3u8)).unwrap(), 3);
    drop(process);
}

#[test]
fn a_key_file_of_another_user_is_refused() {
    if !is_root() {
        eprintln!("not root: cannot give a file to another user, skipped");
        return;
    }
    let (address, key_file) = unix_address();
    let process = server(&address).expect("spawn");
    std::os::unix::fs::chown(&key_file, Some(65534), Some(65534)).unwrap();
    match client(&address) {
        Err(Error::UntrustedKeyFile { path, problem }) => {
            assert_eq!(path, key_file);
            assert_eq!(
                problem,
                KeyFileProblem::NotOwned {
                    owner: 65534,
                    euid: 0
                }
            );
        }
        other => panic!("expected the key file refused, got {other:?}"),
    }
    std::os::unix::fs::chown(&key_file, Some(0), Some(0)).unwrap();
    assert!(client(&address).is_ok());
    drop(process);
}

#[test]
fn the_key_file_named_by_the_environment_is_checked_too() {
    let (address, key_file) = unix_address();
    let process = server(&address).expect("spawn");
    // The variable takes precedence over the file beside the socket; set it
    // in a slave so that this process's environment stays as it is.
    let named = key_file.with_extension("named");
    std::fs::copy(&key_file, &named).unwrap();
    chmod(&named, 0o640);
    let slave = processional::SlaveProcessBuilder::new()
        .env(processional::process::KEY_FILE_VAR, &named)
        .spawn()
        .expect("spawn a slave");
    fn connect(address: String) -> Result<u8, String> {
        processional::client(&address)
            .map(|c| c.invoke(func!(|| 4u8)).unwrap())
            .map_err(|e| format!("{e:?}"))
    }
    let refused = slave.invoke_with(address.clone(), func!(connect)).unwrap();
    let error = refused.expect_err("the key file is open to the group");
    assert!(
        error.contains("UntrustedKeyFile") && error.contains("OpenToOthers"),
        "{error}"
    );
    assert!(error.contains(named.to_str().unwrap()), "{error}");
    chmod(&named, 0o600);
    assert_eq!(slave.invoke_with(address, func!(connect)).unwrap(), Ok(4));
    std::fs::remove_file(&named).unwrap();
    drop(process);
}

#[test]
fn a_tcp_server_without_a_key_is_refused() {
    let error = ServerBuilder::new("tcp://127.0.0.1:0")
        .unwrap()
        .start()
        .expect_err("no key");
    assert!(matches!(error, Error::Auth { .. }), "{error:?}");
}

/// Where the server run by another user listens, and its key (in hex).
const OTHER_ADDRESS_VAR: &str = "PROCESSIONAL_OTHER_USER_ADDRESS";

#[test]
fn a_server_of_another_user_is_refused() {
    if is_helper() {
        // Runs as nobody: a server on an abstract socket, which any user
        // may bind, with the key it was given in PROCESSIONAL_KEY.
        let address = std::env::var(OTHER_ADDRESS_VAR).unwrap();
        let handle = ServerBuilder::new(&address)
            .unwrap()
            .persistent(true)
            .start()
            .expect("start the server");
        println!("server-listening");
        std::thread::sleep(PATIENCE);
        handle.stop();
        return;
    }
    if !is_root() {
        eprintln!("not root: cannot run a server as another user, skipped");
        return;
    }
    let key = processional::Key::generate();
    let address = format!("unix:@processional-other-user-{}", std::process::id());
    let mut command = std::process::Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([
            "--exact",
            "a_server_of_another_user_is_refused",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PROCESSIONAL_TEST_HELPER", "1")
        .env(processional::process::KEY_VAR, key.to_hex())
        .env(OTHER_ADDRESS_VAR, &address)
        .stdout(std::process::Stdio::piped())
        .uid(65534)
        .gid(65534);
    let mut helper = KillOnDrop(command.spawn().expect("spawn the helper as nobody"));
    let stdout = helper.0.stdout.take().unwrap();
    let listening = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest may print the test's name on the same line first.
        .any(|line| line.ends_with("server-listening"));
    assert!(listening, "the helper did not start its server");
    let result = ClientBuilder::new(&address).unwrap().key(key).connect();
    match result {
        Err(Error::UntrustedServer {
            address: named,
            uid,
            euid,
        }) => {
            assert_eq!(named, address);
            assert_eq!((uid, euid), (65534, 0));
        }
        other => panic!("expected the server refused, got {other:?}"),
    }
}

#[test]
fn a_spawned_unix_server_takes_the_key_of_the_environment() {
    if is_helper() {
        // PROCESSIONAL_KEY is set for this process alone: a client that
        // holds that key must get in, whatever file the server writes.
        let (address, _) = unix_address();
        let key = std::env::var("PROCESSIONAL_KEY").unwrap();
        let key = processional::Key::from_hex(&key).unwrap();
        let _server = server(&address).expect("spawn");
        match ClientBuilder::new(&address).unwrap().key(key).connect() {
            Ok(client) => println!("connected {}", client.invoke(func!(|| 5u8)).unwrap()),
            Err(error) => println!("refused {error:?}"),
        }
        return;
    }
    let key = processional::Key::generate().to_hex();
    let helper = processional_tests::spawn_helper(
        "a_spawned_unix_server_takes_the_key_of_the_environment",
        &[("PROCESSIONAL_KEY", key)],
    );
    let mut helper = KillOnDrop(helper);
    let mut seen = Vec::new();
    for line in BufReader::new(helper.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest prints the test's name first, on the same line.
        if line.contains("connected ") || line.contains("refused ") {
            assert!(
                line.ends_with("connected 5"),
                "the key was not used: {line}"
            );
            return;
        }
        seen.push(line);
    }
    panic!("the helper said neither: {seen:?}");
}
