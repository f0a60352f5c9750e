//! Feeds arbitrary bytes to the GGUF reader. A parse may fail, but it must never panic, hang or
//! allocate far beyond the input; a file that parses must hand out every tensor's bytes and every
//! metadata value without breaking the reader's invariants (checked by the asserts below).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sovereign::format::{Array, GgufFile, TensorSource};

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::from_bytes(data) {
        std::hint::black_box(touch(&file));
    }
});

fn touch(file: &GgufFile) -> u64 {
    let mut sum = 0u64;
    let whole = file.as_bytes().as_ptr_range();
    for info in file.tensors() {
        let data = file.tensor_data(info);
        assert_eq!(data.len() as u64, info.n_bytes, "{}", info.name);
        if !data.is_empty() {
            let r = data.as_ptr_range();
            assert!(
                whole.start <= r.start && r.end <= whole.end,
                "{} is a copy",
                info.name
            );
        }
        sum = data.iter().fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
        let view = TensorSource::tensor(file, &info.name).expect("a listed tensor is found");
        assert_eq!(view.n_elements(), info.n_elements, "{}", info.name);
        assert_eq!(view.data.len(), data.len(), "{}", info.name);
        sum = sum
            .wrapping_add(view.n_rows())
            .wrapping_add(view.row_len())
            .wrapping_add(info.n_rows());
    }
    for (key, value) in file.metadata().iter() {
        assert!(
            file.metadata().get(key).is_some(),
            "{key} not found by lookup"
        );
        sum = sum.wrapping_add(value.to_string().len() as u64);
        sum = sum.wrapping_add(value.as_u64().unwrap_or(0));
        std::hint::black_box((value.as_f64(), value.as_str(), value.as_bool()));
        if let Some(a) = value.as_array() {
            sum = sum.wrapping_add(touch_array(a));
        }
    }
    sum
}

fn touch_array(a: &Array) -> u64 {
    let mut sum = a.len() as u64 + u64::from(a.element_type().id());
    sum += a.to_i64_vec().map_or(0, |v| v.len() as u64);
    sum += a.to_f32_vec().map_or(0, |v| v.len() as u64);
    if let Array::Array(inner) = a {
        for i in inner {
            sum = sum.wrapping_add(touch_array(i));
        }
    }
    sum
}
