//! The module's end of the progress stream (docs/protocol.md §4.2): a Unix
//! socket the server made when it launched this process and handed over as
//! the descriptor named by `MODHOST_PROGRESS_FD`. A progress batch goes out
//! as one JSON line and is answered with one line, `ok` or `error <why>`, as
//! an HTTP push is answered: a push costs a write and a read, not a request.
//! A module started any other way has no stream and pushes over HTTP.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use modhost_protocol::{ProgressBatch, PROGRESS_ACK, PROGRESS_ERROR_PREFIX, PROGRESS_FD_ENV};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The stream is taken once per process: a second owner of the descriptor
/// would close it under the first.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The progress stream, when the server gave this process one.
#[derive(Debug)]
pub(crate) struct ProgressStream {
    stream: BufReader<UnixStream>,
    answer: String,
}

impl ProgressStream {
    /// The stream named by `MODHOST_PROGRESS_FD`; `None` when it is unset,
    /// already taken, or not an open Unix socket (a process started by hand
    /// with a copied environment, say). Must run inside a tokio runtime.
    pub(crate) fn from_env() -> Option<Self> {
        let fd: RawFd = std::env::var(PROGRESS_FD_ENV).ok()?.trim().parse().ok()?;
        if fd < 3 || TAKEN.swap(true, Ordering::SeqCst) {
            return None;
        }
        // SAFETY: F_GETFD only reads the descriptor's flags; -1 means closed.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return None;
        }
        // SAFETY: the descriptor is open, and TAKEN makes this its only owner
        // in the process; the server gave it to this process for this use.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let stream = std::os::unix::net::UnixStream::from(owned);
        if stream.local_addr().is_err() {
            // Not a socket: give the descriptor back untouched.
            let _ = stream.into_raw_fd();
            return None;
        }
        // What this module starts must not inherit the stream: its end
        // would outlive the module.
        // SAFETY: F_SETFD on a descriptor this process owns.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        stream.set_nonblocking(true).ok()?;
        let stream = UnixStream::from_std(stream).ok()?;
        Some(Self {
            stream: BufReader::new(stream),
            answer: String::new(),
        })
    }

    /// Sends `batch` and waits up to `timeout` for the server's answer:
    /// `Ok(Ok(()))` when it was applied, `Ok(Err(why))` when the server
    /// said why not (unknown commands; the others' updates are applied).
    ///
    /// # Errors
    /// The stream broke or the answer did not come in time: whether the
    /// batch was applied is unknown, and the stream is no longer usable.
    pub(crate) async fn push(
        &mut self,
        batch: &ProgressBatch,
        timeout: Duration,
    ) -> std::io::Result<Result<(), String>> {
        let mut line = serde_json::to_vec(batch)?;
        line.push(b'\n');
        let exchange = async {
            self.stream.get_mut().write_all(&line).await?;
            self.answer.clear();
            if self.stream.read_line(&mut self.answer).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            Ok::<(), std::io::Error>(())
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let answer = self.answer.trim_end();
        Ok(match answer.strip_prefix(PROGRESS_ERROR_PREFIX) {
            _ if answer == PROGRESS_ACK => Ok(()),
            Some(why) => Err(why.to_owned()),
            None => Err(format!("unexpected answer {answer:?}")),
        })
    }

    /// A stream over one end of a socket pair, for tests.
    #[cfg(test)]
    fn over(stream: UnixStream) -> Self {
        Self {
            stream: BufReader::new(stream),
            answer: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use modhost_protocol::ProgressUpdate;

    use super::*;

    fn batch(delta: &str) -> ProgressBatch {
        let mut batch = ProgressBatch::new();
        batch.insert(
            "c1".into(),
            ProgressUpdate {
                delta: delta.into(),
                ..Default::default()
            },
        );
        batch
    }

    #[tokio::test]
    async fn a_push_is_one_line_answered_by_one_line() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut stream = ProgressStream::over(ours);
        let server = tokio::spawn(async move {
            let mut theirs = BufReader::new(theirs);
            let mut lines = Vec::new();
            for answer in ["ok\n", "error module M has no job 'c1'\n", "what\n"] {
                let mut line = String::new();
                theirs.read_line(&mut line).await.unwrap();
                lines.push(line);
                theirs.get_mut().write_all(answer.as_bytes()).await.unwrap();
            }
            lines
        });
        let second = Duration::from_secs(5);
        assert_eq!(stream.push(&batch("a"), second).await.unwrap(), Ok(()));
        assert_eq!(
            stream.push(&batch("b"), second).await.unwrap(),
            Err("module M has no job 'c1'".to_owned())
        );
        assert_eq!(
            stream.push(&batch("c"), second).await.unwrap(),
            Err("unexpected answer \"what\"".to_owned())
        );
        let lines = server.await.unwrap();
        assert_eq!(lines[0], "{\"c1\":{\"delta\":\"a\"}}\n");
        // The server is gone: the stream is broken, not answered.
        let broken = stream.push(&batch("d"), second).await.unwrap_err();
        assert!(
            matches!(
                broken.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::BrokenPipe
            ),
            "{broken}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_the_push_out() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut stream = ProgressStream::over(ours);
        let error = stream
            .push(&batch("a"), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    }
}
