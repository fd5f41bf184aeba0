//! Module logging: `tracing` events printed to stdout with the level prefixes
//! the server reads.
//!
//! CodeProject.AI Server 2.9 logs every stdout line of a module, taking the
//! level from a prefix (`error:`, `warning:`, `info:`, `debug:`, `trace:`),
//! and every stderr line as an error; see docs/protocol.md §1.1. So a module needs no HTTP logging client: it uses
//! `tracing::info!` and friends after [`init_logging`], which [`run`](crate::run)
//! calls for it.

use std::fmt::Write as _;
use std::sync::Once;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Installs the stdout subscriber as the global default, once per process.
///
/// The filter comes from `RUST_LOG` if set, else from `CPAI_LOG_VERBOSITY`:
/// `Quiet` → warnings and errors, `Loud` → debug, otherwise info. Calling it
/// again, or after another global subscriber was installed, does nothing.
pub fn init_logging() {
    init_logging_with(LogSetup::default());
}

/// Options of [`init_logging_with`]; the default is [`init_logging`]'s.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSetup<'a> {
    /// `tracing` targets kept to warnings and errors unless
    /// `CPAI_LOG_VERBOSITY` is `Loud` or `RUST_LOG` is set: a native
    /// library's detailed logs, e.g. llama.cpp's (`"llama-cpp-2"`).
    pub quiet_targets: &'a [&'a str],
    /// Log to stderr rather than stdout, for a module binary's command-line
    /// tools whose stdout is their result. (CodeProject.AI Server logs every
    /// stderr line as an error whatever its prefix, so modules use stdout.)
    pub stderr: bool,
}

/// [`init_logging`] with [`LogSetup`] options.
pub fn init_logging_with(setup: LogSetup<'_>) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            let verbosity = std::env::var("CPAI_LOG_VERBOSITY").unwrap_or_default();
            let mut directives = default_directive(&verbosity).to_owned();
            if !verbosity.trim().eq_ignore_ascii_case("loud") {
                for target in setup.quiet_targets {
                    directives.push_str(&format!(",{target}=warn"));
                }
            }
            EnvFilter::new(directives)
        });
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            // A write that fails (the server died and took the pipe with
            // it) must not panic the thread that logged: the default reports
            // it with eprintln!, which panics when stderr is gone too.
            .log_internal_errors(false)
            .event_format(PrefixFormat);
        // An error only means a subscriber is already installed (e.g. by the
        // module's own main or a test harness); keep that one.
        let _ = if setup.stderr {
            builder.with_writer(std::io::stderr).try_init()
        } else {
            builder.with_writer(std::io::stdout).try_init()
        };
    });
}

/// Logs `message` at `level` through `tracing` (target `modhost_sdk`), for
/// code that picks the level at run time. Prefer the `tracing` macros.
pub fn log(level: Level, message: &str) {
    match level {
        Level::ERROR => tracing::error!("{message}"),
        Level::WARN => tracing::warn!("{message}"),
        Level::INFO => tracing::info!("{message}"),
        Level::DEBUG => tracing::debug!("{message}"),
        Level::TRACE => tracing::trace!("{message}"),
    }
}

fn default_directive(verbosity: &str) -> &'static str {
    match verbosity.trim().to_ascii_lowercase().as_str() {
        "quiet" => "warn",
        "loud" => "debug",
        _ => "info",
    }
}

/// The stdout prefix the server maps back to `level`.
fn prefix(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Writes `text` with `prefix: ` on every line, so a multi-line message
/// keeps its level on each line the server reads.
fn write_prefixed(out: &mut impl std::fmt::Write, prefix: &str, text: &str) -> std::fmt::Result {
    for line in text.lines() {
        writeln!(out, "{prefix}: {line}")?;
    }
    if text.is_empty() {
        writeln!(out, "{prefix}:")?;
    }
    Ok(())
}

/// `info: span{field=1}: message key=value`.
struct PrefixFormat;

impl<S, N> FormatEvent<S, N> for PrefixFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut text = String::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                text.push_str(span.name());
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(text, "{{{fields}}}")?;
                    }
                }
                text.push_str(": ");
            }
        }
        ctx.format_fields(Writer::new(&mut text), event)?;
        write_prefixed(&mut writer, prefix(event.metadata().level()), &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_gets_the_level_prefix() {
        let mut out = String::new();
        write_prefixed(&mut out, "error", "load failed\ncaused by: no file").expect("write");
        assert_eq!(out, "error: load failed\nerror: caused by: no file\n");
        let mut out = String::new();
        write_prefixed(&mut out, "info", "").expect("write");
        assert_eq!(out, "info:\n");
    }

    #[test]
    fn prefixes_are_the_ones_the_server_parses() {
        assert_eq!(prefix(&Level::ERROR), "error");
        assert_eq!(prefix(&Level::WARN), "warning");
        assert_eq!(prefix(&Level::INFO), "info");
        assert_eq!(prefix(&Level::DEBUG), "debug");
        assert_eq!(prefix(&Level::TRACE), "trace");
    }

    #[test]
    fn verbosity_maps_to_a_filter() {
        assert_eq!(default_directive("Quiet"), "warn");
        assert_eq!(default_directive("LOUD"), "debug");
        assert_eq!(default_directive("Info"), "info");
        assert_eq!(default_directive(""), "info");
    }

    #[test]
    fn formatter_writes_prefixed_events_with_span_context() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::fmt::MakeWriter;

        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("buffer lock").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Buf {
            type Writer = Buf;
            fn make_writer(&'a self) -> Buf {
                self.clone()
            }
        }

        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(buf.clone())
            .event_format(PrefixFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("command", id = "c1");
            let _guard = span.enter();
            tracing::warn!(tokens = 3, "slow\nvery slow");
        });
        let text = String::from_utf8(buf.0.lock().expect("buffer lock").clone()).expect("utf8");
        assert_eq!(
            text,
            "warning: command{id=\"c1\"}: slow\nwarning: very slow tokens=3\n"
        );
    }
}
