//! The heap as jemalloc (the binary's global allocator) sees it: live and resident bytes as
//! Prometheus gauges read at each scrape, and an in-use heap profile in pprof format for
//! `GET /debug/pprof/heap`. jemalloc is built with sampling on (`.cargo/config.toml`: one sample
//! per 512 KiB allocated on average), so a profile covers the process from its start.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, Opts};
use tikv_jemalloc_ctl::{epoch, stats};

/// Bytes the program holds (`allocated`) and bytes of the allocator's pages in memory
/// (`resident`), refreshed at each scrape.
pub struct HeapCollector {
    allocated: IntGauge,
    resident: IntGauge,
}

impl HeapCollector {
    pub fn new() -> HeapCollector {
        let gauge = |name: &str, help: &str| {
            IntGauge::with_opts(Opts::new(name, help)).expect("valid metric")
        };
        HeapCollector {
            allocated: gauge(
                "wsfleet_heap_allocated_bytes",
                "Heap bytes the generator holds (jemalloc stats.allocated).",
            ),
            resident: gauge(
                "wsfleet_heap_resident_bytes",
                "Bytes in the allocator's resident pages, including its own overhead and free space (jemalloc stats.resident).",
            ),
        }
    }
}

impl Default for HeapCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for HeapCollector {
    fn desc(&self) -> Vec<&Desc> {
        [&self.allocated, &self.resident]
            .into_iter()
            .flat_map(|gauge| gauge.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // jemalloc's statistics are a snapshot refreshed by advancing its epoch.
        if epoch::advance().is_ok() {
            if let Ok(bytes) = stats::allocated::read() {
                self.allocated.set(saturating_i64(bytes));
            }
            if let Ok(bytes) = stats::resident::read() {
                self.resident.set(saturating_i64(bytes));
            }
        }
        [&self.allocated, &self.resident]
            .into_iter()
            .flat_map(|gauge| gauge.collect())
            .collect()
    }
}

fn saturating_i64(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Why no heap profile could be taken.
#[derive(Debug, thiserror::Error)]
pub enum HeapProfileError {
    #[error("heap profiling is not enabled in this build's allocator")]
    Disabled,
    #[error("dumping the heap profile failed: {0}")]
    Dump(#[from] anyhow::Error),
}

/// The sampled in-use heap in pprof format (gzipped protobuf), for `go tool pprof`. Blocking:
/// jemalloc writes the dump to a temporary file, which is then read and symbolised.
pub fn profile() -> Result<Vec<u8>, HeapProfileError> {
    let ctl = jemalloc_pprof::PROF_CTL
        .as_ref()
        .ok_or(HeapProfileError::Disabled)?;
    Ok(ctl.blocking_lock().dump_pprof()?)
}
