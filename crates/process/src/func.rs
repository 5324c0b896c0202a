//! [`Func`]: a function every process of this program can run, and the
//! [`func!`](crate::func!) macro that makes one.

/// A function that every process of this program can run: a closure that
/// captures nothing, or a fn item, made in a `const` context.
///
/// A task shipped to another process travels as its *type*: the receiving
/// process recreates the value from nothing and calls it. That is only sound
/// when the value carries no state at all, and the compiler cannot tell a
/// closure that captures nothing from one that captures a zero-sized value
/// (a "proof token" that only some `init()` may build). A `Func` rules the
/// second kind out: [`func!`](crate::func!) evaluates its closure inside an
/// inline `const` block, where no local variable can be named, so the closure
/// has no captures and its value is the same in every process.
///
/// ```
/// use processional_process::func;
/// # fn main() -> Result<(), processional_thread::Error> {
/// let process = processional_process::slave()?;
/// assert_eq!(process.invoke(func!(|| 6 * 7))?, 42);
/// let len = process.invoke_with(vec![1u8, 2, 3], func!(|v: Vec<u8>| v.len()))?;
/// assert_eq!(len, 3);
/// # Ok(())
/// # }
/// ```
///
/// Capturing anything, even a zero-sized value, fails to compile:
///
/// ```compile_fail,E0435
/// use processional_process::func;
/// # fn main() -> Result<(), processional_thread::Error> {
/// # let process = processional_process::slave()?;
/// let words = vec!["captured".to_string()];
/// let count = process.invoke(func!(move || words.len()))?; // error[E0435]
/// # Ok(())
/// # }
/// ```
///
/// Closures built with `func!` get no hint of their argument types from the
/// method they are passed to, so name the type of an argument whose methods
/// the body calls: `func!(|v: &mut Vec<u64>| v.iter().sum::<u64>())`.
///
/// See [how it works and its limitations](https://docs.rs/processional/latest/processional/#how-it-works-and-limitations) for why, and for what else
/// follows from shipping functions by their place in the executable (both
/// sides run the same build).
#[derive(Clone, Copy)]
pub struct Func<F>(F);

impl<F> Func<F> {
    /// Wraps `function` without checking where it was made.
    ///
    /// # Safety
    /// `F` must be a type whose value any process of this program may make
    /// from nothing: a fn item, or a closure that captures nothing (one built
    /// in a `const` context, as [`func!`](crate::func!) does). A closure that
    /// captures a value, even a zero-sized one, does not qualify.
    pub const unsafe fn new_unchecked(function: F) -> Self {
        Func(function)
    }

    /// The function.
    pub fn get(&self) -> &F {
        &self.0
    }

    /// A `Func` taking `()` that calls this argument-less one.
    pub(crate) fn with_unit_argument<R>(self) -> Func<impl Fn(()) -> R + Send + Sync + 'static>
    where
        F: Fn() -> R + Send + Sync + 'static,
    {
        let function = self.0;
        // SAFETY: the closure captures only `function`, of type `F`, which
        // this `Func` vouches any process may make from nothing; so the
        // closure's value may be made from nothing too.
        unsafe { Func::new_unchecked(move |()| function()) }
    }

    /// A stream `Func` taking `()` and the sink that calls this one taking
    /// only the sink.
    pub(crate) fn with_unit_stream_argument<T, R>(
        self,
    ) -> Func<impl Fn((), crate::ItemSink<T>) -> R + Send + Sync + 'static>
    where
        F: Fn(crate::ItemSink<T>) -> R + Send + Sync + 'static,
        T: 'static,
    {
        let function = self.0;
        // SAFETY: as in `with_unit_argument`: the only capture is an `F`.
        unsafe { Func::new_unchecked(move |(), items| function(items)) }
    }

    /// A method `Func` taking `()` that calls this one-argument method.
    pub(crate) fn with_unit_method_argument<T, R>(
        self,
    ) -> Func<impl Fn(&mut T, ()) -> R + Send + Sync + 'static>
    where
        F: Fn(&mut T) -> R + Send + Sync + 'static,
        T: 'static,
    {
        let function = self.0;
        // SAFETY: as in `with_unit_argument`: the only capture is an `F`.
        unsafe { Func::new_unchecked(move |object: &mut T, ()| function(object)) }
    }
}

impl<F: Copy + Send + Sync + 'static> Func<F> {
    /// A function of one argument that calls `outer` with this function and
    /// the argument: how generic code builds a shipped function around a
    /// `Func` it was given, without `unsafe` (both vouch for their types, so
    /// a closure holding only the two may be made from nothing too).
    ///
    /// ```
    /// use processional_process::{Func, func};
    ///
    /// /// The shipped function that runs `f` twice.
    /// fn twice<F: Fn(u32) -> u32 + Send + Sync + Copy + 'static>(
    ///     f: Func<F>,
    /// ) -> Func<impl Fn(u32) -> u32 + Send + Sync + Copy + 'static> {
    ///     f.pass_to(func!(|f: Func<F>, x: u32| (f.get())((f.get())(x))))
    /// }
    ///
    /// # fn main() -> Result<(), processional_thread::Error> {
    /// let process = processional_process::slave()?;
    /// assert_eq!(process.invoke_with(3, twice(func!(|x: u32| x * 10)))?, 300);
    /// # Ok(())
    /// # }
    /// ```
    pub fn pass_to<G, A, R>(
        self,
        outer: Func<G>,
    ) -> Func<impl Fn(A) -> R + Send + Sync + Copy + 'static>
    where
        G: Fn(Func<F>, A) -> R + Send + Sync + Copy + 'static,
    {
        let (inner, outer) = (self, outer.0);
        // SAFETY: the closure captures a `Func<F>` and a `G`, each vouched
        // for by its `Func`: its value may be made from nothing too.
        unsafe { Func::new_unchecked(move |argument: A| outer(inner, argument)) }
    }

    /// [`pass_to`](Self::pass_to) for a method: a function of an object and
    /// an argument that calls `outer` with this function, the object and the
    /// argument.
    pub fn pass_to_method<G, T, A, R>(
        self,
        outer: Func<G>,
    ) -> Func<impl Fn(&mut T, A) -> R + Send + Sync + Copy + 'static>
    where
        G: Fn(Func<F>, &mut T, A) -> R + Send + Sync + Copy + 'static,
        T: ?Sized,
    {
        let (inner, outer) = (self, outer.0);
        // SAFETY: as in `pass_to`: the only captures are a `Func<F>` and a
        // `G`.
        unsafe {
            Func::new_unchecked(move |object: &mut T, argument: A| outer(inner, object, argument))
        }
    }
}

impl<F> std::fmt::Debug for Func<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Func")
            .field(&std::any::type_name::<F>())
            .finish()
    }
}

/// Makes a [`Func`]: a closure or fn item that other processes of this
/// program can run.
///
/// The expression is evaluated in an inline `const` block, so a closure that
/// names a local variable (captures it) is refused by the compiler
/// (`error[E0435]: attempt to use a non-constant value in a constant`): pass
/// the data as arguments instead (`invoke_with`, `schedule_with`, …; see
/// [how it works and its limitations](https://docs.rs/processional/latest/processional/#how-it-works-and-limitations)).
///
/// ```
/// use processional_process::func;
///
/// fn answer() -> u32 {
///     42
/// }
///
/// # fn main() -> Result<(), processional_thread::Error> {
/// let process = processional_process::slave()?;
/// assert_eq!(process.invoke(func!(answer))?, 42);
/// let counter = process.wrap(func!(|| 0u64))?;
/// counter.invoke(func!(|n: &mut u64| *n += 1))?;
/// assert_eq!(counter.fetch()?, 1);
/// # Ok(())
/// # }
/// ```
#[macro_export]
macro_rules! func {
    ($function:expr $(,)?) => {{
        let function = const { $function };
        // SAFETY: `function` was evaluated in a `const` block, where no local
        // variable can be captured: it is a fn item or a capture-free closure.
        #[allow(unused_unsafe)]
        let func = unsafe { $crate::Func::new_unchecked(function) };
        func
    }};
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_func_calls_its_closure() {
        let double = crate::func!(|x: u32| x * 2);
        assert_eq!((double.get())(21), 42);
        let unit = crate::func!(|| 7u8).with_unit_argument();
        assert_eq!((unit.get())(()), 7);
    }

    #[test]
    fn debug_names_the_type() {
        let answer = crate::func!(|| 42);
        assert!(format!("{answer:?}").starts_with("Func("));
    }
}
