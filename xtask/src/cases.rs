//! Every bench case the issues name, with its baseline and its target.

/// One bench case: a criterion group of the same name holding the functions
/// `subject` and `baseline`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Case {
    /// The criterion group name, e.g. `transport.unix_echo_rtt`.
    pub(crate) name: &'static str,
    /// What the `baseline` function measures, for people.
    pub(crate) baseline: &'static str,
    /// The largest acceptable `subject / baseline` ratio, if the issue sets one.
    pub(crate) target: Option<f64>,
}

impl Case {
    /// Whether `ratio` meets the target; `None` when the case has no target.
    pub(crate) fn meets(&self, ratio: f64) -> Option<bool> {
        self.target.map(|target| ratio <= target)
    }
}

/// The cases, in the order reports list them. Add a row when an issue names a
/// new case; the bench itself lands with the code it measures.
pub(crate) const CASES: &[Case] = &[
    Case {
        name: "transport.unix_echo_rtt",
        baseline: "raw socketpair ping-pong, 8 bytes",
        target: Some(1.2),
    },
    Case {
        name: "transport.tcp_echo_rtt",
        baseline: "raw TCP ping-pong, 8 bytes",
        target: Some(1.2),
    },
    Case {
        name: "thread.spawn_wait",
        baseline: "std::thread::spawn + join",
        target: Some(0.25),
    },
    Case {
        name: "slave_thread.invoke_rtt",
        baseline: "crossbeam bounded(1) ping-pong",
        target: Some(1.5),
    },
    Case {
        name: "slave_thread.schedule_throughput",
        baseline: "crossbeam send + recv per item",
        target: Some(3.0),
    },
    Case {
        name: "process.invoke_rtt",
        baseline: "raw socketpair ping-pong between processes",
        target: Some(1.3),
    },
    Case {
        name: "process.spawn_ready",
        baseline: "bare spawn of the same executable until it answers a ping",
        target: Some(1.2),
    },
    Case {
        name: "process.schedule_throughput",
        baseline: "raw pipelined frames",
        target: None,
    },
    Case {
        name: "process.stream_throughput",
        baseline: "raw pipelined frames",
        target: Some(1.3),
    },
    Case {
        name: "process.remote_method_rtt",
        baseline: "raw ping-pong",
        target: None,
    },
    Case {
        name: "server.invoke_rtt_unix",
        baseline: "raw unix ping-pong",
        target: Some(1.3),
    },
    Case {
        name: "server.invoke_rtt_tcp",
        baseline: "raw TCP ping-pong",
        target: Some(1.3),
    },
    Case {
        name: "server.throughput_64_clients",
        baseline: "raw frames from 64 clients",
        target: None,
    },
    Case {
        name: "shm.handoff_100MiB",
        baseline: "transport.unix_stream_100MiB: raw unix stream in 64 KiB writes",
        target: Some(0.05),
    },
    Case {
        name: "shm.handoff_1MiB",
        baseline: "transport.unix_stream_100MiB: raw unix stream in 64 KiB writes",
        target: None,
    },
    Case {
        name: "process.bytes_100MiB",
        baseline: "raw unix stream into a fresh Vec",
        target: Some(1.0),
    },
    Case {
        name: "process.bytes_100MiB_cold",
        baseline: "raw unix stream of 100 MiB into a fresh Vec",
        target: Some(1.5),
    },
    Case {
        name: "state.get_rtt",
        baseline: "raw unix ping-pong",
        target: Some(1.2),
    },
    Case {
        name: "state.atomic_increment",
        baseline: "raw unix ping-pong",
        target: Some(1.3),
    },
    Case {
        name: "state.watch_latency",
        baseline: "raw unix ping-pong, one way (half a round trip)",
        target: Some(2.0),
    },
    Case {
        name: "state.increments_8x10k",
        baseline: "raw frames from 8 client processes (ping-pong each)",
        target: Some(1.5),
    },
    Case {
        name: "channel.pipe_rtt",
        baseline: "raw socketpair ping-pong between processes",
        target: Some(1.0),
    },
    Case {
        name: "channel.queue_throughput",
        baseline: "raw pipelined frames",
        target: Some(0.5),
    },
    Case {
        name: "channel.queue_fanout",
        baseline: "raw pipelined frames",
        target: Some(0.5),
    },
    Case {
        name: "channel.filtered_recv",
        baseline: "the same send and recv with an empty backlog",
        target: Some(2.0),
    },
    Case {
        name: "worker.process_ready",
        baseline: "process.spawn_ready's baseline: bare spawn of the same executable until it answers a ping",
        target: Some(1.2),
    },
    Case {
        name: "pool.map_threads_1e5",
        baseline: "rayon par_iter().map().collect() of the same inputs",
        target: Some(10.0),
    },
    Case {
        name: "pool.map_processes_1e5",
        baseline: "raw pipelined frames, per frame",
        target: Some(0.03),
    },
    Case {
        name: "persistent.enqueue_throughput",
        baseline: "raw pipelined frames, per frame",
        target: Some(1.0),
    },
    Case {
        name: "process.payload_step",
        baseline: "ns/B of a shared-memory send just past the inline limit (subject: worst inline ns/B from 64 KiB up to the limit)",
        target: Some(1.1),
    },
    Case {
        name: "process.send_257MiB",
        baseline: "ns/B of a 255 MiB argument (subject: a 257 MiB one, above the 320 MiB class)",
        target: Some(1.1),
    },
    Case {
        name: "process.return_1MiB",
        baseline: "the same 1 MiB Vec<u8> sent to the slave (subject: returned from it)",
        target: Some(1.2),
    },
    Case {
        name: "server.throughput_256_clients",
        baseline: "ns/call with 16 clients, 16 in flight each (subject: 256 clients)",
        target: Some(1.2),
    },
    Case {
        name: "server.raw_throughput_256_clients",
        baseline: "raw ns/ping with 16 connections to a thread-per-connection echo, 16 in flight each (subject: 256 connections); no processional in it: the floor of server.throughput_256_clients",
        target: None,
    },
];

/// The case named `name`, if the table has it.
pub(crate) fn find(name: &str) -> Option<&'static Case> {
    CASES.iter().find(|case| case.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_grouped_by_layer() {
        for (index, case) in CASES.iter().enumerate() {
            assert!(
                CASES[..index].iter().all(|other| other.name != case.name),
                "{} is listed twice",
                case.name
            );
            let (layer, function) = case.name.split_once('.').expect("layer.case");
            assert!(!layer.is_empty() && !function.is_empty(), "{}", case.name);
            assert!(!case.baseline.is_empty(), "{} has no baseline", case.name);
        }
    }

    #[test]
    fn meets_compares_with_the_target() {
        let case = find("transport.unix_echo_rtt").expect("listed");
        assert_eq!(case.meets(1.1), Some(true));
        assert_eq!(case.meets(1.3), Some(false));
        assert_eq!(find("shm.handoff_1MiB").expect("listed").meets(9.0), None);
        assert!(find("no.such_case").is_none());
    }
}
