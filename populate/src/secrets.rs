//! Decrypted secrets (pass, passage) live only in a private temp dir that is
//! removed on success, on failure and on interrupt (the dir is registered
//! with [`mktarget::interrupt`], whose handler removes it).

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use mktarget::interrupt::{self, PrivateDir};

/// A 0700 temp dir (in `$TMPDIR`) for decrypted secrets, or for other
/// output that must not outlive the run (a pipe's).
#[derive(Debug)]
pub struct SecretDir {
    /// Removes the tree when dropped (not `TempDir`: see [`PrivateDir`]).
    registered: PrivateDir,
    path: std::path::PathBuf,
}

impl SecretDir {
    /// A dir for decrypted secrets.
    pub fn new(prefix: &str) -> Result<SecretDir> {
        SecretDir::holding(prefix, "decrypted secrets")
    }

    /// A dir for what `holds` says (for the interrupt message).
    pub fn holding(prefix: &str, holds: &'static str) -> Result<SecretDir> {
        let (registered, path) = interrupt::private_dir(holds, || {
            let path = tempfile::Builder::new()
                .prefix(prefix)
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .tempdir()?
                .keep();
            Ok((path.clone(), path))
        })
        .with_context(|| format!("cannot create a private temp dir for {holds}"))?;
        Ok(SecretDir { registered, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `REL` below the dir as an empty 0600 file, with 0700 parents.
    pub fn create_file(&self, rel: &Path) -> Result<File> {
        self.registered.change(|root| {
            let path = root.join(rel);
            if let Some(parent) = path.parent() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_dir_is_private_and_removed_on_drop() {
        let secrets = SecretDir::new("populate-test.").unwrap();
        let path = secrets.path().to_owned();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let file = secrets.create_file(Path::new("a/b")).unwrap();
        drop(file);
        let meta = std::fs::metadata(path.join("a/b")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(path.join("a"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        drop(secrets);
        assert!(!path.exists());
    }
}
