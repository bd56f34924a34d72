//! Host figures (CPU, memory, the filesystem holding the data directory, this process's
//! resident memory), read with `sysinfo` when Prometheus scrapes or `/status/services` is asked,
//! and exported as `lgsp_host_*` / `lgsp_process_*` gauges.
//!
//! Invariants: a sample only reads `/proc` and calls `statvfs` on one filesystem (no directory
//! walk, no process list), so it is cheap enough to run on every scrape; CPU usage is the share
//! of CPU time used since the previous sample (sysinfo needs two readings at least
//! [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] apart, so a sample that comes sooner reuses the
//! previous figure); a figure that cannot be read is `None`, never a made-up zero.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::{Gauge, IntGauge, Registry};
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// One reading of the host.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HostFigures {
    /// Share of all CPUs' time spent busy since the previous sample, 0.0 to 1.0.
    pub cpu_usage_ratio: f64,
    pub memory_total_bytes: u64,
    /// Total minus what the kernel says is available (page cache counts as available).
    pub memory_used_bytes: u64,
    /// Free space for unprivileged writers on the data directory's filesystem; `None` when the
    /// filesystem could not be found or read.
    pub data_dir_free_bytes: Option<u64>,
    pub data_dir_total_bytes: Option<u64>,
    /// Resident memory of this process; `None` if `/proc/self` could not be read.
    pub process_resident_bytes: Option<u64>,
    /// When this process started (Unix seconds).
    pub process_start_time_seconds: Option<u64>,
}

/// Reads host figures and keeps their gauges current. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<Mutex<Sampler>>,
    gauges: Arc<Gauges>,
}

struct Gauges {
    cpu: Gauge,
    mem_used: IntGauge,
    mem_total: IntGauge,
    disk_free: IntGauge,
    disk_total: IntGauge,
    resident: IntGauge,
    start_time: IntGauge,
}

struct Sampler {
    system: System,
    disks: Disks,
    data_dir: PathBuf,
    /// Index in `disks` of the filesystem holding `data_dir`.
    disk: Option<usize>,
    pid: Option<Pid>,
    last_cpu: Option<(Instant, f64)>,
}

impl Host {
    /// Registers the gauges in `registry` and takes a first CPU reading (the baseline of the
    /// first scrape's usage figure).
    pub fn new(data_dir: &Path, registry: &Registry) -> Result<Host, prometheus::Error> {
        let int = |name: &str, help: &str| crate::ops::metrics::int_gauge(registry, name, help);
        let cpu = Gauge::new(
            "lgsp_host_cpu_usage_ratio",
            "Share of all CPUs' time spent busy since the previous reading (scrape or status check), 0 to 1",
        )?;
        registry.register(Box::new(cpu.clone()))?;
        let gauges = Gauges {
            cpu,
            mem_used: int("lgsp_host_memory_used_bytes", "Host memory in use (total minus available)")?,
            mem_total: int("lgsp_host_memory_total_bytes", "Host memory installed")?,
            disk_free: int("lgsp_host_data_dir_free_bytes", "Free space on the filesystem holding the data directory")?,
            disk_total: int("lgsp_host_data_dir_total_bytes", "Size of the filesystem holding the data directory")?,
            resident: int("lgsp_process_resident_memory_bytes", "Resident memory of the lgsp process")?,
            start_time: int("lgsp_process_start_time_seconds", "Start time of the lgsp process since the Unix epoch")?,
        };
        let mut system = System::new();
        system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        let mut sampler = Sampler {
            system,
            disks: Disks::new(),
            data_dir: data_dir.to_owned(),
            disk: None,
            pid: sysinfo::get_current_pid().ok(),
            last_cpu: None,
        };
        sampler.find_disk();
        Ok(Host { inner: Arc::new(Mutex::new(sampler)), gauges: Arc::new(gauges) })
    }

    /// Reads the host now and updates the gauges. Blocking (reads `/proc`, calls `statvfs`):
    /// call it from a blocking context or accept a sub-millisecond stall.
    pub fn sample(&self) -> HostFigures {
        let f = self.inner.lock().unwrap_or_else(|e| e.into_inner()).sample();
        let g = &self.gauges;
        g.cpu.set(f.cpu_usage_ratio);
        g.mem_used.set(clamp(f.memory_used_bytes));
        g.mem_total.set(clamp(f.memory_total_bytes));
        // An unreadable figure keeps its last value rather than claiming an empty disk.
        if let (Some(free), Some(total)) = (f.data_dir_free_bytes, f.data_dir_total_bytes) {
            g.disk_free.set(clamp(free));
            g.disk_total.set(clamp(total));
        }
        if let Some(r) = f.process_resident_bytes {
            g.resident.set(clamp(r));
        }
        if let Some(t) = f.process_start_time_seconds {
            g.start_time.set(clamp(t));
        }
        f
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Sampler {
    /// Lists the mounted filesystems and picks the one whose mount point is the longest prefix
    /// of the data directory (after resolving symlinks).
    fn find_disk(&mut self) {
        self.disks.refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        let dir = std::fs::canonicalize(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
        self.disk = self
            .disks
            .list()
            .iter()
            .enumerate()
            .filter(|(_, d)| dir.starts_with(d.mount_point()))
            .max_by_key(|(_, d)| d.mount_point().components().count())
            .map(|(i, _)| i);
    }

    fn sample(&mut self) -> HostFigures {
        let now = Instant::now();
        let cpu = match self.last_cpu {
            Some((at, v)) if now.duration_since(at) < sysinfo::MINIMUM_CPU_UPDATE_INTERVAL => v,
            _ => {
                self.system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
                let v = (f64::from(self.system.global_cpu_usage()) / 100.0).clamp(0.0, 1.0);
                self.last_cpu = Some((now, v));
                v
            }
        };
        self.system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let (mut free, mut total) = (None, None);
        let refreshed = self
            .disk
            .and_then(|i| self.disks.list_mut().get_mut(i))
            .is_some_and(|d| d.refresh_specifics(DiskRefreshKind::nothing().with_storage()));
        if !refreshed {
            // Not found at start-up (the directory did not exist yet) or remounted since.
            self.find_disk();
        }
        if let Some(d) = self.disk.and_then(|i| self.disks.list().get(i)) {
            if d.total_space() > 0 {
                free = Some(d.available_space());
                total = Some(d.total_space());
            }
        }
        let (mut resident, mut started) = (None, None);
        if let Some(pid) = self.pid {
            self.system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().with_memory().without_tasks(),
            );
            if let Some(p) = self.system.process(pid) {
                resident = Some(p.memory());
                started = Some(p.start_time());
            }
        }
        HostFigures {
            cpu_usage_ratio: cpu,
            memory_total_bytes: self.system.total_memory(),
            memory_used_bytes: self.system.used_memory(),
            data_dir_free_bytes: free,
            data_dir_total_bytes: total,
            process_resident_bytes: resident,
            process_start_time_seconds: started,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_host_and_sets_the_gauges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::new();
        let host = Host::new(dir.path(), &reg).expect("gauges register");
        let f = host.sample();
        assert!(f.memory_total_bytes > 0 && f.memory_used_bytes <= f.memory_total_bytes, "{f:?}");
        assert!((0.0..=1.0).contains(&f.cpu_usage_ratio), "{f:?}");
        let (free, total) = (f.data_dir_free_bytes.expect("data dir filesystem found"), f.data_dir_total_bytes.expect("size"));
        assert!(total > 0 && free <= total, "{f:?}");
        assert!(f.process_resident_bytes.is_some_and(|r| r > 0), "{f:?}");
        let names: Vec<String> = reg.gather().iter().map(|m| m.name().to_owned()).collect();
        for n in [
            "lgsp_host_cpu_usage_ratio",
            "lgsp_host_memory_used_bytes",
            "lgsp_host_data_dir_free_bytes",
            "lgsp_process_resident_memory_bytes",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        let total_gauge = reg.gather().into_iter().find(|m| m.name() == "lgsp_host_data_dir_total_bytes").expect("registered");
        assert_eq!(total_gauge.get_metric()[0].get_gauge().get_value() as u64, total);
    }
}
