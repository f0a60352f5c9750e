//! The GGUF reader against valid files, a known-bad file for every class of corruption we
//! guard against, the committed corpus of those files, and sweeps of truncations and mutations.
//!
//! Bad files are built byte by byte with [`Raw`], so each one breaks exactly one rule; valid
//! files come from `GgufWriter`. `cargo test --test gguf -- --ignored write_corpus` regenerates
//! `tests/corpus/gguf/` (and `corpus_is_up_to_date` fails until it has been run after a change).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sovereign::format::{
    Array, DType, GgufError, GgufFile, GgufWriter, TensorSource, Value, ValueType,
};

// ---------------------------------------------------------------------------------------------
// The largest single allocation made on this thread, so a test can show that a small hostile file
// never makes the reader reserve a large buffer.

struct CountingAlloc;

thread_local! {
    static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

// SAFETY: every call forwards to the system allocator unchanged; the bookkeeping only reads sizes.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(layout.size())));
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(new)));
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Parses `bytes` (already shared, so no copy is counted) and returns the largest single
/// allocation the parse made.
fn parse_counting(bytes: Arc<[u8]>) -> (Result<GgufFile, GgufError>, usize) {
    LARGEST.with(|m| m.set(0));
    let result = GgufFile::from_bytes(bytes);
    (result, LARGEST.with(|m| m.get()))
}

// ---------------------------------------------------------------------------------------------
// A raw builder that can write anything, including headers no writer would produce.

const T_U32: u32 = 4;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const F32: u32 = 0;
const Q4_0: u32 = 2;

#[derive(Clone, Default)]
struct Raw(Vec<u8>);

impl Raw {
    /// Magic, version and the two counts.
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        Raw(b"GGUF".to_vec()).u32(version).u64(n_tensors).u64(n_kv)
    }

    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }

    fn u32(self, v: u32) -> Self {
        self.bytes(&v.to_le_bytes())
    }

    fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_le_bytes())
    }

    /// A GGUF string: u64 length, then the bytes (which need not be UTF-8).
    fn str(self, s: &[u8]) -> Self {
        self.u64(s.len() as u64).bytes(s)
    }

    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.str(key.as_bytes()).u32(T_U32).u32(v)
    }

    fn kv_str(self, key: &str, v: &str) -> Self {
        self.str(key.as_bytes()).u32(T_STRING).str(v.as_bytes())
    }

    fn tensor(self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> Self {
        let mut r = self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ggml_type).u64(offset)
    }

    fn pad_to(mut self, alignment: usize) -> Self {
        self.0.resize(self.0.len().next_multiple_of(alignment), 0);
        self
    }

    fn zeros(mut self, n: usize) -> Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }

    fn done(self) -> Vec<u8> {
        self.0
    }
}

/// A small valid file with a bit of everything; its last bytes are tensor data, so every proper
/// prefix of it is invalid.
fn small_valid() -> Vec<u8> {
    GgufWriter::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("general.alignment", Value::U32(32))
        .kv("llama.block_count", Value::U32(1))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(vec!["<s>".into(), "a".into(), "b".into()])),
        )
        .kv(
            "x.nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, -2]),
                Array::Array(vec![Array::Bool(vec![true])]),
            ])),
        )
        .tensor("token_embd.weight", &[32, 2], DType::Q8_0, pattern(68, 1))
        .tensor("blk.0.attn_norm.weight", &[8], DType::F32, pattern(32, 2))
        .tensor("output.weight", &[32, 1], DType::Q4_1, pattern(20, 3))
        .to_bytes()
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(bytes)
}

// ---------------------------------------------------------------------------------------------
// One bad file per class of corruption.

struct Case {
    /// File name in the corpus, without `.gguf`.
    name: &'static str,
    bytes: Vec<u8>,
    /// A lowercase substring of the error message.
    words: &'static str,
    variant: fn(&GgufError) -> bool,
}

fn case(
    name: &'static str,
    bytes: Vec<u8>,
    words: &'static str,
    variant: fn(&GgufError) -> bool,
) -> Case {
    Case {
        name,
        bytes,
        words,
        variant,
    }
}

/// A one-tensor file: header, that tensor's info, padding and `data` zero bytes.
fn one_tensor(name: &str, dims: &[u64], ggml_type: u32, offset: u64, data: usize) -> Vec<u8> {
    Raw::header(3, 1, 0)
        .tensor(name, dims, ggml_type, offset)
        .pad_to(32)
        .zeros(data)
        .done()
}

/// Arrays nested `levels` deep under one key, the innermost holding one u8.
fn nested(levels: usize) -> Vec<u8> {
    let mut r = Raw::header(3, 0, 1).str(b"x.nested").u32(T_ARRAY);
    for _ in 1..levels {
        r = r.u32(T_ARRAY).u64(1);
    }
    r.u32(0).u64(1).bytes(&[7]).done()
}

fn bad_files() -> Vec<Case> {
    use GgufError as E;
    let mut big_endian = b"GGUF".to_vec();
    big_endian.extend_from_slice(&3u32.to_be_bytes());
    big_endian.extend_from_slice(&0u64.to_be_bytes());
    big_endian.extend_from_slice(&1u64.to_be_bytes());
    big_endian.extend_from_slice(&Raw::default().kv_u32("a.b", 1).done());

    let mut bad_magic = small_valid();
    bad_magic[..4].copy_from_slice(b"GGML");

    let mut truncated_data = small_valid();
    truncated_data.truncate(truncated_data.len() - 5);

    let long_name = "a".repeat(64);

    vec![
        case(
            "empty",
            vec![],
            "truncated or corrupt: the magic bytes at byte 0",
            |e| matches!(e, E::Truncated { .. }),
        ),
        case(
            "bad_magic",
            bad_magic,
            "instead of the magic bytes",
            |e| matches!(e, E::BadMagic { found } if found == b"GGML"),
        ),
        case(
            "version_1",
            Raw::header(1, 0, 0).done(),
            "unsupported version 1 of the",
            |e| matches!(e, E::UnsupportedVersion(1)),
        ),
        case(
            "version_4",
            Raw::header(4, 0, 0).done(),
            "unsupported version 4 of the",
            |e| matches!(e, E::UnsupportedVersion(4)),
        ),
        case("big_endian", big_endian, "big-endian", |e| {
            matches!(e, E::BigEndian)
        }),
        case(
            "absurd_tensor_count",
            Raw::header(3, 1 << 40, 0).zeros(100).done(),
            "absurd tensor count 1099511627776",
            |e| matches!(e, E::AbsurdCount { what: "tensor", count, .. } if *count == 1 << 40),
        ),
        case(
            "absurd_kv_count",
            Raw::header(3, 0, u64::MAX).kv_u32("a.b", 1).done(),
            "absurd metadata key/value count 18446744073709551615",
            |e| {
                matches!(
                    e,
                    E::AbsurdCount {
                        what: "metadata key/value",
                        count: u64::MAX,
                        ..
                    }
                )
            },
        ),
        case(
            "key_past_end",
            Raw::header(3, 0, 1)
                .u64(1 << 30)
                .bytes(b"general.name")
                .done(),
            "truncated or corrupt: a metadata key at byte 32 needs 1073741824 bytes",
            |e| matches!(e, E::Truncated { needed, .. } if *needed == 1 << 30),
        ),
        case(
            "string_past_end",
            Raw::header(3, 0, 1)
                .str(b"general.name")
                .u32(T_STRING)
                .u64(1 << 40)
                .bytes(b"llama")
                .done(),
            "truncated or corrupt: the string value of metadata key \"general.name\"",
            |e| matches!(e, E::Truncated { needed, .. } if *needed == 1 << 40),
        ),
        case(
            "array_past_end",
            Raw::header(3, 0, 1)
                .str(b"tokenizer.ggml.tokens")
                .u32(T_ARRAY)
                .u32(T_STRING)
                .u64(1 << 40)
                .str(b"<s>")
                .done(),
            "truncated or corrupt: the array of 1099511627776 string elements of metadata key \
             \"tokenizer.ggml.tokens\"",
            |e| matches!(e, E::Truncated { .. }),
        ),
        case(
            "unknown_value_type",
            Raw::header(3, 0, 1).str(b"x.mystery").u32(13).u64(0).done(),
            "metadata key \"x.mystery\" has unknown value type 13",
            |e| matches!(e, E::UnknownValueType { key, type_id: 13 } if key == "x.mystery"),
        ),
        case(
            "unknown_array_type",
            Raw::header(3, 0, 1)
                .str(b"x.list")
                .u32(T_ARRAY)
                .u32(99)
                .u64(1)
                .u64(0)
                .done(),
            "metadata key \"x.list\": array has unknown element type 99",
            |e| matches!(e, E::UnknownArrayType { key, type_id: 99 } if key == "x.list"),
        ),
        case(
            "nesting_over_limit",
            nested(9),
            "metadata key \"x.nested\": arrays nested deeper than 8 levels",
            |e| matches!(e, E::NestingTooDeep { key } if key == "x.nested"),
        ),
        // Unchecked, this nest would recurse ten thousand frames deep (the in-memory test below
        // goes to a million); it must fail at the ninth.
        case(
            "nesting_deep",
            nested(10_000),
            "arrays nested deeper than 8 levels",
            |e| matches!(e, E::NestingTooDeep { .. }),
        ),
        case(
            "duplicate_key",
            Raw::header(3, 0, 2)
                .kv_str("general.name", "a")
                .kv_str("general.name", "b")
                .done(),
            "duplicate metadata key \"general.name\"",
            |e| matches!(e, E::DuplicateKey(k) if k == "general.name"),
        ),
        case(
            "alignment_zero",
            Raw::header(3, 0, 1).kv_u32("general.alignment", 0).done(),
            "general.alignment 0 is invalid",
            |e| matches!(e, E::BadAlignment(0)),
        ),
        case(
            "alignment_not_power_of_two",
            Raw::header(3, 0, 1).kv_u32("general.alignment", 48).done(),
            "general.alignment 48 is invalid: it must be a power of two",
            |e| matches!(e, E::BadAlignment(48)),
        ),
        case(
            "alignment_absurd",
            Raw::header(3, 0, 1)
                .kv_u32("general.alignment", 1 << 31)
                .done(),
            "general.alignment 2147483648 is invalid",
            |e| matches!(e, E::BadAlignment(a) if *a == 1 << 31),
        ),
        case(
            "alignment_wrong_type",
            Raw::header(3, 0, 1)
                .str(b"general.alignment")
                .u32(T_U64)
                .u64(32)
                .done(),
            "general.alignment must be a u32, found a u64",
            |e| matches!(e, E::AlignmentType("u64")),
        ),
        case(
            "tensor_name_too_long",
            one_tensor(&long_name, &[4], F32, 0, 16),
            "name is 64 bytes, longer than the 63 bytes ggml allows",
            |e| matches!(e, E::TensorNameTooLong { len: 64, .. }),
        ),
        case(
            "too_many_dims",
            one_tensor("w", &[1, 1, 1, 1, 4], F32, 0, 16),
            "tensor \"w\" has 5 dimensions; at most 4 are supported",
            |e| matches!(e, E::TooManyDims { name, n_dims: 5 } if name == "w"),
        ),
        case(
            "dims_overflow",
            one_tensor("w", &[1 << 40, 1 << 40], F32, 0, 16),
            "tensor \"w\": dimensions [1099511627776, 1099511627776] overflow a 64-bit size",
            |e| matches!(e, E::DimsOverflow { name, .. } if name == "w"),
        ),
        // With wrapping arithmetic 2^32 * 2^32 is 0: an empty tensor that fits anywhere.
        case(
            "dims_wrap_to_zero",
            one_tensor("w", &[1 << 32, 1 << 32], F32, 0, 0),
            "tensor \"w\": dimensions [4294967296, 4294967296] overflow a 64-bit size",
            |e| matches!(e, E::DimsOverflow { name, .. } if name == "w"),
        ),
        // Zero elements in all, but the row count (every dimension but the first) overflows.
        case(
            "dims_zero_and_huge",
            one_tensor("w", &[0, 1 << 40, 1 << 40], F32, 0, 0),
            "tensor \"w\": dimensions [0, 1099511627776, 1099511627776] overflow",
            |e| matches!(e, E::DimsOverflow { name, .. } if name == "w"),
        ),
        // 2^62 elements fit in an i64, but 2^62 f32 values do not fit in a 64-bit byte count.
        case(
            "bytes_overflow",
            one_tensor("w", &[1 << 31, 1 << 31], F32, 0, 0),
            "tensor \"w\": dimensions [2147483648, 2147483648] overflow a 64-bit size",
            |e| matches!(e, E::DimsOverflow { name, .. } if name == "w"),
        ),
        case(
            "unknown_tensor_type",
            one_tensor("w", &[4], 4, 0, 16),
            "tensor \"w\" has an unknown data type (ggml type 4)",
            |e| matches!(e, E::UnknownTensorType { name, type_id: 4 } if name == "w"),
        ),
        case(
            "row_not_block_multiple",
            one_tensor("w", &[33, 2], Q4_0, 0, 64),
            "tensor \"w\": row length 33 is not a multiple of the",
            |e| {
                matches!(e, E::RowNotBlockMultiple { name, dtype: DType::Q4_0, row_len: 33, .. }
                    if name == "w")
            },
        ),
        case(
            "misaligned_offset",
            one_tensor("w", &[4], F32, 16, 64),
            "tensor \"w\": data offset 16 is not a multiple of the alignment 32",
            |e| {
                matches!(
                    e,
                    E::MisalignedOffset {
                        offset: 16,
                        alignment: 32,
                        ..
                    }
                )
            },
        ),
        case(
            "offset_past_end",
            one_tensor("w", &[4], F32, 1 << 20, 16),
            "tensor \"w\": data at 1048576..1048592 of the data section lies past the end of the file",
            |e| matches!(e, E::DataOutOfBounds { name, .. } if name == "w"),
        ),
        case(
            "offset_overflow",
            one_tensor("w", &[16], F32, u64::MAX - 31, 64),
            "lies past the end of the file",
            |e| matches!(e, E::DataOutOfBounds { end: u64::MAX, .. }),
        ),
        case(
            "truncated_data",
            truncated_data,
            "tensor \"output.weight\": data at",
            |e| matches!(e, E::DataOutOfBounds { name, .. } if name == "output.weight"),
        ),
        case(
            "duplicate_tensor",
            Raw::header(3, 2, 0)
                .tensor("w", &[4], F32, 0)
                .tensor("w", &[4], F32, 32)
                .pad_to(32)
                .zeros(64)
                .done(),
            "duplicate tensor name \"w\"",
            |e| matches!(e, E::DuplicateTensor(n) if n == "w"),
        ),
        case(
            "overlapping_tensors",
            Raw::header(3, 2, 0)
                .tensor("a", &[16], F32, 0)
                .tensor("b", &[16], F32, 32)
                .pad_to(32)
                .zeros(96)
                .done(),
            "tensors \"a\" and \"b\" overlap in the data section",
            |e| matches!(e, E::Overlap { first, second } if first == "a" && second == "b"),
        ),
        case(
            "bad_utf8_key",
            Raw::header(3, 0, 1)
                .str(b"general.\xff\xfe")
                .u32(T_U32)
                .u32(1)
                .done(),
            "a metadata key at byte 32 is not valid",
            |e| matches!(e, E::BadUtf8 { offset: 32, .. }),
        ),
        case(
            "bad_utf8_tensor_name",
            Raw::header(3, 1, 0)
                .str(b"w\xc3")
                .u32(1)
                .u64(4)
                .u32(F32)
                .u64(0)
                .pad_to(32)
                .zeros(16)
                .done(),
            "a tensor name at byte 32 is not valid",
            |e| matches!(e, E::BadUtf8 { offset: 32, .. }),
        ),
    ]
}

#[test]
fn every_bad_file_gives_its_error() {
    let cases = bad_files();
    for c in &cases {
        let (result, largest) = parse_counting(c.bytes.clone().into());
        let err = match result {
            Ok(_) => panic!("{}: parsed, expected an error", c.name),
            Err(e) => e,
        };
        // Reading a value may copy it, but nothing is sized from a count or length beyond what
        // the file holds.
        assert!(
            largest <= 4 * c.bytes.len() + 1024,
            "{}: a {}-byte file made a {largest}-byte allocation",
            c.name,
            c.bytes.len()
        );
        assert!((c.variant)(&err), "{}: wrong variant {err:?}", c.name);
        let msg = err.to_string();
        assert!(
            msg.contains(c.words),
            "{}: {msg:?} lacks {:?}",
            c.name,
            c.words
        );
        assert_eq!(
            c.words,
            c.words.to_lowercase(),
            "{}: words must be lowercase",
            c.name
        );
    }
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
}

#[test]
fn a_nest_a_million_deep_fails_at_the_limit() {
    // Without the depth check this recursion would overflow the test thread's stack.
    let err = parse(nested(1_000_000)).unwrap_err();
    assert!(matches!(err, GgufError::NestingTooDeep { .. }), "{err:?}");
}

#[test]
fn nesting_at_the_limit_parses() {
    let file = parse(nested(8)).unwrap();
    let mut a = file.metadata().get_array("x.nested").unwrap();
    let mut depth = 1;
    while let Array::Array(inner) = a {
        a = &inner[0];
        depth += 1;
    }
    assert_eq!((depth, a), (8, &Array::U8(vec![7])));
}

#[test]
fn a_huge_count_allocates_nothing_up_front() {
    // The counts are bounded by the file size, but a big file with a count near that bound must
    // not reserve a collection entry per promised item before reading one (here 40 MB of zeros
    // would otherwise reserve ~2M tensor infos).
    let n = 40 << 20;
    let bytes = Raw::header(3, (n / 24) as u64, 0).zeros(n).done();
    let (result, largest) = parse_counting(bytes.into());
    // All-zero infos are valid empty tensors named "", so the second one is a duplicate.
    let err = result.unwrap_err();
    assert!(matches!(err, GgufError::DuplicateTensor(_)), "{err:?}");
    assert!(largest < 1 << 20, "largest allocation {largest} bytes");
}

// ---------------------------------------------------------------------------------------------
// The committed corpus.

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/gguf")
}

fn expected_lines() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(corpus_dir().join("EXPECTED.txt")).unwrap();
    text.lines()
        .map(|line| {
            let (file, words) = line.split_once('\t').expect("<file>\\t<words>");
            (file.to_string(), words.to_string())
        })
        .collect()
}

/// Regenerates the committed corpus from `bad_files` (run with `--ignored write_corpus`).
#[test]
#[ignore]
fn write_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(dir.join("valid")).unwrap();
    let mut expected = String::new();
    for c in bad_files() {
        let file = format!("{}.gguf", c.name);
        std::fs::write(dir.join(&file), &c.bytes).unwrap();
        expected += &format!("{file}\t{}\n", c.words);
    }
    std::fs::write(dir.join("EXPECTED.txt"), expected).unwrap();
    std::fs::write(dir.join("valid/small.gguf"), small_valid()).unwrap();
}

#[test]
fn corpus_files_fail_as_expected() {
    let lines = expected_lines();
    assert!(
        lines.len() >= 30,
        "EXPECTED.txt lists {} files",
        lines.len()
    );
    for (file, words) in &lines {
        match GgufFile::open(corpus_dir().join(file)) {
            Ok(_) => panic!("{file}: parsed, expected an error with {words:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(words.as_str()),
                    "{file}: {msg:?} lacks {words:?}"
                );
            }
        }
    }
    // Every file in the directory is listed, so the CLI test sees them all.
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".gguf") {
            assert!(
                lines.iter().any(|(f, _)| *f == name),
                "{name} not in EXPECTED.txt"
            );
        }
    }
    let valid = GgufFile::open(corpus_dir().join("valid/small.gguf")).unwrap();
    touch_everything(&valid);
}

#[test]
fn corpus_is_up_to_date() {
    let lines = expected_lines();
    let cases = bad_files();
    assert_eq!(lines.len(), cases.len(), "rerun write_corpus");
    for (c, (file, words)) in cases.iter().zip(&lines) {
        assert_eq!(
            (file.as_str(), words.as_str()),
            (format!("{}.gguf", c.name).as_str(), c.words)
        );
        let on_disk = std::fs::read(corpus_dir().join(file)).unwrap();
        assert!(
            on_disk == c.bytes,
            "{file} differs from its generator: rerun write_corpus"
        );
    }
    let on_disk = std::fs::read(corpus_dir().join("valid/small.gguf")).unwrap();
    assert_eq!(on_disk, small_valid(), "rerun write_corpus");
}

// ---------------------------------------------------------------------------------------------
// Valid files.

/// Reads every tensor byte and every metadata value, as a consumer would. Panics only if the
/// reader broke one of its own invariants.
fn touch_everything(file: &GgufFile) -> u64 {
    let mut sum = 0u64;
    let whole = file.as_bytes().as_ptr_range();
    for info in file.tensors() {
        let data = file.tensor_data(info);
        assert_eq!(data.len() as u64, info.n_bytes, "{}", info.name);
        if !data.is_empty() {
            let r = data.as_ptr_range();
            assert!(
                whole.start <= r.start && r.end <= whole.end,
                "{} not zero-copy",
                info.name
            );
        }
        sum = data.iter().fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
        let view = TensorSource::tensor(file, &info.name).expect("listed tensor is found");
        assert_eq!(view.n_elements(), info.n_elements);
        sum = sum.wrapping_add(view.n_rows()).wrapping_add(view.row_len());
        sum = sum.wrapping_add(info.n_rows());
    }
    for (key, value) in file.metadata().iter() {
        assert!(file.metadata().get(key).is_some());
        sum = sum.wrapping_add(value.to_string().len() as u64);
        sum = sum.wrapping_add(value.as_u64().unwrap_or(0));
        let _ = (value.as_f64(), value.as_str(), value.as_bool());
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

#[test]
fn small_valid_file_parses() {
    let file = parse(small_valid()).unwrap();
    assert_eq!((file.version, file.alignment), (3, 32));
    assert_eq!(file.tensors().len(), 3);
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(file.tensor_data(embd), &pattern(68, 1)[..]);
    let norm = file.tensor("blk.0.attn_norm.weight").unwrap();
    assert_eq!(file.tensor_data(norm), &pattern(32, 2)[..]);
    let out = file.tensor("output.weight").unwrap();
    assert_eq!(file.tensor_data(out), &pattern(20, 3)[..]);
    assert_eq!(file.data_offset() + out.offset + 20, file.file_len());
    touch_everything(&file);
}

#[test]
fn version_2_file_parses() {
    let mut bytes = small_valid();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let file = parse(bytes).unwrap();
    assert_eq!(file.version, 2);
    assert_eq!(file.tensors().len(), 3);
    assert_eq!(
        file.metadata().get_str("general.architecture"),
        Some("llama")
    );
}

#[test]
fn every_value_type_round_trips() {
    let values = vec![
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(60_000)),
        ("t.i16", Value::I16(-30_000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.f32", Value::F32(-1.5e-7)),
        ("t.bool.true", Value::Bool(true)),
        ("t.bool.false", Value::Bool(false)),
        ("t.string", Value::String("héllo, wörld ✓".into())),
        ("t.string.empty", Value::String(String::new())),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(std::f64::consts::PI)),
        ("a.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("a.i8", Value::Array(Array::I8(vec![-128, 127]))),
        ("a.u16", Value::Array(Array::U16(vec![1, 65535]))),
        ("a.i16", Value::Array(Array::I16(vec![-1, 2]))),
        ("a.u32", Value::Array(Array::U32(vec![7; 5]))),
        ("a.i32", Value::Array(Array::I32(vec![-7, 0, 7]))),
        ("a.f32", Value::Array(Array::F32(vec![0.5, -0.25]))),
        ("a.bool", Value::Array(Array::Bool(vec![true, false, true]))),
        (
            "a.string",
            Value::Array(Array::String(vec!["".into(), "x".into(), "Ġ t".into()])),
        ),
        ("a.u64", Value::Array(Array::U64(vec![u64::MAX, 0]))),
        ("a.i64", Value::Array(Array::I64(vec![i64::MIN, i64::MAX]))),
        ("a.f64", Value::Array(Array::F64(vec![1e300, -0.0]))),
        ("a.empty", Value::Array(Array::U32(vec![]))),
        ("a.empty_nest", Value::Array(Array::Array(vec![]))),
    ];
    let mut w = GgufWriter::new();
    for (k, v) in &values {
        w = w.kv(k, v.clone());
    }
    let file = parse(w.to_bytes()).unwrap();
    assert_eq!(file.metadata().len(), values.len());
    // File order is kept.
    let keys: Vec<_> = file.metadata().iter().map(|(k, _)| k).collect();
    assert_eq!(keys, values.iter().map(|(k, _)| *k).collect::<Vec<_>>());
    for (k, v) in &values {
        let got = file.metadata().get(k).unwrap();
        assert_eq!(got, v, "{k}");
        assert_eq!(got.value_type(), v.value_type(), "{k}");
    }
    let all_types: Vec<ValueType> = values.iter().map(|(_, v)| v.value_type()).collect();
    for id in 0..13 {
        assert!(
            all_types.iter().any(|t| t.id() == id),
            "type {id} not covered"
        );
    }
}

#[test]
fn nested_arrays_and_arrays_of_strings() {
    let nest = Array::Array(vec![
        Array::String(vec!["a".into(), "bc".into()]),
        Array::Array(vec![Array::I64(vec![-1]), Array::Array(vec![])]),
        Array::F32(vec![]),
        Array::Array(vec![Array::String(vec![String::new(); 3])]),
    ]);
    let vocab: Vec<String> = (0..1000).map(|i| format!("tok{i}")).collect();
    let bytes = GgufWriter::new()
        .kv("x.nest", Value::Array(nest.clone()))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(vocab.clone())),
        )
        .to_bytes();
    let file = parse(bytes).unwrap();
    assert_eq!(file.metadata().get_array("x.nest"), Some(&nest));
    assert_eq!(
        file.metadata().get_array("tokenizer.ggml.tokens"),
        Some(&Array::String(vocab))
    );
}

#[test]
fn custom_alignments() {
    // Given as a key, or implied by the writer's alignment.
    for (alignment, explicit) in [(64u32, true), (1, true), (64, false), (1, false)] {
        let mut w = GgufWriter::new().alignment(u64::from(alignment));
        if explicit {
            w = w.kv("general.alignment", Value::U32(alignment));
        }
        let bytes = w
            .tensor("a", &[3], DType::F32, pattern(12, 1))
            .tensor("b", &[1], DType::I8, pattern(1, 2))
            .tensor("c", &[5], DType::F16, pattern(10, 3))
            .to_bytes();
        let file = parse(bytes).unwrap();
        let a = u64::from(alignment);
        assert_eq!(file.alignment, a);
        assert_eq!(file.data_offset() % a, 0);
        for (t, (n, seed)) in file.tensors().iter().zip([(12, 1), (1, 2), (10, 3)]) {
            assert_eq!(t.offset % a, 0, "{}", t.name);
            assert_eq!(file.tensor_data(t), &pattern(n, seed)[..], "{}", t.name);
        }
        if alignment == 1 {
            // Packed back to back: no padding anywhere.
            let offsets: Vec<_> = file.tensors().iter().map(|t| t.offset).collect();
            assert_eq!(offsets, [0, 12, 13]);
        }
    }
}

#[test]
fn tensor_views_are_zero_copy() {
    let bytes: Arc<[u8]> = small_valid().into();
    let file = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(file.as_bytes().as_ptr(), bytes.as_ptr());
    let whole = bytes.as_ptr_range();
    for info in file.tensors() {
        let view = TensorSource::tensor(&file, &info.name).unwrap();
        let r = view.data.as_ptr_range();
        assert!(
            whole.start <= r.start && r.end <= whole.end,
            "{}",
            info.name
        );
        let start = file.data_offset() + info.offset;
        assert_eq!(r.start, bytes[start as usize..].as_ptr(), "{}", info.name);
    }
}

#[test]
fn empty_tensor_after_the_end_of_a_short_file() {
    // A zero-sized tensor in a file that ends right after its header: the data section would
    // start past the end of the file. It parses, and its data is an empty slice, not a panic.
    let bytes = Raw::header(3, 1, 0).tensor("e", &[0, 7], F32, 0).done();
    assert_ne!(bytes.len() % 32, 0);
    let file = parse(bytes).unwrap();
    let e = file.tensor("e").unwrap();
    assert_eq!((e.n_elements, e.n_bytes, e.n_rows()), (0, 0, 7));
    assert!(file.tensor_data(e).is_empty());
    // An info from elsewhere yields an empty slice too.
    let mut foreign = e.clone();
    foreign.offset = 1 << 40;
    foreign.n_bytes = 4;
    assert!(file.tensor_data(&foreign).is_empty());
}

#[test]
fn open_reads_the_test_model() {
    let path = common::model_path();
    let file = GgufFile::open(&path).unwrap();
    let on_disk = std::fs::metadata(&path).unwrap().len();
    assert_eq!(file.file_len(), on_disk);
    assert_eq!(file.as_bytes().len() as u64, on_disk);
    assert_eq!((file.version, file.alignment), (3, 32));

    let reference = std::fs::read_to_string(common::reference_path(
        "smollm2-135m-instruct-q4_1.gguf.txt",
    ))
    .unwrap();
    let mut section = "";
    let (mut n_keys, mut n_tensors) = (0, 0);
    for line in reference.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            section = title;
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if section.starts_with("Key/value") {
            let (key, rest) = line.split_once(" = ").unwrap();
            match key {
                "GGUF.version" => assert_eq!(rest, format!("{}  [UINT32]", file.version)),
                "GGUF.tensor_count" => {
                    assert_eq!(rest, format!("{}  [UINT64]", file.tensors().len()))
                }
                "GGUF.kv_count" => {
                    assert_eq!(rest, format!("{}  [UINT64]", file.metadata().len()))
                }
                _ => {
                    check_reference_kv(&file, key, rest);
                    n_keys += 1;
                }
            }
        } else if section.starts_with("Tensors") {
            check_reference_tensor(&file, line);
            n_tensors += 1;
        }
    }
    assert_eq!((n_keys, n_tensors), (33, 272));
    assert_eq!(file.metadata().len(), 33);
    assert_eq!(file.tensors().len(), 272);
    assert!(file.tensor("output.weight").is_none());
    let count = |d| file.tensors().iter().filter(|t| t.dtype == d).count();
    assert_eq!(
        (count(DType::Q8_0), count(DType::F32), count(DType::Q4_1)),
        (1, 61, 210)
    );

    // The views borrow from the map.
    let whole = file.as_bytes().as_ptr_range();
    let embd = file.tensor("token_embd.weight").unwrap();
    let data = file.tensor_data(embd).as_ptr_range();
    assert!(whole.start <= data.start && data.end <= whole.end);
    assert_eq!(data.start, file.as_bytes()[1_785_664..].as_ptr());
}

/// One `key = value  [TYPE]` line of the reference dump (the gguf Python reader's format).
fn check_reference_kv(file: &GgufFile, key: &str, rest: &str) {
    let value = file
        .metadata()
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing"));
    if let Some(array) = rest.strip_prefix("ARRAY[") {
        let (ty, rest) = array.split_once("] len=").unwrap();
        let (len, first) = rest.split_once(" first=").unwrap();
        let a = value
            .as_array()
            .unwrap_or_else(|| panic!("{key} not an array"));
        assert_eq!(a.len(), len.parse::<usize>().unwrap(), "{key}");
        let shown = match (ty, a) {
            ("STRING", Array::String(v)) => python_list(v.iter().take(8).map(|s| format!("'{s}'"))),
            ("INT32", Array::I32(v)) => python_list(v.iter().take(8).map(|x| x.to_string())),
            _ => panic!("{key}: {ty} vs {}", a.element_type().name()),
        };
        assert_eq!(first, shown, "{key}");
        return;
    }
    let (shown, ty) = rest.rsplit_once("  [").unwrap();
    let ty = ty.trim_end_matches(']');
    match (ty, value) {
        ("UINT32", Value::U32(v)) => assert_eq!(shown, v.to_string(), "{key}"),
        ("FLOAT32", Value::F32(v)) => {
            assert_eq!(shown.parse::<f64>().unwrap() as f32, *v, "{key}")
        }
        ("BOOL", Value::Bool(v)) => {
            assert_eq!(shown, if *v { "True" } else { "False" }, "{key}")
        }
        ("STRING", Value::String(v)) => {
            // Long values are cut short in the dump; compare what it shows.
            if let Some(quoted) = shown.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
                assert_eq!(quoted, v, "{key}");
            } else {
                let (start, _) = shown.trim_start_matches('"').split_once(" ... (").unwrap();
                let unescaped = start.replace("\\n", "\n");
                assert!(v.starts_with(&unescaped), "{key}");
            }
        }
        _ => panic!(
            "{key}: reference type {ty}, file has {:?}",
            value.value_type()
        ),
    }
}

fn python_list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

/// One `name  type  [shape]  n_elements  n_bytes  offset` line; the offset is from the start of
/// the file.
fn check_reference_tensor(file: &GgufFile, line: &str) {
    let f: Vec<&str> = line.split('\t').collect();
    assert_eq!(f.len(), 6, "{line}");
    let t = file
        .tensor(f[0])
        .unwrap_or_else(|| panic!("{} missing", f[0]));
    assert_eq!(t.dtype.name(), f[1], "{line}");
    let dims: Vec<u64> = f[2]
        .trim_matches(['[', ']'])
        .split(", ")
        .map(|d| d.parse().unwrap())
        .collect();
    assert_eq!(t.dims, dims, "{line}");
    assert_eq!(t.n_elements.to_string(), f[3], "{line}");
    assert_eq!(t.n_bytes.to_string(), f[4], "{line}");
    assert_eq!((file.data_offset() + t.offset).to_string(), f[5], "{line}");
    assert_eq!(file.tensor_data(t).len() as u64, t.n_bytes, "{line}");
}

// ---------------------------------------------------------------------------------------------
// Sweeps: never a panic, whatever the bytes.

#[test]
fn every_truncation_is_an_error() {
    let bytes = small_valid();
    for len in 0..bytes.len() {
        match parse(bytes[..len].to_vec()) {
            Ok(_) => panic!("prefix of {len} bytes parsed"),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    assert!(parse(bytes).is_ok());
}

#[test]
fn flipping_any_header_byte_never_panics() {
    let bytes = small_valid();
    let header_len = parse(bytes.clone()).unwrap().data_offset() as usize;
    let mut parsed = 0;
    for i in 0..header_len {
        let mut b = bytes.clone();
        b[i] ^= 0xff;
        if let Ok(file) = parse(b) {
            touch_everything(&file);
            parsed += 1;
        }
    }
    // Flips inside padding and plain values still parse; flips in counts, lengths and names
    // must not.
    assert!(parsed < header_len, "{parsed} of {header_len} flips parsed");
}

/// xorshift64*: fixed seeds, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that tend to sit on the edges of checks.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    9,
    13,
    32,
    63,
    64,
    1 << 31,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
];

fn mutate(rng: &mut XorShift, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len());
        match rng.below(7) {
            0 if !bytes.is_empty() => bytes[at] ^= 1 << rng.below(8),
            1 if !bytes.is_empty() => bytes[at] = rng.next() as u8,
            2 if at + 8 <= bytes.len() => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let v = if rng.below(2) == 0 {
                    v
                } else {
                    v.wrapping_add(rng.below(3) as u64).wrapping_sub(1)
                };
                bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            3 if at + 4 <= bytes.len() => {
                let v = INTERESTING[rng.below(INTERESTING.len())] as u32;
                bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            4 => bytes.truncate(at),
            5 if !bytes.is_empty() => {
                let n = rng.below(64).min(bytes.len() - at);
                let chunk = bytes[at..at + n].to_vec();
                let to = rng.below(bytes.len());
                bytes.splice(to..to, chunk);
            }
            6 => {
                let n = rng.below(64).min(bytes.len() - at);
                bytes.drain(at..at + n);
            }
            _ => {}
        }
    }
}

fn mutation_run(iterations: u64, seed: u64) -> (u64, u64) {
    let mut seeds: Vec<Vec<u8>> = bad_files()
        .into_iter()
        .filter(|c| c.bytes.len() < 4096)
        .map(|c| c.bytes)
        .collect();
    seeds.push(small_valid());
    seeds.push(nested(8));
    let mut rng = XorShift(seed);
    let (mut parsed, mut checksum) = (0, 0u64);
    for _ in 0..iterations {
        // Mostly the valid file: mutants of it reach deepest into the reader.
        let base = if rng.below(3) == 0 {
            &seeds[rng.below(seeds.len())]
        } else {
            &seeds[seeds.len() - 2]
        };
        let mut bytes = base.clone();
        mutate(&mut rng, &mut bytes);
        if let Ok(file) = parse(bytes) {
            checksum = checksum.wrapping_add(touch_everything(&file));
            parsed += 1;
        }
    }
    (parsed, checksum)
}

#[test]
fn random_mutations_never_panic() {
    let (parsed, _) = mutation_run(5_000, 0x5eed);
    assert!(parsed > 0);
}

/// The fuzz target's logic as a plain loop, for machines without cargo-fuzz or nightly:
/// `GGUF_FUZZ_ITERATIONS=10000000 cargo test --release --test gguf -- --ignored fuzz_loop`.
#[test]
#[ignore]
fn fuzz_loop() {
    let iterations = std::env::var("GGUF_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let seed = std::env::var("GGUF_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let start = std::time::Instant::now();
    let (parsed, _) = mutation_run(iterations, seed);
    eprintln!(
        "{iterations} mutants in {:.1?}, {parsed} parsed",
        start.elapsed()
    );
}
