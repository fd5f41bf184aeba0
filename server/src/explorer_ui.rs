//! Cuts a module's explorer UI out of its `explore.html`.
//!
//! Between `<!-- START EXPLORER MARKUP -->` / `<!-- END EXPLORER MARKUP -->`,
//! `// START EXPLORER SCRIPT` / `// END EXPLORER SCRIPT` and
//! `/* START EXPLORER STYLE */` / `/* END EXPLORER STYLE */`, as CodeProject.AI
//! Server 2.9 does (docs/protocol.md §3.3, `UIElements`). The result
//! is `{"html","script","css"}` with each part empty when its markers are missing.

use std::path::Path;

use serde_json::json;

/// Reads `dir/explore.html` and cuts its parts; None when there is no file.
pub fn load(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("explore.html")).ok()?;
    Some(cut(&text))
}

/// The `{"html","script","css"}` parts of an explore.html text.
pub fn cut(text: &str) -> serde_json::Value {
    json!({
        "html": between(text, "<!-- START EXPLORER MARKUP -->", "<!-- END EXPLORER MARKUP -->"),
        "script": between(text, "// START EXPLORER SCRIPT", "// END EXPLORER SCRIPT"),
        "css": between(text, "/* START EXPLORER STYLE */", "/* END EXPLORER STYLE */"),
    })
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let Some(from) = text.find(start).map(|i| i + start.len()) else {
        return "";
    };
    match text[from..].find(end) {
        Some(len) => text[from..from + len].trim(),
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_markup_script_and_style_between_markers() {
        let page = "<html><style>/* START EXPLORER STYLE */ .a{} /* END EXPLORER STYLE */</style>\
            <body>junk<!-- START EXPLORER MARKUP --><div id='_MID_x'></div><!-- END EXPLORER MARKUP -->\
            <script>// START EXPLORER SCRIPT\nlet a = 1;\n// END EXPLORER SCRIPT\n</script></body></html>";
        let ui = cut(page);
        assert_eq!(ui["html"], "<div id='_MID_x'></div>");
        assert_eq!(ui["script"], "let a = 1;");
        assert_eq!(ui["css"], ".a{}");
    }

    #[test]
    fn missing_markers_give_empty_parts() {
        let ui = cut("<html>no markers <!-- START EXPLORER MARKUP --> unterminated");
        assert_eq!(ui["html"], "");
        assert_eq!(ui["script"], "");
    }
}
