//! Slaves and spawned servers are named in `ps` and `top`: their process
//! name (`/proc/<pid>/comm`) and their `argv[0]` (`/proc/<pid>/cmdline`) say
//! which program they belong to and what they are, and the rest of a slave's
//! arguments are its master's.

use processional::{SlaveProcessBuilder, func, server, slave};

/// `/proc/<pid>/comm`, without its newline.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_else(|error| panic!("reading /proc/{pid}/comm: {error}"))
        .trim_end_matches('\n')
        .to_owned()
}

/// `/proc/<pid>/cmdline`, split at its NULs.
fn cmdline(pid: u32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_else(|error| panic!("reading /proc/{pid}/cmdline: {error}"));
    bytes
        .split(|&byte| byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// What `ps -o <field>= -p <pid>` prints, if `ps` is installed (procps).
fn ps(field: &str, pid: u32) -> Option<String> {
    let output = std::process::Command::new("ps")
        .args(["-o", &format!("{field}="), "-p", &pid.to_string()])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// This test binary's file name, which titles start with.
fn program() -> String {
    std::env::current_exe()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// `<program> [<role>]` shortened to 15 bytes keeps the role whole.
fn assert_comm_names(comm: &str, role: &str) {
    assert!(comm.len() <= 15, "{comm:?}");
    assert!(
        comm.ends_with(']') && comm.contains(role),
        "{comm:?} should name {role}"
    );
    let prefix = comm.split(" [").next().unwrap();
    assert!(
        program().starts_with(prefix),
        "{comm:?} should start with the program {:?}",
        program()
    );
}

#[test]
fn a_slave_is_named_after_its_program_and_number() {
    let process = slave().unwrap();
    let pid = process.pid();
    // The slave has named itself once it answers.
    assert_eq!(process.invoke(func!(|| 1u8)).unwrap(), 1);
    assert_comm_names(&comm(pid), "[slave ");
    let argv0 = cmdline(pid).into_iter().next().expect("an argv[0]");
    // What `ps` shows, where it is installed: the name, not `exe`.
    if let Some(shown) = ps("comm", pid) {
        assert_eq!(shown, comm(pid));
    }
    if let Some(shown) = ps("args", pid) {
        assert!(shown.starts_with(&argv0), "{shown:?}");
    }
    assert!(
        argv0.starts_with(&format!("{} [slave ", program())) && argv0.ends_with(']'),
        "{argv0:?}"
    );
    // The slave sees the same title.
    let seen = process.invoke(func!(|| std::env::args().next())).unwrap();
    assert_eq!(seen.as_deref(), Some(argv0.as_str()));
}

#[test]
fn a_named_slave_takes_the_builder_s_name() {
    let process = SlaveProcessBuilder::new().name("resizer").spawn().unwrap();
    assert_eq!(process.invoke(func!(|| 2u8)).unwrap(), 2);
    assert_eq!(comm(process.pid()), "resizer");
    assert_eq!(cmdline(process.pid())[0], "resizer");
    let long = SlaveProcessBuilder::new()
        .name("thumbnail-resizer-for-uploads")
        .spawn()
        .unwrap();
    assert_eq!(long.invoke(func!(|| 3u8)).unwrap(), 3);
    assert_eq!(comm(long.pid()), "thumbnail-resiz");
    assert_eq!(cmdline(long.pid())[0], "thumbnail-resizer-for-uploads");
}

#[test]
fn a_slave_gets_its_master_s_arguments() {
    let ours: Vec<String> = std::env::args().skip(1).collect();
    let process = slave().unwrap();
    let theirs = process
        .invoke(func!(|| std::env::args().skip(1).collect::<Vec<String>>()))
        .unwrap();
    assert_eq!(theirs, ours);
    assert_eq!(cmdline(process.pid())[1..], ours[..]);
}

#[test]
fn a_spawned_server_is_named_a_server() {
    let dir = std::env::temp_dir().join(format!("processional-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let address = format!("unix:{}", dir.join("server.sock").display());
    let process = server(&address).unwrap();
    assert_eq!(process.invoke(func!(|| 4u8)).unwrap(), 4);
    assert_comm_names(&comm(process.pid()), "[server]");
    assert_eq!(cmdline(process.pid())[0], format!("{} [server]", program()));
    let _ = process.terminate(std::time::Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dir);
}
