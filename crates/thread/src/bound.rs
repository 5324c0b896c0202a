//! [`Bound`]: a handle to an object that lives on a slave thread.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use processional_task::{Error, PanicReport, Result, Task, catch_panic, with_token};

use crate::slave::{Object, Objects, Order, SlaveThread, hosted, next_id};

/// A handle to an object of type `T` created on a [`SlaveThread`] by
/// [`SlaveThread::wrap`].
///
/// The object never leaves its thread, so `T` need not be `Send` or `Sync`;
/// the handle always is both, and is cheap to clone. Calls run on the slave
/// thread, in order with the slave's other orders, and get `&mut T`. The
/// object is dropped on its thread when the last handle is dropped (or when
/// the slave stops). The handles keep the slave running.
///
/// ```
/// use std::{cell::RefCell, rc::Rc};
/// use processional_thread::SlaveThread;
///
/// let slave = SlaveThread::new();
/// let log = slave.wrap(|| Rc::new(RefCell::new(Vec::<String>::new())));
/// log.schedule(|log| log.borrow_mut().push("first".into())).detach();
/// let len = log.invoke(|log| log.borrow().len()).unwrap();
/// assert_eq!(len, 1);
/// ```
pub struct Bound<T: 'static> {
    inner: Arc<BoundInner>,
    _object: PhantomData<fn() -> T>,
}

/// The type-independent part of a handle; removes the object when dropped.
struct BoundInner {
    id: u64,
    slave: SlaveThread,
}

impl Drop for BoundInner {
    fn drop(&mut self) {
        let id = self.id;
        match hosted(self.slave.id()) {
            Some(objects) => objects.remove(id),
            None => self.slave.post(Order {
                token: None,
                run: Box::new(move |objects: &Objects| objects.remove(id)),
            }),
        }
    }
}

impl<T: 'static> Bound<T> {
    pub(crate) fn create<F>(slave: SlaveThread, f: F) -> Bound<T>
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let id = next_id();
        let construct = move |objects: &Objects| {
            let object: Object = match catch_panic(f) {
                Ok(value) => Ok(Rc::new(RefCell::new(value)) as Rc<dyn Any>),
                Err(Error::Panicked(report)) => Err(report),
                Err(other) => Err(PanicReport::new(other.to_string())),
            };
            objects.insert(id, object);
        };
        match hosted(slave.id()) {
            Some(objects) => construct(&objects),
            None => slave.post(Order {
                token: None,
                run: Box::new(construct),
            }),
        }
        Bound {
            inner: Arc::new(BoundInner { id, slave }),
            _object: PhantomData,
        }
    }

    /// Runs `f` with the object on its thread, after the orders queued
    /// before, and waits for its value. Called from the slave thread itself,
    /// `f` runs at once.
    ///
    /// Fails with [`Error::Panicked`] if `f` panicked, if the object's
    /// construction panicked, or if the object is already in use by a call
    /// further up the stack (a re-entrant call from the slave thread);
    /// with [`Error::Stopped`] if the slave has stopped.
    pub fn invoke<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut T) -> R + Send + 'static,
        R: Send + 'static,
    {
        if let Some(objects) = hosted(self.inner.slave.id()) {
            return call_object(&objects, self.inner.id, f);
        }
        self.schedule(f).wait()
    }

    /// Queues `f` to run with the object on its thread and returns its
    /// [`Task`]; see [`invoke`](Self::invoke).
    pub fn schedule<F, R>(&self, f: F) -> Task<R>
    where
        F: FnOnce(&mut T) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (task, completer) = Task::pending();
        let token = completer.token().clone();
        let id = self.inner.id;
        self.inner.slave.post(Order {
            token: Some(token),
            run: Box::new(move |objects: &Objects| {
                let token = completer.token();
                let outcome = if token.is_cancelled() {
                    Err(Error::Cancelled)
                } else {
                    with_token(token, || call_object(objects, id, f))
                };
                completer.complete(outcome);
            }),
        });
        task
    }

    /// The slave the object lives on.
    pub fn slave(&self) -> &SlaveThread {
        &self.inner.slave
    }
}

/// Runs `f` on object `id` of `objects`, on the slave's thread.
fn call_object<T: 'static, R>(
    objects: &Objects,
    id: u64,
    f: impl FnOnce(&mut T) -> R,
) -> Result<R> {
    let object = match objects.get(id) {
        Some(Ok(object)) => object,
        Some(Err(report)) => return Err(Error::Panicked(report)),
        // Removed when the slave stopped.
        None => return Err(Error::Stopped),
    };
    let Ok(cell) = object.downcast::<RefCell<T>>() else {
        // Ids are unique and every `Bound<T>` stores a `RefCell<T>`.
        return Err(Error::Stopped);
    };
    let Ok(mut value) = cell.try_borrow_mut() else {
        return Err(Error::Panicked(PanicReport::new(
            "the bound object is already in use by a call further up the stack (re-entrant call)",
        )));
    };
    catch_panic(|| f(&mut value))
}

impl<T: 'static> Clone for Bound<T> {
    fn clone(&self) -> Self {
        Bound {
            inner: self.inner.clone(),
            _object: PhantomData,
        }
    }
}

impl<T: 'static> fmt::Debug for Bound<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bound")
            .field("type", &std::any::type_name::<T>())
            .field("slave", &self.inner.slave)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{Sender, bounded};
    use std::thread::{self, ThreadId};
    use std::time::Duration;

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn wraps_a_non_send_object() {
        let slave = SlaveThread::new();
        let shared = slave.wrap(|| Rc::new(RefCell::new(vec![1u32])));
        let pushes: Vec<_> = (2..=4)
            .map(|i| shared.schedule(move |v| v.borrow_mut().push(i)))
            .collect();
        for push in pushes {
            push.wait().unwrap();
        }
        let total = shared
            .clone()
            .invoke(|v| v.borrow().iter().sum::<u32>())
            .unwrap();
        assert_eq!(total, 10);
        assert_eq!(shared.slave().thread_id(), slave.thread_id());
    }

    /// Sends the id of the thread it is dropped on.
    struct DropProbe(Sender<ThreadId>);

    impl Drop for DropProbe {
        fn drop(&mut self) {
            let _ = self.0.send(thread::current().id());
        }
    }

    #[test]
    fn the_object_is_dropped_on_its_thread_with_the_last_handle() {
        let slave = SlaveThread::new();
        let (dropped, drops) = bounded(1);
        let probe = slave.wrap(move || (DropProbe(dropped), Rc::new(())));
        let clone = probe.clone();
        drop(probe);
        clone.invoke(|_| ()).unwrap();
        assert!(drops.try_recv().is_err(), "a handle is still alive");
        drop(clone);
        assert_eq!(drops.recv_timeout(LONG).unwrap(), slave.thread_id());
        assert!(slave.is_alive());
    }

    #[test]
    fn objects_are_dropped_on_their_thread_when_the_slave_stops() {
        let slave = SlaveThread::new();
        let (dropped, drops) = bounded(1);
        let probe = slave.wrap(move || DropProbe(dropped));
        let thread_id = slave.thread_id();
        slave.close().wait().unwrap();
        assert_eq!(drops.recv_timeout(LONG).unwrap(), thread_id);
        assert!(matches!(probe.invoke(|_| ()), Err(Error::Stopped)));
    }

    #[test]
    fn handles_keep_the_slave_alive() {
        let slave = SlaveThread::new();
        let counter = slave.wrap(|| 0u32);
        drop(slave);
        counter.invoke(|c| *c += 1).unwrap();
        assert_eq!(counter.invoke(|c| *c).unwrap(), 1);
    }

    #[test]
    fn a_panicking_constructor_fails_every_call() {
        let slave = SlaveThread::new();
        let broken = slave.wrap(|| -> u32 { panic!("cannot build the object") });
        for _ in 0..2 {
            let error = broken.invoke(|v| *v).unwrap_err();
            assert!(error.is_panic());
            assert_eq!(error.message(), Some("cannot build the object"));
        }
        assert_eq!(slave.invoke(|| 1).unwrap(), 1);
    }

    #[test]
    fn calls_from_the_slave_thread_run_inline() {
        let slave = SlaveThread::new();
        let outer = slave.wrap(|| 1u32);
        let inner = slave.wrap(|| 2u32);
        let nested = inner.clone();
        let sum = outer
            .invoke(move |o| *o + nested.invoke(|i| *i).unwrap())
            .unwrap();
        assert_eq!(sum, 3);

        // Wrapping from the slave thread constructs at once.
        let from_inside = slave.clone();
        let value = slave
            .invoke(move || from_inside.wrap(|| 5u32).invoke(|v| *v).unwrap())
            .unwrap();
        assert_eq!(value, 5);

        // A re-entrant call on the same object fails instead of aliasing it.
        let same = outer.clone();
        let error = outer
            .invoke(move |_| same.invoke(|v| *v).unwrap_err())
            .unwrap();
        assert!(error.message().unwrap().contains("re-entrant"));
    }

    #[test]
    fn bound_calls_are_cancellable() {
        let slave = SlaveThread::new();
        let object = slave.wrap(|| 0u32);
        let (started, running) = bounded(0);
        let looping = object.schedule(move |_| -> Result<()> {
            started.send(()).unwrap();
            loop {
                crate::checkpoint()?;
                thread::sleep(Duration::from_millis(1));
            }
        });
        running.recv_timeout(LONG).unwrap();
        looping.cancel();
        assert!(matches!(looping.wait(), Ok(Err(Error::Cancelled))));
    }

    #[test]
    fn bound_is_send_and_sync_for_any_object() {
        fn assert_send_sync<X: Send + Sync>() {}
        assert_send_sync::<Bound<Rc<RefCell<u8>>>>();
        assert_send_sync::<SlaveThread>();
        assert_send_sync::<Task<u8>>();
    }
}
