//! Model file formats: parse, validate, and hand out zero-copy views of tensor bytes.
//!
//! Nothing here knows about GPUs or model architectures.

pub mod dtype;
pub mod gguf;
pub mod writer;

pub use dtype::DType;
pub use gguf::{Array, FileBytes, GgufError, GgufFile, Metadata, TensorInfo, Value, ValueType};
pub use writer::GgufWriter;

/// A tensor's type, shape and bytes, borrowed from wherever the model lives.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: DType,
    /// GGUF order: `dims[0]` is the contiguous dimension.
    pub dims: &'a [u64],
    pub data: &'a [u8],
}

impl TensorView<'_> {
    // Saturating, because a view can be built by hand; for a view from a parsed file these
    // products are checked at parse time and never saturate.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }
}

/// Where the model layer gets its weights: it sees names, types, shapes and bytes, never the
/// file format.
pub trait TensorSource {
    fn tensor(&self, name: &str) -> Option<TensorView<'_>>;
}

impl TensorSource for GgufFile {
    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let info = GgufFile::tensor(self, name)?;
        Some(TensorView {
            name: &info.name,
            dtype: info.dtype,
            dims: &info.dims,
            data: self.tensor_data(info),
        })
    }
}
