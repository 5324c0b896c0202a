//! The tour's messaging section: a queue shared by a parent and its
//! children, pymulproc's example without its bugs.

use processional::channel::{Queue, Request};
use processional::func;

/// A child: doubles what it is asked, until its poison pill.
fn child(queue: Queue<u32>, parent: u32) -> Result<(), processional::channel::Error> {
    loop {
        let msg = queue.recv_for_me()?; // recipient == me, or nobody in particular
        match msg.request {
            Request::Die => return Ok(()),
            Request::Do => queue.send_to(parent, Request::Finished, msg.data.map(|x| x * 2))?,
            _ => {}
        }
    }
}

/// The parent: five children, five orders, one sum, a poison pill each.
pub(crate) fn run() -> anyhow::Result<()> {
    println!("\n== messages between processes: Queue, recv_for_me, join, poison pills");
    let queue = Queue::<u32>::new()?; // unbounded, hosted for you
    let children = (0..5)
        .map(|_| processional::slave())
        .collect::<Result<Vec<_>, _>>()?;
    let tasks: Vec<_> = children
        .iter()
        .map(|c| {
            c.schedule_with(
                (queue.clone(), std::process::id()),
                func!(|(q, p): (Queue<u32>, u32)| child(q, p).map_err(|e| e.to_string())),
            )
        })
        .collect();
    for _ in 0..5 {
        queue.send(Request::Do, Some(3))?;
    }
    let me = std::process::id();
    let mut total = 0;
    for _ in 0..5 {
        let answer = queue.recv_addressed_to(me)?;
        total += answer.data.unwrap_or(0);
    }
    println!("counter = {total}"); // counter = 30
    for _ in 0..5 {
        queue.send(Request::Die, None)?; // one poison pill per child
    }
    queue.join()?; // every message handled
    for task in tasks {
        task.wait()?.map_err(anyhow::Error::msg)?;
    }
    println!(
        "every child stopped, the queue holds {} messages",
        queue.len()?
    );
    Ok(())
}
