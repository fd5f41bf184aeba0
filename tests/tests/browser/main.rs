//! The dashboard and the explorer in headless Chromium (Debian's `chromium`
//! and `chromium-driver`), driven over WebDriver with `fantoccini`, against
//! the real server and the real LlamaChat module on a generated demo model.
//! Screenshots of the dashboard and of a finished chat are saved under
//! `target/screenshots/` for review.
//!
//! Tests take turns (one browser at a time: the machine has few cores).
//!
//! `harness.rs` holds the browser session and the servers the tests open;
//! the tests of each page are in `dashboard.rs` and `explorer.rs`.

mod dashboard;
mod explorer;
mod harness;
