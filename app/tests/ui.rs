//! The app driven through its accessibility tree, as a person would: typing, pressing keys and
//! clicking what the screen shows, with the real engine and the test model on the GPU (lavapipe
//! in CI). Each test has its own data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use sovereign_app::store::{Role, Settings, Store};
use sovereign_app::{AppOptions, ChatApp};

fn model_path() -> PathBuf {
    let path = std::env::var_os("SOVEREIGN_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| sovereign::fetch::default_model_path().expect("a cache directory"));
    assert!(
        path.is_file(),
        "test model missing at {}: run `sovereign run` once or set SOVEREIGN_TEST_MODEL",
        path.display()
    );
    path
}

fn app(dir: &Path, model: Option<PathBuf>) -> Harness<'static, ChatApp> {
    let options = AppOptions {
        data_dir: dir.to_path_buf(),
        load_at_start: model.is_some(),
        model,
    };
    let app = ChatApp::new(&egui::Context::default(), options).expect("open the data directory");
    Harness::builder()
        .with_size(egui::vec2(1200.0, 800.0))
        .build_ui_state(|ui, app: &mut ChatApp| app.show(ui), app)
}

/// Steps the UI until `done` holds, failing with `what` after `timeout`.
fn wait_for(
    h: &mut Harness<'static, ChatApp>,
    what: &str,
    timeout: Duration,
    done: impl Fn(&ChatApp) -> bool,
) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.step();
}

fn wait_for_model(h: &mut Harness<'static, ChatApp>) {
    wait_for(h, "the model to load", Duration::from_secs(120), |a| {
        a.model().is_some() && !a.is_loading()
    });
}

/// Clicks what has this label; the frame after the click shows its effect.
fn click(h: &mut Harness<'static, ChatApp>, label: &str) {
    h.get_by_label(label).click();
    h.step();
    h.step();
}

fn type_and_send(h: &mut Harness<'static, ChatApp>, text: &str) {
    h.get_by_label("Message").focus();
    h.step();
    h.get_by_label("Message").type_text(text);
    h.step();
    h.key_press(egui::Key::Enter);
    h.step();
}

fn last_reply(a: &ChatApp) -> String {
    a.current_conversation()
        .messages
        .last()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

/// What the engine itself answers, greedily, to the same conversation: the app must show
/// exactly this.
fn engine_reply(system: &str, user: &str, max_tokens: u32) -> String {
    use sovereign::engine::service::{Engine, EngineOptions, Event, Prompt, Request};
    use sovereign::engine::{GenerateParams, Model, SamplingParams};
    use sovereign::tokenizer::ChatMessage;
    let file = sovereign::format::GgufFile::open(model_path()).expect("model");
    let ctx = Arc::new(
        pollster::block_on(sovereign::gpu::GpuContext::new(
            &sovereign::gpu::GpuOptions::from_env(),
        ))
        .expect("adapter"),
    );
    let options = sovereign::model::LoadOptions {
        n_ctx: Some(Settings::default().context_size),
        ..Default::default()
    };
    let model = pollster::block_on(Model::load(ctx, &file, &options, &mut |_| {})).expect("load");
    let engine = Engine::start(model, EngineOptions::default()).expect("engine");
    let mut stream = engine
        .handle()
        .submit(Request {
            prompt: Prompt::Chat(vec![ChatMessage::system(system), ChatMessage::user(user)]),
            params: GenerateParams {
                max_tokens: Some(max_tokens),
                // The app's default settings, greedy.
                sampling: {
                    let s = Settings::default();
                    SamplingParams {
                        temperature: 0.0,
                        top_k: s.top_k,
                        top_p: s.top_p,
                        min_p: s.min_p,
                        repeat_penalty: s.repeat_penalty,
                        ..SamplingParams::default()
                    }
                },
                ..GenerateParams::default()
            },
            logprobs: None,
        })
        .expect("submit");
    let mut text = String::new();
    pollster::block_on(async {
        while let Some(e) = stream.next().await {
            if let Event::Delta { text: t, .. } = e {
                text.push_str(&t);
            }
        }
    });
    text
}

#[test]
fn a_message_streams_a_reply_that_stop_and_escape_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = app(dir.path(), Some(model_path()));
    h.state_mut().settings_mut().temperature = 0.0;
    h.state_mut().settings_mut().max_tokens = 24;
    wait_for_model(&mut h);
    assert!(
        h.query_by_label_contains("Model: SmolLM2-135M-Instruct.Q4_1")
            .is_some(),
        "the model's file is named in the top bar"
    );
    assert!(
        h.query_by_label_contains("on the GPU").is_some(),
        "the GPU memory the model holds is shown"
    );

    type_and_send(&mut h, "What is the capital of France?");
    assert!(h.state().is_generating(), "Enter sends the message");
    assert_eq!(
        h.state().current_conversation().title,
        "What is the capital of France?"
    );
    assert!(
        h.query_by_label("Stop").is_some(),
        "a Stop button while it streams"
    );
    // Streaming: the reply grows on screen before it is finished.
    wait_for(&mut h, "the first words", Duration::from_secs(60), |a| {
        !last_reply(a).trim().is_empty()
    });
    let partial = last_reply(h.state());
    wait_for(
        &mut h,
        "the reply to finish",
        Duration::from_secs(60),
        |a| !a.is_generating(),
    );
    let reply = last_reply(h.state());
    assert!(reply.len() >= partial.len() && reply.starts_with(partial.trim_end()));
    let expected = engine_reply(
        &Settings::default().system_prompt,
        "What is the capital of France?",
        24,
    );
    assert_eq!(
        reply, expected,
        "the app shows exactly what the engine generates"
    );
    let first_word = reply
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches(|c: char| !c.is_alphanumeric());
    assert!(
        h.query_by_label_contains(first_word).is_some(),
        "the reply's first word {first_word:?} is on screen"
    );
    let stats = h.state().current_conversation().messages[1]
        .stats
        .clone()
        .unwrap();
    assert!(stats.tokens > 0 && stats.tokens <= 24, "{stats:?}");
    assert!(stats.tokens_per_second.unwrap() > 0.0);
    assert!(stats.time_to_first_token_ms.unwrap() > 0.0);
    assert!(
        h.query_by_label_contains("tokens/s").is_some(),
        "stats under the reply"
    );
    assert!(h.query_by_label_contains("s to first token").is_some());

    // Copy puts the reply on the clipboard.
    h.get_all_by_label("Copy")
        .nth(1)
        .expect("a Copy button under the reply")
        .click();
    h.step();
    let copied = h
        .output()
        .platform_output
        .commands
        .iter()
        .any(|c| matches!(c, egui::OutputCommand::CopyText(t) if *t == reply));
    assert!(copied, "Copy puts the reply's text on the clipboard");
    h.step();

    // Regenerate: greedy settings give the same reply again, in place of the old one.
    click(&mut h, "Regenerate");
    assert!(h.state().is_generating());
    wait_for(
        &mut h,
        "the regenerated reply",
        Duration::from_secs(60),
        |a| !a.is_generating(),
    );
    assert_eq!(h.state().current_conversation().messages.len(), 2);
    assert_eq!(last_reply(h.state()), expected);

    // Edit and resend the question: what followed it is replaced by the new answer.
    click(&mut h, "Edit");
    h.get_by_label("Edit message").focus();
    h.step();
    h.get_by_label("Edit message")
        .type_text(" Answer in one word.");
    h.step();
    click(&mut h, "Resend");
    wait_for(
        &mut h,
        "the answer to the edited question",
        Duration::from_secs(60),
        |a| !a.is_generating(),
    );
    let messages = h.state().current_conversation().messages.clone();
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[0].content,
        "What is the capital of France? Answer in one word."
    );
    assert_eq!(
        messages[1].content,
        engine_reply(
            &Settings::default().system_prompt,
            "What is the capital of France? Answer in one word.",
            24
        )
    );

    // Stop mid-stream with the button: generation ends at once, the partial text stays.
    h.state_mut().settings_mut().max_tokens = 400;
    type_and_send(
        &mut h,
        "Write a long story about a dragon who learns to bake bread.",
    );
    wait_for(&mut h, "a few tokens", Duration::from_secs(60), |a| {
        last_reply(a).split_whitespace().count() >= 3
    });
    click(&mut h, "Stop");
    assert!(!h.state().is_generating(), "Stop ends the reply at once");
    let stopped = last_reply(h.state());
    assert!(!stopped.is_empty());
    let stats = h
        .state()
        .current_conversation()
        .messages
        .last()
        .unwrap()
        .stats
        .clone()
        .unwrap();
    assert_eq!(stats.finish, "cancelled");
    assert!(stats.tokens < 400);
    for _ in 0..20 {
        h.step();
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(last_reply(h.state()), stopped, "no text arrives after Stop");
    assert!(
        h.query_by_label("Send").is_some(),
        "the composer is ready again"
    );

    // Escape does the same.
    type_and_send(&mut h, "Tell me about the history of Rome in detail.");
    wait_for(&mut h, "a few tokens", Duration::from_secs(60), |a| {
        last_reply(a).split_whitespace().count() >= 2
    });
    h.key_press(egui::Key::Escape);
    h.step();
    assert!(!h.state().is_generating(), "Escape ends the reply");
    let messages = h.state().current_conversation().messages.clone();
    assert_eq!(messages.len(), 6);
    assert_eq!(
        messages[4].content,
        "Tell me about the history of Rome in detail."
    );
    assert_eq!(messages[5].stats.as_ref().unwrap().finish, "cancelled");

    // Everything on screen is on disk, and a restart finds it as it was.
    let before = h.state().conversations().to_vec();
    h.state_mut().shutdown();
    drop(h);
    let h = app(dir.path(), None);
    let after = h.state().conversations();
    let saved: Vec<_> = before.iter().filter(|c| !c.messages.is_empty()).collect();
    let reopened: Vec<_> = after.iter().filter(|c| !c.messages.is_empty()).collect();
    assert_eq!(reopened, saved);
}

#[test]
fn conversations_are_created_renamed_and_deleted_and_settings_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = app(dir.path(), None);
    h.step();
    assert_eq!(h.state().conversations().len(), 1);

    // Shift+Enter adds a line; Enter without a model keeps the text and says why.
    h.get_by_label("Message").focus();
    h.step();
    h.get_by_label("Message").type_text("line one");
    h.step();
    h.key_press_modifiers(egui::Modifiers::SHIFT, egui::Key::Enter);
    h.step();
    h.get_by_label("Message").type_text("line two");
    h.step();
    assert_eq!(
        h.get_by_label("Message").value().as_deref(),
        Some("line one\nline two")
    );
    h.key_press(egui::Key::Enter);
    h.step();
    h.step();
    assert!(h.state().current_conversation().messages.is_empty());
    assert_eq!(
        h.get_by_label("Message").value().as_deref(),
        Some("line one\nline two")
    );
    let notice = h.state().notice().cloned().expect("a notice");
    assert!(
        notice.text.contains("No model is loaded"),
        "{}",
        notice.text
    );
    click(&mut h, "Dismiss");

    // Rename the empty conversation: it is saved from then on.
    click(&mut h, "Rename");
    h.get_by_label("Conversation title").focus();
    h.step();
    h.get_by_label("Conversation title")
        .type_text(" about Rust");
    h.step();
    click(&mut h, "Save title");
    assert_eq!(
        h.state().current_conversation().title,
        "New chat about Rust"
    );
    assert!(h.query_all_by_label("New chat about Rust").count() >= 1);

    // Ctrl+N makes a new one; the button too (reusing an empty one rather than piling them up).
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::N);
    h.step();
    assert_eq!(h.state().conversations().len(), 2);
    assert_eq!(h.state().current_conversation().title, "New chat");
    click(&mut h, "+ New chat");
    assert_eq!(h.state().conversations().len(), 2);
    click(&mut h, "Rename");
    h.get_by_label("Conversation title").focus();
    h.step();
    h.get_by_label("Conversation title").type_text(" to delete");
    h.step();
    h.key_press(egui::Key::Enter);
    h.step();
    h.step();
    assert_eq!(h.state().current_conversation().title, "New chat to delete");

    // Delete asks first; Cancel keeps it, Confirm removes it from the list and the disk.
    click(&mut h, "Delete");
    click(&mut h, "Cancel");
    assert_eq!(h.state().conversations().len(), 2);
    click(&mut h, "Delete");
    click(&mut h, "Confirm delete");
    let titles: Vec<_> = h
        .state()
        .conversations()
        .iter()
        .map(|c| c.title.clone())
        .collect();
    assert_eq!(titles, vec!["New chat about Rust".to_string()]);

    // A setting changed in the panel is saved at once.
    click(&mut h, "Settings");
    h.get_by_role_and_label(egui::accesskit::Role::Slider, "Temperature")
        .set_value_accesskit(0.25);
    h.step();
    click(&mut h, "Light");
    assert_eq!(h.state().settings().temperature, 0.25);
    let on_disk: Settings =
        serde_json::from_slice(&std::fs::read(dir.path().join("settings.json")).unwrap()).unwrap();
    assert_eq!(on_disk.temperature, 0.25);
    assert_eq!(on_disk.theme, sovereign_app::store::Theme::Light);

    // A restart finds both.
    drop(h);
    let h = app(dir.path(), None);
    assert_eq!(h.state().settings().temperature, 0.25);
    assert!(
        h.state()
            .conversations()
            .iter()
            .any(|c| c.title == "New chat about Rust")
    );
    assert!(
        !h.state()
            .conversations()
            .iter()
            .any(|c| c.title == "New chat to delete")
    );
    let files = Store::open(dir.path()).unwrap().load().conversations;
    assert_eq!(files.len(), 1);
}

/// A conversation longer than the context goes on (the model gets its newest turns); a message
/// that alone does not fit comes back into the box with an error; an unsent message survives a
/// restart.
#[test]
fn a_conversation_outgrows_the_context_and_a_message_too_long_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        context_size: 256,
        max_tokens: 4,
        temperature: 0.0,
        ..Settings::default()
    };
    Store::open(dir.path())
        .unwrap()
        .save_settings(&settings)
        .unwrap();
    let mut h = app(dir.path(), Some(model_path()));
    wait_for_model(&mut h);
    assert_eq!(h.state().model().unwrap().n_ctx, 256);

    let too_long = "word ".repeat(300);
    type_and_send(&mut h, &too_long);
    let notice = h.state().notice().cloned().expect("an error is shown");
    assert!(notice.error);
    assert!(
        notice.text.contains("more than the context of 256"),
        "{}",
        notice.text
    );
    assert_eq!(h.state().input(), too_long.trim());
    assert!(h.state().current_conversation().messages.is_empty());
    click(&mut h, "Dismiss");
    h.get_by_label("Message").focus();
    h.step();
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.key_press(egui::Key::Backspace);
    h.step();
    assert_eq!(h.state().input(), "");

    // About 60 tokens a message: by the fourth the whole conversation is past 256.
    let paragraph = "Tell me about the history of the river and the bridge and the old mill \
        by the water, the town that grew around it, the market on the square, the church with \
        its tall tower, the school, the harbour and the ships that came in every spring.";
    for turn in 0..5 {
        type_and_send(&mut h, &format!("{turn}. {paragraph}"));
        wait_for(&mut h, "a reply", Duration::from_secs(120), |a| {
            !a.is_generating() && !last_reply(a).is_empty()
        });
        assert!(
            h.state().notice().is_none_or(|n| !n.error),
            "turn {turn}: {:?}",
            h.state().notice()
        );
    }
    assert_eq!(h.state().current_conversation().messages.len(), 10);
    assert!(
        h.query_by_label_contains("the model sees only its latest messages")
            .is_some()
    );

    // An unsent message is there again after a restart.
    h.get_by_label("Message").focus();
    h.step();
    h.get_by_label("Message").type_text("not sent yet");
    h.step();
    h.state_mut().shutdown();
    drop(h);
    let h = app(dir.path(), None);
    assert_eq!(h.state().input(), "not sent yet");
}

#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

#[test]
fn a_bad_model_file_shows_an_error_and_the_loaded_model_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = app(dir.path(), Some(model_path()));
    h.state_mut().settings_mut().temperature = 0.0;
    h.state_mut().settings_mut().max_tokens = 4;
    wait_for_model(&mut h);
    let name = h.state().model().unwrap().name.clone();

    let bad = dir.path().join("not-a-model.gguf");
    std::fs::write(&bad, b"these bytes are not a GGUF file at all").unwrap();
    h.input_mut().dropped_files.push(Arc::new(Dropped(bad)));
    h.step();
    wait_for(&mut h, "the load to fail", Duration::from_secs(30), |a| {
        !a.is_loading()
    });
    let notice = h.state().notice().cloned().expect("an error is shown");
    assert!(notice.error);
    assert!(notice.text.contains("not-a-model.gguf"), "{}", notice.text);
    assert!(notice.text.contains("GGUF"), "{}", notice.text);
    assert!(notice.text.contains("still loaded"), "{}", notice.text);
    assert!(
        h.query_by_label_contains("Could not load not-a-model.gguf")
            .is_some()
    );
    assert_eq!(h.state().model().unwrap().name, name, "the old model stays");

    click(&mut h, "Dismiss");
    assert!(h.state().notice().is_none());
    type_and_send(&mut h, "Hi");
    wait_for(&mut h, "a reply", Duration::from_secs(60), |a| {
        !a.is_generating() && !last_reply(a).is_empty()
    });

    // A missing file is an error too, not a crash.
    h.state_mut().open_model(dir.path().join("missing.gguf"));
    wait_for(&mut h, "the load to fail", Duration::from_secs(30), |a| {
        !a.is_loading()
    });
    assert!(h.state().notice().unwrap().text.contains("missing.gguf"));
    assert_eq!(h.state().model().unwrap().name, name);
}
