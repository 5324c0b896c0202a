//! A data-only queue client built as a program of its own (another build
//! than the test binary hosting the queue): it reaches the queue through
//! its services alone.
//!
//! `queue_client <address> <id> <command> [n]` prints one line. Commands:
//! `send <n>` (n messages `Do` with data 0..n, to anyone), `recv <n>` (n
//! messages for this process, their data summed), `len`, `join`.

use processional::channel::{Queue, Request};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, address, id, command, rest @ ..] = args.as_slice() else {
        return Err("usage: queue_client <address> <id> <command> [n]".into());
    };
    let queue = Queue::<u64>::open_data_only(address, id.parse()?)?;
    let n: u64 = rest.first().map(|n| n.parse()).transpose()?.unwrap_or(0);
    match command.as_str() {
        "send" => {
            for i in 0..n {
                queue.send(Request::Do, Some(i))?;
            }
            println!("sent {n}");
        }
        "recv" => {
            let mut sum = 0;
            for _ in 0..n {
                sum += queue.recv_for_me()?.data.unwrap_or(0);
            }
            println!("sum {sum}");
        }
        "len" => println!("len {}", queue.len()?),
        "join" => {
            queue.join()?;
            println!("joined");
        }
        other => return Err(format!("unknown command {other:?}").into()),
    }
    Ok(())
}
