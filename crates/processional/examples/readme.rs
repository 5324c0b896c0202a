//! The second example of the README, kept compiling (and running) here.

use processional::func;

fn publish_heavy_resource() {
    processional::export("heavy_resource", (0..1_000_000u64).collect::<Vec<_>>()).unwrap();
}

fn main() -> Result<(), processional::Error> {
    // process 1: spawns the server (this same program) and fills it; its
    // socket and key file go in a directory only this user can enter
    let address = format!("unix:{}/server", processional::runtime_dir()?.display());
    let process = processional::server(&address)?;
    process.invoke(func!(publish_heavy_resource))?;

    // process 2 (any process of the same user, or with the key)
    let process = processional::client(&address)?;
    let resource: processional::Remote<Vec<u64>> = process.lookup("heavy_resource")?;
    println!(
        "product is {}",
        resource.invoke(func!(|v: &mut Vec<u64>| v.iter().product::<u64>()))?
    );

    // 100 MiB to a slave without copying a byte: the slave maps the same pages
    let values = processional::ShmVec::<f64>::zeroed(100 << 17)?.share()?;
    let slave = processional::slave()?;
    let len = slave.invoke_with(values, func!(|v: processional::ShmSlice<f64>| v.len()))?;
    println!("{len} values seen by the slave");
    Ok(())
}
