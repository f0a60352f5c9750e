//! GGUF reader (versions 2 and 3).
//!
//! The file is parsed from one byte slice (a memory map on native targets, an owned buffer on the
//! web). Every count, length, offset and size read from the file is checked against the bytes that
//! remain, with checked arithmetic, before anything is allocated, so a hostile file costs at most a
//! small multiple of its own size, never panics and never recurses without bound. Positions are
//! kept in `u64` and converted to `usize` only through checked conversions: the library also runs
//! on wasm32, where `usize` is 32 bits.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::dtype::DType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Larger alignments than this serve no hardware and only waste file space; a file asking for one
/// is corrupt or hostile.
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// ggml keeps tensor names in a fixed 64-byte field (63 bytes and a terminator).
pub const MAX_TENSOR_NAME: u64 = 63;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal GGUF, but no model uses more than a couple of levels; a deep nest is
/// an attempt to exhaust the stack.
pub const MAX_ARRAY_DEPTH: u32 = 8;
/// The smallest a key/value pair can be: key length (8), empty key, type (4), a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// The smallest a tensor info can be: name length (8), empty name, n_dims (4), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// The most entries reserved up front for any count read from the file. Counts are already
/// bounded by the bytes that remain, but a collection entry is larger than the smallest encoding
/// of one, so a large file with a hostile count could still make us reserve gigabytes before a
/// single entry is read. Past this, collections grow only as entries are actually parsed.
const MAX_PREALLOC: u64 = 4096;

/// What went wrong reading a GGUF file. Each variant names the problem and where it is.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "not a GGUF file: it starts with the bytes {found:02x?} instead of the magic bytes \"GGUF\""
    )]
    BadMagic { found: Vec<u8> },
    #[error("{path} is a directory, not a GGUF file")]
    IsDirectory { path: String },
    #[error("big-endian GGUF files are not supported (this is a little-endian reader)")]
    BigEndian,
    #[error("unsupported version {0} of the GGUF format (versions 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    #[error(
        "file truncated or corrupt: {what} at byte {offset} needs {needed} bytes, but only {remaining} remain"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        remaining: u64,
    },
    #[error(
        "absurd {what} count {count}: the {remaining} bytes left in the file hold at most {max}"
    )]
    AbsurdCount {
        what: &'static str,
        count: u64,
        remaining: u64,
        max: u64,
    },
    #[error("{what} at byte {offset} is not valid UTF-8 text")]
    BadUtf8 { what: String, offset: u64 },
    #[error("metadata key {key:?} has unknown value type {type_id} (GGUF defines types 0 to 12)")]
    UnknownValueType { key: String, type_id: u32 },
    #[error(
        "metadata key {key:?}: array has unknown element type {type_id} (GGUF defines types 0 to 12)"
    )]
    UnknownArrayType { key: String, type_id: u32 },
    #[error("metadata key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels")]
    NestingTooDeep { key: String },
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    #[error("general.alignment must be a u32, found a {0}")]
    AlignmentType(&'static str),
    #[error(
        "general.alignment {0} is invalid: it must be a power of two between 1 and {MAX_ALIGNMENT}"
    )]
    BadAlignment(u64),
    #[error(
        "tensor {name:?}: name is {len} bytes, longer than the {MAX_TENSOR_NAME} bytes ggml allows"
    )]
    TensorNameTooLong { name: String, len: u64 },
    #[error("tensor {name:?} has {n_dims} dimensions; at most {MAX_DIMS} are supported")]
    TooManyDims { name: String, n_dims: u32 },
    #[error(
        "tensor {name:?}: dimensions {dims:?} overflow a 64-bit size (element count or byte size past 2^63)"
    )]
    DimsOverflow { name: String, dims: Vec<u64> },
    #[error("tensor {name:?} has an unknown data type (ggml type {type_id})")]
    UnknownTensorType { name: String, type_id: u32 },
    #[error(
        "tensor {name:?}: row length {row_len} is not a multiple of the {dtype} block of {block_len}"
    )]
    RowNotBlockMultiple {
        name: String,
        dtype: DType,
        row_len: u64,
        block_len: u64,
    },
    #[error("tensor {name:?}: data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor {name:?}: data at {offset}..{end} of the data section lies past the end of the file \
         (the data section holds {data_len} bytes; the file is truncated or the offset is corrupt)"
    )]
    DataOutOfBounds {
        name: String,
        offset: u64,
        end: u64,
        data_len: u64,
    },
    #[error("tensors {first:?} and {second:?} overlap in the data section")]
    Overlap { first: String, second: String },
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
}

/// Capacity to reserve for `count` entries read from the file.
fn prealloc(count: u64) -> usize {
    usize::try_from(count.min(MAX_PREALLOC)).unwrap_or(0)
}

/// usize is at most 64 bits on every target Rust supports, so the fallback is never taken.
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The type of a metadata value as GGUF numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The GGUF number of this type, as written in files.
    pub fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The fewest bytes one value of this type takes in a file.
    fn min_bytes(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
            String => 8,
            Array => 4 + 8,
        }
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A typed array: elements are stored unboxed, so a large array costs about what it takes on disk.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The value as an unsigned integer, from any integer type that holds a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, from any numeric type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64).or(match *self {
                Value::I8(v) => Some(v.into()),
                Value::I16(v) => Some(v.into()),
                Value::I32(v) => Some(v.into()),
                Value::I64(v) => Some(v as f64),
                _ => None,
            }),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn element_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Integer elements widened to i64; `None` for non-integer arrays or u64 values past i64.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            Array::U8(v) => v.iter().map(|&x| x.into()).collect(),
            Array::I8(v) => v.iter().map(|&x| x.into()).collect(),
            Array::U16(v) => v.iter().map(|&x| x.into()).collect(),
            Array::I16(v) => v.iter().map(|&x| x.into()).collect(),
            Array::U32(v) => v.iter().map(|&x| x.into()).collect(),
            Array::I32(v) => v.iter().map(|&x| x.into()).collect(),
            Array::I64(v) => v.clone(),
            Array::U64(v) => v
                .iter()
                .map(|&x| i64::try_from(x).ok())
                .collect::<Option<_>>()?,
            _ => return None,
        })
    }

    /// Numeric elements as f32.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        Some(match self {
            Array::F32(v) => v.clone(),
            Array::F64(v) => v.iter().map(|&x| x as f32).collect(),
            other => other.to_i64_vec()?.into_iter().map(|x| x as f32).collect(),
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(v) => write!(f, "{v:?}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Array(a) => write!(f, "{a}"),
        }
    }
}

impl fmt::Display for Array {
    /// Shows the type, the length and the first few elements: vocabularies run to 100k entries.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 6;
        fn list<T: fmt::Debug>(f: &mut fmt::Formatter<'_>, v: &[T]) -> fmt::Result {
            let shown: Vec<_> = v.iter().take(SHOWN).collect();
            let more = if v.len() > SHOWN { ", ..." } else { "" };
            write!(f, "{shown:?}{more}")
        }
        write!(f, "[{}; {}] ", self.element_type().name(), self.len())?;
        match self {
            Array::U8(v) => list(f, v),
            Array::I8(v) => list(f, v),
            Array::U16(v) => list(f, v),
            Array::I16(v) => list(f, v),
            Array::U32(v) => list(f, v),
            Array::I32(v) => list(f, v),
            Array::F32(v) => list(f, v),
            Array::Bool(v) => list(f, v),
            Array::String(v) => list(f, v),
            Array::Array(v) => list(f, v),
            Array::U64(v) => list(f, v),
            Array::I64(v) => list(f, v),
            Array::F64(v) => list(f, v),
        }
    }
}

/// Key/value metadata in file order, with lookup by key.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&Value> {
        let &i = self.index.get(key)?;
        self.entries.get(i).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    pub fn get_array(&self, key: &str) -> Option<&Array> {
        self.get(key).and_then(Value::as_array)
    }

    /// Builds metadata from pairs; a repeated key is an error, as it is in a file.
    pub fn from_entries(entries: Vec<(String, Value)>) -> Result<Self, GgufError> {
        let mut metadata = Metadata {
            entries: Vec::with_capacity(entries.len()),
            index: HashMap::with_capacity(entries.len()),
        };
        for (key, value) in entries {
            metadata.push(key, value)?;
        }
        Ok(metadata)
    }

    fn push(&mut self, key: String, value: Value) -> Result<(), GgufError> {
        if self.index.contains_key(&key) {
            return Err(GgufError::DuplicateKey(key));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }
}

/// One tensor's entry in the file's tensor table.
///
/// For a parsed tensor, the product of its non-zero dimensions fits in an `i64` (as ggml
/// requires), so `n_elements`, `n_rows` and any other partial product cannot overflow.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the innermost (contiguous) one, ggml's `ne0`.
    pub dims: Vec<u64>,
    pub dtype: DType,
    /// Offset from the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Elements in one row (the innermost dimension).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of every dimension but the first.
    pub fn n_rows(&self) -> u64 {
        // Saturating only matters for a hand-built info; a parsed one never overflows here.
        self.dims
            .iter()
            .skip(1)
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }
}

/// The bytes a GGUF file was parsed from.
#[derive(Clone)]
pub enum FileBytes {
    #[cfg(feature = "native")]
    Mapped(Arc<memmap2::Mmap>),
    Owned(Arc<[u8]>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(feature = "native")]
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(b) => b,
        }
    }
}

impl fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileBytes({} bytes)", self.len())
    }
}

/// A parsed GGUF file: metadata, tensor table and zero-copy access to tensor data.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub version: u32,
    pub alignment: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: u64,
    bytes: FileBytes,
}

impl GgufFile {
    /// Opens a file through a read-only memory map: tensor data is never copied on the host.
    #[cfg(feature = "native")]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // Mapping a directory fails with the unhelpful "No such device".
        if file.metadata().map_err(io)?.is_dir() {
            return Err(GgufError::IsDirectory {
                path: path.display().to_string(),
            });
        }
        // SAFETY: the map is read-only and private to this process. Another process truncating the
        // file while it is mapped would fault on access, as it does in every mmap-based loader; we
        // accept that for the zero-copy load.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(FileBytes::Mapped(Arc::new(map)))
    }

    /// Parses a file held in memory (the browser has no file system to map).
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Result<Self, GgufError> {
        Self::parse(FileBytes::Owned(bytes.into()))
    }

    fn parse(bytes: FileBytes) -> Result<Self, GgufError> {
        let mut r = Reader::new(&bytes);
        let magic = r.bytes(4, "the magic bytes")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                found: magic.to_vec(),
            });
        }
        let version = r.u32("the version")?;
        if version != 2 && version != 3 {
            // A big-endian file stores the version byte-swapped: 3 reads as 0x03000000.
            if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
                return Err(GgufError::BigEndian);
            }
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_kv = r.u64("the metadata key/value count")?;
        r.check_count("metadata key/value", n_kv, MIN_KV_BYTES)?;
        r.check_count("tensor", n_tensors, MIN_TENSOR_INFO_BYTES)?;

        let mut metadata = Metadata {
            entries: Vec::with_capacity(prealloc(n_kv)),
            index: HashMap::with_capacity(prealloc(n_kv)),
        };
        for _ in 0..n_kv {
            let key = r.string("a metadata key")?;
            if metadata.index.contains_key(&key) {
                return Err(GgufError::DuplicateKey(key));
            }
            let type_id = r.u32(&format!("the value type of metadata key {key:?}"))?;
            let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
                key: key.clone(),
                type_id,
            })?;
            let value = r.value(&key, ty)?;
            metadata.push(key, value)?;
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) => u64::from(*a),
            Some(other) => return Err(GgufError::AlignmentType(other.value_type().name())),
        };
        if !alignment.is_power_of_two() || alignment > MAX_ALIGNMENT {
            return Err(GgufError::BadAlignment(alignment));
        }

        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(prealloc(n_tensors));
        let mut tensor_index = HashMap::with_capacity(prealloc(n_tensors));
        for _ in 0..n_tensors {
            let info = r.tensor_info()?;
            if tensor_index.contains_key(&info.name) {
                return Err(GgufError::DuplicateTensor(info.name));
            }
            tensor_index.insert(info.name.clone(), tensors.len());
            tensors.push(info);
        }

        let header_end = to_u64(r.pos);
        let file_len = to_u64(bytes.len());
        // The data section starts at the next multiple of the alignment. A file whose tensors are
        // all empty may end before it, so this may lie past the end of the file.
        let data_offset = header_end
            .checked_next_multiple_of(alignment)
            .ok_or(GgufError::BadAlignment(alignment))?;
        let data_len = file_len.saturating_sub(data_offset);
        for t in &tensors {
            if !t.offset.is_multiple_of(alignment) {
                return Err(GgufError::MisalignedOffset {
                    name: t.name.clone(),
                    offset: t.offset,
                    alignment,
                });
            }
            match t.offset.checked_add(t.n_bytes) {
                Some(end) if end <= data_len => {}
                end => {
                    return Err(GgufError::DataOutOfBounds {
                        name: t.name.clone(),
                        offset: t.offset,
                        end: end.unwrap_or(u64::MAX),
                        data_len,
                    });
                }
            }
        }
        // Every range is in bounds now, so these sums cannot overflow.
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
        by_offset.sort_by_key(|t| t.offset);
        for pair in by_offset.windows(2) {
            if let [a, b] = pair
                && a.offset.saturating_add(a.n_bytes) > b.offset
            {
                return Err(GgufError::Overlap {
                    first: a.name.clone(),
                    second: b.name.clone(),
                });
            }
        }

        Ok(GgufFile {
            version,
            alignment,
            metadata,
            tensors,
            tensor_index,
            data_offset,
            bytes,
        })
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let &i = self.tensor_index.get(name)?;
        self.tensors.get(i)
    }

    /// The tensor's bytes, borrowed from the mapped file.
    ///
    /// Bounds were checked at parse time against this same buffer. An info that does not belong
    /// to this file, or an empty tensor placed where the file has already ended, gives an empty
    /// slice rather than a panic.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let range = || {
            let start = self.data_offset.checked_add(info.offset)?;
            let end = start.checked_add(info.n_bytes)?;
            Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
        };
        range()
            .and_then(|range| self.bytes.get(range))
            .unwrap_or(&[])
    }

    /// Offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn file_len(&self) -> u64 {
        to_u64(self.bytes.len())
    }

    /// The whole file as parsed (the memory map on native targets); tensor data borrows from it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A bounds-checked little-endian cursor. `pos` never exceeds `buf.len()`.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    fn remaining(&self) -> u64 {
        to_u64(self.rest().len())
    }

    fn truncated(&self, what: &str, needed: u64) -> GgufError {
        GgufError::Truncated {
            what: what.to_string(),
            offset: to_u64(self.pos),
            needed,
            remaining: self.remaining(),
        }
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let taken = usize::try_from(n).ok().and_then(|n| self.rest().get(..n));
        let taken = taken.ok_or_else(|| self.truncated(what, n))?;
        self.pos += taken.len();
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let b = self.bytes(to_u64(N), what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Rejects a count whose entries could not fit in what remains, before anything is sized
    /// from it.
    fn check_count(&self, what: &'static str, count: u64, min_bytes: u64) -> Result<(), GgufError> {
        let max = self.remaining() / min_bytes;
        if count > max {
            return Err(GgufError::AbsurdCount {
                what,
                count,
                remaining: self.remaining(),
                max,
            });
        }
        Ok(())
    }

    /// A length-prefixed UTF-8 string; the length is checked against the file before any copy.
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        self.text(len, what)
    }

    /// `len` bytes of UTF-8.
    fn text(&mut self, len: u64, what: &str) -> Result<String, GgufError> {
        let at = to_u64(self.pos);
        let raw = self.bytes(len, what)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::BadUtf8 {
                what: what.to_string(),
                offset: at,
            }),
        }
    }

    fn value(&mut self, key: &str, ty: ValueType) -> Result<Value, GgufError> {
        let what = || format!("the {} value of metadata key {key:?}", ty.name());
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(&what())?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(&what())?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what())?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what())?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what())?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what())?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what())?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what())?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what())?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what())?)),
            // GGUF bools are one byte; anything but 0 reads as true, as in llama.cpp.
            ValueType::Bool => Value::Bool(self.array::<1>(&what())?[0] != 0),
            ValueType::String => Value::String(self.string(&what())?),
            ValueType::Array => Value::Array(self.array_value(key, 1)?),
        })
    }

    /// An array at nesting level `depth` (1 for the value of a key). The depth is checked before
    /// anything is read, so a nest of any size costs at most `MAX_ARRAY_DEPTH` stack frames.
    fn array_value(&mut self, key: &str, depth: u32) -> Result<Array, GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::NestingTooDeep {
                key: key.to_string(),
            });
        }
        let header = format!("the array header of metadata key {key:?}");
        let type_id = self.u32(&header)?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownArrayType {
            key: key.to_string(),
            type_id,
        })?;
        let count = self.u64(&header)?;
        let what = format!(
            "the array of {count} {} elements of metadata key {key:?}",
            ty.name()
        );
        // Each element takes at least `min_bytes`, so this bounds both the allocation below and
        // the loop counts by the size of the file.
        if count > self.remaining() / ty.min_bytes() {
            return Err(self.truncated(&what, count.saturating_mul(ty.min_bytes())));
        }
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let raw = self.bytes(count.saturating_mul(ty.min_bytes()), &what)?;
                Array::$variant(
                    raw.chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| {
                            let mut a = [0u8; std::mem::size_of::<$t>()];
                            a.copy_from_slice(c);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            ValueType::U8 => fixed!(U8, u8),
            ValueType::I8 => fixed!(I8, i8),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => {
                Array::Bool(self.bytes(count, &what)?.iter().map(|&b| b != 0).collect())
            }
            ValueType::String => {
                let element = format!("a string in the array of metadata key {key:?}");
                let mut v = Vec::with_capacity(prealloc(count));
                for _ in 0..count {
                    v.push(self.string(&element)?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(prealloc(count));
                for _ in 0..count {
                    v.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, GgufError> {
        let name_len = self.u64("a tensor name")?;
        if name_len > MAX_TENSOR_NAME {
            // Show the start of the name without reading (or allocating) the whole claimed length.
            let shown = self.rest().iter().take(32).copied().collect::<Vec<u8>>();
            return Err(GgufError::TensorNameTooLong {
                name: format!("{}...", String::from_utf8_lossy(&shown)),
                len: name_len,
            });
        }
        let name = self.text(name_len, "a tensor name")?;
        let what = format!("the tensor info of {name:?}");
        let n_dims = self.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims { name, n_dims });
        }
        let mut dims = Vec::with_capacity(prealloc(n_dims.into()));
        for _ in 0..n_dims {
            dims.push(self.u64(&what)?);
        }
        let type_id = self.u32(&what)?;
        let offset = self.u64(&what)?;
        // ggml holds dimensions and element counts in int64_t, and callers multiply subsets of the
        // dimensions (rows are all but the first). Bounding the product of the non-zero
        // dimensions bounds every such partial product too, even when another dimension is 0.
        let nonzero_product = dims
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| i64::try_from(n).is_ok());
        let Some(nonzero_product) = nonzero_product else {
            return Err(GgufError::DimsOverflow { name, dims });
        };
        let n_elements = if dims.contains(&0) {
            0
        } else {
            nonzero_product
        };
        let Some(dtype) = DType::from_ggml(type_id) else {
            return Err(GgufError::UnknownTensorType { name, type_id });
        };
        let row_len = dims.first().copied().unwrap_or(1);
        if !row_len.is_multiple_of(dtype.block_len()) {
            return Err(GgufError::RowNotBlockMultiple {
                name,
                dtype,
                row_len,
                block_len: dtype.block_len(),
            });
        }
        let Some(n_bytes) = dtype.bytes_for(n_elements) else {
            return Err(GgufError::DimsOverflow { name, dims });
        };
        Ok(TensorInfo {
            name,
            dims,
            dtype,
            offset,
            n_elements,
            n_bytes,
        })
    }
}
