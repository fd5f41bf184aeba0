//! llama_chat
