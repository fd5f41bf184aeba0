//! Every manifest that ships in the repository loads, validates against the
//! schema and runs on this platform: the LlamaChat module, the SDK's echo
//! example and the Python SDK test module.

use std::path::Path;

use modulesettings::{load_module_dir, Platform};

#[test]
fn the_repository_manifests_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let platform = Platform::current();
    for (dir, id, route) in [
        ("modules/llama_chat", "LlamaChat", "text/chat"),
        ("sdk/examples/echo", "Echo", "echo/echo"),
        ("tests/modules/python_demo", "PythonDemo", "demo/echo"),
    ] {
        let manifest =
            load_module_dir(&root.join(dir), &platform).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(manifest.id, id);
        assert!(
            manifest.settings.is_platform_supported(&platform),
            "{dir} does not run here"
        );
        assert!(
            manifest
                .settings
                .route_maps
                .iter()
                .any(|r| r.route == route),
            "{dir} lacks {route}"
        );
    }
}
