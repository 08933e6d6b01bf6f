//! How much memory a benchmark cell needed, measured the same way for our loop and for the
//! PyTorch reference (`scripts/bench/loop_reference.py` reads the same numbers):
//!
//! - on the CPU, the process's resident-set high-water mark (`VmHWM`), restarted before each
//!   cell by writing `5` to `/proc/self/clear_refs` (Linux 4.0+);
//! - on CUDA, the GPU's used memory as NVML (and `nvidia-smi`) reports it, minus what was used
//!   before this process touched the GPU: the CUDA context, the models and everything the
//!   caching allocator reserved. The allocator keeps every block it ever reserved, so after a
//!   cell this is its peak; it also keeps earlier cells' blocks, so only a process's first cell
//!   (or a cell needing more than the earlier ones) reads exactly. NVML counts the whole device,
//!   so nothing else may run on it meanwhile; per-process counts are not used because
//!   containers hide the process ids they are keyed by.

use nvml_wrapper::Nvml;
use tch::Device;

/// Peak memory of this process, on the CPU or on one GPU.
pub struct PeakMemory {
    /// NVML, the GPU's index and its used bytes before the measurement started.
    gpu: Option<(Nvml, u32, u64)>,
}

impl PeakMemory {
    /// Starts measuring on `device`. On CUDA, call it before anything runs on the device, so
    /// the baseline excludes nothing of ours; without NVML the GPU figure is unavailable.
    pub fn new(device: Device) -> PeakMemory {
        let gpu = match device {
            Device::Cuda(index) => Nvml::init().ok().and_then(|nvml| {
                let index = u32::try_from(index).ok()?;
                let used = device_used_bytes(&nvml, index)?;
                Some((nvml, index, used))
            }),
            _ => None,
        };
        PeakMemory { gpu }
    }

    /// Restarts the CPU measurement before a cell: freed heap goes back to the kernel and the
    /// resident-set high-water mark is reset to the current resident set.
    pub fn restart(&self) {
        crate::malloc::release_free_memory();
        // Kernels older than 4.0 refuse the write; the mark then covers the whole process.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }

    /// Peak memory in MiB: the resident set since [`PeakMemory::restart`] on the CPU, the GPU
    /// memory taken since [`PeakMemory::new`] on CUDA; `None` where it cannot be read.
    pub fn peak_mib(&self) -> Option<f64> {
        self.gpu_taken_mib().or_else(|| {
            self.gpu
                .is_none()
                .then(|| proc_status_mib("VmHWM:"))
                .flatten()
        })
    }

    /// Memory in use now in MiB: the resident set on the CPU, the GPU memory taken since
    /// [`PeakMemory::new`] on CUDA. Read at a cell's start, it is what the models (and on
    /// CUDA the context and cache) hold before the cell's own work.
    pub fn in_use_mib(&self) -> Option<f64> {
        self.gpu_taken_mib().or_else(|| {
            self.gpu
                .is_none()
                .then(|| proc_status_mib("VmRSS:"))
                .flatten()
        })
    }

    fn gpu_taken_mib(&self) -> Option<f64> {
        let (nvml, index, baseline) = self.gpu.as_ref()?;
        let used = device_used_bytes(nvml, *index)?;
        Some(used.saturating_sub(*baseline) as f64 / MIB)
    }
}

const MIB: f64 = (1u64 << 20) as f64;

fn device_used_bytes(nvml: &Nvml, index: u32) -> Option<u64> {
    Some(nvml.device_by_index(index).ok()?.memory_info().ok()?.used)
}

/// A `kB` field of `/proc/self/status` (`VmHWM:`, `VmRSS:`), in MiB.
fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_high_water_mark_restarts_and_then_sees_a_new_allocation() {
        let memory = PeakMemory::new(Device::Cpu);
        memory.restart();
        let before = memory.peak_mib().expect("VmHWM is readable on Linux");
        let resident = memory.in_use_mib().expect("VmRSS is readable on Linux");
        assert!(
            resident <= before + 1.0,
            "{resident} MiB resident, peak {before} MiB"
        );
        // 1 GiB, so other tests of this binary running meanwhile cannot account for the rise
        // or hide the fall.
        let block = std::hint::black_box(vec![1u8; 1 << 30]);
        let after = memory.peak_mib().unwrap();
        assert!(after - before > 900.0, "{before} MiB, then {after} MiB");
        drop(block);
        memory.restart();
        let again = memory.peak_mib().unwrap();
        assert!(
            again < after - 512.0,
            "not restarted: {again} MiB after {after} MiB"
        );
    }
}
