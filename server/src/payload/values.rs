//! The values and files collected from one request.

use std::collections::HashMap;

use modhost_protocol::{FileValue, KeyValue, Payload};

use crate::error::ApiError;

/// The values and files of one request, in the order they came. Repeated
/// names add to one entry, found through an index, so collecting n values
/// costs O(n).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestValues {
    pub values: Vec<KeyValue>,
    pub files: Vec<FileValue>,
    /// Position in `values` of each exact key.
    index: HashMap<String, usize>,
    /// Values and files so far.
    count: usize,
    /// Most values and files allowed; 0 means no limit (tests).
    max_fields: usize,
}

impl RequestValues {
    /// An empty set that refuses more than `max_fields` values and files.
    pub fn with_limit(max_fields: usize) -> RequestValues {
        RequestValues {
            max_fields,
            ..RequestValues::default()
        }
    }

    /// Counts one more value or file.
    ///
    /// # Errors
    /// 413 naming the limit when there are more than `max_fields`.
    fn count_one(&mut self) -> Result<(), ApiError> {
        self.count += 1;
        if self.max_fields > 0 && self.count > self.max_fields {
            return Err(ApiError::TooManyFields {
                limit: self.max_fields,
            });
        }
        Ok(())
    }

    /// Adds a value under `key` (a further one if `key` is present).
    ///
    /// # Errors
    /// 413 when over the limit of values.
    pub(crate) fn push(&mut self, key: &str, value: String) -> Result<(), ApiError> {
        self.count_one()?;
        match self.index.get(key) {
            Some(&at) => self.values[at].value.push(value),
            None => {
                self.index.insert(key.to_owned(), self.values.len());
                self.values.push(KeyValue {
                    key: key.to_owned(),
                    value: vec![value],
                });
            }
        }
        Ok(())
    }

    /// Adds an uploaded file.
    ///
    /// # Errors
    /// 413 when over the limit of values.
    pub(super) fn push_file(&mut self, file: FileValue) -> Result<(), ApiError> {
        self.count_one()?;
        self.files.push(file);
        Ok(())
    }

    /// The first value of `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.all(key).next()
    }

    /// Every value of `key` (case-insensitive), in the order they came.
    pub fn all<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> + 'a {
        let key = key.to_owned();
        self.values
            .iter()
            .filter(move |kv| kv.key.eq_ignore_ascii_case(&key))
            .flat_map(|kv| kv.value.iter().map(String::as_str))
    }

    /// The `payload` of a queue item, less its command.
    pub fn into_payload(self, url_segments: Vec<String>) -> Payload {
        Payload {
            values: self.values,
            files: self.files,
            url_segments,
            ..Payload::default()
        }
    }
}
