//! The agent's images directory, the one place kernels, initrds and disk images come from:
//! [`ImagesDir::resolve`] turns a name the controller sent into a file inside it, or refuses.
//!
//! A name is relative to the directory: absolute paths, `..` components, empty names and NUL
//! bytes are refused; the name is then resolved with every symlink followed
//! (`canonicalize`) and must still lie inside the (canonical) images directory and be a
//! regular file, so a symlink inside that points out of it is refused too, while one that
//! stays inside is allowed (a directory of images may be a mount point). A missing file and
//! a refused name get the same answer ([`ConfinementError`], INVALID_ARGUMENT at the API),
//! which says nothing about what exists on the host outside the directory.
//!
//! The file is named by its canonical path from then on (the VMM opens that path), so a
//! symlink swapped inside the images directory after the check cannot redirect it; the
//! directory itself belongs to the host's administrator.

use std::path::{Component, Path, PathBuf};

/// A name refused as an image (missing, outside the images directory, or malformed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} '{name}' is not an image in the agent's images directory: give the name of a file there (relative, no '..', no links out of it)")]
pub struct ConfinementError {
    /// What the name was for: kernel, initrd, disk N image.
    pub what: String,
    /// The name as given (the caller's own input, echoed).
    pub name: String,
}

/// The images directory of an agent (`<data-dir>/images`).
#[derive(Debug, Clone)]
pub struct ImagesDir {
    root: PathBuf,
}

impl ImagesDir {
    /// The images directory at `root` (it need not exist yet: then nothing resolves).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImagesDir { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The canonical path of the image file `name` (for `what`, named in the error), or a
    /// refusal that does not tell whether anything exists at that name.
    pub fn resolve(&self, what: &str, name: &str) -> Result<PathBuf, ConfinementError> {
        let refuse = || ConfinementError {
            what: what.to_string(),
            name: name.escape_debug().to_string(),
        };
        if name.is_empty() || name.contains('\0') {
            return Err(refuse());
        }
        let rel = Path::new(name);
        if !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(refuse());
        }
        let root = std::fs::canonicalize(&self.root).map_err(|_| refuse())?;
        let file = std::fs::canonicalize(root.join(rel)).map_err(|_| refuse())?;
        if file == root || !file.starts_with(&root) {
            return Err(refuse());
        }
        match std::fs::metadata(&file) {
            Ok(m) if m.is_file() => Ok(file),
            _ => Err(refuse()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(tag: &str) -> (Tmp, ImagesDir) {
        let base = std::env::temp_dir().join(format!("nc-images-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let images = base.join("images");
        std::fs::create_dir_all(images.join("sub")).unwrap();
        std::fs::write(images.join("kernel.elf"), b"k").unwrap();
        std::fs::write(images.join("sub/disk.img"), b"d").unwrap();
        std::fs::write(base.join("secret"), b"s").unwrap();
        symlink(base.join("secret"), images.join("out")).unwrap();
        symlink("sub/disk.img", images.join("in")).unwrap();
        symlink("/etc", images.join("etc")).unwrap();
        (Tmp(base), ImagesDir::new(images))
    }

    #[test]
    fn names_inside_resolve() {
        let (_t, d) = setup("inside");
        let root = std::fs::canonicalize(d.root()).unwrap();
        assert_eq!(
            d.resolve("kernel", "kernel.elf").unwrap(),
            root.join("kernel.elf")
        );
        assert_eq!(
            d.resolve("disk", "./sub/disk.img").unwrap(),
            root.join("sub/disk.img")
        );
        // A symlink that stays inside is followed.
        assert_eq!(d.resolve("disk", "in").unwrap(), root.join("sub/disk.img"));
    }

    #[test]
    fn everything_else_is_refused_alike() {
        let (t, d) = setup("refused");
        let secret = t.0.join("secret");
        let refused = [
            secret.display().to_string(), // absolute, exists
            "/nonexistent/file".into(),   // absolute, missing
            "../secret".into(),           // .., exists
            "sub/../../secret".into(),
            "sub/../kernel.elf".into(), // .. even when it stays inside
            "out".into(),               // symlink out
            "etc/passwd".into(),        // through a symlinked directory out
            "missing.img".into(),       // missing inside
            "sub".into(),               // a directory
            "".into(),
            "a\0b".into(),
        ];
        for name in refused {
            let e = d.resolve("kernel", &name).unwrap_err();
            assert_eq!(e.what, "kernel");
            // What the answer says besides echoing the name.
            let msg = e.to_string().replace(&format!("'{}'", e.name), "'NAME'");
            assert!(
                msg.contains("is not an image in the agent's images directory"),
                "{msg}"
            );
            assert!(
                !msg.contains("not found") && !msg.contains("exist"),
                "the answer tells whether the path exists: {msg}"
            );
        }
        // A missing file and a refused one read the same but for the name.
        let a = d.resolve("kernel", "missing").unwrap_err().to_string();
        let b = d.resolve("kernel", "../secret").unwrap_err().to_string();
        assert_eq!(
            a.replace("'missing'", "'X'"),
            b.replace("'../secret'", "'X'")
        );
    }
}
