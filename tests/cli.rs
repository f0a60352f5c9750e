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
    assert!(o.stdout.is_empty(), "stdout not empty: {}", stdout(o));
    assert_fails_after_output(o, words);
}

/// As [`assert_fails`], for `inspect`, which shows what it could read before the error.
fn assert_fails_after_output(o: &Output, words: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(
        lines[0].to_lowercase().contains(&words.to_lowercase()),
        "error does not mention {words:?}: {}",
        lines[0]
    );
    assert!(!err.contains("panicked"), "panic: {err}");
}

/// `sovereign run -m MODEL -n <n_stable> --temp 0 PROMPT` prints exactly `text_stable`, with the
/// default KV cache, with the 8-bit one, and drafting by prompt lookup.
#[test]
fn greedy_runs_print_the_reference_text() {
    let model = model_path();
    for (cache, draft) in [(None, "0"), (Some("q8_0"), "0"), (None, "5")] {
        for case in greedy_cases() {
            let prompt = case["prompt"].as_str().unwrap();
            let n = case["n_stable"].as_u64().unwrap().to_string();
            let mut args = vec![
                "run",
                "-m",
                model.to_str().unwrap(),
                "-n",
                &n,
                "--temp",
                "0",
                "--draft",
                draft,
            ];
            if let Some(cache) = cache {
                args.extend(["--cache-type", cache]);
            }
            args.push(prompt);
            let o = sovereign(&args);
            assert!(o.status.success(), "{prompt:?}: {}", stderr(&o));
            assert_eq!(
                stdout(&o),
                case["text_stable"].as_str().unwrap(),
                "{prompt:?} with cache {cache:?}, drafting {draft}"
            );
        }
    }
}

/// `--model-draft`: the test model drafting for itself prints the reference text and says how
/// many drafts it kept; a model of another vocabulary is refused before anything runs.
#[test]
fn a_draft_model_prints_the_reference_text() {
    let model = model_path();
    let m = model.to_str().unwrap();
    let case = &greedy_cases()[0];
    let n = case["n_stable"].as_u64().unwrap().to_string();
    let prompt = case["prompt"].as_str().unwrap();
    let o = sovereign(&[
        "-v",
        "run",
        "-m",
        m,
        "--model-draft",
        m,
        "-n",
        &n,
        "--temp",
        "0",
        prompt,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), case["text_stable"].as_str().unwrap());
    assert!(
        stderr(&o).contains("drafted tokens were sampled"),
        "{}",
        stderr(&o)
    );

    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.gguf");
    let o = sovereign(&["synth", "--shape", "tiny", "-o", tiny.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sovereign(&[
        "run",
        "-m",
        m,
        "--model-draft",
        tiny.to_str().unwrap(),
        "-n",
        "4",
        "hi",
    ]);
    assert_fails(&o, "vocabulary");
    assert_fails(
        &sovereign(&["run", "-m", m, "--model-draft", "/nonexistent.gguf", "hi"]),
        "nonexistent",
    );
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

/// `sovereign chat -m MODEL --temp 0 ARGS` with `input` on stdin, run to its end.
fn chat_session(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let model = model_path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sovereign"))
        .args(["chat", "-m", model.to_str().unwrap(), "--temp", "0"])
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn chat_command_keeps_the_conversation() {
    let o = chat_session(
        &["-n", "12"],
        b"What is the tallest mountain on Earth?\nAnd the second tallest?\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let replies: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(replies.len() >= 2, "expected two replies: {out:?}");
    assert!(
        out.starts_with("The tallest mountain on Earth is Mount Everest"),
        "{out:?}"
    );
}

/// A conversation longer than the context drops its oldest turns instead of ending the chat; a
/// message that cannot be sent (too long, not UTF-8) or an unknown command is reported and
/// the chat goes on.
#[test]
fn chat_goes_on_past_a_full_context_and_bad_messages() {
    let mut input = b"Tell me a story.\nAnother one.\n".to_vec();
    input.extend_from_slice(b"bad \xff byte\n/foo\n");
    input.extend_from_slice("word ".repeat(200).as_bytes());
    input.extend_from_slice(b"\nAnd another one.\n");
    let o = chat_session(&["-n", "40", "-c", "96"], &input);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let out = stdout(&o);
    let replies: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(replies.len(), 3, "{replies:?}\n{err}");
    for words in [
        "the oldest turn was dropped",
        "not valid UTF-8",
        "unknown command /foo",
        "the context holds 96",
    ] {
        assert!(err.contains(words), "no {words:?} in {err}");
    }
    assert!(!err.contains("error: the prompt has"), "{err}");
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
    // Like llama-bench's, stdout holds the table alone; the host's share goes to stderr.
    assert!(
        out.lines().all(|l| l.is_empty() || l.starts_with('|')),
        "{out}"
    );
    let err = stderr(&o);
    let host_line = err
        .lines()
        .find(|l| l.starts_with("tg4: host "))
        .unwrap_or_else(|| panic!("no host time in {err}"));
    assert!(host_line.ends_with(", 4 steps"), "{host_line}");
}

/// `sovereign bench -m MODEL -p 8 -n 3 -o json` with `extra` arguments: its tests.
fn bench_json(extra: &[&str]) -> Vec<serde_json::Value> {
    let model = model_path();
    let mut args = vec![
        "bench",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "3",
        "-o",
        "json",
    ];
    args.extend(extra);
    let o = sovereign(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

#[test]
fn bench_json_lists_every_repetition() {
    let tests = bench_json(&["-r", "2"]);
    assert_eq!(tests.len(), 2);
    for (t, name, n_prompt, n_gen) in [(&tests[0], "pp8", 8, 0), (&tests[1], "tg3", 0, 3)] {
        assert_eq!(t["test"], name);
        assert_eq!(
            (t["n_prompt"].as_u64(), t["n_gen"].as_u64()),
            (Some(n_prompt), Some(n_gen))
        );
        let samples = t["samples_ts"].as_array().unwrap();
        assert_eq!(samples.len(), 2);
        let rates: Vec<f64> = samples.iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(rates.iter().all(|r| *r > 0.0), "{t}");
        let mean = rates.iter().sum::<f64>() / 2.0;
        assert!(
            (t["avg_ts"].as_f64().unwrap() - mean).abs() < 1e-9 * mean,
            "{t}"
        );
        // Each sample's time and rate describe the same run.
        let ns = t["samples_ns"][0].as_f64().unwrap();
        let tokens = (n_prompt + n_gen) as f64;
        assert!((tokens / (ns * 1e-9) / rates[0] - 1.0).abs() < 1e-6, "{t}");
        assert!(t["model_n_params"].as_u64().unwrap() > 100_000_000, "{t}");
        // The host's share of each step: one step per prompt, one per generated token, and
        // the steps' time is nearly all of the measured time.
        assert_eq!(
            t["steps"].as_u64(),
            Some(2 * if n_gen > 0 { n_gen } else { 1 })
        );
        let host = t["host_ns_per_step"].as_f64().unwrap();
        let step = t["step_ns"].as_f64().unwrap();
        assert!(host > 0.0 && host < step, "{t}");
        let measured: f64 = t["samples_ns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        let in_steps = step * t["steps"].as_f64().unwrap();
        assert!(
            in_steps <= measured * 1.001 && in_steps > measured * 0.8,
            "{t}"
        );
    }
}

/// `bench --profile` times every dispatch of one extra run of each test on the GPU: the kernels
/// add up to the model's own count of them, and their time to about a step's.
#[test]
fn bench_profile_times_every_dispatch() {
    let tests = bench_json(&["-r", "1", "--profile"]);
    // SmolLM2: 30 layers, each with two RMS norms, plus the output norm.
    let n_layer = 30;
    for (t, steps) in [(&tests[0], 1), (&tests[1], 3)] {
        let profile = t["profile"].as_array().unwrap();
        assert!(!profile.is_empty(), "{t}");
        let dispatches = |kernel: &str| -> u64 {
            profile
                .iter()
                .filter(|k| k["kernel"].as_str().unwrap().starts_with(kernel))
                .map(|k| k["dispatches"].as_u64().unwrap())
                .sum()
        };
        assert_eq!(dispatches("rms_norm "), steps * (2 * n_layer + 1), "{t}");
        assert_eq!(dispatches("embed "), steps, "{t}");
        assert_eq!(dispatches("argmax "), steps, "{t}");
        assert!(
            dispatches("matmul") + dispatches("matvec") >= steps * 4 * n_layer,
            "{t}"
        );
        let gpu_ns: Vec<f64> = profile
            .iter()
            .map(|k| k["gpu_ns"].as_f64().unwrap())
            .collect();
        assert!(gpu_ns.iter().all(|&ns| ns > 0.0), "{t}");
        // Sorted costliest first.
        assert!(gpu_ns.windows(2).all(|w| w[0] >= w[1]), "{t}");
        let total: f64 = gpu_ns.iter().sum();
        let steps_ns = t["step_ns"].as_f64().unwrap() * steps as f64;
        assert!(
            total > 0.3 * steps_ns && total < 2.0 * steps_ns,
            "GPU {total} ns against steps of {steps_ns} ns: {t}"
        );
    }
}

/// `synth` writes a model that loads and runs; the same seed writes the same bytes, and an
/// existing file is never replaced without --force.
#[test]
fn synth_writes_runnable_models() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    for dtype in ["Q4_0", "q4_k", "Q8_0"] {
        let out = path(&format!("tiny-{dtype}.gguf"));
        let o = sovereign(&[
            "synth", "--shape", "tiny", "-t", dtype, "--layers", "1", "-o", &out,
        ]);
        assert!(o.status.success(), "{dtype}: {}", stderr(&o));
        let info = sovereign(&["inspect", &out]);
        assert!(info.status.success(), "{dtype}: {}", stderr(&info));
        let text = stdout(&info);
        assert!(
            text.to_lowercase().contains(&dtype.to_lowercase()),
            "{text}"
        );
        let run = sovereign(&["run", "-m", &out, "-n", "4", "--temp", "0", "hello"]);
        assert!(run.status.success(), "{dtype}: {}", stderr(&run));
    }
    let again = path("again.gguf");
    let o = sovereign(&[
        "synth", "--shape", "tiny", "-t", "Q4_0", "--layers", "1", "-o", &again,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(path("tiny-Q4_0.gguf")).unwrap()
    );

    // The embedding may have a type of its own, as the test model's Q8_0 beside Q4_1 blocks.
    let mixed = path("mixed.gguf");
    let o = sovereign(&[
        "synth",
        "--shape",
        "tiny",
        "-t",
        "Q4_1",
        "--embd-type",
        "Q8_0",
        "--layers",
        "1",
        "-o",
        &mixed,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&sovereign(&["inspect", &mixed]));
    let type_of = |tensor: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(tensor))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
    };
    assert_eq!(
        type_of("token_embd.weight").as_deref(),
        Some("Q8_0"),
        "{text}"
    );
    // The tiny shape's output matrix is its own, and takes the embedding's type.
    assert_eq!(type_of("output.weight").as_deref(), Some("Q8_0"), "{text}");
    assert_eq!(
        type_of("blk.0.ffn_up.weight").as_deref(),
        Some("Q4_1"),
        "{text}"
    );
    assert_fails(
        &sovereign(&[
            "synth",
            "--shape",
            "smollm2-135m",
            "--embd-type",
            "Q4_K",
            "-o",
            &path("k.gguf"),
        ]),
        "embedding rows are 576",
    );

    let kept = path("kept.gguf");
    std::fs::write(&kept, "mine").unwrap();
    assert_fails(
        &sovereign(&["synth", "--shape", "tiny", "-o", &kept]),
        "--force",
    );
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "mine");
    assert_fails(
        &sovereign(&[
            "synth",
            "--shape",
            "tiny",
            "-t",
            "IQ2_XS",
            "-o",
            &path("x.gguf"),
        ]),
        "not a weight type",
    );
    assert_fails(
        &sovereign(&["synth", "--shape", "tiny", "-o", "/nonexistent-dir/m.gguf"]),
        "writing /nonexistent-dir/m.gguf",
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".synth-"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn perplexity_scores_a_text_file() {
    let model = model_path();
    let m = model.to_str().unwrap();
    let text = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lighthouse.txt");
    let o = sovereign(&[
        "perplexity",
        "-m",
        m,
        "-f",
        text,
        "-c",
        "64",
        "--chunks",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("[1]"), "{out}");
    assert!(out.contains(",[2]"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("Final estimate: PPL = "))
        .unwrap_or_else(|| panic!("no final estimate in {out}"));
    let ppl: f64 = line["Final estimate: PPL = ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ppl > 2.0 && ppl < 500.0, "{line}");
    assert!(line.contains("2 chunks, 62 tokens scored"), "{line}");

    assert_fails(
        &sovereign(&["perplexity", "-m", m, "-f", "/nonexistent/text.txt"]),
        "reading /nonexistent/text.txt",
    );
    let short = std::env::temp_dir().join("sovereign-short-text.txt");
    std::fs::write(&short, "Too short to score.").unwrap();
    assert_fails(
        &sovereign(&[
            "perplexity",
            "-m",
            m,
            "-f",
            short.to_str().unwrap(),
            "-c",
            "64",
        ]),
        "needs at least 128",
    );
}

/// `sovereign embed`: llama-embedding's outputs. The JSON, array and text forms carry the same
/// vectors; the normalizations scale one vector; the similarity matrix ranks a paraphrase above
/// an unrelated text; `-f` takes a text per line.
#[test]
fn embed_prints_vectors_and_similarities() {
    let model = model_path();
    let m = model.to_str().unwrap();
    let texts = [
        "The cat sat on the mat.",
        "A kitten rested on the rug.",
        "Quarterly revenue rose by eight percent.",
    ];
    let run = |extra: &[&str]| {
        let mut args = vec!["embed", "-m", m];
        for t in texts {
            args.extend(["-p", t]);
        }
        args.extend(extra);
        let o = sovereign(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let vectors = |text: &str| -> Vec<Vec<f64>> { serde_json::from_str(text).unwrap() };
    let array = vectors(&run(&["-o", "array"]));
    assert_eq!(array.len(), 3);
    for v in &array {
        assert_eq!(v.len(), 576);
        let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    let json: serde_json::Value = serde_json::from_str(&run(&["-o", "json"])).unwrap();
    let from_json: Vec<Vec<f64>> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| serde_json::from_value(d["embedding"].clone()).unwrap())
        .collect();
    assert_eq!(from_json, array);
    assert!(
        json["usage"]["prompt_tokens"].as_u64().unwrap() > 15,
        "{json}"
    );

    let text = run(&[]);
    let lines: Vec<&str> = text.lines().collect();
    for (i, v) in array.iter().enumerate() {
        let numbers: Vec<f64> = lines[i]
            .strip_prefix(&format!("embedding {i}: "))
            .unwrap()
            .split(' ')
            .map(|x| x.parse().unwrap())
            .collect();
        let err = numbers
            .iter()
            .zip(v)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(numbers.len() == 576 && err <= 5e-7, "text line {i}: {err}");
    }
    let at = lines
        .iter()
        .position(|l| *l == "cosine similarity matrix:")
        .unwrap();
    let matrix: Vec<Vec<f64>> = lines[at + 1..at + 4]
        .iter()
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for i in 0..3 {
        for j in 0..3 {
            assert!(
                (matrix[i][j] - dot(&array[i], &array[j])).abs() < 1e-3,
                "{text}"
            );
        }
    }
    assert!(matrix[0][1] > matrix[0][2] + 0.05, "{text}");

    // Unnormalized, then scaled to unit length, the same vector; taxicab sums to 1.
    let raw = vectors(&run(&["-o", "array", "--embd-normalize", "-1"]));
    let taxicab = vectors(&run(&["-o", "array", "--embd-normalize", "1"]));
    for i in 0..3 {
        let norm: f64 = raw[i].iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(norm > 2.0, "unnormalized norm {norm}");
        let err = raw[i]
            .iter()
            .zip(&array[i])
            .fold(0.0f64, |m, (a, b)| m.max((a / norm - b).abs()));
        assert!(err < 1e-5, "scaled: {err}");
        let l1: f64 = taxicab[i].iter().map(|x| x.abs()).sum();
        assert!((l1 - 1.0).abs() < 1e-4, "taxicab {l1}");
    }
    // Last-token pooling gives other vectors.
    assert_ne!(vectors(&run(&["-o", "array", "--pooling", "last"])), array);

    // A file: a text per line, blank lines skipped.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("texts.txt");
    std::fs::write(&file, format!("{}\n\n{}\n", texts[0], texts[2])).unwrap();
    let o = sovereign(&[
        "embed",
        "-m",
        m,
        "-f",
        file.to_str().unwrap(),
        "-o",
        "array",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let from_file = vectors(&stdout(&o));
    assert_eq!(from_file, vec![array[0].clone(), array[2].clone()]);

    // Bad input: one error line each.
    assert_fails(&sovereign(&["embed", "-m", m]), "nothing to embed");
    assert_fails(&sovereign(&["embed", "-m", m, "-p", ""]), "no tokens");
    let long = "word ".repeat(300);
    assert_fails(
        &sovereign(&["embed", "-m", m, "-c", "128", "-p", &long]),
        "context holds only 128",
    );
    assert_fails(
        &sovereign(&["embed", "-m", m, "-f", "/nonexistent/texts"]),
        "reading",
    );
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
    assert_fails(
        &sovereign(&["run", "-m", m, "--top-p", "1.5", "hi"]),
        "top_p",
    );
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
    assert_fails(
        &sovereign(&["run", "-m", m, "--cache-type", "q4_0", "hi"]),
        "expected f32, f16 or q8_0",
    );
    // Not a GGUF file at all.
    let text = std::env::temp_dir().join("sovereign-not-a-model.txt");
    std::fs::write(&text, "hello").unwrap();
    assert_fails(
        &sovereign(&["run", "-m", text.to_str().unwrap(), "hi"]),
        "not a GGUF file",
    );
}

/// Values at the edges do what llama.cpp does with them, or fail with one line; output that
/// cannot be written fails the command.
#[test]
fn edge_values_and_unwritable_output() {
    let model = model_path();
    let m = model.to_str().unwrap();
    let prompt = "The capital of France is";
    // -n 0 runs the prompt and generates nothing.
    let o = sovereign(&["run", "-m", m, "-n", "0", "--temp", "0", prompt]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    // -c 0 is the default context; --seed -1 a random seed.
    let o = sovereign(&["run", "-m", m, "-c", "0", "-n", "2", "--seed", "-1", prompt]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).is_empty());
    let o = sovereign(&["run", "-m", m, "-b", "0", prompt]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--batch-size"), "{}", stderr(&o));
    // A number names an adapter by its index only: "256" is in llvmpipe's name.
    assert_fails(
        &sovereign(&["run", "--adapter", "256", "-m", m, "hi"]),
        "no adapter matches \"256\"",
    );
    let dir = std::env::temp_dir();
    assert_fails(
        &sovereign(&["run", "-m", dir.to_str().unwrap(), "hi"]),
        "is a directory, not a GGUF file",
    );
    assert_fails(
        &sovereign(&["bench", "-m", m, "-p", "0", "-n", "0"]),
        "nothing to measure",
    );
    // -c 0 gives perplexity its default chunks of 512 (it divided by zero).
    let short = dir.join("sovereign-short.txt");
    std::fs::write(&short, "one two three").unwrap();
    assert_fails_after_output(
        &sovereign(&[
            "perplexity",
            "-m",
            m,
            "-c",
            "0",
            "-f",
            short.to_str().unwrap(),
        ]),
        "chunks of 512 needs at least 1024",
    );
    // A full disk: the streaming command and a printing one both fail with one line.
    for args in [vec!["run", "-m", m, "-n", "2", prompt], vec!["devices"]] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_sovereign"))
            .args(&args)
            .env("XDG_RUNTIME_DIR", &dir)
            .stdout(full)
            .output()
            .unwrap();
        assert_fails(&o, "writing the output: no space left on device");
    }
}

/// Every file of the bad-GGUF corpus (broken files) and of the model corpus (valid GGUF, not a
/// runnable model): non-zero exit and an error naming the problem, from `inspect` (parsing and
/// model checks) and from `run`.
#[test]
fn bad_gguf_corpus_fails_cleanly() {
    let mut n = 0;
    for sub in ["gguf", "model"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/corpus")
            .join(sub);
        let expected = std::fs::read_to_string(dir.join("EXPECTED.txt")).unwrap();
        for line in expected
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let (file, words) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("bad EXPECTED line {line:?}"));
            let path = dir.join(file.trim());
            let start = std::time::Instant::now();
            assert_fails_after_output(
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
    }
    assert!(n >= 45, "only {n} corpus files");
}

/// Files that are valid GGUF but not a model that can run: what each spoils in a tiny synthetic
/// model, and words its error must contain.
fn model_corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    use sovereign::format::{DType, GgufWriter, Value};
    use sovereign::model::synthetic::{SyntheticSpec, synthetic_llama};
    let spec = SyntheticSpec {
        n_vocab: 272,
        n_embd: 64,
        n_layer: 2,
        n_head: 4,
        n_head_kv: 2,
        n_ff: 64,
        dtype: DType::Q8_0,
        embd_dtype: DType::Q8_0,
        tied: true,
        ..Default::default()
    };
    let base = || synthetic_llama(&spec).unwrap();
    let u32v = Value::U32;
    let cases: Vec<(&'static str, GgufWriter, &'static str)> = vec![
        (
            "head_count_zero",
            base().set("llama.attention.head_count", u32v(0)),
            "head counts must be positive",
        ),
        (
            "head_count_kv_zero",
            base().set("llama.attention.head_count_kv", u32v(0)),
            "head counts must be positive",
        ),
        (
            "heads_not_dividing",
            base().set("llama.attention.head_count_kv", u32v(3)),
            "is not a multiple of head_count_kv",
        ),
        (
            "block_count_zero",
            base().set("llama.block_count", u32v(0)),
            "block_count is 0",
        ),
        (
            "block_count_past_tensors",
            base().set("llama.block_count", u32v(3)),
            "blk.2.attn_norm.weight is missing",
        ),
        (
            "missing_tensor",
            base().remove_tensor("blk.1.ffn_up.weight"),
            "blk.1.ffn_up.weight is missing",
        ),
        (
            "missing_key",
            base().remove("llama.embedding_length"),
            "llama.embedding_length is missing",
        ),
        (
            "no_architecture",
            base().remove("general.architecture"),
            "no general.architecture",
        ),
        (
            "wrong_shape",
            base().remove_tensor("blk.0.attn_q.weight").tensor(
                "blk.0.attn_q.weight",
                &[64, 32],
                DType::F32,
                vec![0; 64 * 32 * 4],
            ),
            "blk.0.attn_q.weight has shape [64, 32], expected [64, 64]",
        ),
        (
            "unsupported_tensor_type",
            base().remove_tensor("blk.0.attn_q.weight").tensor(
                "blk.0.attn_q.weight",
                &[64, 64],
                DType::IQ4_NL,
                vec![0; 64 * 2 * 18],
            ),
            "has type iq4_nl, which this build cannot run",
        ),
        (
            "head_dim_not_multiple_of_4",
            base()
                .set("llama.attention.head_count", u32v(32))
                .set("llama.attention.head_count_kv", u32v(32)),
            "head dimension 2",
        ),
        (
            "rope_dims_odd",
            base().set("llama.rope.dimension_count", u32v(7)),
            "rope.dimension_count 7",
        ),
        (
            "bos_outside_vocab",
            base().set("tokenizer.ggml.bos_token_id", u32v(272)),
            "tokenizer.ggml.bos_token_id = 272 is outside the vocabulary",
        ),
        (
            "eos_outside_vocab",
            base().set("tokenizer.ggml.eos_token_id", u32v(100_000)),
            "tokenizer.ggml.eos_token_id = 100000 is outside the vocabulary",
        ),
        (
            "vocab_size_mismatch",
            base().set("llama.vocab_size", u32v(300)),
            "vocab_size 300 differs",
        ),
        (
            "rope_scaling_unknown",
            base().set("llama.rope.scaling.type", Value::String("warp".into())),
            "rope scaling \"warp\" is not supported",
        ),
        (
            "architecture_unsupported",
            base().set("general.architecture", Value::String("gemma".into())),
            "architecture \"gemma\" is not supported",
        ),
    ];
    cases
        .into_iter()
        .map(|(name, w, words)| (name, w.to_bytes(), words))
        .collect()
}

#[test]
#[ignore = "regenerates tests/corpus/model; run after changing model_corpus()"]
fn write_model_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/model");
    std::fs::create_dir_all(&dir).unwrap();
    let mut expected = String::from(
        "# file, a tab, words the error message must contain; written by write_model_corpus\n",
    );
    for (name, bytes, words) in model_corpus() {
        std::fs::write(dir.join(format!("{name}.gguf")), bytes).unwrap();
        expected.push_str(&format!("{name}.gguf\t{words}\n"));
    }
    std::fs::write(dir.join("EXPECTED.txt"), expected).unwrap();
}

#[test]
fn model_corpus_is_up_to_date() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/model");
    for (name, bytes, _) in model_corpus() {
        let on_disk = std::fs::read(dir.join(format!("{name}.gguf"))).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "tests/corpus/model/{name}.gguf is stale: run `cargo test --test cli write_model_corpus -- --ignored`"
        );
    }
}

/// A prompt prefilled in several batches continues exactly as when prefilled in one.
#[test]
fn chunked_prefill_matches_one_batch() {
    let model = model_path();
    let m = model.to_str().unwrap();
    let prompt = "The history of the printing press begins in the fifteenth century, when \
        Johannes Gutenberg combined movable metal type, oil-based ink and a screw press. \
        Within decades, presses spread across Europe, books became cheaper, and literacy grew. \
        Scholars could compare identical copies of texts for the first time, and ideas moved \
        faster than ever before. In this essay we look at";
    let run = |batch: &str| {
        let o = sovereign(&[
            "run", "-m", m, "-n", "8", "--temp", "0", "-b", batch, prompt,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let whole = run("512");
    assert!(!whole.is_empty());
    assert_eq!(run("16"), whole);
}

/// `--json-schema`, `--json-schema-file`, `--json` and `--grammar` hold the output to what they
/// describe, in `run` and in each reply of `chat`; a bad one fails before the model loads, or
/// (a grammar the vocabulary cannot serve) before anything is generated.
#[test]
fn constrained_output_follows_its_schema_or_grammar() {
    let model = model_path();
    let m = model.to_str().unwrap();
    let schema = r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 130}},
        "required": ["name", "age"], "additionalProperties": false}"#;
    let check_person = |text: &str| {
        let v: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 2, "{text}");
        assert!(o["name"].is_string() && o["age"].is_u64(), "{text}");
    };
    let prompt = "Describe a person as JSON.";
    let o = sovereign(&[
        "run", "-m", m, "--temp", "0", "-n", "60", "--chat", "-j", schema, prompt,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_person(&stdout(&o));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("person.json");
    std::fs::write(&file, schema).unwrap();
    let from_file = sovereign(&[
        "run",
        "-m",
        m,
        "--temp",
        "0",
        "-n",
        "60",
        "--chat",
        "--json-schema-file",
        file.to_str().unwrap(),
        prompt,
    ]);
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    assert_eq!(stdout(&from_file), stdout(&o));

    let o = sovereign(&[
        "run",
        "-m",
        m,
        "--seed",
        "4",
        "-n",
        "80",
        "--chat",
        "--json",
        "Tell me about dogs.",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with('{'), "{out:?}");

    let o = sovereign(&[
        "run",
        "-m",
        m,
        "--temp",
        "0",
        "-n",
        "20",
        "--grammar",
        r#"start: ("yes" | "no") "!""#,
        "Is the sky blue? Answer:",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out == "yes!" || out == "no!", "{out:?}");
    // The same grammar in llama.cpp's GBNF, from a file.
    let gbnf = dir.path().join("answer.gbnf");
    std::fs::write(
        &gbnf,
        "# yes or no\nroot ::= answer \"!\"\nanswer ::= \"yes\" | \"no\"\n",
    )
    .unwrap();
    let o = sovereign(&[
        "run",
        "-m",
        m,
        "--temp",
        "0",
        "-n",
        "20",
        "--grammar-file",
        gbnf.to_str().unwrap(),
        "Is the sky blue? Answer:",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), out);

    // Each chat reply follows the schema; the conversation goes on.
    let o = chat_session(
        &["-n", "60", "--json-schema", schema],
        b"Describe a person as JSON.\nAnother person, older.\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let replies: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(replies.len(), 2, "{out:?}");
    for r in replies {
        check_person(r.trim());
    }

    // Bad constraints: caught before loading (no model needed), or at compile time.
    let missing = dir.path().join("missing.json");
    for (args, words) in [
        (vec!["-j", "{not json"], "the --json-schema is not JSON"),
        (
            vec!["--json-schema-file", missing.to_str().unwrap()],
            "cannot read",
        ),
        (vec!["--json", "-j", "{}"], "cannot be used with"),
        (vec!["-j", r#"{"type": "strnig"}"#], "strnig"),
        (vec!["--grammar", "start: ("], "invalid grammar"),
        (
            vec!["--grammar", "root ::= answr\nanswer ::= \"yes\""],
            "GBNF line 1: rule answr is used but never defined",
        ),
    ] {
        let mut full = vec!["run", "-m", m, "-n", "4"];
        full.extend(args.iter());
        full.push("x");
        assert_fails(&sovereign(&full), words);
    }
    let o = chat_session(&["--grammar", "start: ("], b"hi\n");
    assert_fails(&o, "invalid grammar");
}
