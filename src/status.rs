//! System status for the heartbeat: load, CPU, memory, root disk (sysinfo, no shelling out).

use std::sync::Mutex;

use dtma_protocol::{DiskStatus, MemoryStatus, Status};
use sysinfo::{Disks, System};

/// Keeps the sysinfo state between samples (CPU usage needs two samples).
pub struct Sampler {
    system: Mutex<System>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            system: Mutex::new(System::new()),
        }
    }
}

/// A snapshot of the machine.
pub struct Snapshot {
    pub load_average: [f64; 3],
    pub cpu_load_percent: f64,
    pub memory: MemoryStatus,
    pub disk: Option<DiskStatus>,
}

impl Sampler {
    /// Take a sample. Blocking (reads /proc): call from `spawn_blocking`.
    pub fn sample(&self) -> Snapshot {
        let mut sys = self.system.lock().unwrap_or_else(|p| p.into_inner());
        sys.refresh_memory();
        sys.refresh_cpu_usage();
        let load = System::load_average();
        let disks = Disks::new_with_refreshed_list();
        let disk = disks
            .list()
            .iter()
            .find(|d| d.mount_point() == std::path::Path::new("/"))
            .map(|d| DiskStatus {
                mount: d.mount_point().display().to_string(),
                total_bytes: d.total_space(),
                used_bytes: d.total_space().saturating_sub(d.available_space()),
                free_bytes: d.available_space(),
            });
        Snapshot {
            load_average: [load.one, load.five, load.fifteen],
            cpu_load_percent: f64::from(sys.global_cpu_usage()),
            memory: MemoryStatus {
                total_bytes: sys.total_memory(),
                used_bytes: sys.used_memory(),
                free_bytes: sys.free_memory(),
                available_bytes: sys.available_memory(),
            },
            disk,
        }
    }

    /// The heartbeat message.
    pub fn status(&self, uptime_s: u64, streams: (u64, u64)) -> Status {
        let s = self.sample();
        Status {
            agent_version: crate::VERSION.to_owned(),
            uptime_s,
            at: crate::now_rfc3339(),
            load_average: s.load_average,
            cpu_load_percent: s.cpu_load_percent,
            memory: s.memory,
            disk: s.disk,
            streams_running: streams.0,
            streams_held: streams.1,
            tool_statuses: Vec::new(),
            sandbox: None,
        }
    }
}
