//! e2e test harness
