//! The command a module takes from its queue (docs/protocol.md §1.3):
//!
//! ```json
//! {"reqid":"<guid>","reqtype":"prompt",
//!  "payload":{"command":"prompt",
//!    "values":[{"key":"prompt","value":["Hi"]}],
//!    "files":[{"name":"image1","filename":"a.jpg","contentType":"image/jpeg","data":"<base64>"}],
//!    "urlSegments":[]}}
//! ```
//!
//! Writing follows CodeProject.AI Server 2.9 exactly; reading is lenient, so
//! that hand-written items work: missing or `null` parts read as empty, and a
//! value may be a lone string or `null` instead of an array of strings.

use serde::{Deserialize, Deserializer, Serialize};

/// The command CodeProject sends to stop a module; its payload names the
/// module in `moduleId`, and the module posts no reply.
pub const QUIT_COMMAND: &str = "quit";

/// One command on a module's queue: the body of a 200 answer to a poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueItem {
    /// The request id: a UUID v4 the server made. The reply is posted to
    /// `/v1/queue/{reqid}`, and a long process started by this command has it
    /// as its `commandId`. Empty when a hand-made item lacks it.
    #[serde(default, deserialize_with = "null_as_default")]
    pub reqid: String,
    /// The request type; the same as `payload.command`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub reqtype: String,
    /// What to do, with what.
    #[serde(default, deserialize_with = "null_as_default")]
    pub payload: Payload,
}

/// The command, its values and its files.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// The route map's `Command`, e.g. `prompt`, as the route map spells it.
    #[serde(default, deserialize_with = "null_as_default")]
    pub command: String,
    /// Named values, in the order the client sent them; one entry per name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub values: Vec<KeyValue>,
    /// Uploaded files, in the order the client sent them.
    #[serde(default, deserialize_with = "null_as_default")]
    pub files: Vec<FileValue>,
    /// The request path after the matched route, split on `/`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub url_segments: Vec<String>,
    /// Set on the `quit` command only: the module that is to stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
}

/// One named value; CodeProject sends every value as an array of strings,
/// and a repeated form field adds to the array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The name, as the client sent it (letter case kept).
    pub key: String,
    /// The values; read leniently from a lone string or `null`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub value: Vec<String>,
}

/// An uploaded file: the multipart field name, the client's file name and
/// type, and the bytes in base64 (standard alphabet, padded).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileValue {
    /// The form field, e.g. `image1`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// The file name the client gave (may be empty).
    #[serde(default, deserialize_with = "null_as_default")]
    pub filename: String,
    /// The MIME type the client gave (may be empty).
    #[serde(default, deserialize_with = "null_as_default")]
    pub content_type: String,
    /// The bytes, base64.
    #[serde(default, deserialize_with = "null_as_default")]
    pub data: String,
}

impl QueueItem {
    /// A command item: `reqtype` and `payload.command` are both `command`.
    pub fn new(reqid: String, command: &str, payload: Payload) -> QueueItem {
        QueueItem {
            reqid,
            reqtype: command.to_owned(),
            payload: Payload {
                command: command.to_owned(),
                ..payload
            },
        }
    }

    /// CodeProject's `quit` for `module_id`: the module id travels both as
    /// `payload.moduleId` and as the value `moduleId`, as CodeProject sends it.
    pub fn quit(reqid: String, module_id: &str) -> QueueItem {
        QueueItem::new(
            reqid,
            QUIT_COMMAND,
            Payload {
                values: vec![KeyValue {
                    key: "moduleId".into(),
                    value: vec![module_id.to_owned()],
                }],
                module_id: Some(module_id.to_owned()),
                ..Payload::default()
            },
        )
    }

    /// Bytes this item holds in its values and files: what a queue's byte
    /// bound counts (the JSON framing around them is left out).
    pub fn size(&self) -> usize {
        let values: usize = self
            .payload
            .values
            .iter()
            .map(|kv| kv.key.len() + kv.value.iter().map(String::len).sum::<usize>())
            .sum();
        let files: usize = self
            .payload
            .files
            .iter()
            .map(|f| f.name.len() + f.filename.len() + f.content_type.len() + f.data.len())
            .sum();
        values + files
    }
}

/// `null` reads as the type's default.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// An array of strings, a lone string, or `null`.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(String),
    }
    Ok(
        match Option::<OneOrMany>::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("a value must be an array of strings, a string or null")
        })? {
            Some(OneOrMany::Many(list)) => list,
            Some(OneOrMany::One(one)) => vec![one],
            None => Vec::new(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_codeproject_shape() {
        let item = QueueItem::new(
            "r1".into(),
            "prompt",
            Payload {
                values: vec![KeyValue {
                    key: "prompt".into(),
                    value: vec!["hi".into()],
                }],
                ..Payload::default()
            },
        );
        assert_eq!(
            serde_json::to_value(&item).unwrap(),
            json!({"reqid": "r1", "reqtype": "prompt", "payload": {"command": "prompt",
                "values": [{"key": "prompt", "value": ["hi"]}], "files": [], "urlSegments": []}})
        );
    }

    #[test]
    fn quit_names_the_module_twice_as_codeproject_does() {
        let quit = serde_json::to_value(QueueItem::quit("q".into(), "Echo")).unwrap();
        assert_eq!(quit["reqtype"], "quit");
        assert_eq!(quit["payload"]["moduleId"], "Echo");
        assert_eq!(
            quit["payload"]["values"],
            json!([{"key": "moduleId", "value": ["Echo"]}])
        );
    }

    #[test]
    fn reads_leniently() {
        let item: QueueItem = serde_json::from_value(json!({
            "reqid": "r", "payload": {"command": "x", "values": [
                {"key": "a", "value": "one"}, {"key": "b", "value": null}, {"key": "c"}],
                "files": null}
        }))
        .unwrap();
        assert_eq!(item.payload.values[0].value, ["one"]);
        assert!(item.payload.values[1].value.is_empty());
        assert!(item.payload.values[2].value.is_empty());
        assert!(item.payload.files.is_empty());
        let item: QueueItem = serde_json::from_value(json!({"payload": null})).unwrap();
        assert_eq!(item.reqid, "");
        assert!(serde_json::from_value::<QueueItem>(
            json!({"payload": {"values": [{"value": []}]}})
        )
        .is_err());
        assert!(serde_json::from_value::<QueueItem>(
            json!({"payload": {"values": [{"key": "a", "value": [1]}]}})
        )
        .is_err());
    }

    #[test]
    fn size_counts_values_and_files() {
        let item: QueueItem = serde_json::from_value(json!({
            "reqid": "r", "payload": {"command": "x", "values": [{"key": "ab", "value": ["cde", "f"]}],
            "files": [{"name": "i", "filename": "a", "contentType": "b", "data": "AAAA"}]}
        }))
        .unwrap();
        assert_eq!(item.size(), 2 + 4 + 1 + 1 + 1 + 4);
    }
}
