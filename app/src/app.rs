//! The chat window: conversations on the left, the chat in the middle, settings on the right.
//! Every frame drains what the worker and the reply threads sent, draws, then applies what the
//! user did. Conversations are written to disk after every message and every half second while
//! a reply streams, so a crash loses nothing that was on screen.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use eframe::egui::{self, Key, Modifiers, RichText};
use egui_commonmark::{CommonMarkCache, CommonMarkViewer};
use sovereign::engine::service::{EngineHandle, Event, ModelInfo, Prompt, Request};
use sovereign::engine::{EngineError, GenerateParams, SamplingParams, StopReason};
use sovereign::gpu::AdapterSummary;
use sovereign::tokenizer::ChatMessage;

use crate::store::{
    Conversation, Message, ReplyStats, Role, Settings, Store, StoreError, Theme, now_ms,
};
use crate::worker::{LoadRequest, LoadStage, ModelSource, Repaint, Reply, Worker, WorkerEvent};

/// How the app starts.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub data_dir: PathBuf,
    /// Load this model at start instead of the last one used (or the default model).
    pub model: Option<PathBuf>,
    /// Whether to load a model at start at all.
    pub load_at_start: bool,
}

/// A streamed reply is written to disk at most this often.
const PARTIAL_SAVE_INTERVAL: Duration = Duration::from_millis(500);
/// The context meter turns into a warning at this share of the context.
const CONTEXT_WARNING: f32 = 0.8;

struct Loading {
    what: String,
    stage: LoadStage,
    done: u64,
    total: u64,
}

struct ActiveReply {
    conversation: String,
    index: usize,
    reply: Reply,
    info: ModelInfo,
    submitted: Instant,
    first_token: Option<Instant>,
    tokens: usize,
    prompt_tokens: usize,
    cached_tokens: usize,
    last_saved: Instant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub text: String,
    pub error: bool,
    /// The conversation it is about (shown only there), or `None` for the whole app.
    pub conversation: Option<String>,
}

enum Action {
    Send,
    Stop,
    NewChat,
    Select(usize),
    StartRename,
    Rename(String),
    CancelRename,
    AskDelete,
    Delete,
    CancelDelete,
    Copy(usize),
    Edit(usize),
    Resend(usize, String),
    CancelEdit,
    Regenerate,
    PickModel,
    Load(ModelSource),
    ReloadModel,
    DismissNotice,
}

pub struct ChatApp {
    store: Store,
    settings: Settings,
    saved_settings: Settings,
    conversations: Vec<Conversation>,
    current: usize,
    input: String,
    worker: Worker,
    repaint: Repaint,
    engine: Option<(EngineHandle, PathBuf)>,
    loading: Option<Loading>,
    reply: Option<ActiveReply>,
    notice: Option<Notice>,
    rename: Option<String>,
    confirm_delete: bool,
    edit: Option<(usize, String)>,
    show_settings: bool,
    adapters: Vec<AdapterSummary>,
    markdown: CommonMarkCache,
    picker: Option<mpsc::Receiver<Option<PathBuf>>>,
    context_tokens: Option<((String, usize, usize, usize), usize)>,
    applied_theme: Option<Theme>,
    focus_composer: bool,
    pending_copy: Option<String>,
    focus_rename: bool,
}

impl ChatApp {
    /// Opens the data directory, reads what it holds and, if asked, starts loading a model.
    pub fn new(ctx: &egui::Context, options: AppOptions) -> Result<Self, StoreError> {
        let store = Store::open(&options.data_dir)?;
        let loaded = store.load();
        let repaint_ctx = ctx.clone();
        let repaint: Repaint = Arc::new(move || repaint_ctx.request_repaint());
        let mut conversations = loaded.conversations;
        if conversations.first().is_none_or(|c| !c.messages.is_empty()) {
            conversations.insert(0, Conversation::new(store.new_conversation_id()));
        }
        let notice = (!loaded.problems.is_empty()).then(|| Notice {
            text: format!(
                "Some saved files could not be read and were left as they are: {}",
                loaded.problems.join("; ")
            ),
            error: true,
            conversation: None,
        });
        let mut settings = loaded.settings;
        // The unsent message of the last session goes back into the box.
        let input = std::mem::take(&mut settings.draft);
        let mut app = ChatApp {
            worker: Worker::start(Arc::clone(&repaint)),
            repaint,
            store,
            saved_settings: settings.clone(),
            settings,
            conversations,
            current: 0,
            input,
            engine: None,
            loading: None,
            reply: None,
            notice,
            rename: None,
            confirm_delete: false,
            edit: None,
            show_settings: false,
            adapters: Vec::new(),
            markdown: CommonMarkCache::default(),
            picker: None,
            context_tokens: None,
            applied_theme: None,
            focus_composer: true,
            pending_copy: None,
            focus_rename: false,
        };
        if options.load_at_start {
            let source = match options.model {
                Some(p) => ModelSource::Path(p),
                None => match app.settings.recent_models.first() {
                    Some(p) if p.is_file() => ModelSource::Path(p.clone()),
                    _ => ModelSource::Default,
                },
            };
            app.load(source);
        }
        Ok(app)
    }

    // What tests and the window's owner may look at.

    pub fn conversations(&self) -> &[Conversation] {
        &self.conversations
    }

    pub fn current_conversation(&self) -> &Conversation {
        &self.conversations[self.current]
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Changed settings are saved at the end of the next frame, as the panel's are.
    pub fn settings_mut(&mut self) -> &mut Settings {
        &mut self.settings
    }

    pub fn is_generating(&self) -> bool {
        self.reply.is_some()
    }

    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }

    /// The model ready to chat, if any.
    pub fn model(&self) -> Option<&ModelInfo> {
        self.engine.as_ref().map(|(h, _)| h.model_info())
    }

    /// What the message box holds.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The notice shown now: the app's, or the current conversation's.
    pub fn notice(&self) -> Option<&Notice> {
        self.visible_notice()
    }

    /// Loads a model file, as the Open dialog or a dropped file does.
    pub fn open_model(&mut self, path: PathBuf) {
        self.load(ModelSource::Path(path));
    }

    fn load(&mut self, source: ModelSource) {
        let what = match &source {
            ModelSource::Default => "the default model".to_string(),
            ModelSource::Path(p) => file_name(p),
        };
        let request = LoadRequest {
            source,
            adapter: self.settings.adapter.clone(),
            context_size: self.settings.context_size,
        };
        // The engine goes away when the new file checks out; a reply in flight would end then.
        self.stop();
        if self.worker.load(request) {
            self.loading = Some(Loading {
                what,
                stage: LoadStage::Uploading,
                done: 0,
                total: 0,
            });
        } else {
            self.error("The engine thread is not running; restart the app.".into());
        }
    }

    fn error(&mut self, text: String) {
        tracing::warn!("{text}");
        self.notice = Some(Notice {
            text,
            error: true,
            conversation: None,
        });
    }

    /// An error about the current conversation, shown while it is the one on screen.
    fn conversation_error(&mut self, text: String) {
        tracing::warn!("{text}");
        self.notice = Some(Notice {
            text,
            error: true,
            conversation: Some(self.conversations[self.current].id.clone()),
        });
    }

    /// Whether the reply in progress belongs to the conversation on screen.
    fn replying_here(&self) -> bool {
        self.reply
            .as_ref()
            .is_some_and(|r| r.conversation == self.conversations[self.current].id)
    }

    /// The notice to show with the current conversation on screen.
    fn visible_notice(&self) -> Option<&Notice> {
        self.notice.as_ref().filter(|n| {
            n.conversation
                .as_ref()
                .is_none_or(|c| *c == self.conversations[self.current].id)
        })
    }

    /// The whole window, drawn into `ui`.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        if self.applied_theme.is_none() {
            style(&ctx);
        }
        if self.applied_theme != Some(self.settings.theme) {
            ctx.set_theme(match self.settings.theme {
                Theme::Dark => egui::Theme::Dark,
                Theme::Light => egui::Theme::Light,
            });
            self.applied_theme = Some(self.settings.theme);
        }
        self.poll();
        let mut actions = Vec::new();
        self.shortcuts(&ctx, &mut actions);
        self.dropped_files(&ctx, &mut actions);

        egui::Panel::top("top_bar").show(ui, |ui| self.top_bar(ui, &mut actions));
        if self.loading.is_some() || self.visible_notice().is_some() {
            egui::Panel::top("status").show(ui, |ui| self.status_bar(ui, &mut actions));
        }
        // Below this width the conversation list gives way to the settings, so the chat and its
        // message box keep room.
        let narrow = ui.max_rect().width() < 900.0;
        if !(narrow && self.show_settings) {
            egui::Panel::left("conversations")
                .default_size(240.0)
                .size_range(180.0..=420.0)
                .show(ui, |ui| self.conversation_list(ui, &mut actions));
        }
        if self.show_settings {
            egui::Panel::right("settings")
                .default_size(300.0)
                .size_range(220.0..=420.0)
                .show(ui, |ui| self.settings_panel(ui, &mut actions));
        }
        egui::Panel::bottom("composer").show(ui, |ui| self.composer(ui, &mut actions));
        egui::CentralPanel::default().show(ui, |ui| self.chat_view(ui, &mut actions));

        for action in actions {
            self.apply(action);
        }
        if let Some(text) = self.pending_copy.take() {
            ctx.copy_text(text);
        }
        // Not in the middle of a slider drag: one save when it ends, not one per frame.
        let dragging = ctx.input(|i| i.pointer.any_down());
        if self.settings != self.saved_settings && !dragging {
            match self.store.save_settings(&self.settings) {
                Ok(()) => self.saved_settings = self.settings.clone(),
                Err(e) => {
                    // Keep the difference so the next frame tries again, but say it once.
                    self.saved_settings = self.settings.clone();
                    self.error(format!("Settings were not saved: {e}"));
                }
            }
        }
        if self.reply.is_some() || self.loading.is_some() {
            // Elapsed-time displays and the indeterminate bar move without events.
            ctx.request_repaint_after(Duration::from_millis(250));
        }
    }

    /// Saves what is on screen; called when the window closes.
    pub fn shutdown(&mut self) {
        self.stop();
        self.settings.draft = self.input.clone();
        let _ = self.store.save_settings(&self.settings);
    }

    fn poll(&mut self) {
        for event in self.worker.poll() {
            match event {
                WorkerEvent::Adapters(a) => self.adapters = a,
                WorkerEvent::Progress { stage, done, total } => {
                    if let Some(l) = &mut self.loading {
                        l.stage = stage;
                        l.done = done;
                        l.total = total;
                    }
                }
                WorkerEvent::Unloaded => {
                    self.engine = None;
                    self.context_tokens = None;
                }
                WorkerEvent::Loaded { handle, path } => {
                    self.loading = None;
                    self.settings.remember_model(&path);
                    if self.notice.as_ref().is_some_and(|n| n.error) {
                        self.notice = None;
                    }
                    self.engine = Some((handle, path));
                    self.context_tokens = None;
                }
                WorkerEvent::LoadFailed { path, message } => {
                    self.loading = None;
                    let what = path.as_deref().map_or("the model".into(), file_name);
                    let still = match &self.engine {
                        Some((h, _)) => format!(" {} is still loaded.", h.model_info().name),
                        None => String::new(),
                    };
                    self.error(format!("Could not load {what}: {message}.{still}"));
                }
            }
        }
        if let Some(rx) = &self.picker
            && let Ok(choice) = rx.try_recv()
        {
            self.picker = None;
            if let Some(path) = choice {
                self.load(ModelSource::Path(path));
            }
        }
        self.poll_reply();
    }

    fn poll_reply(&mut self) {
        let Some(active) = &mut self.reply else {
            return;
        };
        let Some(ci) = self
            .conversations
            .iter()
            .position(|c| c.id == active.conversation)
        else {
            active.reply.canceller.cancel();
            self.reply = None;
            return;
        };
        let mut end = None;
        loop {
            match active.reply.events.try_recv() {
                Ok(Event::Started {
                    prompt_tokens,
                    cached_tokens,
                }) => {
                    active.prompt_tokens = prompt_tokens;
                    active.cached_tokens = cached_tokens;
                }
                Ok(Event::Delta { token, text, .. }) => {
                    if token.is_some() {
                        active.tokens += 1;
                        active.first_token.get_or_insert_with(Instant::now);
                    }
                    if let Some(m) = self.conversations[ci].messages.get_mut(active.index) {
                        m.content.push_str(&text);
                    }
                }
                Ok(Event::Finished {
                    stop,
                    usage,
                    timings,
                }) => {
                    let finish = match stop {
                        StopReason::EndOfGeneration | StopReason::StopString(_) => "stop",
                        StopReason::MaxTokens => "length",
                        StopReason::ContextFull => "context full",
                        StopReason::Cancelled => "cancelled",
                    };
                    let decode = timings
                        .time_to_first_token
                        .map(|t| timings.total.saturating_sub(t));
                    let per_second = decode
                        .filter(|d| usage.completion_tokens > 1 && !d.is_zero())
                        .map(|d| (usage.completion_tokens - 1) as f64 / d.as_secs_f64());
                    end = Some(ReplyStats {
                        time_to_first_token_ms: timings
                            .time_to_first_token
                            .map(|t| t.as_secs_f64() * 1e3),
                        tokens: usage.completion_tokens,
                        tokens_per_second: per_second,
                        context_tokens: usage.prompt_tokens + usage.completion_tokens,
                        context_size: active.info.n_ctx,
                        cached_tokens: usage.cached_tokens,
                        adapter: active.info.adapter.clone(),
                        backend: active.info.backend.clone(),
                        finish: finish.into(),
                    });
                    break;
                }
                Ok(Event::Failed(message)) => {
                    end = Some(partial_stats(active, format!("error: {message}")));
                    break;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    end = Some(partial_stats(active, "error: the reply ended early".into()));
                    break;
                }
            }
        }
        let conversation = &mut self.conversations[ci];
        match end {
            Some(stats) => {
                let failed = stats.finish.strip_prefix("error: ").map(str::to_string);
                if let Some(m) = conversation.messages.get_mut(active.index) {
                    m.stats = Some(stats);
                }
                conversation.updated_ms = now_ms();
                let result = self.store.save_conversation(conversation);
                self.reply = None;
                if let Some(message) = failed {
                    self.error(format!(
                        "The reply failed: {message}. If the GPU was lost, reload the model from the model menu."
                    ));
                }
                if let Err(e) = result {
                    self.error(format!("The conversation was not saved: {e}"));
                }
            }
            None if active.last_saved.elapsed() >= PARTIAL_SAVE_INTERVAL => {
                active.last_saved = Instant::now();
                if let Err(e) = self.store.save_conversation(conversation) {
                    self.error(format!("The conversation was not saved: {e}"));
                }
            }
            None => {}
        }
    }

    /// Ends the reply in flight at once: the engine is told to cancel, the text so far stays.
    fn stop(&mut self) {
        let Some(active) = self.reply.take() else {
            return;
        };
        active.reply.canceller.cancel();
        let stats = partial_stats(&active, "cancelled".into());
        if let Some(c) = self
            .conversations
            .iter_mut()
            .find(|c| c.id == active.conversation)
        {
            if let Some(m) = c.messages.get_mut(active.index) {
                m.stats = Some(stats);
            }
            c.updated_ms = now_ms();
            if let Err(e) = self.store.save_conversation(c) {
                self.error(format!("The conversation was not saved: {e}"));
            }
        }
    }

    fn save_current(&mut self) {
        let c = &mut self.conversations[self.current];
        c.updated_ms = now_ms();
        if let Err(e) = self.store.save_conversation(c) {
            self.error(format!("The conversation was not saved: {e}"));
        }
    }

    fn send(&mut self) {
        let text = self.input.trim().to_string();
        if text.is_empty() {
            return;
        }
        if self.reply.is_some() {
            if !self.replying_here() {
                self.notice = Some(Notice {
                    text: "Another chat is still replying: wait for it or stop it there. Your message is kept.".into(),
                    error: false,
                    conversation: None,
                });
            }
            return;
        }
        if self.engine.is_none() {
            self.error(match &self.loading {
                Some(_) => "The model is still loading; your message is kept.".into(),
                None => {
                    "No model is loaded: open one from the model menu. Your message is kept.".into()
                }
            });
            return;
        }
        let c = &mut self.conversations[self.current];
        if c.messages.is_empty() && c.title == Conversation::new(String::new()).title {
            c.title = title_from(&text);
        }
        c.messages.push(Message::user(text));
        self.input.clear();
        self.save_current();
        self.start_reply();
    }

    /// Generates the assistant's answer to the current conversation as it stands.
    fn start_reply(&mut self) {
        let Some((handle, _)) = &self.engine else {
            self.error("No model is loaded: open one from the model menu.".into());
            return;
        };
        let conversation = chat_messages(&self.settings, &self.conversations[self.current]);
        let n_ctx = handle.model_info().n_ctx as usize;
        // A conversation longer than the context goes to the model as its newest turns, with
        // room for a reply (the reply limit, at most half the context); the window keeps all.
        let reply_room = (self.settings.max_tokens as usize).min(n_ctx / 2);
        let fit = sovereign::engine::fit_conversation(&conversation, n_ctx, reply_room, |m| {
            handle.tokenize(&Prompt::Chat(m.to_vec()))
        });
        let messages = match fit {
            Ok(fit) => fit.messages,
            Err(sovereign::Error::Engine(EngineError::PromptTooLong { n_prompt, .. })) => {
                self.refuse(format!(
                    "This message takes {n_prompt} tokens with the chat template, more than the context of {n_ctx} tokens holds: shorten it, or raise the context size in Settings."
                ));
                return;
            }
            Err(e) => {
                self.refuse(format!("The model cannot answer: {e}."));
                return;
            }
        };
        let s = &self.settings;
        let request = Request {
            prompt: Prompt::Chat(messages),
            params: GenerateParams {
                max_tokens: Some(s.max_tokens),
                sampling: SamplingParams {
                    temperature: s.temperature,
                    top_k: s.top_k,
                    top_p: s.top_p,
                    min_p: s.min_p,
                    repeat_penalty: s.repeat_penalty,
                    seed: s.seed,
                    ..SamplingParams::default()
                },
                stop: Vec::new(),
                ignore_eos: false,
                constraint: None,
                draft: 0,
            },
            logprobs: None,
        };
        let info = handle.model_info().clone();
        match crate::worker::start_reply(handle, request, Arc::clone(&self.repaint)) {
            Ok(reply) => {
                let c = &mut self.conversations[self.current];
                c.messages.push(Message::assistant(""));
                self.reply = Some(ActiveReply {
                    conversation: c.id.clone(),
                    index: c.messages.len() - 1,
                    reply,
                    info,
                    submitted: Instant::now(),
                    first_token: None,
                    tokens: 0,
                    prompt_tokens: 0,
                    cached_tokens: 0,
                    last_saved: Instant::now(),
                });
            }
            Err(e) => self.refuse(format!("The model cannot answer: {e}.")),
        }
    }

    /// A reply that cannot start: the error, and the unanswered message back in the box.
    fn refuse(&mut self, text: String) {
        let back = self.unsend_last_message();
        self.conversation_error(format!(
            "{text}{}",
            if back {
                " Your message is back in the message box."
            } else {
                ""
            }
        ));
    }

    /// Takes the unanswered user message at the end of the conversation back into the empty
    /// message box, so a message that cannot be sent is not left behind as if it had been.
    /// Returns whether it did.
    fn unsend_last_message(&mut self) -> bool {
        let c = &mut self.conversations[self.current];
        if !self.input.trim().is_empty() || c.messages.last().is_none_or(|m| m.role != Role::User) {
            return false;
        }
        if let Some(m) = c.messages.pop() {
            // A conversation named after this message alone gets its untouched name back.
            if c.messages.is_empty() && c.title == title_from(&m.content) {
                c.title = Conversation::new(String::new()).title;
            }
            self.input = m.content;
        }
        self.save_current();
        true
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Send => self.send(),
            Action::Stop => self.stop(),
            Action::NewChat => {
                self.rename = None;
                self.confirm_delete = false;
                self.edit = None;
                // An untouched conversation is reused rather than piling up empty ones.
                let untouched = Conversation::new(String::new()).title;
                match self
                    .conversations
                    .iter()
                    .position(|c| c.messages.is_empty() && c.title == untouched)
                {
                    Some(i) => self.current = i,
                    None => {
                        let id = self.store.new_conversation_id();
                        self.conversations.insert(0, Conversation::new(id));
                        self.current = 0;
                    }
                }
                self.focus_composer = true;
            }
            Action::Select(i) if i < self.conversations.len() => {
                self.current = i;
                self.rename = None;
                self.confirm_delete = false;
                self.edit = None;
            }
            Action::Select(_) => {}
            Action::StartRename => {
                self.focus_rename = true;
                self.rename = Some(self.conversations[self.current].title.clone());
            }
            Action::Rename(title) => {
                let title = title.trim();
                if !title.is_empty() {
                    self.conversations[self.current].title = title.to_string();
                    self.save_current();
                }
                self.rename = None;
            }
            Action::CancelRename => self.rename = None,
            Action::AskDelete => self.confirm_delete = true,
            Action::CancelDelete => self.confirm_delete = false,
            Action::Delete => {
                self.confirm_delete = false;
                let id = self.conversations[self.current].id.clone();
                if self.reply.as_ref().is_some_and(|r| r.conversation == id) {
                    self.stop();
                }
                match self.store.delete_conversation(&id) {
                    Ok(()) => {
                        self.conversations.remove(self.current);
                        if self.conversations.is_empty() {
                            let id = self.store.new_conversation_id();
                            self.conversations.push(Conversation::new(id));
                        }
                        self.current = self.current.min(self.conversations.len() - 1);
                    }
                    Err(e) => self.error(format!("The conversation was not deleted: {e}")),
                }
            }
            Action::Copy(i) => {
                if let Some(m) = self.conversations[self.current].messages.get(i) {
                    self.copied(m.content.clone());
                }
            }
            Action::Edit(i) => {
                if let Some(m) = self.conversations[self.current].messages.get(i) {
                    self.edit = Some((i, m.content.clone()));
                }
            }
            Action::CancelEdit => self.edit = None,
            Action::Resend(i, text) => {
                let text = text.trim().to_string();
                if text.is_empty() || self.reply.is_some() {
                    return;
                }
                self.edit = None;
                let c = &mut self.conversations[self.current];
                c.messages.truncate(i);
                c.messages.push(Message::user(text));
                self.save_current();
                self.start_reply();
            }
            Action::Regenerate => {
                if self.reply.is_some() {
                    return;
                }
                let c = &mut self.conversations[self.current];
                if c.messages.last().is_some_and(|m| m.role == Role::Assistant) {
                    c.messages.pop();
                }
                if c.messages.last().is_some_and(|m| m.role == Role::User) {
                    self.save_current();
                    self.start_reply();
                }
            }
            Action::PickModel => {
                if self.picker.is_none() {
                    let (tx, rx) = mpsc::channel();
                    let repaint = Arc::clone(&self.repaint);
                    // The dialog blocks its thread, never the window.
                    let spawned = std::thread::Builder::new()
                        .name("sovereign-app-open".into())
                        .spawn(move || {
                            let choice = rfd::FileDialog::new()
                                .set_title("Open a GGUF model")
                                .add_filter("GGUF model", &["gguf"])
                                .add_filter("All files", &["*"])
                                .pick_file();
                            let _ = tx.send(choice);
                            repaint();
                        });
                    match spawned {
                        Ok(_) => self.picker = Some(rx),
                        Err(e) => self.error(format!("Cannot open the file dialog: {e}")),
                    }
                }
            }
            Action::Load(source) => self.load(source),
            Action::ReloadModel => {
                let source = match &self.engine {
                    Some((_, p)) => ModelSource::Path(p.clone()),
                    None => match self.settings.recent_models.first() {
                        Some(p) => ModelSource::Path(p.clone()),
                        None => ModelSource::Default,
                    },
                };
                self.load(source);
            }
            Action::DismissNotice => self.notice = None,
        }
    }

    fn copied(&mut self, text: String) {
        self.pending_copy = Some(text);
        self.notice = Some(Notice {
            text: "Copied to the clipboard.".into(),
            error: false,
            conversation: None,
        });
    }

    fn shortcuts(&mut self, ctx: &egui::Context, actions: &mut Vec<Action>) {
        if ctx.input_mut(|i| i.consume_key(Modifiers::COMMAND, Key::N)) {
            actions.push(Action::NewChat);
        }
        if self.reply.is_some() && ctx.input(|i| i.key_pressed(Key::Escape)) {
            actions.push(Action::Stop);
        }
        if ctx.input_mut(|i| i.consume_key(Modifiers::COMMAND, Key::O)) {
            actions.push(Action::PickModel);
        }
    }

    fn dropped_files(&mut self, ctx: &egui::Context, actions: &mut Vec<Action>) {
        let dropped = ctx.input(|i| i.raw.dropped_files.first().map(|f| f.path().to_path_buf()));
        if let Some(path) = dropped {
            actions.push(Action::Load(ModelSource::Path(path)));
        }
        let hovering = ctx.input(|i| !i.raw.hovered_files.is_empty());
        if hovering {
            egui::Area::new(egui::Id::unique("drop_hint"))
                .order(egui::Order::Foreground)
                .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
                .show(ctx, |ui| {
                    egui::Frame::popup(ui.style()).show(ui, |ui| {
                        ui.heading("Drop a GGUF file to load it");
                    });
                });
        }
    }

    fn top_bar(&mut self, ui: &mut egui::Ui, actions: &mut Vec<Action>) {
        ui.add_space(4.0);
        ui.horizontal(|ui| {
            ui.label(RichText::new("Sovereign").strong().size(18.0));
            ui.separator();
            let model_label = match (&self.engine, &self.loading) {
                (_, Some(l)) => format!("Loading {}…", l.what),
                (Some((_, path)), None) => path
                    .file_stem()
                    .map_or_else(|| file_name(path), |n| n.to_string_lossy().into_owned()),
                (None, None) => "No model".into(),
            };
            let model_name = self
                .engine
                .as_ref()
                .map(|(h, _)| h.model_info().name.clone());
            let menu = ui.menu_button(format!("Model: {model_label}"), |ui| {
                if ui.button("Open model file… (Ctrl+O)").clicked() {
                    actions.push(Action::PickModel);
                }
                if ui.button("Default model (SmolLM2-135M)").clicked() {
                    actions.push(Action::Load(ModelSource::Default));
                }
                if ui.button("Reload model").clicked() {
                    actions.push(Action::ReloadModel);
                }
                if !self.settings.recent_models.is_empty() {
                    ui.separator();
                    ui.label(RichText::new("Recent").weak());
                    for p in &self.settings.recent_models {
                        if ui
                            .button(file_name(p))
                            .on_hover_text(p.display().to_string())
                            .clicked()
                        {
                            actions.push(Action::Load(ModelSource::Path(p.clone())));
                        }
                    }
                }
            });
            if let Some(name) = model_name {
                menu.response.on_hover_text(name);
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let settings_label = if self.show_settings {
                    "Hide settings"
                } else {
                    "Settings"
                };
                if ui.button(settings_label).clicked() {
                    self.show_settings = !self.show_settings;
                }
                let (icon, next) = match self.settings.theme {
                    Theme::Dark => ("Light theme", Theme::Light),
                    Theme::Light => ("Dark theme", Theme::Dark),
                };
                if ui.button(icon).clicked() {
                    self.settings.theme = next;
                }
                if let Some((h, _)) = &self.engine {
                    let info = h.model_info();
                    let text = format!(
                        "{} · {} · {} on the GPU",
                        info.adapter,
                        info.backend,
                        format_bytes(info.gpu_bytes)
                    );
                    // Cut short (whole on hover) rather than drawn over the model menu.
                    ui.add(egui::Label::new(RichText::new(&text).weak()).truncate())
                        .on_hover_text(text);
                }
            });
        });
        ui.add_space(4.0);
    }

    fn status_bar(&mut self, ui: &mut egui::Ui, actions: &mut Vec<Action>) {
        ui.add_space(4.0);
        if let Some(l) = &self.loading {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(l.stage.describe(&l.what));
                let bar = if l.total > 0 {
                    egui::ProgressBar::new(l.done as f32 / l.total as f32).text(format!(
                        "{} / {}",
                        format_bytes(l.done),
                        format_bytes(l.total)
                    ))
                } else {
                    egui::ProgressBar::new(0.0).animate(true)
                };
                ui.add(bar.desired_width(ui.available_width().min(420.0)));
            });
        }
        if let Some(n) = self.visible_notice() {
            let color = if n.error {
                ui.visuals().error_fg_color
            } else {
                ui.visuals().weak_text_color()
            };
            ui.horizontal_wrapped(|ui| {
                ui.label(RichText::new(&n.text).color(color));
                if ui.small_button("Dismiss").clicked() {
                    actions.push(Action::DismissNotice);
                }
            });
        }
        ui.add_space(4.0);
    }

    fn conversation_list(&mut self, ui: &mut egui::Ui, actions: &mut Vec<Action>) {
        ui.add_space(8.0);
        let new_chat = ui.add_sized(
            [ui.available_width(), 32.0],
            egui::Button::new("+ New chat"),
        );
        if new_chat.on_hover_text("Ctrl+N").clicked() {
            actions.push(Action::NewChat);
        }
        ui.add_space(6.0);
        egui::ScrollArea::vertical()
            .auto_shrink([false, false])
            .show(ui, |ui| {
                for (i, c) in self.conversations.iter().enumerate() {
                    let streaming = i != self.current
                        && self.reply.as_ref().is_some_and(|r| r.conversation == c.id);
                    let title = if streaming {
                        format!("{} (replying)", c.title)
                    } else {
                        c.title.clone()
                    };
                    let button = egui::Button::selectable(i == self.current, title)
                        .min_size(egui::vec2(ui.available_width(), 28.0));
                    if ui.add(button).clicked() {
                        actions.push(Action::Select(i));
                    }
                }
            });
    }

    fn settings_panel(&mut self, ui: &mut egui::Ui, actions: &mut Vec<Action>) {
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.add_space(8.0);
            ui.heading("Settings");
            ui.add_space(4.0);
            let s = &mut self.settings;
            ui.label(RichText::new("Sampling").strong());
            ui.add(egui::Slider::new(&mut s.temperature, 0.0..=2.0).text("Temperature"));
            ui.add(egui::Slider::new(&mut s.top_p, 0.0..=1.0).text("Top-p"));
            ui.add(egui::Slider::new(&mut s.top_k, 0..=200).text("Top-k"));
            ui.add(egui::Slider::new(&mut s.min_p, 0.0..=1.0).text("Min-p"));
            ui.add(egui::Slider::new(&mut s.repeat_penalty, 1.0..=2.0).text("Repetition penalty"));
            ui.add(
                egui::Slider::new(&mut s.max_tokens, 1..=8192)
                    .logarithmic(true)
                    .text("Maximum tokens"),
            );
            ui.horizontal(|ui| {
                let mut fixed = s.seed.is_some();
                if ui.checkbox(&mut fixed, "Fixed seed").changed() {
                    s.seed = fixed.then_some(42);
                }
                if let Some(seed) = &mut s.seed {
                    ui.add(egui::DragValue::new(seed));
                }
            });
            ui.add_space(8.0);
            ui.label(RichText::new("System prompt").strong());
            let prompt = ui.add(
                egui::TextEdit::multiline(&mut s.system_prompt)
                    .desired_rows(4)
                    .desired_width(f32::INFINITY),
            );
            label_for_accessibility(ui, prompt.id, "System prompt");
            ui.add_space(8.0);
            ui.label(RichText::new("Model").strong());
            ui.add(
                egui::Slider::new(&mut s.context_size, 256..=32768)
                    .logarithmic(true)
                    .text("Context size"),
            );
            let adapter_label = s.adapter.clone().unwrap_or_else(|| "Automatic".into());
            egui::ComboBox::from_label("Adapter")
                .selected_text(adapter_label)
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut s.adapter, None, "Automatic");
                    for a in &self.adapters {
                        ui.selectable_value(
                            &mut s.adapter,
                            Some(a.index.to_string()),
                            format!("{}: {} ({})", a.index, a.name, a.backend),
                        );
                    }
                });
            let changed = self.engine.as_ref().is_some_and(|(h, _)| {
                h.model_info().n_ctx != s.context_size || s.adapter.is_some()
            });
            if ui
                .button("Reload model")
                .on_hover_text("Context size and adapter apply when a model loads")
                .clicked()
            {
                actions.push(Action::ReloadModel);
            }
            if changed {
                ui.label(
                    RichText::new("Reload the model to apply the context size and adapter.").weak(),
                );
            }
            ui.add_space(8.0);
            ui.label(RichText::new("Appearance").strong());
            ui.horizontal(|ui| {
                ui.radio_value(&mut s.theme, Theme::Dark, "Dark");
                ui.radio_value(&mut s.theme, Theme::Light, "Light");
            });
            ui.add_space(8.0);
            if ui.button("Restore defaults").clicked() {
                let recent = std::mem::take(&mut s.recent_models);
                *s = Settings {
                    recent_models: recent,
                    ..Settings::default()
                };
            }
        });
    }

    fn composer(&mut self, ui: &mut egui::Ui, actions: &mut Vec<Action>) {
        ui.add_space(8.0);
        let id = egui::Id::unique("composer");
        let focused = ui.memory(|m| m.has_focus(id));
        // Enter sends; Shift+Enter is left to the text field, which adds a line.
        // `consume_key` ignores an extra Shift, so Shift+Enter is ruled out first.
        if focused
            && ui.input_mut(|i| {
                !i.modifiers.shift && !i.modifiers.alt && i.consume_key(Modifiers::NONE, Key::Enter)
            })
        {
            actions.push(Action::Send);
        }
        ui.horizontal(|ui| {
            let button_width = 84.0;
            let edit = egui::TextEdit::multiline(&mut self.input)
                .id(id)
                .hint_text("Message Sovereign (Enter sends, Shift+Enter adds a line)")
                .desired_rows(2)
                .desired_width(ui.available_width() - button_width - 8.0)
                .return_key(Some(egui::KeyboardShortcut::new(
                    Modifiers::SHIFT,
                    Key::Enter,
                )));
            // A long paste scrolls inside the box instead of pushing the box and its button off
            // the window.
            let response = egui::ScrollArea::vertical()
                .id_salt("composer_scroll")
                .max_height(160.0)
                .show(ui, |ui| ui.add(edit))
                .inner;
            label_for_accessibility(ui, response.id, "Message");
            if self.focus_composer {
                response.request_focus();
                self.focus_composer = false;
            }
            let size = [button_width, 36.0];
            if self.replying_here() {
                let stop = ui.add_sized(size, egui::Button::new("Stop"));
                label_for_accessibility(ui, stop.id, "Stop");
                if stop.on_hover_text("Escape").clicked() {
                    actions.push(Action::Stop);
                }
            } else {
                let elsewhere = self.reply.is_some();
                let ready = self.engine.is_some() && !self.input.trim().is_empty() && !elsewhere;
                let mut send =
                    ui.add_enabled(ready, egui::Button::new("Send").min_size(size.into()));
                if elsewhere {
                    send = send.on_disabled_hover_text("Another chat is replying");
                }
                label_for_accessibility(ui, send.id, "Send");
                if send.clicked() {
                    actions.push(Action::Send);
                    self.focus_composer = true;
                }
            }
        });
        ui.add_space(8.0);
    }

    fn chat_view(&mut self, ui: &mut egui::Ui, actions: &mut Vec<Action>) {
        let generating_index = self
            .reply
            .as_ref()
            .filter(|r| r.conversation == self.conversations[self.current].id)
            .map(|r| r.index);
        // Header: title, rename, delete.
        ui.horizontal(|ui| {
            if let Some(title) = &mut self.rename {
                let edit = ui.add(egui::TextEdit::singleline(title).desired_width(320.0));
                label_for_accessibility(ui, edit.id, "Conversation title");
                if std::mem::take(&mut self.focus_rename) {
                    edit.request_focus();
                }
                let enter = (edit.has_focus() || edit.lost_focus())
                    && ui.input(|i| i.key_pressed(Key::Enter));
                if ui.button("Save title").clicked() || enter {
                    actions.push(Action::Rename(title.clone()));
                }
                if ui.button("Cancel").clicked() {
                    actions.push(Action::CancelRename);
                }
            } else if self.confirm_delete {
                ui.label(format!(
                    "Delete “{}”? This cannot be undone.",
                    self.conversations[self.current].title
                ));
                if ui.button("Confirm delete").clicked() {
                    actions.push(Action::Delete);
                }
                if ui.button("Cancel").clicked() {
                    actions.push(Action::CancelDelete);
                }
            } else {
                ui.heading(&self.conversations[self.current].title);
                if ui.small_button("Rename").clicked() {
                    actions.push(Action::StartRename);
                }
                if ui.small_button("Delete").clicked() {
                    actions.push(Action::AskDelete);
                }
            }
        });
        self.context_meter(ui);
        ui.separator();

        let conversation = &self.conversations[self.current];
        let last = conversation.messages.len().saturating_sub(1);
        let markdown = &mut self.markdown;
        let edit = &mut self.edit;
        let idle = generating_index.is_none() && self.reply.is_none();
        egui::ScrollArea::vertical()
            .auto_shrink([false, false])
            .stick_to_bottom(true)
            .show(ui, |ui| {
                let width = ui.available_width().min(820.0);
                let margin = ((ui.available_width() - width) / 2.0).max(0.0);
                ui.horizontal(|ui| {
                    ui.add_space(margin);
                    ui.vertical(|ui| {
                        ui.set_max_width(width);
                        if conversation.messages.is_empty() {
                            ui.add_space(40.0);
                            ui.vertical_centered(|ui| {
                                ui.label(RichText::new("What can I help with?").size(22.0));
                                ui.add_space(6.0);
                                ui.label(
                                    RichText::new(
                                        "Enter sends · Shift+Enter adds a line · Escape stops · Ctrl+N starts a new chat · drop a GGUF file to load it",
                                    )
                                    .weak(),
                                );
                            });
                        }
                        for (i, m) in conversation.messages.iter().enumerate() {
                            ui.add_space(10.0);
                            let streaming = generating_index == Some(i);
                            message_view(
                                ui, i, m, streaming, idle && i == last, idle, markdown, edit,
                                actions,
                            );
                        }
                        ui.add_space(12.0);
                    });
                });
            });
    }

    fn context_meter(&mut self, ui: &mut egui::Ui) {
        let Some((handle, _)) = &self.engine else {
            return;
        };
        let c = &self.conversations[self.current];
        if c.messages.is_empty() {
            return;
        }
        // While this conversation streams, the engine's own counts are exact and free;
        // tokenizing the whole conversation again for every token is not.
        let streaming = self
            .reply
            .as_ref()
            .filter(|r| r.conversation == c.id && r.prompt_tokens > 0)
            .map(|r| r.prompt_tokens + r.tokens);
        let key = (
            c.id.clone(),
            c.messages.len(),
            c.messages.iter().map(|m| m.content.len()).sum::<usize>(),
            self.settings.system_prompt.len(),
        );
        let used = match (&self.context_tokens, streaming) {
            (_, Some(n)) => n,
            (Some((k, n)), None) if *k == key => *n,
            _ => {
                let messages = chat_messages(&self.settings, c);
                let n = handle
                    .tokenize(&Prompt::Chat(messages))
                    .map_or(0, |t| t.len());
                self.context_tokens = Some((key, n));
                n
            }
        };
        let n_ctx = handle.model_info().n_ctx;
        let share = used as f32 / n_ctx.max(1) as f32;
        ui.horizontal(|ui| {
            ui.add(
                egui::ProgressBar::new(share.min(1.0))
                    .desired_width(120.0)
                    .desired_height(6.0),
            );
            ui.label(RichText::new(format!("{used} / {n_ctx} tokens in context")).weak());
        });
        if share >= 1.0 {
            ui.label(
                RichText::new(format!(
                    "This conversation ({used} tokens) is longer than the context of {n_ctx}: the model sees only its latest messages. Raise the context size in Settings to keep more."
                ))
                .color(ui.visuals().warn_fg_color),
            );
        } else if share >= CONTEXT_WARNING {
            ui.label(
                RichText::new(format!(
                    "This conversation is near the context limit ({used} of {n_ctx} tokens): from here on its oldest messages are left out of what the model sees. Raise the context size in Settings to keep them."
                ))
                .color(ui.visuals().warn_fg_color),
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn message_view(
    ui: &mut egui::Ui,
    i: usize,
    m: &Message,
    streaming: bool,
    is_last: bool,
    idle: bool,
    markdown: &mut CommonMarkCache,
    edit: &mut Option<(usize, String)>,
    actions: &mut Vec<Action>,
) {
    let visuals = ui.visuals().clone();
    let (who, fill) = match m.role {
        Role::User => ("You", visuals.extreme_bg_color),
        Role::Assistant => ("Assistant", visuals.faint_bg_color),
    };
    egui::Frame::new()
        .fill(fill)
        .corner_radius(10.0)
        .inner_margin(egui::Margin::symmetric(14, 10))
        .show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new(who).strong().color(visuals.weak_text_color()));
            match (m.role, edit.as_mut()) {
                (Role::User, Some((j, text))) if *j == i => {
                    let field = ui.add(
                        egui::TextEdit::multiline(text)
                            .desired_rows(3)
                            .desired_width(f32::INFINITY),
                    );
                    label_for_accessibility(ui, field.id, "Edit message");
                    ui.horizontal(|ui| {
                        if ui.add_enabled(idle, egui::Button::new("Resend")).clicked() {
                            actions.push(Action::Resend(i, text.clone()));
                        }
                        if ui.button("Cancel").clicked() {
                            actions.push(Action::CancelEdit);
                        }
                    });
                    return;
                }
                (Role::User, _) => {
                    ui.add(egui::Label::new(&m.content).selectable(true));
                }
                (Role::Assistant, _) => {
                    if m.content.is_empty() && streaming {
                        ui.horizontal(|ui| {
                            ui.spinner();
                            ui.label(RichText::new("Thinking…").weak());
                        });
                    } else {
                        CommonMarkViewer::new().show(ui, markdown, &m.content);
                    }
                }
            }
            ui.horizontal_wrapped(|ui| {
                if streaming {
                    ui.spinner();
                }
                if ui.small_button("Copy").clicked() {
                    actions.push(Action::Copy(i));
                }
                if m.role == Role::User && idle && ui.small_button("Edit").clicked() {
                    actions.push(Action::Edit(i));
                }
                if is_last && ui.small_button("Regenerate").clicked() {
                    actions.push(Action::Regenerate);
                }
                if let Some(s) = &m.stats {
                    ui.label(RichText::new(format_stats(s)).small().weak());
                }
            });
        });
}

/// The accessible name of a widget that shows no label of its own.
fn label_for_accessibility(ui: &egui::Ui, id: egui::Id, label: &str) {
    ui.ctx()
        .accesskit_node_builder(id, |node| node.set_label(label));
}

fn partial_stats(active: &ActiveReply, finish: String) -> ReplyStats {
    let ttft = active.first_token.map(|t| t - active.submitted);
    let per_second = active
        .first_token
        .map(|t| t.elapsed())
        .filter(|d| active.tokens > 1 && !d.is_zero())
        .map(|d| (active.tokens - 1) as f64 / d.as_secs_f64());
    ReplyStats {
        time_to_first_token_ms: ttft.map(|t| t.as_secs_f64() * 1e3),
        tokens: active.tokens,
        tokens_per_second: per_second,
        context_tokens: active.prompt_tokens + active.tokens,
        context_size: active.info.n_ctx,
        cached_tokens: active.cached_tokens,
        adapter: active.info.adapter.clone(),
        backend: active.info.backend.clone(),
        finish,
    }
}

/// The request's messages: the system prompt, then the conversation.
fn chat_messages(settings: &Settings, c: &Conversation) -> Vec<ChatMessage> {
    let mut messages = Vec::with_capacity(c.messages.len() + 1);
    if !settings.system_prompt.trim().is_empty() {
        messages.push(ChatMessage::system(settings.system_prompt.clone()));
    }
    for m in &c.messages {
        messages.push(match m.role {
            Role::User => ChatMessage::user(m.content.clone()),
            Role::Assistant => ChatMessage::assistant(m.content.clone()),
        });
    }
    messages
}

pub fn format_stats(s: &ReplyStats) -> String {
    let mut parts = Vec::new();
    if let Some(t) = s.time_to_first_token_ms {
        parts.push(format!("{:.2} s to first token", t / 1e3));
    }
    if let Some(r) = s.tokens_per_second {
        parts.push(format!("{r:.1} tokens/s"));
    }
    parts.push(format!("{} tokens", s.tokens));
    parts.push(format!(
        "{} / {} in context",
        s.context_tokens, s.context_size
    ));
    if s.cached_tokens > 0 {
        parts.push(format!("{} cached", s.cached_tokens));
    }
    parts.push(format!("{} ({})", s.adapter, s.backend));
    match s.finish.as_str() {
        "stop" => {}
        "length" => parts.push("stopped at the token limit".into()),
        "cancelled" => parts.push("stopped".into()),
        other => parts.push(other.to_string()),
    }
    parts.join(" · ")
}

fn title_from(text: &str) -> String {
    let line = text.lines().next().unwrap_or(text).trim();
    let mut title: String = line.chars().take(48).collect();
    if line.chars().count() > 48 {
        title.push('…');
    }
    title
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
}

pub fn format_bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n as f64 >= 1024.0 * MIB {
        format!("{:.1} GiB", n as f64 / (1024.0 * MIB))
    } else {
        format!("{:.0} MiB", n as f64 / MIB)
    }
}

fn style(ctx: &egui::Context) {
    ctx.all_styles_mut(|style| {
        style.spacing.item_spacing = egui::vec2(8.0, 6.0);
        style.spacing.button_padding = egui::vec2(10.0, 5.0);
        for (text_style, size) in [
            (egui::TextStyle::Body, 15.0),
            (egui::TextStyle::Button, 14.0),
            (egui::TextStyle::Monospace, 14.0),
            (egui::TextStyle::Heading, 20.0),
            (egui::TextStyle::Small, 12.0),
        ] {
            if let Some(font) = style.text_styles.get_mut(&text_style) {
                font.size = size;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_the_first_line_cut_short() {
        assert_eq!(title_from("Hello there\nsecond"), "Hello there");
        let long = "x".repeat(60);
        assert_eq!(title_from(&long), format!("{}…", "x".repeat(48)));
    }

    #[test]
    fn stats_say_how_a_reply_ended() {
        let s = ReplyStats {
            time_to_first_token_ms: Some(420.0),
            tokens: 12,
            tokens_per_second: Some(9.5),
            context_tokens: 40,
            context_size: 2048,
            cached_tokens: 0,
            adapter: "llvmpipe".into(),
            backend: "Vulkan".into(),
            finish: "cancelled".into(),
        };
        assert_eq!(
            format_stats(&s),
            "0.42 s to first token · 9.5 tokens/s · 12 tokens · 40 / 2048 in context · llvmpipe (Vulkan) · stopped"
        );
    }
}
