//! CPU, memory and GPU figures for `/v1/server/status/system-status`.
//!
//! Sampled every 2 s by a background task (CPU usage needs two samples apart),
//! so a request only copies the last snapshot. GPU figures come from
//! `nvidia-smi` when it is on the PATH, and are absent otherwise.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
use tokio_util::sync::CancellationToken;

const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// The last sample; field names as CodeProject's dashboard reads them.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Whole-machine CPU use, percent (0-100).
    pub cpu_usage: f32,
    /// Memory in use on the machine, bytes.
    pub system_mem_usage: u64,
    /// Memory of the machine, bytes.
    pub system_mem_total: u64,
    /// Resident memory of the modhost process, bytes.
    pub server_mem_usage: u64,
    /// GPU utilisation, percent, when a GPU is detectable.
    pub gpu_usage: Option<f32>,
    /// GPU memory in use, bytes, when a GPU is detectable.
    pub gpu_mem_usage: Option<u64>,
    /// GPU name, when detectable.
    pub gpu_name: Option<String>,
    /// Logical CPUs.
    pub cpu_count: usize,
}

/// Shared handle to the latest sample.
#[derive(Default)]
pub struct SystemMonitor {
    // parking_lot: a clone of a small struct under the lock, never an .await.
    last: Mutex<Snapshot>,
}

impl SystemMonitor {
    /// Starts sampling until `shutdown` is cancelled.
    pub fn start(shutdown: CancellationToken) -> Arc<SystemMonitor> {
        let mut system = System::new();
        let pid = sysinfo::get_current_pid().ok();
        // A first sample at start-up (memory and CPU count; CPU use needs
        // two samples), so that no request sees an empty one.
        let monitor = Arc::new(SystemMonitor {
            last: Mutex::new(sample(&mut system, pid)),
        });
        let weak = Arc::downgrade(&monitor);
        tokio::spawn(async move {
            let has_nvidia_smi = which("nvidia-smi");
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                    _ = shutdown.cancelled() => return,
                }
                // sysinfo reads /proc synchronously; it is quick, but keep it
                // off the reactor all the same.
                let (mut snap, returned) = tokio::task::spawn_blocking(move || {
                    let snap = sample(&mut system, pid);
                    (snap, system)
                })
                .await
                .expect("system sampling does not panic");
                system = returned;
                if has_nvidia_smi {
                    read_nvidia_smi(&mut snap).await;
                }
                let Some(monitor) = weak.upgrade() else {
                    return;
                };
                *monitor.last.lock() = snap;
            }
        });
        monitor
    }

    /// The latest sample.
    pub fn snapshot(&self) -> Snapshot {
        self.last.lock().clone()
    }
}

/// The machine's and this process's figures now.
fn sample(system: &mut System, pid: Option<sysinfo::Pid>) -> Snapshot {
    system.refresh_cpu_usage();
    system.refresh_memory();
    if let Some(pid) = pid {
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
    }
    Snapshot {
        cpu_usage: system.global_cpu_usage(),
        system_mem_usage: system.used_memory(),
        system_mem_total: system.total_memory(),
        server_mem_usage: pid
            .and_then(|p| system.process(p))
            .map_or(0, |p| p.memory()),
        cpu_count: system.cpus().len(),
        ..Snapshot::default()
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

async fn read_nvidia_smi(snap: &mut Snapshot) {
    let output = tokio::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .await;
    let Ok(output) = output else { return };
    if output.status.success() {
        apply_nvidia_smi(&String::from_utf8_lossy(&output.stdout), snap);
    }
}

/// Reads the first GPU's line of `nvidia-smi --query-gpu=name,utilization.gpu,memory.used
/// --format=csv,noheader,nounits` (`NAME, PERCENT, MiB`) into `snap`; a line of
/// another shape changes nothing.
fn apply_nvidia_smi(text: &str, snap: &mut Snapshot) {
    let Some(line) = text.lines().next() else {
        return;
    };
    let parts: Vec<&str> = line.split(',').map(str::trim).collect();
    if let [name, util, mem] = parts.as_slice() {
        snap.gpu_name = Some((*name).to_owned());
        snap.gpu_usage = util.parse().ok();
        snap.gpu_mem_usage = mem.parse::<u64>().ok().map(|mib| mib * 1024 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_figures_are_read_from_its_csv() {
        let mut snap = Snapshot::default();
        apply_nvidia_smi("NVIDIA H200, 37, 1024\nNVIDIA H200, 0, 0\n", &mut snap);
        assert_eq!(snap.gpu_name.as_deref(), Some("NVIDIA H200"));
        assert_eq!(snap.gpu_usage, Some(37.0));
        assert_eq!(snap.gpu_mem_usage, Some(1024 * 1024 * 1024));

        let mut snap = Snapshot::default();
        apply_nvidia_smi("No devices were found\n", &mut snap);
        assert_eq!(snap.gpu_name, None);
        assert_eq!(snap.gpu_usage, None);
    }
}
