//! modhost
