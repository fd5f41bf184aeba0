//! Metadata filters of document search (the WIT's `search-filter`): which
//! documents' metadata match, with fields named by path.

use serde_json::Value;

/// A condition on one metadata field (the WIT's `metadata-filter`).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldFilter {
    /// A path into the metadata: `a.b`, `a[].b` (any element), `a[1].b`.
    pub field: String,
    pub condition: Condition,
}

/// The WIT's `metadata-filter-condition`.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    GreaterThan(f64),
    GreaterThanOrEqualTo(f64),
    LessThan(f64),
    LessThanOrEqualTo(f64),
    /// Date-times (RFC 3339) compared in time; other strings as text.
    After(String),
    AtOrAfter(String),
    Before(String),
    AtOrBefore(String),
    EqualTo(Value),
    /// The field is null or absent.
    IsNull,
}

/// The WIT's `search-filter`: a logical combination of field filters.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchFilter {
    /// None of them matches.
    Without(Vec<FieldFilter>),
    /// At least one matches.
    WithOneOf(Vec<FieldFilter>),
    /// All match.
    WithAll(Vec<FieldFilter>),
}

impl SearchFilter {
    /// Whether a document with `metadata` passes.
    pub fn matches(&self, metadata: Option<&Value>) -> bool {
        let null = Value::Null;
        let metadata = metadata.unwrap_or(&null);
        match self {
            SearchFilter::Without(fs) => !fs.iter().any(|f| f.matches(metadata)),
            SearchFilter::WithOneOf(fs) => fs.iter().any(|f| f.matches(metadata)),
            SearchFilter::WithAll(fs) => fs.iter().all(|f| f.matches(metadata)),
        }
    }
}

impl FieldFilter {
    fn matches(&self, metadata: &Value) -> bool {
        let values = resolve(metadata, &self.field);
        if self.condition == Condition::IsNull {
            return values.is_empty() || values.iter().any(|v| v.is_null());
        }
        values.iter().any(|v| self.condition.holds(v))
    }
}

impl Condition {
    fn holds(&self, value: &Value) -> bool {
        let number = value.as_f64();
        match self {
            Condition::GreaterThan(x) => number.is_some_and(|n| n > *x),
            Condition::GreaterThanOrEqualTo(x) => number.is_some_and(|n| n >= *x),
            Condition::LessThan(x) => number.is_some_and(|n| n < *x),
            Condition::LessThanOrEqualTo(x) => number.is_some_and(|n| n <= *x),
            Condition::After(t) => compare_time(value, t).is_some_and(|o| o.is_gt()),
            Condition::AtOrAfter(t) => compare_time(value, t).is_some_and(|o| o.is_ge()),
            Condition::Before(t) => compare_time(value, t).is_some_and(|o| o.is_lt()),
            Condition::AtOrBefore(t) => compare_time(value, t).is_some_and(|o| o.is_le()),
            Condition::EqualTo(expected) => match (value, expected) {
                (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                (a, b) => a == b,
            },
            Condition::IsNull => value.is_null(),
        }
    }
}

/// How the string `value` compares with `reference`: in time when both are
/// RFC 3339 date-times, else as text.
fn compare_time(value: &Value, reference: &str) -> Option<std::cmp::Ordering> {
    let text = value.as_str()?;
    let parse = chrono::DateTime::parse_from_rfc3339;
    Some(match (parse(text), parse(reference)) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        _ => text.cmp(reference),
    })
}

/// The values at `path` in `root`: `a.b` steps into objects, `a[]` into
/// every element of an array, `a[2]` into one element.
fn resolve<'v>(root: &'v Value, path: &str) -> Vec<&'v Value> {
    let mut current = vec![root];
    for step in path.split('.') {
        let (key, index) = match step.find('[') {
            Some(open) => (&step[..open], Some(step[open + 1..].trim_end_matches(']'))),
            None => (step, None),
        };
        let mut next = Vec::new();
        for value in current {
            let Some(field) = value.get(key) else {
                continue;
            };
            match index {
                None => next.push(field),
                Some("") => next.extend(field.as_array().into_iter().flatten()),
                Some(i) => next.extend(i.parse::<usize>().ok().and_then(|i| field.get(i))),
            }
        }
        current = next;
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(field: &str, condition: Condition) -> FieldFilter {
        FieldFilter {
            field: field.into(),
            condition,
        }
    }

    #[test]
    fn paths_reach_nested_fields_and_array_elements() {
        let meta = json!({"a": {"b": 3}, "tags": [{"n": "x"}, {"n": "y"}], "year": 2001});
        assert_eq!(resolve(&meta, "a.b"), vec![&json!(3)]);
        assert_eq!(resolve(&meta, "tags[].n").len(), 2);
        assert_eq!(resolve(&meta, "tags[1].n"), vec![&json!("y")]);
        assert!(resolve(&meta, "missing.x").is_empty());
    }

    #[test]
    fn conditions_combine_as_the_wit_says() {
        let meta =
            json!({"year": 2001, "lang": "en", "at": "2024-05-01T10:00:00+02:00", "gone": null});
        let after_2000 = field("year", Condition::GreaterThan(2000.0));
        let german = field("lang", Condition::EqualTo(json!("de")));
        assert!(SearchFilter::WithAll(vec![after_2000.clone()]).matches(Some(&meta)));
        assert!(
            !SearchFilter::WithAll(vec![after_2000.clone(), german.clone()]).matches(Some(&meta))
        );
        assert!(
            SearchFilter::WithOneOf(vec![after_2000.clone(), german.clone()]).matches(Some(&meta))
        );
        assert!(SearchFilter::Without(vec![german]).matches(Some(&meta)));
        assert!(!SearchFilter::Without(vec![after_2000]).matches(Some(&meta)));
        // In time, not as text: 10:00+02:00 is 08:00 UTC, before 08:30 UTC.
        let later = field("at", Condition::After("2024-05-01T08:30:00Z".into()));
        assert!(!SearchFilter::WithAll(vec![later]).matches(Some(&meta)));
        let earlier = field("at", Condition::After("2024-05-01T07:30:00Z".into()));
        assert!(SearchFilter::WithAll(vec![earlier]).matches(Some(&meta)));
        let null = |f: &str| SearchFilter::WithAll(vec![field(f, Condition::IsNull)]);
        assert!(null("gone").matches(Some(&meta)));
        assert!(null("absent").matches(Some(&meta)));
        assert!(!null("year").matches(Some(&meta)));
        assert!(null("year").matches(None));
    }
}
