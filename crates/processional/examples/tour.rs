//! A tour of processional: the examples of the Python library it brings to
//! Rust, one after the other.
//!
//! Run it with `cargo run --release --example tour`.

use std::time::Instant;

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
    println!(
        "slave pid {} ready in {:.1} ms",
        process.pid(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let resource = process.wrap(|| (0..1_000_000u64).collect::<Vec<_>>())?; // lives in the slave
    let sum = resource.schedule(|v| v.iter().sum::<u64>())?;
    let product = resource.schedule(|v| v.iter().product::<u64>())?;
    println!("summing");
    println!("multiplying");
    println!("sum is {}", sum.wait()?);
    println!("product is {}", product.wait()?);

    let started = Instant::now();
    let rounds = 10_000;
    for _ in 0..rounds {
        process.invoke(|| 1u64)?;
    }
    println!(
        "a call to the slave and back takes {:.1} µs",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    );
    match process.invoke(|| -> u64 { panic!("a panic in the slave") }) {
        Ok(_) => println!("unexpected: the panic was lost"),
        Err(error) => println!("a remote panic comes back as an error: {error}"),
    }
    Ok(())
}
