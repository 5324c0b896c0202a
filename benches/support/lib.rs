//! Helpers shared by the benches of processional.
//!
//! Every bench target is a criterion program (`harness = false`) whose cases
//! follow the convention of `benches/README.md`: one criterion group per case,
//! named after it, holding a `subject` and a `baseline` function.
//!
//! Peers that must live in another process are this same bench executable,
//! started again with [`CHILD_ROLE_ENV`] naming what it should do. The bench's
//! `main` calls [`run_child_if_requested`] before criterion starts:
//!
//! ```no_run
//! use processional_benches::{ChildRole, run_child_if_requested};
//!
//! fn echo() -> processional_benches::ChildResult {
//!     Ok(())
//! }
//!
//! const ROLES: &[ChildRole] = &[ChildRole { name: "echo", run: echo }];
//!
//! fn main() {
//!     run_child_if_requested(ROLES); // never returns in a child
//!     // ... criterion benches, which spawn `PeerProcess::spawn("echo", …)`
//! }
//! ```

mod peer;
pub mod pingers;
pub mod process_peer;
mod raw;
mod sys;

pub use peer::{
    CHILD_ADDR_ENV, CHILD_FD_ENV, CHILD_KEY_ENV, CHILD_ROLE_ENV, ChildResult, ChildRole,
    PeerProcess, inherited_fd, run_child_if_requested,
};
pub use raw::{PING_BYTES, echo_raw, round_trip_raw};
