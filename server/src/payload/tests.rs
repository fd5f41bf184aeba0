use modhost_protocol::FileValue;

use super::*;

fn param(name: &str, ty: ParamType, min: Option<f64>, max: Option<f64>) -> RouteParam {
    let mut p: RouteParam =
        serde_json::from_value(serde_json::json!({"Name": name, "Type": "Text"})).unwrap();
    p.param_type = ty;
    p.min_value = min;
    p.max_value = max;
    p
}

fn values(pairs: &[(&str, &str)]) -> RequestValues {
    let mut v = RequestValues::default();
    for (k, val) in pairs {
        v.push(k, val.to_string()).unwrap();
    }
    v
}

#[test]
fn plain_json_objects_become_values() {
    let mut v = RequestValues::default();
    parse_json(
        br#"{"prompt":"hi","max_tokens":5,"stop":["a","b"],"x":null}"#,
        &mut v,
    )
    .unwrap();
    assert_eq!(v.get("prompt"), Some("hi"));
    assert_eq!(v.get("max_tokens"), Some("5"));
    assert_eq!(
        v.values.iter().find(|kv| kv.key == "stop").unwrap().value,
        vec!["a", "b"]
    );
    assert_eq!(v.get("x"), None);
}

#[test]
fn codeproject_payload_shape_is_understood() {
    let mut v = RequestValues::default();
    parse_json(br#"{"values":[{"key":"prompt","value":["hi"]}]}"#, &mut v).unwrap();
    assert_eq!(v.get("prompt"), Some("hi"));
}

#[test]
fn malformed_json_is_a_clear_400() {
    let mut v = RequestValues::default();
    let err = parse_json(br#"{"prompt": "#, &mut v)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("malformed JSON body"), "{err}");
    let err = parse_json(b"[1,2]", &mut v).unwrap_err().to_string();
    assert!(err.contains("must be an object"), "{err}");
    let err = parse_json(b"{\"a\":\"\xff\"}", &mut v)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not valid UTF-8"), "{err}");
}

#[test]
fn validation_names_the_input_and_the_expectation() {
    let inputs = [
        param("temperature", ParamType::Float, Some(0.0), Some(2.0)),
        param("max_tokens", ParamType::Integer, Some(0.0), None),
    ];
    let ok = values(&[("temperature", "0.5"), ("max_tokens", "10")]);
    validate("text/chat", &inputs, &ok).unwrap();
    let err = validate("text/chat", &inputs, &values(&[("temperature", "-1")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "input 'temperature' of route text/chat is '-1': expected at least 0"
    );
    let err = validate("text/chat", &inputs, &values(&[("max_tokens", "ten")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "input 'max_tokens' of route text/chat is 'ten': expected an integer"
    );
    validate("text/chat", &inputs, &values(&[])).unwrap();
}

#[test]
fn every_value_of_a_repeated_input_is_checked() {
    let inputs = [param("max_tokens", ParamType::Integer, Some(0.0), None)];
    let err = validate(
        "text/chat",
        &inputs,
        &values(&[("max_tokens", "5"), ("MAX_TOKENS", "-2")]),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "input 'max_tokens' of route text/chat is '-2': expected at least 0"
    );
}

/// Urlencoded `bytes` parsed into fresh values.
fn urlencoded(bytes: &[u8], what: &str) -> Result<RequestValues, ApiError> {
    let mut v = RequestValues::default();
    parse_urlencoded(bytes, what, &mut v).map(|()| v)
}

#[test]
fn urlencoded_decodes_plus_and_percent_escapes() {
    let v = urlencoded(b"prompt=a+b%21&x&empty=&n=%C3%A9&x=2", "form body").unwrap();
    let pairs: Vec<(&str, Vec<&str>)> = v
        .values
        .iter()
        .map(|kv| {
            (
                kv.key.as_str(),
                kv.value.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("prompt", vec!["a b!"]),
            ("x", vec!["", "2"]),
            ("empty", vec![""]),
            ("n", vec!["\u{e9}"]),
        ]
    );
}

#[test]
fn percent_escapes_that_are_not_utf8_are_refused_by_name() {
    let err = urlencoded(b"ok=1&n=%FF", "query string")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "the value of 'n' in the query string is not valid UTF-8 once percent-decoded (byte 0)"
    );
    let err = urlencoded(b"%C3=1", "form body").unwrap_err().to_string();
    assert!(
        err.starts_with("a name in the form body is not valid UTF-8"),
        "{err}"
    );
}

#[test]
fn multipart_uploads_become_base64_files_beside_the_fields() {
    let body = [
        &b"--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhi\r\n"[..],
        b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.bin\"\r\n",
        b"Content-Type: application/octet-stream\r\n\r\n",
        &[0x00, 0x01, 0x02, 0xff],
        b"\r\n--XyZ--\r\n",
    ]
    .concat();
    let mut v = RequestValues::default();
    parse_multipart(MULTIPART, Bytes::from(body), &mut v).unwrap();
    assert_eq!(v.get("prompt"), Some("hi"));
    assert_eq!(
        v.files,
        [FileValue {
            name: "image".into(),
            filename: "a.bin".into(),
            content_type: "application/octet-stream".into(),
            data: "AAEC/w==".into(),
        }]
    );
}

#[test]
fn urlencoded_rejects_invalid_utf8() {
    let err = urlencoded(b"a=\xff", "form body").unwrap_err().to_string();
    assert!(err.contains("not valid UTF-8"), "{err}");
}

const MULTIPART: &str = "multipart/form-data; boundary=XyZ";

#[test]
fn a_multipart_body_without_its_closing_boundary_is_refused_at_once() {
    let mut v = RequestValues::default();
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue";
    let err = parse_multipart(MULTIPART, Bytes::from(body), &mut v)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("closing boundary") || err.contains("multipart"),
        "{err}"
    );
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue\r\n--XyZ\r\n";
    assert!(parse_multipart(MULTIPART, Bytes::from(body), &mut v).is_err());
}

#[test]
fn an_empty_multipart_form_has_no_values() {
    for body in ["--XyZ--\r\n", "--XyZ--"] {
        let mut v = RequestValues::default();
        parse_multipart(MULTIPART, Bytes::from(body), &mut v).unwrap();
        assert_eq!(v, RequestValues::default(), "{body:?}");
    }
    let mut v = RequestValues::default();
    let err = parse_multipart("multipart/form-data", Bytes::from("--XyZ--"), &mut v)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no boundary"), "{err}");
}

#[test]
fn values_beyond_the_limit_are_refused_naming_it() {
    let mut v = RequestValues::with_limit(3);
    let err = parse_urlencoded(b"a=1&b=2&a=3&c=4", "form body", &mut v)
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than 3 values"), "{err}");
    let mut v = RequestValues::with_limit(2);
    assert!(parse_json(br#"{"a":[1,2,3]}"#, &mut v).is_err());
}

#[test]
fn repeated_and_distinct_names_are_grouped_through_the_index() {
    // 160,000 fields (what froze the server for minutes when each name
    // was looked up among the earlier ones), half of them repeats.
    let body: String = (0..160_000)
        .map(|i| format!("f{}=v{i}&", i % 80_000))
        .collect();
    let v = urlencoded(body.as_bytes(), "form body").unwrap();
    assert_eq!(v.values.len(), 80_000);
    assert_eq!(v.values[7].key, "f7");
    assert_eq!(v.values[7].value, ["v7", "v80007"]);
    assert_eq!(v.get("F79999"), Some("v79999"));
}
