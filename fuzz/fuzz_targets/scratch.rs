//! Where fuzz targets keep their device images: /dev/shm when there is one
//! (memory, so a flush costs nothing), else the temp dir. Included by path.

use std::path::PathBuf;

/// A file name for this process's image `tag` in the scratch directory.
pub fn image_path(tag: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("vsic-fuzz-{tag}-{}.img", std::process::id()))
}
