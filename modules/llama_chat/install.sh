#!/usr/bin/env bash
# Installs the LlamaChat module: builds it in release mode, obtains its model,
# and runs its self-test. Idempotent: run it again and it rebuilds only what
# changed and keeps the model it has.
#
# modhost runs it (working directory: this module's directory) when
# bin/llama_chat is missing; you can run it by hand too.
#
# Settings (environment):
#   LLAMA_CHAT_PREBUILT   use this llama_chat binary instead of building one
#   CPAI_MODULE_LLAMA_MODEL_DIR / _FILENAME / _REPO / _FILEGLOB
#                         the model, as in modulesettings.json; by default the
#                         random-weight demo model, generated here
set -euo pipefail

module_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$module_dir"

say() { echo "info: LlamaChat install: $*"; }
die() { echo "error: LlamaChat install: $*" >&2; exit 1; }

# The Cargo workspace that holds this module's source: the nearest directory
# above with a Cargo.toml that declares [workspace].
find_workspace() {
  local dir=$module_dir
  while [ "$dir" != "/" ]; do
    dir=$(dirname "$dir")
    if [ -f "$dir/Cargo.toml" ] && grep -q '^\[workspace\]' "$dir/Cargo.toml"; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

# 1. The binary.
mkdir -p bin
if [ -n "${LLAMA_CHAT_PREBUILT:-}" ]; then
  [ -x "$LLAMA_CHAT_PREBUILT" ] || die "LLAMA_CHAT_PREBUILT=$LLAMA_CHAT_PREBUILT is not an executable file"
  say "using the prebuilt binary $LLAMA_CHAT_PREBUILT"
  cp -f "$LLAMA_CHAT_PREBUILT" bin/llama_chat.new
else
  command -v cargo >/dev/null || die "cargo is missing: install Rust from https://rustup.rs"
  command -v cmake >/dev/null || die "cmake is missing (llama.cpp is built from source): apt-get install -y cmake"
  ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1 \
    || [ -n "${LIBCLANG_PATH:-}" ] \
    || die "libclang is missing (bindgen needs it): apt-get install -y libclang-dev"
  workspace=$(find_workspace) \
    || die "no Cargo workspace above $module_dir to build llama_chat in: build it there, or set LLAMA_CHAT_PREBUILT to a llama_chat binary"
  say "building llama_chat in release mode (the first build compiles llama.cpp: several minutes)"
  # The same packages as start.sh builds: cargo unifies dependency features
  # over the packages named, so `-p llama_chat` alone would be a different
  # feature set and compile all of llama.cpp again beside start.sh's build.
  (cd "$workspace" && cargo build --release --locked -p modhost -p llama_chat)
  target_dir=${CARGO_TARGET_DIR:-$workspace/target}
  cp -f "$target_dir/release/llama_chat" bin/llama_chat.new
fi
# Replace atomically, so a running module keeps its binary until restarted.
mv -f bin/llama_chat.new bin/llama_chat

# 2. The model: the configured file, a download, or the generated demo model.
export CPAI_MODULE_PATH="$module_dir"
export CPAI_MODULE_LLAMA_MODEL_DIR="${CPAI_MODULE_LLAMA_MODEL_DIR:-$module_dir/models}"
export CPAI_MODULE_LLAMA_MODEL_FILENAME="${CPAI_MODULE_LLAMA_MODEL_FILENAME:-modhost-demo-tiny.gguf}"
say "obtaining the model $CPAI_MODULE_LLAMA_MODEL_DIR/$CPAI_MODULE_LLAMA_MODEL_FILENAME"
model=$(bin/llama_chat fetch-model) || die "no model: see the error above"
say "model: $model"
if [ "$(basename "$model")" = "modhost-demo-tiny.gguf" ]; then
  say "this is the demo model: random weights, it answers with random text (see modules/llama_chat/README.md to use a real GGUF)"
fi

# 3. The self-test: load the model and chat once.
say "running the self-test"
bin/llama_chat --selftest || die "the self-test failed: see the errors above"
say "installed"
