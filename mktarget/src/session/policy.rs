//! Whether a session shares one connection, and which ssh options it adds:
//! the user's own sharing and options win over ours (README: Targets).

use super::SshConfig;
use crate::target::Target;

/// Whether a run may share one ssh connection per target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Multiplex {
    /// One master per remote target, unless the user has their own.
    Share,
    /// Every ssh connects on its own (`--no-multiplex`, `--dry-run`).
    Off,
}

impl Multiplex {
    /// `Off` when asked (`--no-multiplex`) or when `KROPS_NO_MULTIPLEX` is set
    /// to anything but empty or `0`.
    pub fn from_flag(no_multiplex: bool) -> Multiplex {
        let env_off = std::env::var("KROPS_NO_MULTIPLEX").is_ok_and(|v| !v.is_empty() && v != "0");
        if no_multiplex || env_off {
            Multiplex::Off
        } else {
            Multiplex::Share
        }
    }
}

/// The ssh options every remote session adds, after the user's, unless
/// the user's options or ssh config set them: give up on a host that does
/// not answer within 30 s (TCP connect and ssh handshake), and notice a
/// connection that stopped answering within a minute (4 unanswered
/// keepalives 15 s apart).
pub const DEFAULT_OPTIONS: [(&str, &str); 3] = [
    ("ConnectTimeout", "30"),
    ("ServerAliveInterval", "15"),
    ("ServerAliveCountMax", "4"),
];

/// Whether `keyword` appears in the target's extraOptions (a user who
/// names an option there decides it, even when ssh -G cannot tell their
/// value from the default).
fn names_option(target: &Target, keyword: &str) -> bool {
    target.extra_options.iter().any(|option| {
        option
            .to_ascii_lowercase()
            .contains(&keyword.to_ascii_lowercase())
    })
}

/// The [`DEFAULT_OPTIONS`] to add for `target`: those that neither its
/// extraOptions name nor its ssh config sets (`config`, from `ssh -G`,
/// shows an unset option with ssh's default: `none`, `0` (`300` with
/// BatchMode), `3`).
pub(super) fn default_options(target: &Target, config: &SshConfig) -> Vec<String> {
    let batch = config.get("batchmode") == Some("yes");
    let mut words = Vec::new();
    for (keyword, value) in DEFAULT_OPTIONS {
        let unset = match (keyword, config.get(keyword)) {
            (_, None) => true,
            ("ConnectTimeout", Some(v)) => v == "none",
            ("ServerAliveInterval", Some(v)) => v == "0" || (batch && v == "300"),
            ("ServerAliveCountMax", Some(v)) => v == "3",
            _ => false,
        };
        if unset && !names_option(target, keyword) {
            words.extend(["-o".to_owned(), format!("{keyword}={value}")]);
        }
    }
    words
}

/// Whether the user's options or ssh config for this target set up
/// connection sharing of their own (ControlMaster, ControlPath,
/// ControlPersist; `-M`, `-S`), which ours must not override or fight:
/// `None` when not, else whether their master persists in the background.
/// `config` is what `ssh -G` prints for the target.
pub(super) fn users_own_control(target: &Target, config: &SshConfig) -> Option<bool> {
    let master = config
        .get("controlmaster")
        .filter(|v| *v != "false" && *v != "no");
    let path = config.get("controlpath").filter(|v| *v != "none");
    let persist = config
        .get("controlpersist")
        .filter(|v| *v != "no" && *v != "false");
    // `-o ControlMaster=no` in extraOptions means "no sharing", though ssh
    // -G shows it as the default.
    let named = ["controlmaster", "controlpath", "controlpersist"]
        .iter()
        .any(|name| names_option(target, name))
        || target
            .extra_options
            .iter()
            .any(|option| option == "-M" || option.starts_with("-S"));
    if !named && master.is_none() && path.is_none() && persist.is_none() {
        return None;
    }
    Some(master.is_some() && persist.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixtures::*;

    #[test]
    fn default_options_come_after_the_users_and_only_when_unset() {
        let mut t = parse("root@h");
        let defaults = [
            "-o",
            "ConnectTimeout=30",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
        ];
        let nothing_set =
            SshConfig::parse("connecttimeout none\nserveraliveinterval 0\nserveralivecountmax 3\n");
        let open = |t: &Target, config: &SshConfig| {
            Session::open_with(t, &origin(), Multiplex::Off, config).unwrap()
        };
        assert_eq!(
            open(&t, &nothing_set).ssh_argv(false),
            [words(&["ssh", "-l", "root", "-T"]), words(&defaults)].concat()
        );
        // ssh -G could not tell: all of them.
        assert_eq!(
            open(&t, &SshConfig::default()).ssh_argv(false)[4..],
            defaults
        );
        // Named in extraOptions (even as ssh's default value): the user's.
        t.extra_options = words(&["-o", "ServerAliveInterval=0", "-v"]);
        assert_eq!(
            open(&t, &nothing_set).ssh_argv(false),
            words(&[
                "ssh",
                "-l",
                "root",
                "-T",
                "-o",
                "ServerAliveInterval=0",
                "-v",
                "-o",
                "ConnectTimeout=30",
                "-o",
                "ServerAliveCountMax=4",
            ])
        );
        // Set by the user's ssh config: theirs.
        t.extra_options.clear();
        let config =
            SshConfig::parse("connecttimeout 45\nserveraliveinterval 0\nserveralivecountmax 3\n");
        assert_eq!(open(&t, &config).ssh_argv(false)[4..], defaults[2..]);
        // BatchMode makes ssh's own default 300 s: still ours.
        let batch = SshConfig::parse(
            "batchmode yes\nconnecttimeout none\nserveraliveinterval 300\nserveralivecountmax 3\n",
        );
        assert_eq!(open(&t, &batch).ssh_argv(false)[4..], defaults);
        // A local target has no ssh.
        let local = open(&parse("/srv"), &nothing_set);
        assert_eq!(local.shell("true").argv(), ["/bin/sh", "-c", "true"]);
    }

    #[test]
    fn the_users_connect_timeout_wins_in_real_ssh() {
        let dir = tempfile::tempdir().unwrap();
        // In extraOptions, whatever ssh -G said of the config.
        let mut t = parse("root@h");
        t.extra_options = words(&["-oConnectTimeout=3"]);
        let session =
            Session::open_with(&t, &origin(), Multiplex::Off, &SshConfig::default()).unwrap();
        let config = effective(&session);
        assert_eq!(config.get("connecttimeout"), Some("3"));
        assert_eq!(config.get("serveraliveinterval"), Some("15"));
        assert_eq!(config.get("serveralivecountmax"), Some("4"));
        // In an ssh config file: ssh -G tells, and no default is added.
        let file = dir.path().join("config");
        std::fs::write(
            &file,
            "Host h\n  ConnectTimeout 7\n  ServerAliveInterval 60\n",
        )
        .unwrap();
        t.extra_options = words(&["-F", file.to_str().unwrap()]);
        let session = Session::open(&t, &origin(), Multiplex::Off).unwrap();
        let argv = session.ssh_argv(false);
        assert!(
            !argv
                .iter()
                .any(|w| w.starts_with("ConnectTimeout") || w.starts_with("ServerAliveInterval")),
            "{argv:?}"
        );
        let config = effective(&session);
        assert_eq!(config.get("connecttimeout"), Some("7"));
        assert_eq!(config.get("serveraliveinterval"), Some("60"));
        assert_eq!(config.get("serveralivecountmax"), Some("4"));
    }

    #[test]
    fn the_users_own_sharing_is_left_alone() {
        let mut target = Target::from_arg("root@server/srv", &origin()).unwrap();
        for (options, persists) in [
            (vec!["-o", "ControlMaster=no"], Some(false)),
            (vec!["-v"], None),
            (vec!["-oControlPath=/run/user/ssh-%C"], Some(false)),
            (vec!["-S", "/tmp/mine"], Some(false)),
            (
                vec!["-o", "ControlMaster=auto", "-o", "ControlPersist=10m"],
                Some(true),
            ),
        ] {
            target.extra_options = options.iter().map(|s| s.to_string()).collect();
            let config = SshConfig::of(&target);
            assert_eq!(users_own_control(&target, &config), persists, "{options:?}");
        }
    }
}
