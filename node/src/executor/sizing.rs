//! How many executors this node runs, re-evaluated every few seconds while the node runs:
//!
//! - RAM slots: `max(1, (available - min_free) / per_executor)`;
//! - by default `min(RAM slots, CPU cores)`: tasks have no files and no sockets, they are
//!   CPU-bound, so more executors than cores only adds memory and context switches (and
//!   starves the node's own control plane); on a small device RAM still decides;
//! - `--max-executors N` replaces the CPU limit: `min(RAM slots, N)`, above the core count
//!   if the user asks for it.
//!
//! "Available" counts the memory our own executor processes use as available to executors:
//! otherwise every running task would shrink the pool that runs it, and the count would chase
//! its own tail. The RAM source is a trait so tests can play a machine whose RAM comes and goes.

use std::path::PathBuf;

pub use bx3_protocol::api::ExecutorLimit as Limit;

const MB: u64 = 1024 * 1024;

/// What the node may run, as published to the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub executors: usize,
    /// RAM the count was computed from (available + what our executors hold), MB.
    pub available_ram_mb: u64,
    /// Executors the RAM allows.
    pub ram_slots: usize,
    /// CPU cores of the machine (what the OS lets this process use).
    pub cpu_cores: usize,
    /// Which limit decided `executors`.
    pub limited_by: Limit,
}

/// `max(1, (available - min_free) / per_executor)`.
pub fn ram_slots(available_bytes: u64, ram_per_executor_mb: u64, min_free_mb: u64) -> usize {
    let usable = available_bytes.saturating_sub(min_free_mb.saturating_mul(MB));
    let n = (usable / ram_per_executor_mb.max(1).saturating_mul(MB)).max(1);
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The executor count and the limit that decided it: `min(ram_slots, max)` when `max` is
/// given, else `min(ram_slots, cpu_cores)`. A tie goes to RAM (the hard limit).
pub fn decide(ram_slots: usize, cpu_cores: usize, max: Option<usize>) -> (usize, Limit) {
    let ram_slots = ram_slots.max(1);
    let (other, which) = match max {
        Some(m) => (m.max(1), Limit::MaxExecutors),
        None => (cpu_cores.max(1), Limit::Cpu),
    };
    if ram_slots <= other {
        (ram_slots, Limit::Ram)
    } else {
        (other, which)
    }
}

/// The executor count for these figures (see [`decide`]).
pub fn executor_count(
    available_bytes: u64,
    ram_per_executor_mb: u64,
    min_free_mb: u64,
    cpu_cores: usize,
    max: Option<usize>,
) -> usize {
    decide(
        ram_slots(available_bytes, ram_per_executor_mb, min_free_mb),
        cpu_cores,
        max,
    )
    .0
}

/// CPU cores this process may run on (affinity and cgroup quotas included, as the standard
/// library sees them); 1 if unknown.
pub fn cpu_cores() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1)
}

/// Where RAM figures come from.
pub trait RamSource: Send {
    /// Bytes available for executors: what the OS could hand out now, plus the resident memory
    /// of `ours` (our executor processes).
    fn available_for_executors(&mut self, ours: &[u32]) -> u64;
}

/// The real machine, through `sysinfo`.
pub struct SysRam {
    sys: sysinfo::System,
}

impl SysRam {
    pub fn new() -> SysRam {
        SysRam {
            sys: sysinfo::System::new(),
        }
    }
}

impl Default for SysRam {
    fn default() -> Self {
        SysRam::new()
    }
}

impl RamSource for SysRam {
    fn available_for_executors(&mut self, ours: &[u32]) -> u64 {
        self.sys.refresh_memory();
        let mut total = self.sys.available_memory();
        if !ours.is_empty() {
            let pids: Vec<sysinfo::Pid> = ours.iter().map(|p| sysinfo::Pid::from_u32(*p)).collect();
            self.sys.refresh_processes_specifics(
                sysinfo::ProcessesToUpdate::Some(&pids),
                true,
                sysinfo::ProcessRefreshKind::nothing().with_memory(),
            );
            for pid in &pids {
                if let Some(p) = self.sys.process(*pid) {
                    total = total.saturating_add(p.memory());
                }
            }
        }
        total
    }
}

/// Test hook (hidden `--ram-file`): available RAM in MB read from a file at each evaluation,
/// so tests and the bench can make RAM come and go on a real node.
pub struct FileRam {
    pub path: PathBuf,
    pub fallback: SysRam,
}

impl RamSource for FileRam {
    fn available_for_executors(&mut self, ours: &[u32]) -> u64 {
        match std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            Some(mb) => mb.saturating_mul(MB),
            None => self.fallback.available_for_executors(ours),
        }
    }
}

/// Fixed figures, for unit tests.
pub struct FixedRam(pub u64);

impl RamSource for FixedRam {
    fn available_for_executors(&mut self, _ours: &[u32]) -> u64 {
        self.0
    }
}

/// The sizing rule with its settings.
pub struct Sizer {
    pub source: Box<dyn RamSource>,
    pub ram_per_executor_mb: u64,
    pub min_free_ram_mb: u64,
    pub max_executors: Option<usize>,
    /// CPU cores ([`cpu_cores`] on a real node).
    pub cpu_cores: usize,
}

impl Sizer {
    pub fn evaluate(&mut self, ours: &[u32]) -> Capacity {
        let available = self.source.available_for_executors(ours);
        let slots = ram_slots(available, self.ram_per_executor_mb, self.min_free_ram_mb);
        let (executors, limited_by) = decide(slots, self.cpu_cores, self.max_executors);
        Capacity {
            executors,
            available_ram_mb: available / MB,
            ram_slots: slots,
            cpu_cores: self.cpu_cores,
            limited_by,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_slots_follow_the_formula() {
        let gb = 1024 * MB;
        assert_eq!(ram_slots(24 * gb, 128, 512), (24 * 1024 - 512) / 128);
        assert_eq!(ram_slots(256 * MB, 128, 512), 1, "at least one");
        assert_eq!(ram_slots(0, 128, 512), 1);
        assert_eq!(ram_slots(1024 * MB, 128, 512), 4);
        assert_eq!(ram_slots(1024 * MB + 127 * MB, 128, 512), 4, "rounds down");
        assert_eq!(ram_slots(2 * gb, 256, 0), 8);
    }

    #[test]
    fn executor_count_is_ram_and_cpu_bound_unless_the_user_says() {
        let gb = 1024 * MB;
        // This machine's shape: 2 cores, 24 GiB: 180 RAM slots, 2 executors.
        assert_eq!(decide(180, 2, None), (2, Limit::Cpu));
        assert_eq!(executor_count(24 * gb, 128, 512, 2, None), 2);
        // A small device: 1 GiB, 8 cores: RAM still decides.
        assert_eq!(decide(4, 8, None), (4, Limit::Ram));
        assert_eq!(executor_count(gb, 128, 512, 8, None), 4);
        // A tie is RAM's.
        assert_eq!(decide(4, 4, None), (4, Limit::Ram));
        // --max-executors replaces the CPU limit, above the cores if asked...
        assert_eq!(decide(180, 2, Some(8)), (8, Limit::MaxExecutors));
        // ...but never above what RAM allows.
        assert_eq!(decide(4, 2, Some(8)), (4, Limit::Ram));
        assert_eq!(decide(0, 0, Some(0)), (1, Limit::Ram), "at least one");
        assert!(cpu_cores() >= 1);
    }

    #[test]
    fn sizer_follows_its_source() {
        let mut s = Sizer {
            source: Box::new(FixedRam(1536 * MB)),
            ram_per_executor_mb: 128,
            min_free_ram_mb: 512,
            max_executors: None,
            cpu_cores: 16,
        };
        assert_eq!(
            s.evaluate(&[]),
            Capacity {
                executors: 8,
                available_ram_mb: 1536,
                ram_slots: 8,
                cpu_cores: 16,
                limited_by: Limit::Ram,
            }
        );
        s.cpu_cores = 2;
        assert_eq!(
            (s.evaluate(&[]).executors, s.evaluate(&[]).limited_by),
            (2, Limit::Cpu)
        );
        s.max_executors = Some(3);
        assert_eq!(
            (s.evaluate(&[]).executors, s.evaluate(&[]).limited_by),
            (3, Limit::MaxExecutors)
        );
    }

    #[test]
    fn file_source_reads_megabytes_and_falls_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ram");
        let mut src = FileRam {
            path: path.clone(),
            fallback: SysRam::new(),
        };
        std::fs::write(&path, "2048\n").expect("write");
        assert_eq!(src.available_for_executors(&[]), 2048 * MB);
        std::fs::write(&path, "garbage").expect("write");
        assert!(
            src.available_for_executors(&[]) > 0,
            "falls back to the machine"
        );
    }
}
