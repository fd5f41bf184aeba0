#!/usr/bin/env bash
# Sets up and starts modhost with the LlamaChat module on its default model:
# builds the server and the module (release), installs LlamaChat (model and
# self-test), then runs the server in the foreground; it prints the dashboard
# and explorer URLs. Ctrl-C stops it. Extra arguments go to modhost, e.g.
# ./start.sh --port 8080 (see target/release/modhost --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

die() { echo "error: $*" >&2; exit 1; }
command -v cargo >/dev/null || die "cargo is missing: install Rust from https://rustup.rs"
command -v cmake >/dev/null || die "cmake is missing (llama.cpp is built from source): sudo apt-get install -y cmake libclang-dev"
ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1 || [ -n "${LIBCLANG_PATH:-}" ] \
  || die "libclang is missing (llama.cpp's bindings need it): sudo apt-get install -y libclang-dev"

echo "==> building modhost and LlamaChat (release; the first build compiles llama.cpp and takes several minutes)"
# The same packages as modules/llama_chat/install.sh builds, so that either
# reuses the other's build (cargo unifies features over the packages named).
cargo build --release --locked -p modhost -p llama_chat

echo "==> installing LlamaChat"
LLAMA_CHAT_PREBUILT="$PWD/target/release/llama_chat" bash modules/llama_chat/install.sh

echo "==> starting modhost"
exec target/release/modhost "$@"
