//! Transactions without shipped code, in the style of etcd's `Txn`:
//! compare values, revisions or existence of several keys, then apply one
//! set of writes or the other, as one change. Plain data, so a client of
//! another build can send one.
//!
//! ```
//! use processional_state::store::Store;
//! use processional_state::txn::{Compare, Op, Txn};
//!
//! let mut store = Store::new(10);
//! // Create "leader" only if nobody holds it.
//! let claim = Txn::new()
//!     .when(Compare::missing("leader"))
//!     .then(Op::set("leader", &"me").unwrap());
//! assert!(store.txn("ns", &claim).succeeded);
//! assert!(!store.txn("ns", &claim).succeeded);
//! ```

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::ValueError;
use crate::store::{Entry, Revision};

/// How a revision compares with the one a [`Compare`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ordering {
    /// Lower.
    Less,
    /// The same.
    Equal,
    /// Higher.
    Greater,
    /// Not the same.
    NotEqual,
}

impl Ordering {
    fn holds(self, left: Revision, right: Revision) -> bool {
        match self {
            Ordering::Less => left < right,
            Ordering::Equal => left == right,
            Ordering::Greater => left > right,
            Ordering::NotEqual => left != right,
        }
    }
}

/// What a [`Compare`] checks of its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The key exists (`true`) or not (`false`).
    Exists(bool),
    /// The key holds exactly these encoded bytes.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key does not hold these bytes (a missing key qualifies).
    NotValue(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The revision that last set the key compares so with this one (a
    /// missing key has revision 0).
    Modified(Ordering, Revision),
}

/// One comparison of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key.
    pub key: String,
    /// What must hold.
    pub target: Target,
}

impl Compare {
    /// `key` exists.
    pub fn exists(key: &str) -> Compare {
        Compare {
            key: key.into(),
            target: Target::Exists(true),
        }
    }

    /// `key` does not exist.
    pub fn missing(key: &str) -> Compare {
        Compare {
            key: key.into(),
            target: Target::Exists(false),
        }
    }

    /// `key` holds `value`.
    pub fn equal<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Compare, ValueError> {
        Ok(Compare {
            key: key.into(),
            target: Target::Value(codec::encode(key, value)?),
        })
    }

    /// `key` does not hold `value`.
    pub fn not_equal<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Compare, ValueError> {
        Ok(Compare {
            key: key.into(),
            target: Target::NotValue(codec::encode(key, value)?),
        })
    }

    /// The revision that last set `key` compares with `revision` so.
    pub fn modified(key: &str, ordering: Ordering, revision: Revision) -> Compare {
        Compare {
            key: key.into(),
            target: Target::Modified(ordering, revision),
        }
    }

    /// Whether it holds for `entry` (the key's entry, if it exists).
    pub fn holds(&self, entry: Option<&Entry>) -> bool {
        match &self.target {
            Target::Exists(exists) => entry.is_some() == *exists,
            Target::Value(bytes) => entry.is_some_and(|entry| &entry.value == bytes),
            Target::NotValue(bytes) => entry.is_none_or(|entry| &entry.value != bytes),
            Target::Modified(ordering, revision) => {
                ordering.holds(entry.map_or(0, |entry| entry.modified), *revision)
            }
        }
    }
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set the key to these encoded bytes.
    Set(String, #[serde(with = "serde_bytes")] Vec<u8>),
    /// Remove the key.
    Remove(String),
}

impl Op {
    /// Sets `key` to `value`.
    pub fn set<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Op, ValueError> {
        Ok(Op::Set(key.into(), codec::encode(key, value)?))
    }

    /// Removes `key`.
    pub fn remove(key: &str) -> Op {
        Op::Remove(key.into())
    }

    pub(crate) fn as_event(&self) -> (&str, Option<&[u8]>) {
        match self {
            Op::Set(key, value) => (key, Some(value)),
            Op::Remove(key) => (key, None),
        }
    }
}

/// A transaction: if every comparison holds, the `success` writes, else the
/// `failure` writes; either way one change (a later write of the same key
/// wins).
///
/// A comparison looks at a key's value, existence or revisions
/// ([`Compare`]); the writes are [`Op`]s. Code-free, so it also works from
/// a [data-only](crate::State::connect_data_only) handle of another build.
///
/// ```
/// use processional_state::txn::{Compare, Op, Txn};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let context = processional_state::Context::new()?;
/// # let state = context.state();
/// state.set("stock", &1u32)?;
/// // Sell the last item: if stock == 1, set it to 0 and record the sale,
/// // else record a miss.
/// let sell = Txn::new()
///     .when(Compare::equal("stock", &1u32)?)
///     .then(Op::set("stock", &0u32)?)
///     .then(Op::set("sold", "yes")?)
///     .or_else(Op::set("missed", "yes")?);
/// assert!(state.txn(sell.clone())?.succeeded);
/// assert!(!state.txn(sell)?.succeeded);
/// assert_eq!(state.keys()?, ["missed", "sold", "stock"]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// What must hold, all of it.
    pub compare: Vec<Compare>,
    /// The writes if it holds.
    pub success: Vec<Op>,
    /// The writes if it does not.
    pub failure: Vec<Op>,
}

impl Txn {
    /// A transaction with no comparison (it succeeds) and no write.
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds a comparison.
    pub fn when(mut self, compare: Compare) -> Txn {
        self.compare.push(compare);
        self
    }

    /// Adds a write done if every comparison holds.
    pub fn then(mut self, op: Op) -> Txn {
        self.success.push(op);
        self
    }

    /// Adds a write done otherwise.
    pub fn or_else(mut self, op: Op) -> Txn {
        self.failure.push(op);
        self
    }
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnOutcome {
    /// Whether every comparison held (so the `success` writes were applied).
    pub succeeded: bool,
    /// The revision after it.
    pub revision: Revision,
}
