//! A `log` implementation for tests: remembers every record so that a test
//! can count the ones mentioning its own marker (tests run in parallel).

use std::sync::{Mutex, Once};

static RECORDS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

struct Recorder;

impl log::Log for Recorder {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}", record.level(), record.args());
        RECORDS.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    fn flush(&self) {}
}

/// Installs the recorder (once per test binary).
pub(crate) fn install() {
    INSTALL.call_once(|| {
        log::set_logger(&Recorder).expect("no other logger in the test binary");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// How many error records mention `marker`.
pub(crate) fn count(marker: &str) -> usize {
    install();
    RECORDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|line| line.starts_with("ERROR") && line.contains(marker))
        .count()
}
