//! The `sovereign` binary as scripts use it: stdout carries only generated text, errors are one
//! line on stderr with a non-zero exit.

mod common;

use std::process::{Command, Output};

use common::{greedy_cases, model_path};

fn sovereign(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sovereign"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env_remove("SOVEREIGN_LOG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed run: non-zero exit, nothing on stdout, one `error:` line on stderr naming `words`.
fn assert_fails(o: &Output, words: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(o.stdout.is_empty(), "stdout not empty: {}", stdout(o));
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(
        lines[0].to_lowercase().contains(&words.to_lowercase()),
        "error does not mention {words:?}: {}",
        lines[0]
    );
    assert!(!err.contains("panicked"), "panic: {err}");
}

/// `sovereign run -m MODEL -n <n_stable> --temp 0 PROMPT` prints exactly `text_stable`.
#[test]
fn greedy_runs_print_the_reference_text() {
    let model = model_path();
    for case in greedy_cases() {
        let prompt = case["prompt"].as_str().unwrap();
        let n = case["n_stable"].as_u64().unwrap().to_string();
        let o = sovereign(&[
            "run",
            "-m",
            model.to_str().unwrap(),
            "-n",
            &n,
            "--temp",
            "0",
            prompt,
        ]);
        assert!(o.status.success(), "{prompt:?}: {}", stderr(&o));
        assert_eq!(
            stdout(&o),
            case["text_stable"].as_str().unwrap(),
            "{prompt:?}"
        );
    }
}

#[test]
fn sampling_is_reproducible_with_a_seed_and_stops_at_stop_strings() {
    let model = model_path();
    let m = model.to_str().unwrap();
    let run = |seed: &str| {
        let o = sovereign(&[
            "run",
            "-m",
            m,
            "-n",
            "12",
            "--temp",
            "1.0",
            "--seed",
            seed,
            "Once upon a time",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let a = run("42");
    assert!(!a.is_empty());
    assert_eq!(a, run("42"));
    let others: Vec<String> = ["1", "2", "3"].iter().map(|s| run(s)).collect();
    assert!(
        others.iter().any(|o| *o != a),
        "three other seeds all gave {a:?}"
    );

    // The greedy continuation is " Paris.\n\nThe answer is: ...": a stop at "." ends it after Paris.
    let o = sovereign(&[
        "run",
        "-m",
        m,
        "-n",
        "20",
        "--temp",
        "0",
        "--stop",
        ".",
        "The capital of France is",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), " Paris");
}

#[test]
fn chat_flag_applies_the_template() {
    let model = model_path();
    let o = sovereign(&[
        "run",
        "-m",
        model.to_str().unwrap(),
        "-n",
        "15",
        "--temp",
        "0",
        "--chat",
        "What is the tallest mountain on Earth?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The template's default system prompt makes this the reference's fourth case.
    let case = &greedy_cases()[3];
    assert_eq!(stdout(&o), case["text_stable"].as_str().unwrap());
}

#[test]
fn chat_command_keeps_the_conversation() {
    use std::io::Write;
    let model = model_path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sovereign"))
        .args([
            "chat",
            "-m",
            model.to_str().unwrap(),
            "--temp",
            "0",
            "-n",
            "12",
        ])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the tallest mountain on Earth?\nAnd the second tallest?\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let replies: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(replies.len() >= 2, "expected two replies: {out:?}");
    assert!(
        out.starts_with("The tallest mountain on Earth is Mount Everest"),
        "{out:?}"
    );
}

#[test]
fn inspect_shows_metadata_and_tensors() {
    let model = model_path();
    let o = sovereign(&["inspect", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "GGUF version 3",
        "general.architecture = \"llama\"",
        "llama.attention.head_count_kv = 3 [u32]",
        "tokenizer.ggml.tokens = [string; 49152]",
        "272 tensors",
        "blk.0.ffn_down.weight",
        "Q4_1",
        "[1536, 576]",
        "runnable",
    ] {
        assert!(out.contains(needle), "inspect output lacks {needle:?}");
    }
}

#[test]
fn devices_lists_an_adapter() {
    let o = sovereign(&["devices"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("0: "), "{out}");
    assert!(out.contains("features: shader-f16"), "{out}");
    assert!(out.contains("limits: storage binding"), "{out}");
}

#[test]
fn bench_prints_pp_and_tg() {
    let model = model_path();
    let o = sovereign(&[
        "bench",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "16",
        "-n",
        "4",
        "-r",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("| test | t/s |"), "{out}");
    for test in ["| pp16 |", "| tg4 |"] {
        let line = out
            .lines()
            .find(|l| l.contains(test))
            .unwrap_or_else(|| panic!("no {test} in {out}"));
        let rate: f64 = line
            .rsplit('|')
            .nth(1)
            .unwrap()
            .split('±')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(rate > 0.0, "{line}");
    }
}

#[test]
fn bad_input_gives_one_line_errors() {
    assert_fails(
        &sovereign(&["run", "-m", "/nonexistent/model.gguf", "hi"]),
        "cannot read /nonexistent/model.gguf",
    );
    assert_fails(
        &sovereign(&["inspect", "/nonexistent/model.gguf"]),
        "no such file",
    );
    let model = model_path();
    let m = model.to_str().unwrap();
    assert_fails(
        &sovereign(&["run", "-m", m, "--temp", "-1", "hi"]),
        "temperature",
    );
    assert_fails(&sovereign(&["run", "-m", m, "--top-p", "0", "hi"]), "top_p");
    assert_fails(&sovereign(&["run", "-m", m, ""]), "prompt is empty");
    assert_fails(
        &sovereign(&[
            "run",
            "-m",
            m,
            "-c",
            "8",
            "-n",
            "1",
            "one two three four five six seven eight nine ten",
        ]),
        "context",
    );
    assert_fails(
        &sovereign(&["run", "--adapter", "no-such-adapter", "-m", m, "hi"]),
        "no adapter matches",
    );
    // Not a GGUF file at all.
    let text = std::env::temp_dir().join("sovereign-not-a-model.txt");
    std::fs::write(&text, "hello").unwrap();
    assert_fails(
        &sovereign(&["run", "-m", text.to_str().unwrap(), "hi"]),
        "not a GGUF file",
    );
}

/// Every file of the bad-GGUF corpus: non-zero exit and an error naming the problem, from
/// `inspect` (parsing and model checks) and from `run`.
#[test]
fn bad_gguf_corpus_fails_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/gguf");
    let expected = std::fs::read_to_string(dir.join("EXPECTED.txt")).unwrap();
    let mut n = 0;
    for line in expected
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let (file, words) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("bad EXPECTED line {line:?}"));
        let path = dir.join(file.trim());
        let start = std::time::Instant::now();
        assert_fails(
            &sovereign(&["inspect", path.to_str().unwrap()]),
            words.trim(),
        );
        assert_fails(
            &sovereign(&["run", "-m", path.to_str().unwrap(), "-n", "1", "hi"]),
            words.trim(),
        );
        assert!(
            start.elapsed().as_secs() < 20,
            "{file}: took {:?}",
            start.elapsed()
        );
        n += 1;
    }
    assert!(n >= 25, "only {n} corpus files");
}
