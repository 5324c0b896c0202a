//! A data-only client built as its own program: another build than the test
//! binary that serves it, as an inspection tool written separately would be.
//!
//! `data_client <address> <command>` prints one line: what the server's
//! service answered, or the error. Commands: `echo <text>` (a data-only
//! call), `as-client` (connect as a plain client: refused, another build),
//! `ship-code` (a `func!` call over the data-only connection: refused).

use processional::{ClientBuilder, func};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, address, command, rest @ ..] = args.as_slice() else {
        return Err("usage: data_client <address> <command> [text]".into());
    };
    match command.as_str() {
        "echo" => {
            let server = ClientBuilder::new(address)?.data_only(true).connect()?;
            let text = rest.first().cloned().unwrap_or_default();
            let answer: String = server
                .call_service("processional.test.v1.echo", text)
                .wait()?;
            println!("answer: {answer}");
        }
        "as-client" => match ClientBuilder::new(address)?.connect() {
            Ok(_) => println!("connected"),
            Err(error) => println!("refused: {error:?}"),
        },
        "ship-code" => {
            let server = ClientBuilder::new(address)?.data_only(true).connect()?;
            match server.invoke(func!(|| 1u8)) {
                Ok(_) => println!("ran"),
                Err(processional::Error::Remote(error)) => println!("refused: {:?}", error.kind),
                Err(error) => println!("failed otherwise: {error:?}"),
            }
        }
        other => return Err(format!("unknown command {other:?}").into()),
    }
    Ok(())
}
