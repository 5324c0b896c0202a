//! A tour of processional: the examples of the Python library it brings to
//! Rust, one after the other.
//!
//! Run it with `cargo run --release --example tour`.
//!
//! Each idea of the library has its own section; the later ones live in
//! the modules beside this file.

mod channel;
mod state;

use processional::func;
use std::time::Instant;

mod worker;

fn heavy_work(numbers: &[u64]) -> u64 {
    numbers.iter().sum()
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn main() -> anyhow::Result<()> {
    section("a function on another thread: thread(f)");
    let task = processional::thread(|| {
        let heavy_resource: Vec<u64> = (0..1_000_000).collect();
        heavy_work(&heavy_resource)
    });
    println!("and the result is ...");
    println!("{}", task.wait()?);

    section("a thread that keeps a resource and takes orders: SlaveThread");
    let slave = processional::SlaveThread::new();
    let resource = slave.wrap(|| (0..1_000_000u64).collect::<Vec<_>>());
    let sum = resource.schedule(|v| v.iter().sum::<u64>());
    let product = resource.schedule(|v| v.iter().product::<u64>());
    println!("summing");
    println!("multiplying");
    println!("sum is {}", sum.wait()?);
    println!("product is {}", product.wait()?);

    section("the same in another process: slave()");
    let started = Instant::now();
    let process = processional::slave()?; // spawn and connect
    let pid = process.invoke(func!(std::process::id))?;
    println!(
        "slave pid {pid} spawned and answering in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let resource = process.wrap(func!(|| (0..1_000_000u64).collect::<Vec<_>>()))?; // lives in the slave
    let sum = resource.schedule(func!(|v: &mut Vec<u64>| v.iter().sum::<u64>()));
    let product = resource.schedule(func!(|v: &mut Vec<u64>| v.iter().product::<u64>()));
    println!("summing");
    println!("multiplying");
    println!("sum is {}", sum.wait()?);
    println!("product is {}", product.wait()?);

    let started = Instant::now();
    let rounds = 10_000;
    for _ in 0..rounds {
        process.invoke(func!(|| 1u64))?;
    }
    println!(
        "a call to the slave and back takes {:.1} µs",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    );
    match process.invoke(func!(|| -> u64 { panic!("a panic in the slave") })) {
        Ok(_) => println!("unexpected: the panic was lost"),
        Err(error) => println!("a remote panic comes back as an error: {error}"),
    }

    client_and_server()?;
    shared_memory(&process)?;
    // Sections of the later ideas: one line each, one module each.
    state::run()?;
    channel::run()?;
    worker::run()?;
    Ok(())
}

/// In the server: keep a heavy resource under a name every client can find.
fn publish_heavy_resource() {
    let heavy_resource: Vec<u64> = (0..1_000_000).collect();
    processional::export("heavy_resource", heavy_resource).expect("export");
}

fn client_and_server() -> anyhow::Result<()> {
    section("one process shared by several: server(addr) and client(addr)");
    // A directory only this user can enter ($XDG_RUNTIME_DIR/processional,
    // else /tmp/processional-<uid>): the server's key file lands beside it.
    let dir = processional::runtime_dir()?;
    let address = format!("unix:{}/tour-{}.sock", dir.display(), std::process::id());

    // process 1: spawns the server and publishes the resource in it
    let process = processional::server(&address)?;
    process.invoke(func!(publish_heavy_resource))?;
    let resource = process.lookup::<Vec<u64>>("heavy_resource")?;
    let sum = resource.schedule(func!(|v: &mut Vec<u64>| v.iter().sum::<u64>()));
    println!("summing");
    println!("sum is {}", sum.wait()?);

    // process 2: another process (here a slave of ours) connects as a client
    let other = processional::slave()?;
    let product = other.invoke_with(
        address.clone(),
        func!(|address: String| {
            let process = processional::client(&address).expect("connect");
            let resource: processional::Remote<Vec<u64>> =
                process.lookup("heavy_resource").expect("lookup");
            println!("multiplying (in process {})", std::process::id());
            resource
                .invoke(func!(|v: &mut Vec<u64>| v.iter().product::<u64>()))
                .expect("product")
        }),
    )?;
    println!("product is {product}");
    drop(other);
    drop(process);
    Ok(())
}

fn shared_memory(process: &processional::SlaveProcess) -> anyhow::Result<()> {
    use std::io::{Read, Write};

    section("large data through shared memory: ShmVec");
    const LEN: usize = 100 << 20;

    // A plain socket copy of the same 100 MiB, for comparison.
    let (mut sender, mut receiver) = std::os::unix::net::UnixStream::pair()?;
    let payload = vec![1u8; LEN];
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        for chunk in payload.chunks(64 * 1024) {
            sender.write_all(chunk).expect("write");
        }
    });
    let mut received = vec![0u8; LEN];
    receiver.read_exact(&mut received)?;
    writer.join().expect("writer");
    let socket = started.elapsed();

    let mut values = processional::ShmVec::<f64>::with_capacity(LEN / 8)?;
    for i in 0..LEN / 8 {
        values.push(i as f64)?;
    }
    let values = values.share()?; // read-only from now on, sealed
    let started = Instant::now();
    let sum = process.invoke_with(
        values.clone(),
        func!(|values: processional::ShmSlice<f64>| { values.iter().sum::<f64>() }),
    )?;
    let shared = started.elapsed();
    println!(
        "100 MiB of f64 summed in the slave: {sum:e}; sent in {:.2} ms (with the sum) through shared memory, \
         a plain socket copy takes {:.2} ms",
        shared.as_secs_f64() * 1e3,
        socket.as_secs_f64() * 1e3
    );
    // A plain `Vec<u8>` argument this large goes through a segment of the
    // shared-memory pool: the first transfer creates (and faults in) the
    // segment, later ones reuse it.
    let mut times = Vec::new();
    for _ in 0..3 {
        let bytes = received.clone();
        let started = Instant::now();
        let len = process.invoke_with(bytes, func!(|bytes: Vec<u8>| bytes.len()))?;
        assert_eq!(len, LEN);
        times.push(format!("{:.1} ms", started.elapsed().as_secs_f64() * 1e3));
    }
    println!(
        "a 100 MiB Vec<u8> argument through the segment pool: {} (first, then reused)",
        times.join(", ")
    );
    Ok(())
}
