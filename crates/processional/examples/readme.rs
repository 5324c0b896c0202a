//! The second example of the README, kept compiling (and running) here.

fn publish_heavy_resource() {
    processional::export("heavy_resource", (0..1_000_000u64).collect::<Vec<_>>()).unwrap();
}

fn main() -> Result<(), processional::Error> {
    let dir = std::env::temp_dir().join(format!("processional-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| processional::Error::io("temporary directory", e))?;
    let address = format!("unix:{}/server", dir.display());

    // process 1: spawns the server (this same program) and fills it
    let process = processional::server(&address)?;
    process.invoke(publish_heavy_resource)?;

    // process 2 (any process of the same user, or with the key)
    let process = processional::client(&address)?;
    let resource: processional::Remote<Vec<u64>> = process.lookup("heavy_resource")?;
    println!(
        "product is {}",
        resource.invoke(|v| v.iter().product::<u64>())?
    );

    // 100 MiB to a slave without copying a byte: the slave maps the same pages
    let values = processional::ShmVec::<f64>::zeroed(100 << 17)?.share()?;
    let slave = processional::slave()?;
    let len = slave.invoke_with(values, |v: processional::ShmSlice<f64>| v.len())?;
    println!("{len} values seen by the slave");

    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
