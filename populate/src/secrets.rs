//! Decrypted secrets (pass, passage) live only in a private temp dir that is
//! removed on success, on failure and on interrupt.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use anyhow::{Context, Result};
use tempfile::TempDir;

/// The secret dirs that exist right now, for the interrupt handler. Every
/// change to the tree of a secret dir happens while holding this lock, and
/// the handler exits still holding it, so nothing can re-create a dir or a
/// file after the handler removed it.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();

/// A 0700 temp dir (in `$TMPDIR`) for decrypted secrets.
#[derive(Debug)]
pub struct SecretDir {
    dir: TempDir,
}

impl SecretDir {
    pub fn new(prefix: &str) -> Result<SecretDir> {
        install_interrupt_handler();
        let mut live = lock_live();
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .context("cannot create a private temp dir for secrets")?;
        live.push(dir.path().to_owned());
        Ok(SecretDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Creates `REL` below the dir as an empty 0600 file, with 0700 parents.
    pub fn create_file(&self, rel: &Path) -> Result<File> {
        let _live = lock_live();
        let path = self.dir.path().join(rel);
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
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        lock_live().retain(|path| path != self.dir.path());
        // TempDir's own drop removes the tree.
    }
}

fn lock_live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// On SIGINT, SIGTERM or SIGHUP: remove every live secret dir, then exit 130.
fn install_interrupt_handler() {
    HANDLER.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            let live = lock_live();
            for path in live.iter() {
                let _ = std::fs::remove_dir_all(path);
            }
            eprintln!("populate: interrupted; decrypted secrets removed");
            // Exits holding the lock: see LIVE.
            std::process::exit(130);
        });
        if let Err(err) = installed {
            eprintln!("populate: warning: cannot clean up secrets on interrupt: {err}");
        }
    });
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
        assert!(lock_live().contains(&path));
        drop(secrets);
        assert!(!path.exists());
        assert!(!lock_live().contains(&path));
    }
}
