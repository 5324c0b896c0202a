//! The requests a state server answers and their answers: plain data, the
//! contract between a [`State`](crate::State) and its server (whichever
//! build each runs).

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::hub::KeyTest;
use crate::store::{Change, Entry, Revision, Snapshot};
use crate::txn::{Txn, TxnOutcome};

/// One data operation on one namespace (or the server).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Request {
    Get(String, String),
    Set(String, String, #[serde(with = "serde_bytes")] Vec<u8>),
    Remove(String, String),
    Contains(String, String),
    Len(String),
    Snapshot(String),
    Clear(String),
    Update(String, Vec<(String, serde_bytes::ByteBuf)>),
    SetDefault(String, String, #[serde(with = "serde_bytes")] Vec<u8>),
    PopItem(String),
    Txn(String, Txn),
    Revision,
    Namespaces,
    /// Adds to an `i64` (missing is 0).
    Increment(String, String, i64),
    /// Appends one encoded element to a `Vec` (missing is empty).
    Append(String, String, #[serde(with = "serde_bytes")] Vec<u8>),
    // No request sets the server's limits: whoever starts it does, with
    // shipped code (`server::configure`).
}

/// The answer of a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Response {
    Entry(Option<Entry>),
    Revision(Revision),
    Snapshot(Snapshot),
    Bool(bool),
    Len(u64),
    Txn(TxnOutcome),
    Item(Option<(String, Entry)>, Revision),
    Removed(Option<Entry>, Revision),
    Value(#[serde(with = "serde_bytes")] Vec<u8>, Revision),
    Int(i64, Revision),
    Namespaces(Vec<String>),
    Error(WireError),
}

/// A data-only condition to wait for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Wait {
    /// A change of one of the keys (any if empty) after the revision (now
    /// if `None`).
    Changed(Vec<String>, Option<Revision>),
    /// A test of one key.
    Key(String, KeyTest),
}

/// A watcher's request: the changes after a revision (now if `None`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Poll {
    pub(crate) namespace: String,
    pub(crate) after: Option<Revision>,
    pub(crate) max: u32,
}

/// What a wait answers.
pub(crate) type WaitAnswer = Result<Snapshot, WireError>;
/// What a poll answers.
pub(crate) type PollAnswer = Result<Vec<Change>, WireError>;
