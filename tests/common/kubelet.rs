//! How files reach a pod, done here step by step: the kubelet's AtomicWriter (ConfigMap and
//! Secret volumes) and a git-sync style worktree swap.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// A ConfigMap or Secret volume as the kubelet writes it: each file `name` is a symlink to
/// `..data/name`, `..data` a symlink to a timestamped directory holding this version's files.
pub struct Volume {
    pub dir: PathBuf,
    version: u32,
}

impl Volume {
    /// A volume at `dir` (created) holding `files`.
    pub fn create(dir: &Path, files: &[(&str, &[u8])]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut volume = Self { dir: dir.to_path_buf(), version: 0 };
        volume.update(files);
        volume
    }

    /// The kubelet's update, in its order: the new version's files in a new timestamped
    /// directory, a `..data_tmp` symlink to it renamed over `..data`, a symlink for each new
    /// file, the symlinks of files no longer present removed, and the old directory removed.
    /// A file never changes at its own path: only `..data` does.
    pub fn update(&mut self, files: &[(&str, &[u8])]) {
        self.version += 1;
        let timestamped = format!("..2026_12_06_04_00_00.{:09}", self.version);
        let new_dir = self.dir.join(&timestamped);
        std::fs::create_dir(&new_dir).unwrap();
        for (name, content) in files {
            std::fs::write(new_dir.join(name), content).unwrap();
        }
        let data = self.dir.join("..data");
        let old_dir = std::fs::read_link(&data).ok().map(|target| self.dir.join(target));
        let tmp = self.dir.join("..data_tmp");
        symlink(&timestamped, &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        for (name, _) in files {
            let visible = self.dir.join(name);
            if visible.symlink_metadata().is_err() {
                symlink(format!("..data/{name}"), &visible).unwrap();
            }
        }
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if !name.starts_with("..") && !files.iter().any(|(f, _)| *f == name) {
                std::fs::remove_file(self.dir.join(&name)).unwrap();
            }
        }
        if let Some(old) = old_dir {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

/// A git-sync checkout: `root/current` is a symlink to a worktree, replaced by a new worktree
/// (symlink renamed over it) at each sync, the old worktree then removed.
pub struct Checkout {
    pub root: PathBuf,
    version: u32,
}

impl Checkout {
    /// A checkout at `root` whose worktree holds `files` (paths relative to the worktree).
    pub fn create(root: &Path, files: &[(&str, &[u8])]) -> Self {
        std::fs::create_dir_all(root.join(".worktrees")).unwrap();
        let mut checkout = Self { root: root.to_path_buf(), version: 0 };
        checkout.sync(files);
        checkout
    }

    /// Where the files are, through the link: `root/current`.
    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    pub fn sync(&mut self, files: &[(&str, &[u8])]) {
        self.version += 1;
        let worktree = format!(".worktrees/v{}", self.version);
        for (path, content) in files {
            let file = self.root.join(&worktree).join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        let current = self.current();
        let old = std::fs::read_link(&current).ok().map(|target| self.root.join(target));
        let tmp = self.root.join("current.tmp");
        symlink(&worktree, &tmp).unwrap();
        std::fs::rename(&tmp, &current).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}
