//! LlamaChat: a modhost module that chats with a local GGUF model through llama.cpp
//! (the `llama-cpp-2` bindings), as a drop-in for CodeProject.AI Server's LlamaChat
//! module (route `text/chat`, command `prompt`, a long-running command polled with
//! `get_command_status`; see modules/llama_chat/README.md and docs/protocol.md §1.7).
//!
//! Layout:
//! - [`request`]: what a chat asks for, its defaults and ranges, read from a
//!   command's values.
//! - [`generation`]: the [`generation::Generator`] trait and the
//!   [`generation::Generation`] a chat streams through.
//! - [`engine`]: [`engine::LlamaEngine`], the model: loading, prompt format,
//!   tokens, preparing and launching chats.
//! - [`scheduler`]: one decode loop over one context with a sequence per
//!   slot: continuous batching and the prompt cache.
//! - [`sampling`]: each sequence's sampler chain and reply text.
//! - [`embed`]: pooled embeddings from the loaded model (route `text/embed`).
//! - [`template`]: chat templates (llama.cpp built-ins, minijinja, ChatML fallback).
//! - [`text`]: stateful UTF-8 decoding of token pieces and stop strings.
//! - [`gguf`]: a small GGUF writer and the random-weight demo model used by tests,
//!   the installer and benchmarks.
//! - [`hugepages`]: the model file in the page cache in 2 MiB pages, for a
//!   faster decode on the CPU.
//! - [`model`]: where the model file comes from (configured, downloaded, or the
//!   generated demo model).
//! - [`module`] (and `main.rs`): the CodeProject-style module on `modhost-sdk`: input
//!   validation and streaming into the command status.

pub mod embed;
pub mod engine;
pub mod generation;
pub mod gguf;
pub mod hugepages;
pub mod model;
pub mod module;
mod prompt;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod template;
pub mod text;

pub use module::LlamaChat;
