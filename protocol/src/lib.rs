//! modhost-protocol: the wire between clients, the modhost server and its
//! modules, defined once and used by both the server and the Rust SDK.
//!
//! Most of it is CodeProject.AI Server 2.9's protocol (docs/protocol.md §1 and
//! §2); the rest are modhost's additive extensions (docs/protocol.md §4): the
//! per-launch module token, progress pushed by modules, failure codes, jobs.
//! An unmodified CodeProject module or client never sees an extension.
//!
//! # Layout
//!
//! - `item.rs`: [`QueueItem`], the command a module takes from its queue, with
//!   its [`Payload`] values ([`KeyValue`]) and files ([`FileValue`]);
//! - `reply.rs`: the reply envelope a module posts ([`ReplyMeta`] reads it,
//!   [`envelope`] writes it);
//! - `long_process.rs`: [`CommandStatus`], the `get_command_status` and
//!   `cancel_command` replies, and [`ProgressUpdate`], a module's push;
//! - `failure.rs`: [`Failure`], why a command failed, with stable wire codes.

mod failure;
mod item;
mod long_process;
mod reply;

pub use failure::{Failure, FailureKind};
pub use item::{FileValue, KeyValue, Payload, QueueItem, QUIT_COMMAND};
pub use long_process::{
    cancel_reply, status_reply, CommandStatus, ProgressBatch, ProgressUpdate, CANCEL_COMMAND,
    GET_COMMAND_STATUS_COMMAND, PROGRESS_PUSH_FIELD, REPLY_FIELD,
};
pub use reply::{envelope, error_body, EnvelopeFields, ReplyMeta};

/// A JSON object: every reply, status and result on this wire is one.
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

/// Environment variable holding the module's per-launch token (modhost
/// extension, docs/protocol.md §4.1). Only modhost sets it, so a module that
/// sees it knows the server speaks the extensions.
pub const TOKEN_ENV: &str = "MODHOST_MODULE_TOKEN";

/// Environment variable naming the file descriptor of a module's progress
/// stream (modhost extension, docs/protocol.md §4.2): a Unix stream socket
/// whose other end the server holds. Set only for modules the server
/// launches; the value is [`PROGRESS_FD`].
pub const PROGRESS_FD_ENV: &str = "MODHOST_PROGRESS_FD";

/// The descriptor number the progress stream has in a module the server
/// launched (after standard input, output and error).
pub const PROGRESS_FD: i32 = 3;

/// The server's answer, one line, to a progress batch it applied in full on
/// the progress stream. Any other answer line is `error <why>`
/// ([`PROGRESS_ERROR_PREFIX`]).
pub const PROGRESS_ACK: &str = "ok";

/// How the server's answer line to a progress batch it could not apply in
/// full starts; the rest says why, as the HTTP push's error body would.
pub const PROGRESS_ERROR_PREFIX: &str = "error ";

/// Header a module sends its per-launch token in (docs/protocol.md §4.1).
pub const TOKEN_HEADER: &str = "X-Modhost-Token";

/// Separates a queue name from the launch token in the queue name a module
/// is given (`CPAI_MODULE_QUEUENAME=<queue>~<token>`), so that modules on the
/// unmodified CodeProject SDK present their token on every poll
/// (docs/protocol.md §4.1).
pub const QUEUE_TOKEN_SEPARATOR: char = '~';

/// Splits a polled queue name into the queue and the token it carries:
/// `"echo_queue~ab12"` → `("echo_queue", Some("ab12"))`, `"echo_queue"` →
/// `("echo_queue", None)`.
pub fn split_queue_token(name: &str) -> (&str, Option<&str>) {
    match name.split_once(QUEUE_TOKEN_SEPARATOR) {
        Some((queue, token)) => (queue, Some(token)),
        None => (name, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_carry_an_optional_token() {
        assert_eq!(
            split_queue_token("echo_queue~ab12"),
            ("echo_queue", Some("ab12"))
        );
        assert_eq!(split_queue_token("echo_queue"), ("echo_queue", None));
    }
}
