//! What the vsic-nfsd tests share: a file-backed device image, and the
//! seeded mutator of `apps/test-support`.
#![allow(dead_code)] // each test binary uses a part

#[path = "../../../test-support/mutate.rs"]
pub mod mutate;
#[path = "../../../../device-backend/tests/common/rng.rs"]
pub mod rng;

use std::path::PathBuf;

use vsic_fs::Fs;

/// A 16 MiB image file for the `file:` engine, removed on drop.
pub struct Image {
    path: PathBuf,
}

impl Image {
    pub fn new(tag: &str) -> Image {
        let path = std::env::temp_dir().join(format!("vsic-nfsd-{tag}-{}.img", std::process::id()));
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(16 << 20))
            .expect("image");
        Image { path }
    }

    /// The `--dev` argument for it.
    pub fn dev(&self) -> String {
        format!("file:{}", self.path.display())
    }

    pub fn open(&self) -> Box<dyn vsic_storage::BlockDevice> {
        vsic_storage::open(&self.dev(), &Default::default()).expect("open")
    }

    /// A fresh mount of what is on the device now.
    pub fn on_device(&self) -> Fs {
        Fs::mount(self.open()).expect("mount")
    }

    /// The superblock generation (it grows with each checkpoint).
    pub fn generation(&self) -> u64 {
        self.on_device().superblock().generation
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
