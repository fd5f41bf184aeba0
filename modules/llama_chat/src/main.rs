//! `llama_chat`: the LlamaChat module process, and its model tools.
//!
//! - `llama_chat` runs the module (launched by the server, `CPAI_*` settings
//!   in the environment); `llama_chat --selftest` loads the model, chats once
//!   and exits 0 or 1 (install scripts run it).
//! - `llama_chat fetch-model` makes sure the configured model file exists
//!   (present, downloaded, or the generated demo model) and prints its path.
//! - `llama_chat demo-model --preset tiny|small|bench OUT.gguf` writes a
//!   random-weight demo model.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use llama_chat::gguf::{write_demo_model, DemoModelSpec};
use llama_chat::model::ModelSource;
use llama_chat::LlamaChat;
use modhost_sdk::{LogSetup, ModuleContext, RunOptions};

#[derive(Parser)]
#[command(
    name = "llama_chat",
    version,
    about = "LlamaChat: chat with a GGUF model through llama.cpp, as a modhost module"
)]
struct Cli {
    /// Load the model, run one short chat, and exit 0 if it worked, 1 if not.
    #[arg(long)]
    selftest: bool,
    #[command(subcommand)]
    tool: Option<Tool>,
}

#[derive(Subcommand)]
enum Tool {
    /// Make sure the configured model file exists (CPAI_MODULE_LLAMA_MODEL_*),
    /// downloading it or generating the demo model as needed; print its path.
    FetchModel,
    /// Write a random-weight llama-architecture demo model (it answers with
    /// random text).
    DemoModel {
        /// tiny (0.6 MB, for tests and the demo), small (110 MB, slow enough
        /// to watch), bench (0.5 B parameters, Q8_0, about 0.6 GB).
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// The GGUF file to write.
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    modhost_sdk::init_logging_with(LogSetup {
        // llama.cpp reports every model load in detail at info level (tracing
        // target "llama-cpp-2"; the crate's own log plumbing is "llama_cpp_2").
        quiet_targets: &["llama-cpp-2", "llama_cpp_2"],
        // The tools print their result (a path) on stdout.
        stderr: cli.tool.is_some(),
    });
    let ctx = match ModuleContext::from_env() {
        Ok(ctx) => ctx,
        Err(e) => return fail(&e.to_string()),
    };
    match cli.tool {
        None => modhost_sdk::run_with(
            LlamaChat::new(),
            ctx,
            RunOptions {
                selftest: cli.selftest,
            },
        ),
        Some(Tool::FetchModel) => match ModelSource::from_env(&ctx.module_path).ensure() {
            Ok(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        Some(Tool::DemoModel { preset, out }) => {
            let Some(spec) = DemoModelSpec::preset(&preset) else {
                return fail(&format!(
                    "unknown preset '{preset}': use tiny, small or bench"
                ));
            };
            match write_demo_model(&out, &spec) {
                Ok(()) => {
                    println!("{}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
    }
}

fn fail(message: &str) -> ExitCode {
    tracing::error!("{message}");
    ExitCode::FAILURE
}
