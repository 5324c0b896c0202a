//! Acceptance tests of the capability rule: a connection may use only the
//! objects it holds, and each server has its own objects and names.

use processional::func;
use processional::{ClientBuilder, Error, Remote, RemoteErrorKind, ServerBuilder, client, server};
use serde::de::Deserializer;
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// A fresh unix socket address in a private directory.
fn unix_address(tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("processional-caps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    format!("unix:{}/{tag}.sock", dir.display())
}

/// What a hostile client sends: the wire form of a `Remote` naming object
/// `id` of the server, whichever connection holds it. The server decodes it
/// as the `Remote` it claims to be.
enum Forged {
    /// Sent: the id named.
    Id(u64),
    /// Received: the handle the server resolved it to.
    Received(Remote<Vec<u64>>),
}

impl Serialize for Forged {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // `Remote` travels to the process holding its object as the
            // first variant of its wire enum, carrying the object's id.
            Forged::Id(id) => serializer.serialize_newtype_variant("RemoteWire", 0, "Here", id),
            Forged::Received(_) => Err(serde::ser::Error::custom("only sent as an id")),
        }
    }
}

impl<'de> Deserialize<'de> for Forged {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Remote::deserialize(deserializer).map(Forged::Received)
    }
}

fn read_forged(forged: Forged) -> Vec<u64> {
    match forged {
        Forged::Received(remote) => remote.fetch().unwrap(),
        Forged::Id(_) => unreachable!("decoded as a handle"),
    }
}

fn remote_kind(result: Result<impl std::fmt::Debug, Error>) -> (RemoteErrorKind, String) {
    match result {
        Err(Error::Remote(error)) => (error.kind, error.message),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[test]
fn a_client_naming_another_clients_object_is_refused() {
    let address = unix_address("foreign-id");
    let a = server(&address).expect("spawn the server");
    let private = a.wrap(func!(|| vec![42u64, 7])).expect("wrap");
    let b = client(&address).expect("second client");

    let stolen = b.invoke_with(Forged::Id(private.id()), func!(read_forged));
    let (kind, message) = remote_kind(stolen);
    assert_eq!(kind, RemoteErrorKind::UnknownObject, "{message}");

    // The same answer as for an object that does not exist at all: no hint
    // that the id is taken.
    let missing_id = private.id() + 1_000_000;
    let (missing_kind, missing_message) =
        remote_kind(b.invoke_with(Forged::Id(missing_id), func!(read_forged)));
    assert_eq!(missing_kind, kind);
    assert_eq!(
        missing_message.replace(&missing_id.to_string(), "N"),
        message.replace(&private.id().to_string(), "N")
    );

    // A's object is untouched and still A's.
    assert_eq!(private.fetch().unwrap(), vec![42, 7]);
}

#[test]
fn a_client_cannot_publish_another_clients_object() {
    let address = unix_address("foreign-publish");
    let a = server(&address).expect("spawn the server");
    let private = a.wrap(func!(|| vec![42u64, 7])).expect("wrap");
    let b = client(&address).expect("second client");

    // B names A's object id in its own publish call.
    let (kind, message) = remote_kind(b.publish("stolen", &private));
    assert_eq!(kind, RemoteErrorKind::UnknownObject, "{message}");
    let (kind, _) = remote_kind(b.lookup::<Vec<u64>>("stolen"));
    assert_eq!(kind, RemoteErrorKind::NotFound);

    // Published by its holder, the object is shared on purpose.
    a.publish("shared", &private).unwrap();
    let shared = b.lookup::<Vec<u64>>("shared").unwrap();
    assert_eq!(shared.fetch().unwrap(), vec![42, 7]);
}

fn export_numbers() {
    processional::export("numbers", vec![1u64, 2, 3]).unwrap();
}

#[test]
fn two_servers_in_one_process_have_separate_names_and_ids() {
    let start = |tag: &str| {
        ServerBuilder::new(&unix_address(tag))
            .unwrap()
            .persistent(true)
            .start()
            .expect("start")
    };
    let (first, second) = (start("first"), start("second"));
    let connect = |handle: &processional::ServerHandle| {
        ClientBuilder::new(&handle.address().to_string())
            .unwrap()
            .key(handle.key().clone())
            .connect()
            .expect("connect")
    };
    let (to_first, to_second) = (connect(&first), connect(&second));

    to_first.invoke(func!(export_numbers)).unwrap();
    assert_eq!(
        to_first
            .lookup::<Vec<u64>>("numbers")
            .unwrap()
            .fetch()
            .unwrap(),
        vec![1, 2, 3]
    );
    let (kind, message) = remote_kind(to_second.lookup::<Vec<u64>>("numbers"));
    assert_eq!(kind, RemoteErrorKind::NotFound, "{message}");

    // Each server numbers its own objects.
    let in_first = to_first.wrap(func!(|| vec![10u64])).unwrap();
    let in_second = to_second.wrap(func!(|| vec![20u64])).unwrap();
    let in_second_again = to_second.wrap(func!(|| vec![21u64])).unwrap();
    assert_eq!(in_first.id(), in_second_again.id());
    assert_eq!(in_second.fetch().unwrap(), vec![20]);
    // Each server counts its own objects: the export and one wrap, two wraps.
    assert_eq!((first.live_objects(), second.live_objects()), (2, 2));

    drop((in_first, in_second, in_second_again, to_first, to_second));
    first.stop();
    second.stop();
}
