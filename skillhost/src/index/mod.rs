//! The document index behind CSI `document-index`: documents in
//! collections within namespaces, searched by BM25.
//!
//! A document is a list of items (text, or an image placeholder) and
//! optional JSON metadata. Each text item is cut into sections of about
//! [`SECTION_CHARS`] characters; a search scores sections, not whole
//! documents, and returns each with its cursors (item index and character
//! position, both inclusive). Scores are BM25 (`bm25` crate, with stemming
//! and stop words of the collection's language, which `whatlang` detects
//! from its text; English when it is not one `bm25` stems) mapped into
//! (0, 1) by `s / (s + 1)`, so that the WIT's `min-score` has a fixed
//! scale; the order is BM25's.
//!
//! Collections are kept in memory and, when the index has a folder, saved
//! as one JSON file each (`{folder}/{namespace}/{collection}.json`) on every
//! change, and loaded at start.

mod filter;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bm25::{Embedder, EmbedderBuilder, Language, Scorer};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use text_splitter::TextSplitter;

pub use filter::{Condition, FieldFilter, SearchFilter};

/// The one index every collection has.
pub const BM25_INDEX: &str = "bm25";

/// A text item is cut into sections of at most this many characters.
pub const SECTION_CHARS: usize = 1000;

/// One item of a document (the WIT's `modality`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "modality", rename_all = "lowercase")]
pub enum Item {
    Text {
        text: String,
    },
    /// An image; its contents are not kept (no model here reads images).
    Image,
}

/// A stored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub contents: Vec<Item>,
    /// Any JSON; filters read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// Where a document lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentPath {
    pub namespace: String,
    pub collection: String,
    pub name: String,
}

/// A search (the WIT's `search-request`).
#[derive(Debug, Clone)]
pub struct Search {
    pub namespace: String,
    pub collection: String,
    /// The index to search: [`BM25_INDEX`].
    pub index: String,
    pub query: String,
    pub max_results: u32,
    /// Sections scoring below this (0–1) are left out.
    pub min_score: Option<f64>,
    /// AND-combined.
    pub filters: Vec<SearchFilter>,
}

/// A found section (the WIT's `search-result`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub document: String,
    pub content: String,
    /// In (0, 1); higher is closer.
    pub score: f64,
    /// `(item, character position)` of the first character.
    pub start: (u32, u32),
    /// `(item, character position)` of the last character (inclusive).
    pub end: (u32, u32),
}

/// A bad name, or a collection or index that does not exist.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct IndexError(pub String);

#[derive(Default, Serialize, Deserialize)]
struct Collection {
    documents: BTreeMap<String, Document>,
    #[serde(skip)]
    search: Option<Prepared>,
}

/// A collection's sections with their BM25 embeddings; rebuilt on the
/// first search after a change.
struct Prepared {
    sections: Vec<Section>,
    embedder: Embedder,
    scorer: Scorer<usize>,
}

struct Section {
    document: String,
    item: u32,
    /// Character positions in the item, inclusive.
    first: u32,
    last: u32,
    text: String,
}

/// Every collection of every namespace.
pub struct DocumentIndex {
    // parking_lot: held for map work only, never across an .await.
    collections: RwLock<HashMap<(String, String), Collection>>,
    folder: Option<PathBuf>,
}

impl DocumentIndex {
    /// An index kept only in memory.
    pub fn in_memory() -> DocumentIndex {
        DocumentIndex {
            collections: RwLock::default(),
            folder: None,
        }
    }

    /// An index saved in `folder`, with the collections found there.
    ///
    /// # Errors
    /// Naming the file that cannot be read or parsed.
    pub fn open(folder: &Path) -> Result<DocumentIndex, IndexError> {
        let mut collections = HashMap::new();
        let namespaces = match std::fs::read_dir(folder) {
            Ok(entries) => entries.flatten().collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(IndexError(format!("reading {}: {e}", folder.display()))),
        };
        for namespace in namespaces.iter().filter(|e| e.path().is_dir()) {
            let ns = namespace.file_name().to_string_lossy().into_owned();
            for file in std::fs::read_dir(namespace.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = file.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| IndexError(format!("reading {}: {e}", path.display())))?;
                let collection: Collection = serde_json::from_str(&text)
                    .map_err(|e| IndexError(format!("parsing {}: {e}", path.display())))?;
                collections.insert((ns.clone(), name.to_owned()), collection);
            }
        }
        Ok(DocumentIndex {
            collections: RwLock::new(collections),
            folder: Some(folder.to_owned()),
        })
    }

    /// Adds or replaces a document.
    ///
    /// # Errors
    /// A bad name, or the collection cannot be saved.
    pub fn put(&self, path: &DocumentPath, document: Document) -> Result<(), IndexError> {
        check_names(path)?;
        let key = (path.namespace.clone(), path.collection.clone());
        let mut all = self.collections.write();
        let collection = all.entry(key).or_default();
        collection.documents.insert(path.name.clone(), document);
        collection.search = None;
        self.save(&path.namespace, &path.collection, collection)
    }

    /// Removes a document; whether it was there.
    ///
    /// # Errors
    /// The collection cannot be saved.
    pub fn delete(&self, path: &DocumentPath) -> Result<bool, IndexError> {
        let key = (path.namespace.clone(), path.collection.clone());
        let mut all = self.collections.write();
        let Some(collection) = all.get_mut(&key) else {
            return Ok(false);
        };
        let removed = collection.documents.remove(&path.name).is_some();
        if removed {
            collection.search = None;
            self.save(&path.namespace, &path.collection, collection)?;
        }
        Ok(removed)
    }

    /// A document, if stored.
    pub fn get(&self, path: &DocumentPath) -> Option<Document> {
        let key = (path.namespace.clone(), path.collection.clone());
        self.collections
            .read()
            .get(&key)
            .and_then(|c| c.documents.get(&path.name).cloned())
    }

    /// The names of a collection's documents, sorted; `None` for a
    /// collection that has none and never had.
    pub fn names(&self, namespace: &str, collection: &str) -> Option<Vec<String>> {
        let key = (namespace.to_owned(), collection.to_owned());
        self.collections
            .read()
            .get(&key)
            .map(|c| c.documents.keys().cloned().collect())
    }

    /// Every `(namespace, collection)`, sorted.
    pub fn collections(&self) -> Vec<(String, String)> {
        let mut all: Vec<_> = self.collections.read().keys().cloned().collect();
        all.sort();
        all
    }

    /// The best sections for `search`, best first.
    ///
    /// # Errors
    /// An unknown collection or index.
    pub fn search(&self, search: &Search) -> Result<Vec<Hit>, IndexError> {
        if search.index != BM25_INDEX {
            return Err(IndexError(format!(
                "document-index: there is no index '{}'; every collection has the index '{BM25_INDEX}'",
                search.index
            )));
        }
        let key = (search.namespace.clone(), search.collection.clone());
        let mut all = self.collections.write();
        let collection = all.get_mut(&key).ok_or_else(|| {
            IndexError(format!(
                "document-index: there is no collection '{}' in namespace '{}'",
                search.collection, search.namespace
            ))
        })?;
        let documents = &collection.documents;
        let prepared = collection.search.get_or_insert_with(|| prepare(documents));
        let query = prepared.embedder.embed(&search.query);
        let mut hits = Vec::new();
        for scored in prepared.scorer.matches(&query) {
            if hits.len() >= search.max_results as usize {
                break;
            }
            let section = &prepared.sections[scored.id];
            let score = f64::from(scored.score) / (f64::from(scored.score) + 1.0);
            if search.min_score.is_some_and(|min| score < min) {
                continue;
            }
            let metadata = documents
                .get(&section.document)
                .and_then(|d| d.metadata.as_ref());
            if !search.filters.iter().all(|f| f.matches(metadata)) {
                continue;
            }
            hits.push(Hit {
                document: section.document.clone(),
                content: section.text.clone(),
                score,
                start: (section.item, section.first),
                end: (section.item, section.last),
            });
        }
        Ok(hits)
    }

    fn save(&self, namespace: &str, name: &str, collection: &Collection) -> Result<(), IndexError> {
        let Some(folder) = &self.folder else {
            return Ok(());
        };
        let dir = folder.join(namespace);
        let path = dir.join(format!("{name}.json"));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let temp = dir.join(format!(".{name}.json.tmp"));
            std::fs::write(&temp, serde_json::to_vec(collection)?)?;
            std::fs::rename(&temp, &path)
        };
        write().map_err(|e| IndexError(format!("saving {}: {e}", path.display())))
    }
}

/// Namespaces, collections and document names: 1–128 characters, none of
/// them `/`, `\` or a control character, and not `.` or `..` (they become
/// file and URL path segments).
fn check_names(path: &DocumentPath) -> Result<(), IndexError> {
    for (what, name) in [
        ("namespace", &path.namespace),
        ("collection", &path.collection),
        ("document name", &path.name),
    ] {
        let bad = name.is_empty()
            || name.chars().count() > 128
            || name == "."
            || name == ".."
            || name
                .chars()
                .any(|c| c == '/' || c == '\\' || c.is_control());
        if bad {
            return Err(IndexError(format!(
                "the {what} '{name}' is not valid: 1–128 characters, without '/', '\\' or control characters"
            )));
        }
    }
    Ok(())
}

/// Cuts the documents' text items into sections and embeds them.
fn prepare(documents: &BTreeMap<String, Document>) -> Prepared {
    let splitter = TextSplitter::new(SECTION_CHARS);
    let mut sections = Vec::new();
    for (name, document) in documents {
        for (item, content) in document.contents.iter().enumerate() {
            let Item::Text { text } = content else {
                continue;
            };
            for (first, chunk) in splitter
                .chunk_char_indices(text)
                .map(|c| (c.char_offset, c.chunk))
            {
                let count = chunk.chars().count();
                sections.push(Section {
                    document: name.clone(),
                    item: item as u32,
                    first: first as u32,
                    last: (first + count.max(1) - 1) as u32,
                    text: chunk.to_owned(),
                });
            }
        }
    }
    let corpus: Vec<&str> = sections.iter().map(|s| s.text.as_str()).collect();
    let language = stemming_language(&corpus);
    let embedder: Embedder = EmbedderBuilder::with_fit_to_corpus(language, &corpus).build();
    let mut scorer = Scorer::new();
    for (i, section) in sections.iter().enumerate() {
        scorer.upsert(&i, embedder.embed(&section.text));
    }
    Prepared {
        sections,
        embedder,
        scorer,
    }
}

/// The language `bm25` stems and filters a collection's text for: the one
/// `whatlang` finds in (the start of) its text, English when that is not
/// one of `bm25`'s.
fn stemming_language(corpus: &[&str]) -> Language {
    use whatlang::Lang;
    let mut sample = String::new();
    for text in corpus {
        if sample.len() > 4000 {
            break;
        }
        sample.push_str(text);
        sample.push('\n');
    }
    match whatlang::detect_lang(&sample) {
        Some(Lang::Ara) => Language::Arabic,
        Some(Lang::Dan) => Language::Danish,
        Some(Lang::Nld) => Language::Dutch,
        Some(Lang::Fra) => Language::French,
        Some(Lang::Deu) => Language::German,
        Some(Lang::Ell) => Language::Greek,
        Some(Lang::Hun) => Language::Hungarian,
        Some(Lang::Ita) => Language::Italian,
        Some(Lang::Nob) => Language::Norwegian,
        Some(Lang::Por) => Language::Portuguese,
        Some(Lang::Ron) => Language::Romanian,
        Some(Lang::Rus) => Language::Russian,
        Some(Lang::Spa) => Language::Spanish,
        Some(Lang::Swe) => Language::Swedish,
        Some(Lang::Tam) => Language::Tamil,
        Some(Lang::Tur) => Language::Turkish,
        _ => Language::English,
    }
}

#[cfg(test)]
mod tests;
