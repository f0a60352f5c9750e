//! Kills a process while it saves a conversation, many times, at random moments, and checks
//! that the file on disk is always a whole version: the last one the writer finished or the one
//! it was writing, never a torn mix. Runs without the test harness because the writer is this
//! same executable started again with `SAVE_KILL_WRITER` set.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sovereign_app::store::{Conversation, Message, Store, TEMP_PREFIX};

const ROUNDS: u32 = 40;

/// Version `k` of the conversation: its title names the version, and every message's text is
/// derived from both, so a file mixing two versions cannot pass the check.
fn version(k: u64) -> Conversation {
    let mut c = Conversation::new("kill-test".into());
    c.title = format!("version {k}");
    c.updated_ms = k;
    for i in 0..(k % 64 + 1) {
        let line = format!("version {k} message {i} ");
        c.messages.push(if i % 2 == 0 {
            Message::user(line.repeat(200))
        } else {
            Message::assistant(line.repeat(200))
        });
    }
    c
}

fn writer(dir: &Path) {
    let store = match Store::open(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("writer: {e}");
            std::process::exit(1);
        }
    };
    let start = store
        .load()
        .conversations
        .first()
        .and_then(|c| c.title.strip_prefix("version ")?.parse::<u64>().ok())
        .unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    for k in start + 1.. {
        if let Err(e) = store.save_conversation(&version(k)) {
            eprintln!("writer: {e}");
            std::process::exit(1);
        }
        let _ = writeln!(out, "saved {k}");
        let _ = out.flush();
    }
}

fn main() {
    if let Some(dir) = std::env::var_os("SAVE_KILL_WRITER") {
        writer(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let exe = std::env::current_exe().expect("own executable");
    let file = dir.path().join("conversations").join("kill-test.json");
    let mut interrupted = 0;
    let mut last_version = 0;
    // A fixed, varied sequence of delays: kills land early, late and in between.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .env("SAVE_KILL_WRITER", dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the writer");
        let stdout = child.stdout.take().expect("writer stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(k) = line.strip_prefix("saved ") {
                    let _ = tx.send(k.parse::<u64>().unwrap_or(0));
                } else if line == "ready" {
                    let _ = tx.send(0);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the writer did not start");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(2_000 + seed % 60_000);
        let started = Instant::now();
        while started.elapsed() < delay {
            std::hint::spin_loop();
        }
        child.kill().expect("kill the writer");
        let status = child.wait().expect("reap the writer");
        assert!(
            !status.success(),
            "round {round}: the writer ended by itself"
        );
        reader.join().expect("reader thread");
        let finished: Vec<u64> = rx.try_iter().collect();
        let last_finished = finished
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(last_version);

        let left_behind = std::fs::read_dir(dir.path().join("conversations"))
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .count();
        if left_behind > 0 {
            interrupted += 1;
            // The next writer would leave young temporaries alone; clear them so each round
            // counts its own.
            for e in std::fs::read_dir(dir.path().join("conversations"))
                .expect("list")
                .flatten()
            {
                if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    std::fs::remove_file(e.path()).expect("remove temporary");
                }
            }
        }
        if last_finished == 0 && !file.exists() {
            continue;
        }
        let bytes = std::fs::read(&file).expect("the conversation file exists");
        let saved: Conversation = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("round {round}: the saved file is broken after a kill: {e}")
        });
        let k: u64 = saved
            .title
            .strip_prefix("version ")
            .and_then(|v| v.parse().ok())
            .expect("a version title");
        assert!(
            k == last_finished || k == last_finished + 1,
            "round {round}: found version {k}, the writer had finished {last_finished}"
        );
        assert!(
            saved == version(k),
            "round {round}: version {k} on disk differs from what was written"
        );
        last_version = k;
    }
    assert!(
        interrupted > 0,
        "no kill landed inside a save, so the test proved nothing; make the saves longer"
    );
    println!(
        "save_kill: {ROUNDS} kills, {interrupted} of them in the middle of a save; the file was always a whole version (last: {last_version})"
    );
}
