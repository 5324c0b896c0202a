//! The global state: many processes share one map, served by a state
//! server, with atomic updates and watchers that wait without polling.

use processional::state::{Context, Peek, Read, State, StateError, View, func};

fn eat_cookies(state: State, count: u32) -> Result<(), StateError> {
    for _ in 0..count {
        state.when_available("cookie", None)?; // wait, without polling
        state.atomic(
            (),
            func!(|s: &mut View<'_>, (): ()| s.remove::<String>("cookie")),
        )?; // take it, atomically
        println!("nom nom nom");
    }
    Ok(())
}

/// The cookie example: one process bakes, another eats, in turns.
pub(crate) fn run() -> anyhow::Result<()> {
    super::section("a global state shared by processes: Context and State");
    let context = Context::new()?; // starts the state server
    let state = context.state();
    let eater = context.spawn(func!(eat_cookies), 5)?; // a process that gets its own State handle
    for _ in 0..5 {
        state.when(func!(|s: &Peek<'_>| !s.contains("cookie")), None)?;
        state.set("cookie", "Here's a cookie!")?;
        println!("Here's a cookie!");
    }
    eater.wait(None)?;
    let snapshot = state.copy()?;
    println!(
        "the state at revision {}: {} keys left",
        snapshot.revision,
        snapshot.len()
    );
    Ok(())
}
