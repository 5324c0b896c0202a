//! What a client or server trusts: the key, from the API, the environment or
//! a key file (only one that nobody but this user can write or read), and
//! the owner of the server behind a unix socket.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use processional_task::{Error, KeyFileProblem};
use processional_transport::{Address, Key};

use crate::error::bad_key;
use crate::server::{KEY_FILE_VAR, KEY_VAR};
use crate::sys;

/// The key file a server writes beside its unix socket (mode 0600), so that
/// clients of the same user find it.
pub(crate) fn key_file_for(address: &Address) -> Option<PathBuf> {
    match address {
        Address::Unix(path) => {
            let mut name = path.as_os_str().to_owned();
            name.push(".key");
            Some(PathBuf::from(name))
        }
        _ => None,
    }
}

/// Whether a file with this owner and mode may hold a key for a process of
/// effective user `euid`: only if that user owns it and neither its group
/// nor others have any permission on it.
pub(crate) fn check_key_file(owner: u32, mode: u32, euid: u32) -> Result<(), KeyFileProblem> {
    if owner != euid {
        return Err(KeyFileProblem::NotOwned { owner, euid });
    }
    if mode & 0o077 != 0 {
        return Err(KeyFileProblem::OpenToOthers {
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Reads the key for `peer` in the file at `path`, after checking (on the opened file,
/// so the check and the read see the same file) that nobody but this user
/// could have written or read it.
pub(crate) fn read_key_file(path: &Path, peer: &str) -> Result<Key, Error> {
    let context = || format!("cannot read the key file {}", path.display());
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(context(), e))?;
    let meta = file.metadata().map_err(|e| Error::io(context(), e))?;
    check_key_file(meta.uid(), meta.mode(), sys::euid()).map_err(|problem| {
        Error::UntrustedKeyFile {
            path: path.to_owned(),
            problem,
        }
    })?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| Error::io(context(), e))?;
    Key::from_hex(text.trim()).map_err(|e| bad_key(peer, path.display().to_string(), e))
}

/// Writes `key` to a new file at `path` with mode 0600 (replacing a file
/// left there).
pub(crate) fn write_key_file(path: &Path, key: &Key) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    // `create_new` (O_EXCL) follows no symlink planted at `path`.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("cannot write the key file {}", path.display()), e))?;
    file.write_all(key.to_hex().as_bytes())
        .map_err(|e| Error::io(format!("cannot write the key file {}", path.display()), e))
}

/// Finds the key for `address`: the explicit one, else `PROCESSIONAL_KEY`,
/// else the file named by `PROCESSIONAL_KEY_FILE`, else (unix sockets) the
/// key file beside the socket.
pub(crate) fn resolve_key(explicit: Option<&Key>, address: &Address) -> Result<Option<Key>, Error> {
    resolve_key_from(
        explicit,
        std::env::var_os(KEY_VAR).as_deref(),
        std::env::var_os(KEY_FILE_VAR).as_deref(),
        address,
    )
}

/// The key a server about to be spawned at `address` is given: the explicit
/// one, else `PROCESSIONAL_KEY`, else the file named by
/// `PROCESSIONAL_KEY_FILE`; `None` means a fresh one. A key file left
/// beside the socket by an earlier server does not bind a new one.
pub(crate) fn configured_key(
    explicit: Option<&Key>,
    address: &Address,
) -> Result<Option<Key>, Error> {
    configured_key_from(
        explicit,
        std::env::var_os(KEY_VAR).as_deref(),
        std::env::var_os(KEY_FILE_VAR).as_deref(),
        address,
    )
}

fn configured_key_from(
    explicit: Option<&Key>,
    key_var: Option<&OsStr>,
    key_file_var: Option<&OsStr>,
    address: &Address,
) -> Result<Option<Key>, Error> {
    if let Some(key) = explicit {
        return Ok(Some(key.clone()));
    }
    if let Some(hex) = key_var {
        let hex = hex.to_string_lossy();
        return Key::from_hex(hex.trim())
            .map(Some)
            .map_err(|e| bad_key(address.to_string(), KEY_VAR, e));
    }
    if let Some(path) = key_file_var {
        return read_key_file(Path::new(path), &address.to_string()).map(Some);
    }
    Ok(None)
}

/// [`resolve_key`] with the values of `PROCESSIONAL_KEY` and
/// `PROCESSIONAL_KEY_FILE` given.
fn resolve_key_from(
    explicit: Option<&Key>,
    key_var: Option<&OsStr>,
    key_file_var: Option<&OsStr>,
    address: &Address,
) -> Result<Option<Key>, Error> {
    if let Some(key) = configured_key_from(explicit, key_var, key_file_var, address)? {
        return Ok(Some(key));
    }
    if let Some(path) = key_file_for(address)
        && path.exists()
    {
        return read_key_file(&path, &address.to_string()).map(Some);
    }
    Ok(None)
}

/// Whether a server running as `uid` may serve a client running as `euid`:
/// only this same user, or root (who could read our keys anyway).
pub(crate) fn is_trusted_server_uid(uid: u32, euid: u32) -> bool {
    uid == euid || uid == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyFileProblem::OpenToOthers;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory of this test process.
    fn scratch() -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "processional-trust-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn key_file(dir: &Path, name: &str, key: &Key, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, key.to_hex()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn the_key_is_searched_in_the_api_then_the_variables_then_beside_the_socket() {
        let dir = scratch();
        let (api, var, file, beside) = (
            Key::generate(),
            Key::generate(),
            Key::generate(),
            Key::generate(),
        );
        let file_path = key_file(&dir, "named.key", &file, 0o600);
        key_file(&dir, "server.sock.key", &beside, 0o600);
        let unix = Address::Unix(dir.join("server.sock"));
        let var_hex = var.to_hex();
        let (var_hex, file_path) = (OsStr::new(&var_hex), file_path.as_os_str());

        let found = |explicit, key_var, key_file_var, address: &Address| {
            resolve_key_from(explicit, key_var, key_file_var, address)
                .unwrap()
                .expect("a key")
        };
        assert_eq!(
            found(Some(&api), Some(var_hex), Some(file_path), &unix),
            api
        );
        // The API wins even over a broken variable.
        assert_eq!(found(Some(&api), Some(OsStr::new("zz")), None, &unix), api);
        assert_eq!(found(None, Some(var_hex), Some(file_path), &unix), var);
        assert_eq!(found(None, None, Some(file_path), &unix), file);
        assert_eq!(found(None, None, None, &unix), beside);

        // No key file beside a TCP address or a missing socket's key file.
        let tcp = Address::tcp("127.0.0.1", 1);
        assert!(resolve_key_from(None, None, None, &tcp).unwrap().is_none());
        let elsewhere = Address::Unix(dir.join("other.sock"));
        assert!(
            resolve_key_from(None, None, None, &elsewhere)
                .unwrap()
                .is_none()
        );
        // A broken variable is an error, not a reason to look further.
        assert!(matches!(
            resolve_key_from(None, Some(OsStr::new("zz")), Some(file_path), &unix),
            Err(Error::Auth {
                failure: processional_task::AuthFailure::BadKey { origin, .. },
                ..
            }) if origin == KEY_VAR
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_files_must_be_this_users_and_closed_to_others() {
        assert_eq!(check_key_file(1000, 0o100600, 1000), Ok(()));
        assert_eq!(check_key_file(1000, 0o400, 1000), Ok(()));
        assert_eq!(check_key_file(1000, 0o700, 1000), Ok(()));
        assert_eq!(
            check_key_file(0, 0o600, 1000),
            Err(KeyFileProblem::NotOwned {
                owner: 0,
                euid: 1000
            })
        );
        for mode in [0o640, 0o604, 0o610, 0o601, 0o100644, 0o666] {
            assert_eq!(
                check_key_file(1000, mode, 1000),
                Err(KeyFileProblem::OpenToOthers {
                    mode: mode & 0o7777
                }),
                "{mode:o}"
            );
        }
    }

    fn assert_untrusted(result: Result<Option<Key>, Error>, file: &Path, expected: KeyFileProblem) {
        match result {
            Err(Error::UntrustedKeyFile { path, problem }) => {
                assert_eq!(path, file);
                assert_eq!(problem, expected);
            }
            other => panic!("expected {} refused, got {other:?}", file.display()),
        }
    }

    #[test]
    fn a_key_file_open_to_others_is_refused_by_name_wherever_it_is_found() {
        let dir = scratch();
        let key = Key::generate();
        let open = OpenToOthers { mode: 0o644 };
        let named = key_file(&dir, "named.key", &key, 0o644);
        let tcp = Address::tcp("127.0.0.1", 1);
        assert_untrusted(
            resolve_key_from(None, None, Some(named.as_os_str()), &tcp),
            &named,
            open,
        );
        let beside = key_file(&dir, "server.sock.key", &key, 0o640);
        let unix = Address::Unix(dir.join("server.sock"));
        assert_untrusted(
            resolve_key_from(None, None, None, &unix),
            &beside,
            OpenToOthers { mode: 0o640 },
        );
        std::fs::set_permissions(&beside, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            resolve_key_from(None, None, None, &unix).unwrap(),
            Some(key)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_key_file_of_another_user_is_refused() {
        let dir = scratch();
        let path = key_file(&dir, "theirs.key", &Key::generate(), 0o600);
        if sys::euid() != 0 {
            // Only root can give a file away; the rule itself is checked
            // in `key_files_must_be_this_users_and_closed_to_others`.
            eprintln!("not root: cannot make a file of another user, skipped");
            std::fs::remove_dir_all(&dir).unwrap();
            return;
        }
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        match read_key_file(&path, "unix:/test.sock") {
            Err(Error::UntrustedKeyFile {
                path: named,
                problem:
                    KeyFileProblem::NotOwned {
                        owner: 65534,
                        euid: 0,
                    },
            }) => assert_eq!(named, path),
            other => panic!("expected a key file of another user refused, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_this_user_or_root_is_a_trusted_server() {
        assert!(is_trusted_server_uid(1000, 1000));
        assert!(is_trusted_server_uid(0, 1000));
        assert!(is_trusted_server_uid(0, 0));
        assert!(!is_trusted_server_uid(1001, 1000));
        assert!(!is_trusted_server_uid(65534, 0));
    }
}
