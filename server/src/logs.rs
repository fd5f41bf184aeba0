//! The server log: a bounded ring buffer for `/v1/log/list` plus daily files.
//!
//! Entries come from module output lines, modules' `POST /v1/log/` and the
//! server itself. Each gets a increasing `id` so the dashboard can ask for what
//! is new (`last_id`). Files are `log-YYYY-MM-DD.txt` in the log directory,
//! written by a dedicated thread so that disk writes never block the reactor.
//! Wire format of CodeProject.AI Server 2.9, docs/protocol.md §1.6.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// How many entries `/v1/log/list` can look back over.
pub const LOG_CAPACITY: usize = 2000;
/// Lines waiting for the log-file thread before new ones are counted as
/// dropped (a stalled disk must not grow the server's memory).
const FILE_BACKLOG: usize = 10_000;
/// Longest message kept in an entry, in bytes, wherever it came from (a
/// module's output line, `POST /v1/log/`, the server): longer ones are cut,
/// saying how much was cut, so that no caller can fill memory or disk with
/// a few entries.
pub const MAX_ENTRY_BYTES: usize = 8 * 1024;

/// `message` made safe for one log line: cut to [`MAX_ENTRY_BYTES`] (at a
/// character boundary, saying how many bytes were left out), and line breaks
/// and other control characters written as escapes (`\n`), so that an entry
/// can never forge further lines in the log file.
fn sanitise(message: &str) -> std::borrow::Cow<'_, str> {
    sanitise_cut(message, 0)
}

/// [`sanitise`] of a message whose source already left `dropped` bytes out.
fn sanitise_cut(message: &str, dropped: usize) -> std::borrow::Cow<'_, str> {
    let needs_escape = message.chars().any(|c| c.is_control() && c != '\t');
    if message.contains(modhost_protocol::QUEUE_TOKEN_SEPARATOR) {
        let masked = mask_tokens(message);
        if masked != message {
            return std::borrow::Cow::Owned(sanitise_cut(&masked, dropped).into_owned());
        }
    }
    if message.len() <= MAX_ENTRY_BYTES && !needs_escape && dropped == 0 {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut cut = message.len().min(MAX_ENTRY_BYTES);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + 48);
    for c in message[..cut].chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push('\t'),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    let left_out = message.len() - cut + dropped;
    if left_out > 0 {
        out.push_str(&format!(" … ({left_out} more bytes not kept)"));
    }
    std::borrow::Cow::Owned(out)
}

/// `text` with every launch token that follows a queue name (`~` and 32 hex
/// digits, as modules print their `CPAI_MODULE_QUEUENAME`) replaced by `~…`:
/// the log is readable by clients, and a token would let them pose as the
/// module.
fn mask_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(modhost_protocol::QUEUE_TOKEN_SEPARATOR) {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let hex = after.bytes().take_while(u8::is_ascii_hexdigit).count();
        if hex == 32 {
            out.push_str("~…");
            rest = &after[32..];
        } else {
            out.push('~');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Severity of a log entry, named as CodeProject's `log_level` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Information,
    Warning,
    Error,
    Critical,
}

impl LogLevel {
    /// Parses CodeProject's level names and common abbreviations,
    /// case-insensitively; anything unknown is `Information` (lenient, unlike
    /// CodeProject, which answers 400).
    pub fn parse(text: &str) -> LogLevel {
        match text.trim().to_ascii_lowercase().as_str() {
            "trace" | "trc" => LogLevel::Trace,
            "debug" | "dbg" => LogLevel::Debug,
            "warning" | "warn" => LogLevel::Warning,
            "error" | "err" => LogLevel::Error,
            "critical" | "crit" => LogLevel::Critical,
            _ => LogLevel::Information,
        }
    }

    /// Splits a module's stdout line into its level prefix (`info:`, `warn:`,
    /// `error:`, `debug:`, `trace:`, `crit:` and long forms) and the message.
    /// A line without a prefix is `default`.
    pub fn from_line(line: &str, default: LogLevel) -> (LogLevel, &str) {
        if let Some((prefix, rest)) = line.split_once(':') {
            let level = match prefix.trim().to_ascii_lowercase().as_str() {
                "trace" | "trc" => Some(LogLevel::Trace),
                "debug" | "dbg" => Some(LogLevel::Debug),
                "info" | "information" => Some(LogLevel::Information),
                "warning" | "warn" => Some(LogLevel::Warning),
                "error" | "err" => Some(LogLevel::Error),
                "crit" | "critical" => Some(LogLevel::Critical),
                _ => None,
            };
            if let Some(level) = level {
                return (level, rest.trim_start());
            }
        }
        (default, line)
    }
}

/// One entry as `/v1/log/list` returns it.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    /// Increasing from 1, never reused.
    pub id: u64,
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// `"<category>: <message>"`, as CodeProject shows it.
    pub entry: String,
    pub level: LogLevel,
    /// The module name, or `Server`.
    pub category: String,
    /// Free label; the dashboard treats `"command timing"` specially.
    pub label: String,
    pub exception: Option<String>,
    /// When it was added, for looking back over a span of time.
    #[serde(skip)]
    pub logged_at: Instant,
}

struct Ring {
    next_id: u64,
    entries: VecDeque<LogEntry>,
}

/// Handle to the server log; cheap to share in an `Arc`.
pub struct LogService {
    // parking_lot: the critical sections are a push or a copy, never an .await.
    ring: Mutex<Ring>,
    file: Option<LogFile>,
}

/// The way to the log-file thread: `(day, line)` pairs over a bounded
/// channel. Lines that find it full are counted, and the count is written
/// to the file as soon as there is room again: dropped, but not silently.
struct LogFile {
    tx: mpsc::SyncSender<(String, String)>,
    dropped: AtomicU64,
}

impl LogFile {
    fn send(&self, day: String, timestamp: &str, line: String) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            let note = format!(
                "{timestamp} [Warning] Server: {dropped} log line(s) before this one were not \
                 written to this file: the disk could not keep up\n"
            );
            if self.tx.try_send((day.clone(), note)).is_ok() {
                self.dropped.fetch_sub(dropped, Ordering::Relaxed);
            }
        }
        match self.tx.try_send((day, line)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The writer thread gave up (no log directory); the ring buffer
            // still has the entry, and that was logged at the time.
            Err(mpsc::TrySendError::Disconnected(_)) => {}
        }
    }
}

impl LogService {
    /// A log that also appends to daily files in `dir` (created if missing).
    /// With `dir` None, entries stay in memory only.
    pub fn new(dir: Option<PathBuf>) -> LogService {
        let file = dir.map(|dir| {
            let (tx, rx) = mpsc::sync_channel::<(String, String)>(FILE_BACKLOG);
            std::thread::Builder::new()
                .name("modhost-logfile".into())
                .spawn(move || write_files(dir, rx))
                .expect("spawning the log-file thread");
            LogFile {
                tx,
                dropped: AtomicU64::new(0),
            }
        });
        LogService {
            ring: Mutex::new(Ring {
                next_id: 1,
                entries: VecDeque::with_capacity(LOG_CAPACITY),
            }),
            file,
        }
    }

    /// Adds an entry and mirrors it to `tracing` and the day's file. The
    /// message is cut to [`MAX_ENTRY_BYTES`] and its line breaks escaped; the
    /// category and label to 256 bytes.
    pub fn add(&self, level: LogLevel, category: &str, label: &str, message: &str) -> u64 {
        self.add_cut(level, category, label, message, 0)
    }

    /// [`LogService::add`] for a message of which the source already left
    /// `dropped` bytes out (a module's over-long output line): the entry says
    /// how many bytes are missing in all.
    pub fn add_cut(
        &self,
        level: LogLevel,
        category: &str,
        label: &str,
        message: &str,
        dropped: usize,
    ) -> u64 {
        let message = sanitise_cut(message, dropped);
        let category = sanitise(truncate(category, 256));
        let label = sanitise(truncate(label, 256));
        let (category, label) = (category.as_ref(), label.as_ref());
        match level {
            LogLevel::Trace => tracing::trace!(target: "modhost::log", %category, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "modhost::log", %category, "{message}"),
            LogLevel::Information => tracing::info!(target: "modhost::log", %category, "{message}"),
            LogLevel::Warning => tracing::warn!(target: "modhost::log", %category, "{message}"),
            LogLevel::Error | LogLevel::Critical => {
                tracing::error!(target: "modhost::log", %category, "{message}")
            }
        }
        let now = chrono::Utc::now();
        let entry = LogEntry {
            id: 0,
            timestamp: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            entry: format!("{category}: {message}"),
            level,
            category: category.to_owned(),
            label: label.to_owned(),
            exception: None,
            logged_at: Instant::now(),
        };
        if let Some(file) = &self.file {
            let line = format!("{} [{:?}] {}\n", entry.timestamp, level, entry.entry);
            file.send(now.format("%Y-%m-%d").to_string(), &entry.timestamp, line);
        }
        let mut ring = self.ring.lock();
        let id = ring.next_id;
        ring.next_id += 1;
        if ring.entries.len() == LOG_CAPACITY {
            ring.entries.pop_front();
        }
        ring.entries.push_back(LogEntry { id, ..entry });
        id
    }

    /// The message of the newest error or critical entry of `category` with an
    /// id greater than `after_id`, logged in the last `within`, without its
    /// `"<category>: "` prefix; None when there is none (or it has left the
    /// ring buffer).
    pub fn last_error_since(
        &self,
        category: &str,
        after_id: u64,
        within: Duration,
    ) -> Option<String> {
        let ring = self.ring.lock();
        ring.entries
            .iter()
            .rev()
            .take_while(|e| e.id > after_id && e.logged_at.elapsed() <= within)
            .find(|e| {
                e.category == category && matches!(e.level, LogLevel::Error | LogLevel::Critical)
            })
            .map(|e| {
                e.entry
                    .strip_prefix(category)
                    .and_then(|rest| rest.strip_prefix(": "))
                    .unwrap_or(&e.entry)
                    .to_owned()
            })
    }

    /// Up to `count` entries with id greater than `last_id`, oldest first.
    pub fn list(&self, last_id: u64, count: usize) -> Vec<LogEntry> {
        let ring = self.ring.lock();
        ring.entries
            .iter()
            .filter(|e| e.id > last_id)
            .take(count)
            .cloned()
            .collect()
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

fn write_files(dir: PathBuf, rx: mpsc::Receiver<(String, String)>) {
    if let Err(err) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), %err, "cannot create the log directory; logging to memory only");
        return;
    }
    let mut current: Option<(String, std::fs::File)> = None;
    while let Ok((day, line)) = rx.recv() {
        if current.as_ref().map(|(d, _)| d != &day).unwrap_or(true) {
            let path = dir.join(format!("log-{day}.txt"));
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                Ok(file) => current = Some((day, file)),
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "cannot open the log file");
                    continue;
                }
            }
        }
        if let Some((_, file)) = current.as_mut() {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_returns_entries_after_last_id_up_to_count() {
        let log = LogService::new(None);
        for i in 0..5 {
            log.add(LogLevel::Information, "Echo", "", &format!("line {i}"));
        }
        let after = log.list(2, 2);
        assert_eq!(after.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(after[0].entry, "Echo: line 2");
    }

    #[test]
    fn last_error_since_finds_the_newest_error_of_a_category_after_an_id() {
        let log = LogService::new(None);
        let recent = Duration::from_secs(60);
        log.add(LogLevel::Error, "Echo", "", "before the launch");
        let launched = log.add(LogLevel::Information, "Echo", "", "started");
        assert_eq!(log.last_error_since("Echo", launched, recent), None);
        log.add(LogLevel::Error, "Echo", "", "first problem");
        log.add(LogLevel::Critical, "Echo", "", "second problem");
        log.add(LogLevel::Error, "Other", "", "not Echo's");
        log.add(LogLevel::Warning, "Echo", "", "only a warning");
        assert_eq!(
            log.last_error_since("Echo", launched, recent).as_deref(),
            Some("second problem")
        );
        assert_eq!(
            log.last_error_since("Other", 0, recent).as_deref(),
            Some("not Echo's")
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            log.last_error_since("Echo", launched, Duration::from_millis(10)),
            None,
            "an error from before the window is not the cause"
        );
    }

    #[test]
    fn lines_a_full_file_backlog_drops_are_counted_in_the_file() {
        let (tx, rx) = mpsc::sync_channel(2);
        let file = LogFile {
            tx,
            dropped: AtomicU64::new(0),
        };
        let day = || "2026-11-23".to_owned();
        for n in 0..5 {
            file.send(day(), "T", format!("line {n}\n"));
        }
        let lines = |rx: &mpsc::Receiver<(String, String)>| -> Vec<String> {
            rx.try_iter().map(|(_, line)| line).collect()
        };
        assert_eq!(lines(&rx), ["line 0\n", "line 1\n"]);
        file.send(day(), "T", "line 5\n".into());
        let after = lines(&rx);
        assert_eq!(after.len(), 2, "{after:?}");
        assert!(after[0].contains("3 log line(s) before this one were not written"));
        assert_eq!(after[1], "line 5\n");
        file.send(day(), "T", "line 6\n".into());
        assert_eq!(lines(&rx), ["line 6\n"], "the count was reset");
    }

    #[test]
    fn long_entries_are_cut_and_line_breaks_cannot_forge_lines() {
        let log = LogService::new(None);
        log.add(
            LogLevel::Information,
            "Echo",
            "",
            "ok\n2026-01-01T00:00:00Z [Critical] Server: forged\r\x07",
        );
        let entry = &log.list(0, 1)[0].entry;
        assert_eq!(
            entry,
            "Echo: ok\\n2026-01-01T00:00:00Z [Critical] Server: forged\\r\\u{7}"
        );
        assert!(!entry.contains('\n'));
        log.add(
            LogLevel::Information,
            "Echo",
            "",
            &"é".repeat(MAX_ENTRY_BYTES),
        );
        let entry = &log.list(1, 1)[0].entry;
        assert!(entry.len() < MAX_ENTRY_BYTES + 64, "{}", entry.len());
        assert!(
            entry.ends_with(&format!("… ({} more bytes not kept)", MAX_ENTRY_BYTES)),
            "{}",
            &entry[entry.len() - 40..]
        );
    }

    #[test]
    fn launch_tokens_never_reach_the_log() {
        let log = LogService::new(None);
        log.add(
            LogLevel::Information,
            "Py",
            "",
            "Retrieved echo_queue~0123456789abcdef0123456789abcdef command; ~tilde stays",
        );
        assert_eq!(
            log.list(0, 1)[0].entry,
            "Py: Retrieved echo_queue~… command; ~tilde stays"
        );
    }

    #[test]
    fn ring_drops_the_oldest_beyond_capacity() {
        let log = LogService::new(None);
        for i in 0..LOG_CAPACITY + 3 {
            log.add(LogLevel::Debug, "Server", "", &i.to_string());
        }
        let all = log.list(0, usize::MAX);
        assert_eq!(all.len(), LOG_CAPACITY);
        assert_eq!(all[0].id, 4);
    }

    #[test]
    fn level_prefixes_of_module_output_are_recognised() {
        assert_eq!(
            LogLevel::from_line("warn: low memory", LogLevel::Information),
            (LogLevel::Warning, "low memory")
        );
        assert_eq!(
            LogLevel::from_line("error:boom", LogLevel::Information),
            (LogLevel::Error, "boom")
        );
        assert_eq!(
            LogLevel::from_line("url: http://x", LogLevel::Information),
            (LogLevel::Information, "url: http://x")
        );
    }

    #[test]
    fn entries_reach_the_daily_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogService::new(Some(dir.path().to_owned()));
        log.add(LogLevel::Error, "Echo", "", "written to disk");
        drop(log); // closes the channel; the writer flushes and exits
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let path = dir.path().join(format!("log-{day}.txt"));
        for _ in 0..100 {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if text.contains("Echo: written to disk") {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("log line never reached {}", path.display());
    }
}
