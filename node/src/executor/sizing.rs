//! How many executors this node runs: `max(1, (available - min_free) / per_executor)`, capped
//! by `--max-executors`, re-evaluated every few seconds while the node runs.
//!
//! "Available" counts the memory our own executor processes use as available to executors:
//! otherwise every running task would shrink the pool that runs it, and the count would chase
//! its own tail. The RAM source is a trait so tests can play a machine whose RAM comes and goes.

use std::path::PathBuf;

const MB: u64 = 1024 * 1024;

/// What the node may run, as published to the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub executors: usize,
    /// RAM the count was computed from (available + what our executors hold), MB.
    pub available_ram_mb: u64,
}

/// `max(1, (available - min_free) / per_executor)`, capped by `max`.
pub fn executor_count(
    available_bytes: u64,
    ram_per_executor_mb: u64,
    min_free_mb: u64,
    max: Option<usize>,
) -> usize {
    let usable = available_bytes.saturating_sub(min_free_mb.saturating_mul(MB));
    let n = (usable / ram_per_executor_mb.max(1).saturating_mul(MB)).max(1);
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    match max {
        Some(m) => n.min(m.max(1)),
        None => n,
    }
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
}

impl Sizer {
    pub fn evaluate(&mut self, ours: &[u32]) -> Capacity {
        let available = self.source.available_for_executors(ours);
        Capacity {
            executors: executor_count(
                available,
                self.ram_per_executor_mb,
                self.min_free_ram_mb,
                self.max_executors,
            ),
            available_ram_mb: available / MB,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_count_follows_the_formula() {
        let gb = 1024 * MB;
        assert_eq!(
            executor_count(24 * gb, 128, 512, None),
            (24 * 1024 - 512) / 128
        );
        assert_eq!(
            executor_count(24 * gb, 128, 512, Some(8)),
            8,
            "capped by --max-executors"
        );
        assert_eq!(executor_count(256 * MB, 128, 512, None), 1, "at least one");
        assert_eq!(executor_count(0, 128, 512, None), 1);
        assert_eq!(executor_count(1024 * MB, 128, 512, None), 4);
        assert_eq!(
            executor_count(1024 * MB + 127 * MB, 128, 512, None),
            4,
            "rounds down"
        );
        assert_eq!(executor_count(2 * gb, 256, 0, None), 8);
    }

    #[test]
    fn sizer_follows_its_source() {
        let mut s = Sizer {
            source: Box::new(FixedRam(1536 * MB)),
            ram_per_executor_mb: 128,
            min_free_ram_mb: 512,
            max_executors: None,
        };
        assert_eq!(
            s.evaluate(&[]),
            Capacity {
                executors: 8,
                available_ram_mb: 1536
            }
        );
        s.max_executors = Some(3);
        assert_eq!(s.evaluate(&[]).executors, 3);
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
