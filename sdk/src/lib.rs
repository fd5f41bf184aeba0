//! modhost-sdk
