//! `search`: one search through the host's `document-index` interface, then
//! the metadata and the contents of the best hit's document.
//!
//! Input:
//! ```json
//! {"namespace": str, "collection": str, "index": str = "bm25", "query": str,
//!  "max_results": int = 5, "min_score": float | null = null,
//!  "filters": [filter] = []}
//! ```
//! where a filter is `{"with_all" | "with_one_of" | "without": [condition]}`
//! and a condition is `{"field": str}` plus exactly one of
//! `"equal_to": str | int | bool`, `"greater_than": float`,
//! `"less_than": float`, `"is_null": true`.
//!
//! Output:
//! ```json
//! {"results": [{"namespace", "collection", "name", "content", "score",
//!               "start": {"item", "position"}, "end": {"item", "position"}}],
//!  "first_metadata": json | null,
//!  "first_document": {"contents": [str | null], "metadata": json | null} | null}
//! ```
//! Images in `contents` show as `null`.

wit_bindgen::generate!({
    path: "../../../../skillhost/wit",
    world: "pharia:skill/skill",
});

use exports::pharia::skill::skill_handler::{Error, Guest, SkillMetadata};
use pharia::skill::document_index::{
    self, DocumentPath, IndexPath, MetadataFieldValue, MetadataFilter, MetadataFilterCondition,
    Modality, SearchFilter, SearchRequest, SearchResult, TextCursor,
};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    namespace: String,
    collection: String,
    #[serde(default = "default_index")]
    index: String,
    query: String,
    #[serde(default = "default_max_results")]
    max_results: u32,
    #[serde(default)]
    min_score: Option<f64>,
    #[serde(default)]
    filters: Vec<FilterInput>,
}

fn default_index() -> String {
    "bm25".to_owned()
}

fn default_max_results() -> u32 {
    5
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum FilterInput {
    WithAll(Vec<ConditionInput>),
    WithOneOf(Vec<ConditionInput>),
    Without(Vec<ConditionInput>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionInput {
    field: String,
    #[serde(default)]
    equal_to: Option<FieldValue>,
    #[serde(default)]
    greater_than: Option<f64>,
    #[serde(default)]
    less_than: Option<f64>,
    #[serde(default)]
    is_null: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FieldValue {
    String(String),
    Integer(i64),
    Boolean(bool),
}

impl FilterInput {
    fn into_wit(self) -> Result<SearchFilter, String> {
        let convert = |conditions: Vec<ConditionInput>| {
            conditions
                .into_iter()
                .map(ConditionInput::into_wit)
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match self {
            FilterInput::WithAll(c) => SearchFilter::WithAll(convert(c)?),
            FilterInput::WithOneOf(c) => SearchFilter::WithOneOf(convert(c)?),
            FilterInput::Without(c) => SearchFilter::Without(convert(c)?),
        })
    }
}

impl ConditionInput {
    fn into_wit(self) -> Result<MetadataFilter, String> {
        let mut conditions = Vec::new();
        if let Some(value) = self.equal_to {
            conditions.push(MetadataFilterCondition::EqualTo(match value {
                FieldValue::String(s) => MetadataFieldValue::StringType(s),
                FieldValue::Integer(i) => MetadataFieldValue::IntegerType(i),
                FieldValue::Boolean(b) => MetadataFieldValue::BooleanType(b),
            }));
        }
        if let Some(bound) = self.greater_than {
            conditions.push(MetadataFilterCondition::GreaterThan(bound));
        }
        if let Some(bound) = self.less_than {
            conditions.push(MetadataFilterCondition::LessThan(bound));
        }
        match self.is_null {
            Some(true) => conditions.push(MetadataFilterCondition::IsNull),
            Some(false) => return Err(format!("field {:?}: is_null must be true", self.field)),
            None => {}
        }
        if conditions.len() != 1 {
            return Err(format!(
                "field {:?}: a condition needs exactly one of equal_to, greater_than, \
                 less_than, is_null; it has {}",
                self.field,
                conditions.len()
            ));
        }
        Ok(MetadataFilter {
            field: self.field,
            condition: conditions.remove(0),
        })
    }
}

struct Skill;

impl Guest for Skill {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let input: Input = serde_json::from_slice(&input)
            .map_err(|e| Error::InvalidInput(format!("bad search input: {e}")))?;
        let filters = input
            .filters
            .into_iter()
            .map(FilterInput::into_wit)
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::InvalidInput)?;
        let request = SearchRequest {
            index_path: IndexPath {
                namespace: input.namespace,
                collection: input.collection,
                index: input.index,
            },
            query: input.query,
            max_results: input.max_results,
            min_score: input.min_score,
            filters,
        };
        let results = document_index::search(&[request])
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("search returned no result list".to_owned()))?;

        let (first_metadata, first_document) = match results.first() {
            Some(first) => {
                let path = std::slice::from_ref(&first.document_path);
                let metadata = document_index::document_metadata(path)
                    .into_iter()
                    .next()
                    .flatten();
                let document = document_index::documents(path)
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Internal("documents returned nothing".to_owned()))?;
                let contents: Vec<Value> = document
                    .contents
                    .into_iter()
                    .map(|item| match item {
                        Modality::Text(text) => Value::String(text),
                        Modality::Image => Value::Null,
                    })
                    .collect();
                let document = json!({
                    "contents": contents,
                    "metadata": parse_metadata(document.metadata)?,
                });
                (parse_metadata(metadata)?, document)
            }
            None => (Value::Null, Value::Null),
        };
        let output = json!({
            "results": results.iter().map(result_json).collect::<Vec<_>>(),
            "first_metadata": first_metadata,
            "first_document": first_document,
        });
        Ok(output.to_string().into_bytes())
    }

    fn metadata() -> SkillMetadata {
        SkillMetadata {
            description: Some("Searches a document index".to_owned()),
            input_schema: INPUT_SCHEMA.as_bytes().to_vec(),
            output_schema: OUTPUT_SCHEMA.as_bytes().to_vec(),
        }
    }
}

/// Metadata bytes as JSON; `null` when absent.
fn parse_metadata(metadata: Option<Vec<u8>>) -> Result<Value, Error> {
    match metadata {
        None => Ok(Value::Null),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::Internal(format!("document metadata is not JSON: {e}"))),
    }
}

fn result_json(result: &SearchResult) -> Value {
    let cursor = |c: &TextCursor| json!({ "item": c.item, "position": c.position });
    let DocumentPath {
        namespace,
        collection,
        name,
    } = &result.document_path;
    json!({
        "namespace": namespace,
        "collection": collection,
        "name": name,
        "content": result.content,
        "score": result.score,
        "start": cursor(&result.start),
        "end": cursor(&result.end),
    })
}

const INPUT_SCHEMA: &str = r#"{"type":"object","properties":{
"namespace":{"type":"string"},"collection":{"type":"string"},
"index":{"type":"string","default":"bm25"},"query":{"type":"string"},
"max_results":{"type":"integer","minimum":0,"default":5},
"min_score":{"type":["number","null"]},
"filters":{"type":"array","items":{"type":"object"}}},
"required":["namespace","collection","query"]}"#;

const OUTPUT_SCHEMA: &str = r#"{"type":"object","properties":{
"results":{"type":"array","items":{"type":"object"}},
"first_metadata":{},
"first_document":{"type":["object","null"]}},
"required":["results","first_metadata","first_document"]}"#;

export!(Skill);
