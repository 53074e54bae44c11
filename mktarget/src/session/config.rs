//! What ssh's own configuration says of a target, as `ssh -G` prints it.

use crate::command::{Cmd, Stdio};
use crate::target::Target;

/// What ssh's configuration for a target is, as `ssh -G` prints it
/// (keywords in lower case); empty when it could not tell.
#[derive(Clone, Debug, Default)]
pub struct SshConfig {
    settings: Vec<(String, String)>,
}

impl SshConfig {
    /// Runs `ssh -G` with the target's user, port and extraOptions; it
    /// connects to nothing.
    pub fn of(target: &Target) -> SshConfig {
        let mut argv = target.ssh_argv_before_options(false);
        argv.push("-G".to_owned());
        argv.extend(target.extra_options.iter().cloned());
        argv.push(target.ssh_host().to_owned());
        match Cmd::from_argv(argv).run(Stdio::capture()) {
            Ok(out) if out.status.success() => {
                SshConfig::parse(&String::from_utf8_lossy(&out.stdout))
            }
            // ssh will say what is wrong when the run connects.
            _ => SshConfig::default(),
        }
    }

    /// Reads `ssh -G`'s output: one `keyword value` a line.
    pub fn parse(text: &str) -> SshConfig {
        let settings = text
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(' ')?;
                Some((key.to_ascii_lowercase(), value.to_owned()))
            })
            .collect();
        SshConfig { settings }
    }

    /// The value of `keyword` (any case), if ssh printed one.
    pub fn get(&self, keyword: &str) -> Option<&str> {
        let keyword = keyword.to_ascii_lowercase();
        self.settings
            .iter()
            .find(|(key, _)| *key == keyword)
            .map(|(_, value)| value.as_str())
    }
}
