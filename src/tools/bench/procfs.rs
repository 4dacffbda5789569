//! What /proc says about this machine and about the shop's processes:
//! resident memory (VmRSS now, VmHWM the lifetime peak) and CPU time.
//! Linux only; elsewhere the fields stay empty.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::shop::Pid;

/// How often memory is sampled during a phase.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    /// Where the bench's temp databases live (fsync cost depends on it).
    pub temp_dir: String,
}

pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into());
    let mem_kb = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(0u64);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        memory_gib: mem_kb as f64 / (1024.0 * 1024.0),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        temp_dir: std::env::temp_dir().display().to_string(),
    }
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    rss_kb: u64,
    hwm_kb: u64,
    cpu_ticks: u64,
}

fn read(pid: u32) -> Option<Reading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    let stat = stat_after_name(pid)?;
    // utime and stime are fields 14 and 15 (11 and 12 after the name).
    let rest: Vec<&str> = stat.split_whitespace().collect();
    let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(Reading { rss_kb: kb("VmRSS:")?, hwm_kb: kb("VmHWM:")?, cpu_ticks: ticks(11) + ticks(12) })
}

/// Whether the process runs: it exists and isn't a zombie (exited, not
/// yet reaped).
pub fn running(pid: u32) -> bool {
    // The state is the first field after the name.
    stat_after_name(pid).is_some_and(|rest| !rest.trim_start().starts_with('Z'))
}

/// `/proc/{pid}/stat` from its third field on: the fields after the
/// command name, which may hold spaces and parentheses.
fn stat_after_name(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.to_owned())
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on
/// every common Linux).
fn ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A process's resource use during one phase.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub node: String,
    pub pid: u32,
    /// CPU seconds used during the phase.
    pub cpu_s: f64,
    /// Average cores busy (`cpu_s` over the phase's wall time).
    pub cpu_cores: f64,
    /// Highest VmRSS sampled during the phase.
    pub rss_peak_mib: f64,
    /// VmHWM at the end of the phase: the process's peak since it started.
    pub hwm_mib: f64,
}

/// Samples memory of `pids` until [`Sampler::finish`].
pub struct Sampler {
    pids: Vec<Pid>,
    start: Vec<Option<Reading>>,
    started: Instant,
    stop: CancellationToken,
    task: JoinHandle<Vec<u64>>,
}

impl Sampler {
    pub fn start(pids: &[Pid]) -> Sampler {
        let pids = pids.to_vec();
        let start: Vec<Option<Reading>> = pids.iter().map(|p| read(p.pid)).collect();
        let stop = CancellationToken::new();
        let (list, token) = (pids.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut peak = vec![0u64; list.len()];
            loop {
                for (i, p) in list.iter().enumerate() {
                    if let Some(r) = read(p.pid) {
                        peak[i] = peak[i].max(r.rss_kb);
                    }
                }
                tokio::select! {
                    _ = token.cancelled() => return peak,
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
            }
        });
        Sampler { pids, start, started: Instant::now(), stop, task }
    }

    pub async fn finish(self) -> Vec<Usage> {
        self.stop.cancel();
        let peak = self.task.await.unwrap_or_default();
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let tps = ticks_per_sec();
        let mib = |kb: u64| kb as f64 / 1024.0;
        self.pids
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let end = read(p.pid)?;
                let begin = self.start[i].unwrap_or_default();
                let cpu_s = end.cpu_ticks.saturating_sub(begin.cpu_ticks) as f64 / tps;
                Some(Usage {
                    node: p.node.clone(),
                    pid: p.pid,
                    cpu_s,
                    cpu_cores: cpu_s / wall,
                    rss_peak_mib: mib(peak.get(i).copied().unwrap_or(0).max(end.rss_kb)),
                    hwm_mib: mib(end.hwm_kb),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_runs_until_it_has_exited() {
        assert!(running(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        // Exited and not yet reaped: a zombie, which doesn't run.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while running(child.id()) {
            assert!(std::time::Instant::now() < deadline, "`true` still runs after 10 s");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(!running(child.id()));
    }
}
