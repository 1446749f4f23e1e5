//! System figures from sysinfo: load averages, CPU use, memory.
//!
//! CPU use is the change between two refreshes, so the one [`sysinfo::System`] lives as
//! long as the sampler and the first sample has no CPU figure.

/// The system part of a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemFigures {
    pub load_1: f64,
    pub load_5: f64,
    pub load_15: f64,
    /// Whole-machine CPU use in percent since the previous sample; None on the first.
    pub cpu_percent: Option<f32>,
    pub cpu_count: usize,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub uptime_secs: u64,
}

/// Where system figures come from.
pub trait SystemStats: Send {
    /// Refreshes and returns the figures. Cheap (reads a few `/proc` files).
    fn sample(&mut self) -> SystemFigures;
}

/// [`SystemStats`] from sysinfo.
pub struct SysinfoStats {
    system: sysinfo::System,
    primed: bool,
}

impl SysinfoStats {
    pub fn new() -> Self {
        SysinfoStats {
            system: sysinfo::System::new(),
            primed: false,
        }
    }
}

impl Default for SysinfoStats {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SysinfoStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SysinfoStats")
            .field("primed", &self.primed)
            .finish_non_exhaustive()
    }
}

impl SystemStats for SysinfoStats {
    fn sample(&mut self) -> SystemFigures {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let cpu_percent = self.primed.then(|| self.system.global_cpu_usage());
        self.primed = true;
        let load = sysinfo::System::load_average();
        SystemFigures {
            load_1: load.one,
            load_5: load.five,
            load_15: load.fifteen,
            cpu_percent,
            cpu_count: self.system.cpus().len(),
            memory_total_bytes: self.system.total_memory(),
            memory_available_bytes: self.system.available_memory(),
            swap_total_bytes: self.system.total_swap(),
            swap_used_bytes: self.system.used_swap(),
            uptime_secs: sysinfo::System::uptime(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_of_this_machine_are_plausible() {
        let mut stats = SysinfoStats::new();
        let first = stats.sample();
        assert_eq!(
            first.cpu_percent, None,
            "no CPU figure without a previous sample"
        );
        assert!(first.cpu_count > 0);
        assert!(first.memory_total_bytes > 0);
        assert!(first.memory_available_bytes <= first.memory_total_bytes);
        assert!(first.load_1 >= 0.0);
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let second = stats.sample();
        let cpu = second.cpu_percent.expect("CPU figure on the second sample");
        assert!((0.0..=100.0).contains(&cpu), "{cpu}");
    }
}
