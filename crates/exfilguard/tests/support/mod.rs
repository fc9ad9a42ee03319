//! Shared by the integration tests.

use std::path::PathBuf;

/// The labelled data (`$EXFILGUARD_DATA`, else `../shared/data` next to the repository);
/// fails loudly when it is missing: the tests that read it cannot run without it.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("EXFILGUARD_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    assert!(
        dir.join("tunnel_queries_train.tsv").is_file(),
        "LABELLED DATA NOT FOUND at {} (set EXFILGUARD_DATA): these tests cannot run",
        dir.display()
    );
    dir
}
