//! What the app keeps on disk: one JSON file per conversation and one for the settings, in the
//! user's data directory. Every write goes to a temporary file in the same directory that is
//! flushed to disk and then renamed over the old file, so a crash or a kill at any moment leaves
//! either the old version or the new one, never a torn file.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid {what} file: {source}")]
    Parse {
        what: &'static str,
        path: String,
        source: serde_json::Error,
    },
    #[error("no data directory: set SOVEREIGN_APP_DATA or HOME")]
    NoDataDir,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::Io { what, path, source }
}

/// `SOVEREIGN_APP_DATA`, else the platform's data directory (`$XDG_DATA_HOME/sovereign` or
/// `~/.local/share/sovereign` on Linux).
pub fn default_data_dir() -> Result<PathBuf, StoreError> {
    if let Some(dir) = std::env::var_os("SOVEREIGN_APP_DATA").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    dirs::data_dir()
        .map(|d| d.join("sovereign"))
        .ok_or(StoreError::NoDataDir)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// How a reply went, shown under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ReplyStats {
    pub time_to_first_token_ms: Option<f64>,
    pub tokens: usize,
    /// Generated tokens per second, from the first token to the last.
    pub tokens_per_second: Option<f64>,
    /// Prompt plus reply: what the context held at the end.
    pub context_tokens: usize,
    pub context_size: u32,
    pub cached_tokens: usize,
    pub adapter: String,
    pub backend: String,
    /// `stop`, `length`, `cancelled` or an error.
    pub finish: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<ReplyStats>,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: content.into(),
            stats: None,
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: content.into(),
            stats: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Also the file name; unique within the data directory.
    pub id: String,
    pub title: String,
    /// Milliseconds since the Unix epoch; the side panel lists the newest first.
    pub updated_ms: u64,
    pub messages: Vec<Message>,
}

impl Conversation {
    pub fn new(id: String) -> Self {
        Conversation {
            id,
            title: "New chat".into(),
            updated_ms: now_ms(),
            messages: Vec::new(),
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Theme {
    #[default]
    Dark,
    Light,
}

/// Everything the settings panel changes, kept between starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub max_tokens: u32,
    /// `None`: a new seed for every reply.
    pub seed: Option<u64>,
    pub system_prompt: String,
    /// An adapter index or part of its name; `None`: the engine's choice.
    pub adapter: Option<String>,
    pub context_size: u32,
    pub theme: Theme,
    /// Most recent first.
    pub recent_models: Vec<PathBuf>,
    /// A message typed and not sent when the window closed.
    pub draft: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            temperature: 0.7,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            repeat_penalty: 1.1,
            max_tokens: 1024,
            seed: None,
            system_prompt: "You are a helpful assistant.".into(),
            adapter: None,
            context_size: 2048,
            theme: Theme::Dark,
            recent_models: Vec::new(),
            draft: String::new(),
        }
    }
}

impl Settings {
    pub const MAX_RECENT: usize = 8;

    /// Puts `path` first in the recent list.
    pub fn remember_model(&mut self, path: &Path) {
        self.recent_models.retain(|p| p != path);
        self.recent_models.insert(0, path.to_path_buf());
        self.recent_models.truncate(Self::MAX_RECENT);
    }
}

/// The app's directory on disk.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// What was found on disk at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub settings: Settings,
    /// Newest first.
    pub conversations: Vec<Conversation>,
    /// Files that could not be read; they are left where they are, untouched.
    pub problems: Vec<String>,
}

impl Store {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        let conversations = dir.join("conversations");
        std::fs::create_dir_all(&conversations).map_err(io("create", &conversations))?;
        remove_stale_temporaries(&conversations);
        remove_stale_temporaries(&dir);
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn settings_path(&self) -> PathBuf {
        self.dir.join("settings.json")
    }

    pub fn conversation_path(&self, id: &str) -> PathBuf {
        self.dir.join("conversations").join(format!("{id}.json"))
    }

    /// Reads the settings and every conversation. A file that cannot be read is reported and
    /// skipped, never overwritten: the user may want to recover it.
    pub fn load(&self) -> Loaded {
        let mut loaded = Loaded::default();
        match read_json::<Settings>(&self.settings_path(), "settings") {
            Ok(Some(s)) => loaded.settings = s,
            Ok(None) => {}
            Err(e) => loaded.problems.push(e.to_string()),
        }
        let dir = self.dir.join("conversations");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                loaded.problems.push(io("list", &dir)(e).to_string());
                return loaded;
            }
        };
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match read_json::<Conversation>(&path, "conversation") {
                Ok(Some(c)) => loaded.conversations.push(c),
                Ok(None) => {}
                Err(e) => loaded.problems.push(e.to_string()),
            }
        }
        loaded
            .conversations
            .sort_by(|a, b| b.updated_ms.cmp(&a.updated_ms).then(a.id.cmp(&b.id)));
        loaded
    }

    pub fn save_settings(&self, settings: &Settings) -> Result<(), StoreError> {
        write_json_atomic(&self.settings_path(), settings)
    }

    pub fn save_conversation(&self, conversation: &Conversation) -> Result<(), StoreError> {
        write_json_atomic(&self.conversation_path(&conversation.id), conversation)
    }

    pub fn delete_conversation(&self, id: &str) -> Result<(), StoreError> {
        let path = self.conversation_path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("delete", &path)(e)),
        }
    }

    /// An id no conversation on disk has: the time, then a counter on collision.
    pub fn new_conversation_id(&self) -> String {
        let base = now_ms();
        (0u32..)
            .map(|n| {
                if n == 0 {
                    format!("{base}")
                } else {
                    format!("{base}-{n}")
                }
            })
            .find(|id| !self.conversation_path(id).exists())
            .unwrap_or_else(|| format!("{base}-x"))
    }
}

/// Temporary files left by a save that was killed halfway. Only old ones go: a young one may
/// belong to a save still running in another instance of the app.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(60));
        if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) && old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Names of the temporary files saves write before renaming them into place.
pub const TEMP_PREFIX: &str = ".saving-";
pub const TEMP_SUFFIX: &str = ".tmp";

fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StoreError::Parse {
            what,
            path: path.display().to_string(),
            source,
        })
}

/// Writes `value` as JSON to `path` so that `path` holds the old or the new content at every
/// moment: a temporary file in the same directory (same file system, so the rename is atomic),
/// synced before the rename, and the directory synced after it so the rename itself survives a
/// power cut.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Parse {
        what: "JSON",
        path: path.display().to_string(),
        source,
    })?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)
        .map_err(io("create a temporary file in", dir))?;
    tmp.write_all(&bytes).map_err(io("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io("sync", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| io("replace", path)(e.error))?;
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        // Best effort: some file systems refuse to sync a directory.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_and_settings_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut c = Conversation::new(store.new_conversation_id());
        c.title = "Rust question".into();
        c.messages.push(Message::user("What is a borrow?"));
        c.messages.push(Message::assistant("A reference."));
        store.save_conversation(&c).unwrap();
        let mut s = Settings {
            temperature: 0.2,
            seed: Some(7),
            ..Settings::default()
        };
        s.remember_model(Path::new("/models/a.gguf"));
        s.remember_model(Path::new("/models/b.gguf"));
        s.remember_model(Path::new("/models/a.gguf"));
        store.save_settings(&s).unwrap();

        let loaded = Store::open(dir.path()).unwrap().load();
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        assert_eq!(loaded.conversations, vec![c]);
        assert_eq!(loaded.settings, s);
        assert_eq!(
            loaded.settings.recent_models,
            vec![
                PathBuf::from("/models/a.gguf"),
                PathBuf::from("/models/b.gguf")
            ]
        );
    }

    #[test]
    fn a_broken_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let broken = store.conversation_path("broken");
        std::fs::write(&broken, b"{\"id\": \"broken\", \"tit").unwrap();
        let loaded = store.load();
        assert!(loaded.conversations.is_empty());
        assert_eq!(loaded.problems.len(), 1);
        assert!(
            loaded.problems[0].contains("broken.json"),
            "{:?}",
            loaded.problems
        );
        assert_eq!(
            std::fs::read(&broken).unwrap(),
            b"{\"id\": \"broken\", \"tit"
        );
    }

    #[test]
    fn saving_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut c = Conversation::new("a".into());
        for i in 0..5 {
            c.messages.push(Message::user(format!("message {i}")));
            store.save_conversation(&c).unwrap();
        }
        let names: Vec<_> = std::fs::read_dir(dir.path().join("conversations"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["a.json".to_string()]);
        store.delete_conversation("a").unwrap();
        assert!(store.load().conversations.is_empty());
    }
}
