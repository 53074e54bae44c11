//! Helpers of this crate's unit tests.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Writes `text` to `path` as an executable script, through a child
/// process: a file this multi-threaded test process opened for writing can
/// be inherited, still open, by a child another test thread is starting,
/// and executing it then fails with "Text file busy" until that child has
/// exec'd. A file only a finished child ever opened has no such writer.
pub fn write_executable(path: &Path, text: &str) {
    let mut child = Command::new("/bin/sh")
        .args(["-c", "cat >\"$1\" && chmod 755 \"$1\"", "write"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "cannot write {}: {status}",
        path.display()
    );
}
