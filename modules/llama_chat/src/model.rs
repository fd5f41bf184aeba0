//! Where LlamaChat's model file comes from: the configured GGUF, a download
//! from the Hugging Face Hub, or the generated demo model.
//!
//! Configured as CodeProject.AI's LlamaChat is, by environment variables the
//! server passes from the manifest (modules/llama_chat/README.md;
//! "Model"):
//!
//! | variable | meaning |
//! |---|---|
//! | `CPAI_MODULE_LLAMA_MODEL_DIR` | directory of the model, relative to the module directory (default `models`) |
//! | `CPAI_MODULE_LLAMA_MODEL_FILENAME` | the GGUF file in it (default [`DEMO_MODEL_FILENAME`]) |
//! | `CPAI_MODULE_LLAMA_MODEL_REPO` | Hugging Face repository to download from when the file is missing, e.g. `microsoft/Phi-3-mini-4k-instruct-gguf` |
//! | `CPAI_MODULE_LLAMA_MODEL_FILEGLOB` | which file of the repository, e.g. `*q4.gguf` (default: the file name) |
//!
//! [`ModelSource::ensure`] resolves them in that order: an existing file; a
//! download when a repository is set; the generated demo model when the file
//! name is the demo model's; otherwise one error that says what to set.

use std::path::{Path, PathBuf};

use crate::gguf::{write_demo_model, DemoModelSpec, GgufError};

/// File name of the random-weight demo model, generated when missing.
pub const DEMO_MODEL_FILENAME: &str = "modhost-demo-tiny.gguf";

/// Default model directory, relative to the module directory.
pub const DEFAULT_MODEL_DIR: &str = "models";

const ENV_DIR: &str = "CPAI_MODULE_LLAMA_MODEL_DIR";
const ENV_FILENAME: &str = "CPAI_MODULE_LLAMA_MODEL_FILENAME";
const ENV_REPO: &str = "CPAI_MODULE_LLAMA_MODEL_REPO";
const ENV_FILEGLOB: &str = "CPAI_MODULE_LLAMA_MODEL_FILEGLOB";

/// Why no model file could be had.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No file, and nothing configured to get one.
    #[error(
        "model file {} does not exist. Put a GGUF model there, or set {ENV_DIR} and \
         {ENV_FILENAME} to a GGUF file you have (or {ENV_REPO} and {ENV_FILEGLOB} to \
         download one from the Hugging Face Hub)",
        .0.display()
    )]
    Missing(PathBuf),
    /// The download failed (for example, no network).
    #[error(
        "model file {} does not exist and downloading '{pattern}' from the Hugging Face \
         repository '{repo}' failed: {reason}. Without network access, put the GGUF file in \
         {} and set {ENV_FILENAME} to its name",
        .path.display(),
        .dir.display()
    )]
    Download {
        /// The file that was wanted.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// `CPAI_MODULE_LLAMA_MODEL_REPO`.
        repo: String,
        /// The file glob searched for.
        pattern: String,
        /// What went wrong.
        reason: String,
    },
    /// The demo model could not be written.
    #[error("cannot write the demo model: {0}")]
    Demo(#[from] GgufError),
    /// A setting has an unusable value.
    #[error("{0}")]
    Invalid(String),
}

/// The configured model: where it is, and where to get it when it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSource {
    /// Absolute directory of the model file.
    pub dir: PathBuf,
    /// The GGUF file name in `dir`.
    pub filename: String,
    /// Hugging Face repository (`owner/name`) to download from, if set.
    pub repo: Option<String>,
    /// Glob of the file to download from `repo`; the file name when unset.
    pub fileglob: Option<String>,
    /// `HF_ENDPOINT`: another Hub (a mirror) than `https://huggingface.co`.
    pub hub_endpoint: Option<String>,
}

impl ModelSource {
    /// Reads the `CPAI_MODULE_LLAMA_MODEL_*` variables through `var`; relative
    /// directories are taken from `module_path`.
    pub fn from_lookup(module_path: &Path, var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let dir = PathBuf::from(var(ENV_DIR).unwrap_or_else(|| DEFAULT_MODEL_DIR.to_owned()));
        Self {
            dir: if dir.is_absolute() {
                dir
            } else {
                module_path.join(dir)
            },
            filename: var(ENV_FILENAME).unwrap_or_else(|| DEMO_MODEL_FILENAME.to_owned()),
            // CodeProject writes `@owner/name` so that the `@` keeps macro
            // expansion away; the server strips it, a user may not.
            repo: var(ENV_REPO).map(|r| r.trim_start_matches('@').to_owned()),
            fileglob: var(ENV_FILEGLOB),
            hub_endpoint: var("HF_ENDPOINT"),
        }
    }

    /// [`Self::from_lookup`] over the process environment.
    pub fn from_env(module_path: &Path) -> Self {
        Self::from_lookup(module_path, |name| std::env::var(name).ok())
    }

    /// The configured model file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.filename)
    }

    /// The model file, obtained if needed: the configured file if it exists;
    /// else, with a repository set, a file in `dir` matching the glob, or one
    /// downloaded into `dir`; else the demo model, generated, when the file
    /// name is [`DEMO_MODEL_FILENAME`].
    ///
    /// # Errors
    /// [`ModelError::Missing`] when there is nothing to get the file from,
    /// [`ModelError::Download`] when the download fails, [`ModelError::Demo`]
    /// when the demo model cannot be written, [`ModelError::Invalid`] for a
    /// malformed glob.
    pub fn ensure(&self) -> Result<PathBuf, ModelError> {
        let path = self.path();
        if path.is_file() {
            return Ok(path);
        }
        if let Some(repo) = &self.repo {
            let pattern = self.pattern()?;
            if let Some(found) = self.local_match(&pattern) {
                return Ok(found);
            }
            return self.download(repo, &pattern);
        }
        if self.filename == DEMO_MODEL_FILENAME {
            tracing::info!(path = %path.display(), "writing the random-weight demo model");
            std::fs::create_dir_all(&self.dir).map_err(|source| GgufError::Io {
                path: self.dir.clone(),
                source,
            })?;
            write_demo_model(&path, &DemoModelSpec::tiny())?;
            return Ok(path);
        }
        Err(ModelError::Missing(path))
    }

    fn pattern(&self) -> Result<glob::Pattern, ModelError> {
        let text = self.fileglob.as_deref().unwrap_or(&self.filename);
        glob::Pattern::new(text).map_err(|e| {
            ModelError::Invalid(format!("{ENV_FILEGLOB} '{text}' is not a valid glob: {e}"))
        })
    }

    /// A file already in `dir` that matches the glob (downloaded earlier).
    fn local_match(&self, pattern: &glob::Pattern) -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .is_some_and(|n| pattern.matches(&n.to_string_lossy()))
            })
            .collect();
        found.sort();
        found.into_iter().next()
    }

    /// Downloads the first repository file matching `pattern` into `dir`.
    fn download(&self, repo: &str, pattern: &glob::Pattern) -> Result<PathBuf, ModelError> {
        let failed = |reason: String| ModelError::Download {
            path: self.path(),
            dir: self.dir.clone(),
            repo: repo.to_owned(),
            pattern: pattern.as_str().to_owned(),
            reason,
        };
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| failed(format!("cannot create the directory: {e}")))?;
        // The Hub client's own cache sits beside the model, so the file can be
        // moved out of it without crossing file systems.
        let mut builder = hf_hub::api::sync::ApiBuilder::new()
            .with_cache_dir(self.dir.join(".hf-cache"))
            .with_progress(false);
        if let Some(endpoint) = &self.hub_endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let api = builder.build().map_err(|e| failed(e.to_string()))?;
        let remote = api.model(repo.to_owned());
        let info = remote.info().map_err(|e| failed(e.to_string()))?;
        let mut names: Vec<&str> = info
            .siblings
            .iter()
            .map(|s| s.rfilename.as_str())
            .filter(|name| pattern.matches(name))
            .collect();
        names.sort_unstable();
        let Some(name) = names.first() else {
            return Err(failed("no file in the repository matches".to_owned()));
        };
        tracing::info!(repo, file = name, "downloading the model");
        let cached = remote.get(name).map_err(|e| failed(e.to_string()))?;
        let target = self
            .dir
            .join(Path::new(name).file_name().unwrap_or(name.as_ref()));
        // The cache holds a symlink to a blob: move the blob, fall back to a copy.
        let blob = std::fs::canonicalize(&cached).unwrap_or(cached);
        if std::fs::rename(&blob, &target).is_err() {
            std::fs::copy(&blob, &target)
                .map_err(|e| failed(format!("cannot copy the download: {e}")))?;
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path, vars: &[(&str, &str)]) -> ModelSource {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        ModelSource::from_lookup(dir, |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults_name_the_demo_model_under_the_module() {
        let s = source(Path::new("/m"), &[]);
        assert_eq!(s.path(), Path::new("/m/models").join(DEMO_MODEL_FILENAME));
        assert_eq!(s.repo, None);
        let s = source(
            Path::new("/m"),
            &[
                (ENV_DIR, "/abs"),
                (ENV_REPO, "@o/r"),
                (ENV_FILENAME, "x.gguf"),
            ],
        );
        assert_eq!(s.path(), Path::new("/abs/x.gguf"));
        assert_eq!(s.repo.as_deref(), Some("o/r"));
    }

    #[test]
    fn the_demo_model_is_generated_when_missing_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = source(dir.path(), &[]);
        let path = s.ensure().unwrap();
        assert_eq!(path, s.path());
        let written = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(s.ensure().unwrap(), path);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            written,
            "not rewritten"
        );
    }

    #[test]
    fn a_missing_model_without_a_repository_says_what_to_set() {
        let dir = tempfile::tempdir().unwrap();
        let err = source(dir.path(), &[(ENV_FILENAME, "phi.gguf")])
            .ensure()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("phi.gguf does not exist"), "{msg}");
        assert!(
            msg.contains(ENV_FILENAME) && msg.contains(ENV_REPO),
            "{msg}"
        );
    }

    #[test]
    fn a_failed_download_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        // A closed local port stands in for a machine without network access.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let err = source(
            dir.path(),
            &[
                (ENV_FILENAME, "phi.gguf"),
                (ENV_REPO, "microsoft/phi"),
                (ENV_FILEGLOB, "*q4.gguf"),
                ("HF_ENDPOINT", &endpoint),
            ],
        )
        .ensure()
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Download { .. }), "{msg}");
        assert!(
            msg.contains("'*q4.gguf'") && msg.contains("'microsoft/phi'"),
            "{msg}"
        );
        assert!(msg.contains("put the GGUF file in"), "{msg}");
    }

    /// A stand-in for the Hub on a local port, answering what `hf-hub` asks:
    /// the repository's file list, then the file (a 1-byte range for its
    /// metadata, then all of it). Returns the endpoint and the paths asked for.
    fn fake_hub(
        repo: &str,
        files: &[&str],
        content: Vec<u8>,
    ) -> (String, std::sync::mpsc::Receiver<String>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let siblings: Vec<_> = files
            .iter()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let info = serde_json::json!({ "siblings": siblings, "sha": sha }).to_string();
        let info_path = format!("/api/models/{repo}/revision/main");
        let file_prefix = format!("/{repo}/resolve/main/");
        let (seen, paths) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let path = request_line.split(' ').nth(1).unwrap_or("").to_owned();
                let mut range_start = None;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("range") {
                            range_start = value.trim().strip_prefix("bytes=").map(str::to_owned);
                        }
                    }
                }
                let _ = seen.send(path.clone());
                let (status, headers, body) = if path == info_path {
                    ("200 OK", String::new(), info.clone().into_bytes())
                } else if path.starts_with(&file_prefix) {
                    let total = content.len();
                    let body = match range_start.as_deref() {
                        Some("0-0") => content[..1].to_vec(),
                        _ => content.clone(),
                    };
                    let headers = format!(
                        "etag: \"blob-etag\"\r\nx-repo-commit: {sha}\r\ncontent-range: bytes 0-{}/{total}\r\n",
                        body.len() - 1
                    );
                    ("206 Partial Content", headers, body)
                } else {
                    ("404 Not Found", String::new(), b"{}".to_vec())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        (endpoint, paths)
    }

    #[test]
    fn a_missing_model_is_downloaded_by_its_repository_and_glob() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let (endpoint, paths) = fake_hub(
            "owner/model-GGUF",
            &[
                "README.md",
                "model-q8.gguf",
                "model-q4.gguf",
                "model-q4-big.bin",
            ],
            content.clone(),
        );
        let s = source(
            dir.path(),
            &[
                (ENV_FILENAME, "model.gguf"),
                (ENV_REPO, "owner/model-GGUF"),
                (ENV_FILEGLOB, "*q4.gguf"),
                ("HF_ENDPOINT", &endpoint),
            ],
        );
        let path = s.ensure().unwrap();
        assert_eq!(path, dir.path().join("models/model-q4.gguf"));
        assert_eq!(std::fs::read(&path).unwrap(), content);
        let asked: Vec<String> = paths.try_iter().collect();
        assert_eq!(asked[0], "/api/models/owner/model-GGUF/revision/main");
        assert!(
            asked[1..]
                .iter()
                .all(|p| p == "/owner/model-GGUF/resolve/main/model-q4.gguf"),
            "{asked:?}"
        );
        // Found in place the next time: no second download.
        assert_eq!(s.ensure().unwrap(), path);
        assert_eq!(paths.try_iter().count(), 0);
    }

    #[test]
    fn a_file_matching_the_glob_is_found_without_downloading() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("models")).unwrap();
        std::fs::write(dir.path().join("models/phi-q4.gguf"), b"x").unwrap();
        let s = source(
            dir.path(),
            &[
                (ENV_FILENAME, "other.gguf"),
                (ENV_REPO, "o/r"),
                (ENV_FILEGLOB, "*q4.gguf"),
            ],
        );
        assert_eq!(s.ensure().unwrap(), dir.path().join("models/phi-q4.gguf"));
    }
}
