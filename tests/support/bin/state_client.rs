//! A data-only client of a state server, built as its own program: another
//! build than the test binary whose server it talks to, as an inspection
//! tool or a producer written separately would be.
//!
//! `state_client <address>` reads, transacts, watches, and tries an atomic
//! update (refused: it would ship code), printing one line for each.

use processional::state::txn::{Compare, Op, Txn};
use processional::state::{State, View, func};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, address] = args.as_slice() else {
        return Err("usage: state_client <address>".into());
    };
    let state = State::connect_data_only(address)?;
    let greeting: Option<String> = state.get("greeting")?;
    println!("greeting: {}", greeting.unwrap_or_default());
    let outcome = state.txn(
        Txn::new()
            .when(Compare::equal("greeting", "hello")?)
            .then(Op::set("from-client", "hi")?)
            .then(Op::set("counter", &1u32)?),
    )?;
    println!("txn: {}", outcome.succeeded);
    let mut watcher = state.watch_after(outcome.revision - 1);
    let change = watcher.next().ok_or("no change")??;
    println!("watched: revision {}", change.revision);
    match state.atomic(
        (),
        func!(|view: &mut View<'_>, (): ()| view.remove::<u32>("counter")),
    ) {
        Ok(_) => println!("atomic ran"),
        Err(error) => println!("atomic refused: {error}"),
    }
    Ok(())
}
