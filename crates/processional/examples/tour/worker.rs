//! The tour's workers section: one API over threads, processes and remote
//! processes, persistent workers, and a pool over mixed kinds.

use processional::func;
use processional::worker::{PersistentWorker, PoolBuilder, Worker, WorkerKind, spawn_server};

fn square(x: u64) -> u64 {
    x * x
}

/// Runs the workers section.
pub(crate) fn run() -> anyhow::Result<()> {
    crate::section("workers: threads, processes and remote processes behind one API");
    let server = spawn_server("tcp://127.0.0.1:0")?; // a process worker running a remote-worker server
    let tw = Worker::thread(func!(square), 1)?;
    let pw = Worker::process(func!(square), 2)?;
    let rw = Worker::remote(server.address(), func!(square), 3)?;
    for w in [&tw, &pw, &rw] {
        w.wait(None);
    }
    println!("{:?} {:?} {:?}", tw.result(), pw.result(), rw.result());

    // the same, with the kind as a value, fed a stream of inputs
    let kinds = [
        WorkerKind::Thread,
        WorkerKind::Process,
        WorkerKind::Remote(server.address().clone()),
    ];
    let persistent = kinds
        .iter()
        .map(|k| PersistentWorker::spawn(k.clone(), func!(square)))
        .collect::<Result<Vec<_>, _>>()?;
    for (w, x) in persistent.iter().cycle().zip(0..10) {
        w.enqueue(x)?;
    }
    for w in &persistent {
        w.close();
        w.wait(None);
        println!(
            "{} {:?}",
            w.processed(),
            w.results().collect::<Result<Vec<_>, _>>()?
        );
    }

    crate::section("a pool over mixed kinds that survives a worker's death");
    let mut pool = PoolBuilder::new(func!(square))
        .worker(WorkerKind::Thread)
        .workers(WorkerKind::Process, 2)
        .worker(WorkerKind::Remote(server.address().clone()))
        .spawn()?;
    let squares = pool
        .map(0..100_000u64)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("100 000 squares, the last one {}", squares[99_999]);

    // A process worker dies (SIGKILL, from outside): the next run retries
    // what it had on the others, and every square still arrives.
    let victim = pool
        .worker_pids()
        .into_iter()
        .flatten()
        .find(|&pid| pid != std::process::id())
        .ok_or_else(|| anyhow::anyhow!("no process worker"))?;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -KILL {victim} failed");
    let again = pool
        .map(0..100_000u64)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(again == squares, "a run after a death lost results");
    println!(
        "after killing worker process {victim}: 100 000 squares again, {} of 4 workers alive",
        pool.alive()
    );
    Ok(())
}
