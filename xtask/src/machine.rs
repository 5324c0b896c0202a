//! The date and the machine a bench run happened on, for its report.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the report says about where and when it was measured.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    /// The CPUs available to the process.
    pub(crate) cpus: usize,
    /// The CPU model from `/proc/cpuinfo`, or `unknown CPU`.
    pub(crate) cpu_model: String,
    /// The kernel, e.g. `Linux 6.8.0`.
    pub(crate) os: String,
    /// `rustc --version`, or `unknown rustc`.
    pub(crate) rustc: String,
}

impl Machine {
    /// Describes the machine this runs on.
    pub(crate) fn describe() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| cpu_model(&info))
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let os = match std::fs::read_to_string("/proc/sys/kernel/osrelease") {
            Ok(release) => format!("{} {}", std::env::consts::OS, release.trim()),
            Err(_) => std::env::consts::OS.to_owned(),
        };
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let rustc = Command::new(rustc)
            .arg("--version")
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown rustc".to_owned());
        Machine {
            cpus,
            cpu_model,
            os,
            rustc,
        }
    }

    /// One line: `2 CPUs, AMD EPYC 7B13, linux 6.8.0`.
    pub(crate) fn summary(&self) -> String {
        let plural = if self.cpus == 1 { "" } else { "s" };
        format!("{} CPU{plural}, {}, {}", self.cpus, self.cpu_model, self.os)
    }
}

/// The first `model name` of a `/proc/cpuinfo` text.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// Now, as `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    utc_timestamp(seconds)
}

/// `seconds` since the Unix epoch as `YYYY-MM-DD HH:MM UTC`.
fn utc_timestamp(seconds: u64) -> String {
    let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX / 2);
    let (year, month, day) = civil_date(days);
    let minute_of_day = seconds % 86_400 / 60;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minute_of_day / 60,
        minute_of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01: eras of 400 years
/// (146 097 days) starting on March 1st, so that leap days end a year.
fn civil_date(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both fit: 1 ≤ day ≤ 31 and 1 ≤ month ≤ 12.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_known_days() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_timestamp(951_868_799), "2000-02-29 23:59 UTC");
        assert_eq!(utc_timestamp(1_709_210_096), "2024-02-29 12:34 UTC");
        assert_eq!(utc_timestamp(4_102_444_800), "2100-01-01 00:00 UTC");
    }

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let info = "processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\n\nprocessor\t: 1\nmodel name\t: Other\n";
        assert_eq!(cpu_model(info).as_deref(), Some("Example CPU @ 2.0GHz"));
        assert_eq!(cpu_model("processor : 0\n"), None);
    }
}
