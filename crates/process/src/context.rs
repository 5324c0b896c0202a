//! What a function running on behalf of a peer can reach.

use std::cell::Cell;

use std::sync::Arc;

use processional_proto::{RemoteError, RemoteErrorKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::objects::{ConnectionRefs, ObjectSlot, ObjectTable};
use crate::payload::{self, Encoded, Incoming};

/// The state an entry point needs besides its arguments.
#[derive(Debug)]
pub(crate) struct CallContext<'a> {
    /// The references of the connection the call came from.
    pub(crate) refs: &'a Arc<ConnectionRefs>,
    /// Whether the connection can carry descriptors (a unix socket).
    pub(crate) unix: bool,
}

thread_local! {
    /// Set while a serving process decodes arguments: `Remote` handles then
    /// resolve to the objects of this process.
    static SERVING: Cell<bool> = const { Cell::new(false) };
    /// The references of the connection whose call runs on this thread.
    static CURRENT_REFS: std::cell::RefCell<Option<Arc<ConnectionRefs>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `refs` as the current connection's references (what
/// [`export`] charges new objects to).
pub(crate) fn with_connection<R>(refs: &Arc<ConnectionRefs>, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT_REFS.with(|c| c.replace(Some(refs.clone())));
    let result = f();
    CURRENT_REFS.with(|c| *c.borrow_mut() = previous);
    result
}

/// Keeps `value` as an object of this process, published under `name` and
/// held by the connection whose call runs on this thread.
pub(crate) fn export<T: Send + 'static>(name: &str, value: T) -> Result<(), RemoteError> {
    let refs = CURRENT_REFS
        .with(|c| c.borrow().clone())
        .ok_or_else(|| RemoteError {
            kind: RemoteErrorKind::Other,
            message: "export() can only be called inside a task served for a peer".into(),
            location: None,
            backtrace: None,
        })?;
    let table = ObjectTable::global();
    let id = table.insert(ObjectSlot::new(value), &refs);
    table.publish(name.to_owned(), id)
}

/// Whether the current thread is decoding arguments for a call it serves.
pub(crate) fn is_serving() -> bool {
    SERVING.with(Cell::get)
}

impl CallContext<'_> {
    /// Decodes the arguments of a call.
    pub(crate) fn decode<A: DeserializeOwned + 'static>(
        &self,
        args: &Incoming,
    ) -> Result<A, RemoteError> {
        let previous = SERVING.with(|s| s.replace(true));
        let result = args.decode();
        SERVING.with(|s| s.set(previous));
        result.map_err(codec::remote_codec_error)
    }

    /// Encodes the value of a call.
    pub(crate) fn encode<R: Serialize + 'static>(&self, value: &R) -> Result<Encoded, RemoteError> {
        payload::encode_value(value, self.unix).map_err(codec::remote_codec_error)
    }
}
