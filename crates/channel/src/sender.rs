//! A buffered sender: one message at a time in the program, batches on the
//! wire, like the feeder thread of Python's queues.

use std::fmt;

use processional_task::Task;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{BatchSendError, Error};
use crate::message::{Message, Request};
use crate::queue::Queue;
use crate::wire::SendReply;

/// Sends messages to a [`Queue`] in batches: [`send`](Self::send) only
/// buffers, a full buffer leaves as one batch while the next one fills
/// (one batch in flight), and [`flush`](Self::flush) sends the rest and
/// waits. The order is the order of `send`.
///
/// A batch that a full or closed queue refused is reported by the next
/// `send` or `flush`, with every message not accepted handed back. If the
/// connection to the host breaks (or the call fails) while a batch is in
/// flight, the host may have accepted any part of it: that batch comes back
/// as [`BatchSendError::unknown`], apart from what was buffered since
/// ([`BatchSendError::unsent`], never sent), so that a resend of `unsent`
/// cannot duplicate anything. Dropping the sender flushes it; call `flush`
/// to see that outcome.
///
/// ```
/// use processional_channel::{Pick, Queue, Request};
/// # fn main() -> Result<(), processional_channel::Error> {
/// let queue = Queue::<u64>::new()?;
/// let mut sender = queue.buffered(256);
/// for i in 0..1000 {
///     sender.send(Request::Do, Some(i))?;
/// }
/// sender.flush()?;
/// assert_eq!(queue.len()?, 1000);
/// assert_eq!(queue.recv_batch(Pick::Any, 10)?.len(), 10);
/// # Ok(())
/// # }
/// ```
pub struct BufferedSender<T: Serialize + DeserializeOwned> {
    queue: Queue<T>,
    batch: usize,
    buffer: Vec<Message<T>>,
    in_flight: Option<(Task<SendReply>, Vec<Message<T>>)>,
}

impl<T: Serialize + DeserializeOwned> fmt::Debug for BufferedSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferedSender")
            .field("queue", &self.queue)
            .field("batch", &self.batch)
            .field("buffered", &self.buffer.len())
            .field("in_flight", &self.in_flight.as_ref().map(|(_, m)| m.len()))
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A sender that batches `batch` messages (at least one) per trip.
    pub fn buffered(&self, batch: usize) -> BufferedSender<T> {
        let batch = batch.max(1);
        BufferedSender {
            queue: self.clone(),
            batch,
            buffer: Vec::with_capacity(batch),
            in_flight: None,
        }
    }
}

impl<T: Serialize + DeserializeOwned> BufferedSender<T> {
    /// Buffers a message of this process to anyone.
    pub fn send(&mut self, request: Request, data: Option<T>) -> Result<(), BatchSendError<T>> {
        self.send_message(Message::new(request, data))
    }

    /// Buffers a message of this process to `pid`.
    pub fn send_to(
        &mut self,
        pid: u32,
        request: Request,
        data: Option<T>,
    ) -> Result<(), BatchSendError<T>> {
        self.send_message(Message::new(request, data).to(pid))
    }

    /// Buffers `message` as it is.
    pub fn send_message(&mut self, message: Message<T>) -> Result<(), BatchSendError<T>> {
        self.buffer.push(message);
        if self.buffer.len() >= self.batch {
            self.dispatch()?;
        }
        Ok(())
    }

    /// Sends what is buffered and waits until every batch was accepted.
    pub fn flush(&mut self) -> Result<(), BatchSendError<T>> {
        self.dispatch()?;
        self.settle()
    }

    /// Waits for the batch in flight.
    fn settle(&mut self) -> Result<(), BatchSendError<T>> {
        let Some((task, mut sent)) = self.in_flight.take() else {
            return Ok(());
        };
        let (back, reason) = match task.wait() {
            Ok(SendReply::Accepted) => return Ok(()),
            Ok(SendReply::Full(back)) => (back.len(), Error::Full),
            Ok(SendReply::Closed(back)) => (back.len(), Error::Closed),
            Ok(SendReply::NoQueue(_)) => (sent.len(), Error::Disconnected),
            // No answer: the host may have accepted any part of the batch.
            Err(e) => {
                return Err(BatchSendError {
                    unknown: sent,
                    unsent: std::mem::take(&mut self.buffer),
                    reason: crate::queue::send_failure(e),
                });
            }
        };
        // A host answering with more than it was sent is not trusted past
        // the batch.
        let accepted = sent.len().saturating_sub(back);
        sent.drain(..accepted);
        // Everything not accepted comes back, in order: the rest of that
        // batch, then what was buffered since.
        sent.append(&mut self.buffer);
        Err(BatchSendError {
            unknown: Vec::new(),
            unsent: sent,
            reason,
        })
    }

    /// Puts the buffer in flight, after the batch before it.
    fn dispatch(&mut self) -> Result<(), BatchSendError<T>> {
        self.settle()?;
        if self.buffer.is_empty() {
            return Ok(());
        }
        let messages = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.batch));
        match self.queue.send_batch_task(&messages) {
            Ok(task) => {
                self.in_flight = Some((task, messages));
                Ok(())
            }
            Err(source) => Err(BatchSendError {
                unknown: Vec::new(),
                unsent: messages,
                reason: Error::from(source),
            }),
        }
    }
}

impl<T: Serialize + DeserializeOwned> Drop for BufferedSender<T> {
    fn drop(&mut self) {
        // Whoever wanted the outcome called `flush`.
        let _ = self.flush();
    }
}
