use serde_json::json;

use super::*;

fn path(name: &str) -> DocumentPath {
    DocumentPath {
        namespace: "docs".into(),
        collection: "animals".into(),
        name: name.into(),
    }
}

fn text(t: &str) -> Document {
    Document {
        contents: vec![Item::Text { text: t.into() }],
        metadata: None,
    }
}

fn search(query: &str) -> Search {
    Search {
        namespace: "docs".into(),
        collection: "animals".into(),
        index: BM25_INDEX.into(),
        query: query.into(),
        max_results: 5,
        min_score: None,
        filters: Vec::new(),
    }
}

fn filled() -> DocumentIndex {
    let index = DocumentIndex::in_memory();
    let mut cats = text("Cats purr and sleep most of the day. A cat chases mice.");
    cats.metadata = Some(json!({"year": 2020, "kind": "mammal"}));
    index.put(&path("cats"), cats).unwrap();
    let mut frogs = text("Frogs croak in ponds. The frog eats flies.");
    frogs.metadata = Some(json!({"year": 1999, "kind": "amphibian"}));
    index.put(&path("frogs"), frogs).unwrap();
    index
        .put(
            &path("mixed"),
            Document {
                contents: vec![
                    Item::Image,
                    Item::Text {
                        text: "Owls hunt mice at night.".into(),
                    },
                ],
                metadata: None,
            },
        )
        .unwrap();
    index
}

#[test]
fn the_best_section_comes_first_with_its_cursors() {
    let index = filled();
    let hits = index.search(&search("frog croaking")).unwrap();
    assert_eq!(hits[0].document, "frogs");
    assert!(hits[0].score > 0.0 && hits[0].score < 1.0, "{:?}", hits[0]);
    assert_eq!(hits[0].start, (0, 0));
    let len = "Frogs croak in ponds. The frog eats flies.".chars().count() as u32;
    assert_eq!(hits[0].end, (0, len - 1));
    // The second item of a document is item 1.
    let owls = index.search(&search("owls")).unwrap();
    assert_eq!((owls[0].document.as_str(), owls[0].start.0), ("mixed", 1));
    // Unrelated words find nothing.
    assert!(index.search(&search("submarine")).unwrap().is_empty());
}

#[test]
fn filters_min_score_and_max_results_narrow_the_hits() {
    let index = filled();
    let mut mice = search("mice");
    assert_eq!(index.search(&mice).unwrap().len(), 2);
    mice.max_results = 1;
    assert_eq!(index.search(&mice).unwrap().len(), 1);
    mice.max_results = 5;
    mice.filters = vec![SearchFilter::WithAll(vec![FieldFilter {
        field: "kind".into(),
        condition: Condition::EqualTo(json!("mammal")),
    }])];
    let hits = index.search(&mice).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].document, "cats");
    mice.filters.clear();
    mice.min_score = Some(0.999);
    assert!(index.search(&mice).unwrap().is_empty());
}

#[test]
fn changes_are_searched_and_saved() {
    let dir = tempfile::tempdir().unwrap();
    let index = DocumentIndex::open(dir.path()).unwrap();
    index.put(&path("a"), text("apples are red")).unwrap();
    assert_eq!(index.search(&search("apples")).unwrap().len(), 1);
    index.put(&path("a"), text("bananas are yellow")).unwrap();
    assert!(index.search(&search("apples")).unwrap().is_empty());
    index.put(&path("b"), text("cherries")).unwrap();
    assert!(index.delete(&path("b")).unwrap());
    assert!(!index.delete(&path("b")).unwrap());
    let reopened = DocumentIndex::open(dir.path()).unwrap();
    assert_eq!(reopened.names("docs", "animals").unwrap(), vec!["a"]);
    assert_eq!(reopened.get(&path("a")), Some(text("bananas are yellow")));
}

#[test]
fn unknown_collections_indexes_and_bad_names_are_named() {
    let index = filled();
    let mut s = search("x");
    s.index = "semantic".into();
    assert!(index
        .search(&s)
        .unwrap_err()
        .0
        .contains("no index 'semantic'"));
    s = search("x");
    s.collection = "plants".into();
    assert!(index
        .search(&s)
        .unwrap_err()
        .0
        .contains("no collection 'plants'"));
    let err = index.put(&path("a/b"), text("x")).unwrap_err();
    assert!(err.0.contains("document name 'a/b'"), "{err}");
}
