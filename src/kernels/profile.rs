//! GPU time per kernel: each dispatch of a profiled step runs in its own compute pass that
//! writes a timestamp at its start and end. Splitting the step into passes adds a little time
//! between dispatches, so a profiled step is not a measured one: `sovereign bench --profile`
//! profiles an extra run after the measured ones.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Dispatch, KernelError, StepShape};
use crate::gpu::{GpuContext, GpuError};

/// The most dispatches one step can profile (two timestamps each); later ones run unprofiled.
const MAX_DISPATCHES: u32 = 2048;

/// GPU time of one kernel at one grid size, summed over the profiled steps.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    /// Shader and override constants.
    pub kernel: String,
    pub workgroups: [u32; 3],
    pub dispatches: u64,
    pub gpu_time: Duration,
}

pub struct Profiler {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Kernel and grid of each profiled dispatch of the step in flight.
    pending: Vec<(Arc<str>, [u32; 3])>,
    totals: BTreeMap<(Arc<str>, [u32; 3]), (u64, u64)>,
}

impl Profiler {
    /// `None` where the device cannot write timestamps.
    pub fn new(ctx: &GpuContext) -> Option<Profiler> {
        if !ctx.timestamps() {
            return None;
        }
        let device = ctx.device();
        let bytes = u64::from(2 * MAX_DISPATCHES) * 8;
        Some(Profiler {
            query_set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * MAX_DISPATCHES,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            pending: Vec::new(),
            totals: BTreeMap::new(),
        })
    }

    /// Records `dispatches` as [`super::encode_all`] does, one timed pass each, and the copy of
    /// their timestamps to the readback buffer; [`Profiler::collect`] reads them once the
    /// encoder's submission has run.
    pub fn encode<'a>(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        dispatches: impl IntoIterator<Item = &'a Dispatch>,
        shape: StepShape,
    ) {
        let max = ctx.limits().max_compute_workgroups_per_dimension;
        self.pending.clear();
        let mut rest = Vec::new();
        for d in dispatches {
            let Some(size) = d.workgroups(shape, max) else {
                continue;
            };
            let i = self.pending.len() as u32;
            if i >= MAX_DISPATCHES {
                rest.push(d);
                continue;
            }
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(d.name()),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &self.query_set,
                    beginning_of_pass_write_index: Some(2 * i),
                    end_of_pass_write_index: Some(2 * i + 1),
                }),
            });
            d.encode(&mut pass, shape, max);
            drop(pass);
            self.pending.push((Arc::clone(d.name()), size));
        }
        if !rest.is_empty() {
            super::encode_all(ctx, encoder, rest, shape);
        }
        let n = 2 * self.pending.len() as u32;
        if n > 0 {
            encoder.resolve_query_set(&self.query_set, 0..n, &self.resolve, 0);
            encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, u64::from(n) * 8);
        }
    }

    /// Adds the step's timestamps to the totals.
    pub async fn collect(&mut self, ctx: &GpuContext) -> Result<(), KernelError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let bytes = self.pending.len() as u64 * 16;
        let slice = self.readback.slice(..bytes);
        ctx.map_read(slice).await?;
        let ticks: Vec<u64> = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| GpuError::Map(e.to_string()))?;
            view.chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        };
        self.readback.unmap();
        let period = f64::from(ctx.queue().get_timestamp_period());
        for ((name, size), pair) in self.pending.drain(..).zip(ticks.chunks_exact(2)) {
            let ns = (pair[1].saturating_sub(pair[0]) as f64 * period).round() as u64;
            let entry = self.totals.entry((name, size)).or_insert((0, 0));
            entry.0 += 1;
            entry.1 += ns;
        }
        Ok(())
    }

    /// The totals since the last call, the costliest first.
    pub fn take(&mut self) -> Vec<KernelTime> {
        let mut out: Vec<KernelTime> = std::mem::take(&mut self.totals)
            .into_iter()
            .map(|((kernel, workgroups), (dispatches, ns))| KernelTime {
                kernel: kernel.to_string(),
                workgroups,
                dispatches,
                gpu_time: Duration::from_nanos(ns),
            })
            .collect();
        out.sort_by_key(|k| std::cmp::Reverse(k.gpu_time));
        out
    }
}
