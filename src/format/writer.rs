//! GGUF writer: builds valid files for tests and synthetic models.

use super::dtype::DType;
use super::gguf::{Array, MAX_ALIGNMENT, Value};

/// Collects metadata and tensors, then lays them out as a version 3 GGUF file.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, DType, Vec<u8>)>,
    alignment: u64,
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            metadata: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
        }
    }

    /// Sets the data alignment (a power of two up to `MAX_ALIGNMENT`). Unless a
    /// `general.alignment` entry is given, one is written for any alignment but the default 32,
    /// since a reader lays out the data section by it.
    pub fn alignment(mut self, alignment: u64) -> Self {
        self.alignment = alignment;
        self
    }

    pub fn kv(mut self, key: &str, value: Value) -> Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Sets `key`, replacing an earlier value in place (or appending a new entry).
    pub fn set(mut self, key: &str, value: Value) -> Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    /// Drops the entry `key`, if any.
    pub fn remove(mut self, key: &str) -> Self {
        self.metadata.retain(|(k, _)| k != key);
        self
    }

    /// Drops the tensor `name`, if any.
    pub fn remove_tensor(mut self, name: &str) -> Self {
        self.tensors.retain(|(n, ..)| n != name);
        self
    }

    /// Adds a tensor; `dims` in GGUF order (contiguous dimension first), `data` already in the
    /// dtype's block layout.
    pub fn tensor(mut self, name: &str, dims: &[u64], dtype: DType, data: Vec<u8>) -> Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), dtype, data));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    /// Streams the file to `sink` (header, then each tensor), so a model of several GiB never
    /// needs a second copy in memory.
    pub fn write_to(&self, sink: &mut impl std::io::Write) -> std::io::Result<()> {
        // The reader accepts nothing outside this range, so neither does the writer.
        let align = self.alignment.clamp(1, MAX_ALIGNMENT);
        let align = usize::try_from(align).unwrap_or(1);
        let implied = (align != 32 && !self.metadata.iter().any(|(k, _)| k == "general.alignment"))
            .then(|| {
                let a = u32::try_from(align).unwrap_or(32);
                ("general.alignment".to_string(), Value::U32(a))
            });
        let metadata: Vec<_> = self.metadata.iter().chain(&implied).collect();
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            write_string(&mut out, key);
            out.extend_from_slice(&value.value_type().id().to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (_, _, _, data) in &self.tensors {
            offsets.push(offset);
            offset = (offset + data.len()).next_multiple_of(align);
        }
        for ((name, dims, dtype, _), off) in self.tensors.iter().zip(&offsets) {
            write_string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&dtype.ggml_id().to_le_bytes());
            out.extend_from_slice(&(*off as u64).to_le_bytes());
        }
        out.resize(out.len().next_multiple_of(align), 0);
        sink.write_all(&out)?;
        let mut written = 0usize;
        for ((_, _, _, data), off) in self.tensors.iter().zip(&offsets) {
            sink.write_all(&vec![0u8; off - written])?;
            sink.write_all(data)?;
            written = off + data.len();
        }
        Ok(())
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => write_string(out, s),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Array(a) => write_array(out, a),
    }
}

fn write_array(out: &mut Vec<u8>, array: &Array) {
    out.extend_from_slice(&array.element_type().id().to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match array {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| write_string(out, s)),
        Array::Array(v) => v.iter().for_each(|a| write_array(out, a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::GgufFile;

    #[test]
    fn written_files_read_back() {
        let nested = Array::Array(vec![
            Array::I32(vec![1, -2]),
            Array::String(vec!["x".into()]),
        ]);
        let bytes = GgufWriter::new()
            .kv("general.architecture", Value::String("llama".into()))
            .kv("a.nested", Value::Array(nested.clone()))
            .kv("a.f", Value::F64(0.25))
            .tensor("w", &[32, 2], DType::Q8_0, vec![7u8; 68])
            .tensor("b", &[3], DType::F32, vec![1u8; 12])
            .to_bytes();
        let file = GgufFile::from_bytes(bytes).unwrap();
        assert_eq!(file.version, 3);
        assert_eq!(
            file.metadata().get_str("general.architecture"),
            Some("llama")
        );
        assert_eq!(file.metadata().get_array("a.nested"), Some(&nested));
        assert_eq!(file.metadata().get_f64("a.f"), Some(0.25));
        let w = file.tensor("w").unwrap();
        assert_eq!(
            (w.dims.as_slice(), w.dtype, w.n_bytes),
            (&[32u64, 2][..], DType::Q8_0, 68)
        );
        assert_eq!(file.tensor_data(w), &[7u8; 68][..]);
        let b = file.tensor("b").unwrap();
        assert_eq!(b.offset % 32, 0);
        assert_eq!(file.tensor_data(b), &[1u8; 12][..]);
    }
}
