//! A module's output: its stdout and stderr lines into the server log, and
//! its install script's into `install.log` too.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::logs::{LogLevel, LogService};

/// Longest module output line kept in the log, in bytes.
const MAX_LINE: usize = 8 * 1024;

/// Logs each line a module prints, its level taken from a prefix. A line is
/// kept up to [`MAX_LINE`] bytes (cut at a character boundary, saying how
/// much was left out); the rest of it is read and dropped, so a module that
/// prints without newlines cannot grow the server's memory.
pub(super) async fn pipe_lines(
    stream: impl AsyncRead + Unpin,
    logs: Arc<LogService>,
    name: String,
    default: LogLevel,
) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(256);
    let mut dropped = 0usize;
    loop {
        let (consumed, ended) = {
            let Ok(buf) = reader.fill_buf().await else {
                return;
            };
            if buf.is_empty() {
                // End of output: a last line without a newline still counts.
                if !line.is_empty() {
                    log_line(&logs, &name, default, &line, dropped);
                }
                return;
            }
            let (take, ended) = match buf.iter().position(|&b| b == b'\n') {
                Some(at) => (at + 1, true),
                None => (buf.len(), false),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            let body = &buf[..if ended { take - 1 } else { take }];
            let keep = body.len().min(room);
            line.extend_from_slice(&body[..keep]);
            dropped += body.len() - keep;
            (take, ended)
        };
        reader.consume(consumed);
        if ended {
            log_line(&logs, &name, default, &line, dropped);
            line.clear();
            dropped = 0;
        }
    }
}

/// Logs one output line of a module; `dropped` bytes of it were not kept.
fn log_line(logs: &LogService, name: &str, default: LogLevel, bytes: &[u8], dropped: usize) {
    // A cut may have split a character: keep the valid part.
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(e) if e.error_len().is_none() => String::from_utf8_lossy(&bytes[..e.valid_up_to()]),
        Err(_) => String::from_utf8_lossy(bytes),
    };
    let text = text.trim_end();
    if text.is_empty() {
        return;
    }
    let (level, message) = LogLevel::from_line(text, default);
    logs.add_cut(level, name, "", message, dropped);
}

/// Copies an install script's output into `install.log` and the server log.
pub(super) async fn pipe_install(
    stream: impl AsyncRead + Unpin,
    logs: Arc<LogService>,
    name: String,
    log_path: PathBuf,
) {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .await
        .ok();
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(file) = file.as_mut() {
            let _ = file.write_all(format!("{line}\n").as_bytes()).await;
        }
        logs.add(LogLevel::Information, &name, "install", &line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_huge_line_is_cut_and_the_next_one_kept() {
        let logs = Arc::new(LogService::new(None));
        let mut output = "é".repeat(MAX_LINE).into_bytes(); // 2 × MAX_LINE bytes
        output.extend_from_slice(b"\nwarn: next line\nno newline at the end");
        pipe_lines(
            &output[..],
            Arc::clone(&logs),
            "M".into(),
            LogLevel::Information,
        )
        .await;
        let entries = logs.list(0, 10);
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert!(entries[0]
            .entry
            .ends_with(&format!("… ({MAX_LINE} more bytes not kept)")));
        assert!(entries[0].entry.len() < MAX_LINE + 64);
        assert_eq!(entries[1].entry, "M: next line");
        assert_eq!(entries[1].level, LogLevel::Warning);
        assert_eq!(entries[2].entry, "M: no newline at the end");
    }
}
