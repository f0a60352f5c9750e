//! Weight tensors on the GPU (split by rows when over the binding limit) and readback buffers.

use super::{GpuContext, GpuError};
use crate::format::DType;

/// A run of whole rows of a weight tensor in its own buffer.
#[derive(Debug)]
pub struct WeightChunk {
    pub buffer: wgpu::Buffer,
    pub first_row: u32,
    pub n_rows: u32,
}

/// A 2-D weight `(n_rows, row_len)` in its file's block layout. Rows are never split: a chunk
/// holds as many whole rows as fit in one binding.
#[derive(Debug)]
pub struct WeightTensor {
    pub name: String,
    pub dtype: DType,
    pub row_len: u32,
    pub n_rows: u32,
    pub row_bytes: u64,
    pub chunks: Vec<WeightChunk>,
}

impl WeightTensor {
    /// Uploads `data` (`n_rows` rows of `row_len` elements of `dtype`) as is.
    pub async fn upload(
        ctx: &GpuContext,
        name: &str,
        dtype: DType,
        row_len: u32,
        n_rows: u32,
        data: &[u8],
    ) -> Result<Self, GpuError> {
        let row_bytes =
            dtype
                .bytes_for(u64::from(row_len))
                .ok_or_else(|| GpuError::Validation {
                    what: format!("uploading {name}"),
                    message: format!(
                        "row length {row_len} is not a whole number of {dtype} blocks"
                    ),
                })?;
        let total = row_bytes * u64::from(n_rows);
        if total != data.len() as u64 {
            return Err(GpuError::Validation {
                what: format!("uploading {name}"),
                message: format!("expected {total} bytes, got {}", data.len()),
            });
        }
        // Each chunk is padded to four bytes, so leave room for the padding.
        let limit = ctx.max_binding_size().saturating_sub(4);
        let rows_per_chunk = (limit / row_bytes.max(1)).min(u64::from(n_rows.max(1)));
        if rows_per_chunk == 0 {
            return Err(GpuError::BindingTooLarge {
                what: format!("one row of {name}"),
                needed: row_bytes,
                limit: ctx.max_binding_size(),
            });
        }
        let rows_per_chunk = rows_per_chunk as u32;
        let mut chunks = Vec::new();
        let mut first_row = 0u32;
        while first_row < n_rows || (n_rows == 0 && chunks.is_empty()) {
            let rows = rows_per_chunk.min(n_rows - first_row);
            let start = (u64::from(first_row) * row_bytes) as usize;
            let end = start + (u64::from(rows) * row_bytes) as usize;
            let label = if chunks.is_empty() && rows == n_rows {
                name.to_string()
            } else {
                format!("{name}[{first_row}..{}]", first_row + rows)
            };
            let buffer = ctx.storage_buffer_init(&label, &data[start..end]).await?;
            chunks.push(WeightChunk {
                buffer,
                first_row,
                n_rows: rows,
            });
            first_row += rows;
            if rows == 0 {
                break;
            }
        }
        // Let the queue drop its staging copies now rather than after the whole model.
        ctx.queue().submit(None);
        Ok(WeightTensor {
            name: name.to_string(),
            dtype,
            row_len,
            n_rows,
            row_bytes,
            chunks,
        })
    }
}

/// A host-visible buffer that results are copied into and read from.
#[derive(Debug)]
pub struct ReadbackBuffer {
    buffer: wgpu::Buffer,
    size: u64,
}

impl ReadbackBuffer {
    pub async fn new(ctx: &GpuContext, label: &str, size: u64) -> Result<Self, GpuError> {
        let size = size.max(4).next_multiple_of(4);
        let buffer = ctx
            .create_buffer(
                label,
                size,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )
            .await?;
        Ok(ReadbackBuffer { buffer, size })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Records a copy of `size` bytes from `src` at `src_offset` into this buffer's start.
    pub fn copy_from(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        src_offset: u64,
        size: u64,
    ) -> Result<(), GpuError> {
        if size > self.size || !size.is_multiple_of(4) || !src_offset.is_multiple_of(4) {
            return Err(GpuError::Map(format!(
                "bad readback copy: {size} bytes at {src_offset} into a {}-byte buffer",
                self.size
            )));
        }
        encoder.copy_buffer_to_buffer(src, src_offset, &self.buffer, 0, size);
        Ok(())
    }

    /// Waits for the copies submitted so far and returns the first `size` bytes.
    pub async fn read(&self, ctx: &GpuContext, size: u64) -> Result<Vec<u8>, GpuError> {
        let size = size.min(self.size).next_multiple_of(4);
        let slice = self.buffer.slice(..size);
        ctx.map_read(slice).await?;
        let bytes = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| GpuError::Map(e.to_string()))?;
            view.to_vec()
        };
        self.buffer.unmap();
        Ok(bytes)
    }

    /// Reads `n` f32 values.
    pub async fn read_f32(&self, ctx: &GpuContext, n: usize) -> Result<Vec<f32>, GpuError> {
        let bytes = self.read(ctx, (n * 4) as u64).await?;
        Ok(bytes
            .chunks_exact(4)
            .take(n)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Reads `n` u32 values.
    pub async fn read_u32(&self, ctx: &GpuContext, n: usize) -> Result<Vec<u32>, GpuError> {
        let bytes = self.read(ctx, (n * 4) as u64).await?;
        Ok(bytes
            .chunks_exact(4)
            .take(n)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}
