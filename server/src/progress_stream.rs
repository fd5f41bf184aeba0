//! The progress stream (docs/protocol.md §4.2): a Unix socket pair made at
//! each launch of a module. The module gets one end as descriptor
//! [`PROGRESS_FD`] (named by [`PROGRESS_FD_ENV`]) and writes its progress
//! batches there, one JSON line each; the server applies each batch as the
//! HTTP push would and answers with one line, [`PROGRESS_ACK`] or
//! `error <why>`. A push then costs a write and a read on a socket both
//! processes already hold, not an HTTP request; on a machine whose cores all
//! run a model, that is CPU the model gets back.
//!
//! Only the launched process (and what it starts) holds its end, so the
//! stream needs no token: what arrives on it is that module's.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use modhost_protocol::{
    ProgressBatch, PROGRESS_ACK, PROGRESS_ERROR_PREFIX, PROGRESS_FD, PROGRESS_FD_ENV,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::Command;

use crate::jobs::Jobs;
use crate::registry::Module;

/// The server's end of a new stream, and the module's, to be given to the
/// child with [`give_to_child`].
///
/// # Errors
/// The socket pair could not be made (out of descriptors).
pub fn pair() -> std::io::Result<(std::os::unix::net::UnixStream, OwnedFd)> {
    let (server, module) = std::os::unix::net::UnixStream::pair()?;
    Ok((server, module.into()))
}

/// Makes `module_end` descriptor [`PROGRESS_FD`] of the process `command`
/// starts, and tells it so in [`PROGRESS_FD_ENV`]. Both ends are
/// close-on-exec in this process, so no other child inherits them; the
/// caller drops `module_end` once the child is spawned.
pub fn give_to_child(command: &mut Command, module_end: &OwnedFd) {
    let fd = module_end.as_raw_fd();
    command.env(PROGRESS_FD_ENV, PROGRESS_FD.to_string());
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only async-signal-safe functions (dup2, fcntl).
    unsafe {
        command.pre_exec(move || {
            if fd == PROGRESS_FD {
                // dup2 onto itself keeps close-on-exec: clear it.
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, PROGRESS_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Applies the batches `module` writes on `stream` to `jobs`, answering each,
/// until the module closes its end. A line over `max_bytes` or that cannot
/// be read ends the stream (the module then pushes over HTTP); a line that
/// is not a [`ProgressBatch`] is answered with an error and skipped.
pub async fn serve(
    stream: std::os::unix::net::UnixStream,
    module: Arc<Module>,
    jobs: Arc<Jobs>,
    max_bytes: usize,
) {
    let stream = match stream
        .set_nonblocking(true)
        .and_then(|()| UnixStream::from_std(stream))
    {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(
                module = module.id(),
                "cannot serve the progress stream: {e}"
            );
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = max_bytes as u64 + 1;
        match (&mut read).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(n) if n as u64 == limit && line.last() != Some(&b'\n') => {
                let why = format!("a progress batch over {max_bytes} bytes");
                let _ = answer(&mut write, Err(why)).await;
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
        let outcome = apply(&line, &module, &jobs);
        if answer(&mut write, outcome).await.is_err() {
            return;
        }
    }
}

/// Applies one line, as `POST /v1/queue/progress` applies its body.
fn apply(line: &[u8], module: &Module, jobs: &Jobs) -> Result<(), String> {
    let batch: ProgressBatch = serde_json::from_slice(line.trim_ascii_end())
        .map_err(|e| format!("malformed progress batch: {e}"))?;
    module.seen();
    jobs.push_batch(module.id(), batch)
}

async fn answer(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    outcome: Result<(), String>,
) -> std::io::Result<()> {
    let line = match outcome {
        Ok(()) => format!("{PROGRESS_ACK}\n"),
        // One line: a newline in the reason would start another answer.
        Err(why) => format!("{PROGRESS_ERROR_PREFIX}{}\n", why.replace('\n', " ")),
    };
    write.write_all(line.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use modhost_protocol::ProgressUpdate;
    use serde_json::json;

    use super::*;
    use crate::jobs::Retention;
    use crate::queue::Origin;
    use crate::registry::ModuleStatus;

    fn module(id: &str) -> Arc<Module> {
        let manifest = crate::registry::test_manifest(id, &[("text/chat", "prompt")]);
        Arc::new(Module::new(manifest, ModuleStatus::Started))
    }

    fn running_job(jobs: &Jobs, module_id: &str, id: &str) {
        let origin = Origin {
            module_id: module_id.into(),
            route: "text/chat".into(),
            command: "prompt".into(),
        };
        let running = json!({"success": true, "commandId": id, "commandStatus": "running"});
        jobs.start(
            id,
            origin,
            true,
            SystemTime::now(),
            running.as_object().unwrap(),
        );
    }

    /// Writes `line` and returns the server's answer line.
    async fn exchange(stream: &mut BufReader<UnixStream>, line: &str) -> String {
        stream.get_mut().write_all(line.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_line(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn batches_are_applied_and_answered_line_by_line() {
        let jobs = Jobs::new(Retention {
            age: Duration::from_secs(60),
            count: 10,
        });
        running_job(&jobs, "Chat", "c1");
        let (server, module_end) = pair().unwrap();
        let served = tokio::spawn(serve(server, module("Chat"), Arc::clone(&jobs), 1000));
        let module_end = std::os::unix::net::UnixStream::from(module_end);
        module_end.set_nonblocking(true).unwrap();
        let mut stream = BufReader::new(UnixStream::from_std(module_end).unwrap());

        let mut batch = ProgressBatch::new();
        for delta in ["The sky", " is blue"] {
            batch.insert(
                "c1".into(),
                ProgressUpdate {
                    delta: delta.into(),
                    ..Default::default()
                },
            );
            let line = serde_json::to_string(&batch).unwrap() + "\n";
            assert_eq!(exchange(&mut stream, &line).await, "ok\n");
        }
        let reply = jobs.get("c1").unwrap().status_reply();
        assert_eq!(reply["reply"], "The sky is blue");

        // An unknown job is named; the known one's update is still applied.
        batch.insert("nope".into(), ProgressUpdate::default());
        let line = serde_json::to_string(&batch).unwrap() + "\n";
        let answer = exchange(&mut stream, &line).await;
        assert_eq!(
            answer,
            "error module Chat has no job 'nope' (the other updates were saved)\n"
        );
        // Not JSON: said so, and the stream goes on.
        let answer = exchange(&mut stream, "{\"c1\": 3\n").await;
        assert!(
            answer.starts_with("error malformed progress batch: "),
            "{answer}"
        );
        assert_eq!(exchange(&mut stream, "{}\n").await, "ok\n");

        // Over the bound: said so, and the stream ends.
        let long = format!("{{\"c1\": {{\"delta\": \"{}\"}}}}\n", "x".repeat(2000));
        let answer = exchange(&mut stream, &long).await;
        assert_eq!(answer, "error a progress batch over 1000 bytes\n");
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the stream ends")
            .unwrap();
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_module_closes_its_end() {
        let jobs = Jobs::new(Retention {
            age: Duration::from_secs(60),
            count: 10,
        });
        let (server, module_end) = pair().unwrap();
        let served = tokio::spawn(serve(server, module("Chat"), jobs, 1000));
        drop(module_end);
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the stream ends")
            .unwrap();
    }
}
