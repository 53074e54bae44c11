//! Quoting words for a POSIX shell and for rsync's `-e` option.
//!
//! Every piece of shell text the tools build goes through [`quote`] as its last
//! step, so one function carries the whole burden of correctness.

/// Quotes `word` as exactly one POSIX shell word.
///
/// Words made only of characters that no shell treats specially are left as
/// they are (keeping `--dry-run` output readable); anything else is wrapped in
/// single quotes, each embedded `'` written as `'\''`.
pub fn quote(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(is_safe_byte) {
        return word.to_owned();
    }
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('\'');
    for c in word.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// Quotes every word and joins them with spaces: one shell command line.
pub fn quote_words<I, S>(words: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    words
        .into_iter()
        .map(|word| quote(word.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `script` (a shell script of the tools, as its `.sh` file holds it)
/// without its comment lines: it goes into command lines, which the log
/// and `--dry-run` show; the comments are for its readers here.
pub fn without_comments(script: &str) -> String {
    script
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Quotes words for rsync's `-e COMMAND`, which rsync splits itself.
///
/// rsync splits on spaces and honours single and double quotes, but not
/// backslashes; inside quotes a doubled quote character stands for itself.
/// So every word is single-quoted with `'` doubled. (krops quotes with
/// backslashes here, which breaks `extraOptions` containing spaces.)
pub fn rsync_quote_words<I, S>(words: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    words
        .into_iter()
        .map(|word| format!("'{}'", word.as_ref().replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_safe_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"%+,-./:=@_".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    /// What `/bin/sh` makes of `printf %s QUOTED`.
    fn sh_roundtrip(word: &str) -> String {
        let script = format!("printf %s {}", quote(word));
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("run /bin/sh");
        assert!(out.status.success(), "sh failed for {script:?}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8 from printf")
    }

    #[test]
    fn safe_words_stay_readable() {
        assert_eq!(quote("/var/src"), "/var/src");
        assert_eq!(quote("--link-dest=/var/src"), "--link-dest=/var/src");
        assert_eq!(quote("root@host:/p"), "root@host:/p");
    }

    #[test]
    fn empty_and_special_words_are_quoted() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("~"), "'~'");
        assert_eq!(quote("#x"), "'#x'");
    }

    #[test]
    fn nasty_words_survive_sh() {
        for word in [
            "",
            "'",
            "''",
            "\"",
            "$(touch /tmp/krops-pwned)",
            "`id`",
            "a\nb",
            "\\",
            "*",
            "-n",
            "ü ☃ \t",
            "$HOME ${x:-y} !! ;&|<>",
        ] {
            assert_eq!(sh_roundtrip(word), word);
        }
    }

    #[test]
    fn quote_words_gives_one_word_each() {
        let words = ["a b", "", "c'd", "$e"];
        let script = format!(
            "for w in {}; do printf '<%s>' \"$w\"; done",
            quote_words(words)
        );
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "<a b><><c'd><$e>");
    }

    #[test]
    fn rsync_quoting_doubles_single_quotes() {
        assert_eq!(
            rsync_quote_words(["ssh", "-o", "a'b c"]),
            "'ssh' '-o' 'a''b c'"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn any_string_roundtrips_through_sh(word in "[^\u{0}]*") {
            prop_assert_eq!(sh_roundtrip(&word), word);
        }

        #[test]
        fn shell_metacharacters_roundtrip(word in proptest::collection::vec(
            prop_oneof![
                Just("'".to_owned()), Just("\"".to_owned()), Just("$(".to_owned()),
                Just(")".to_owned()), Just("`".to_owned()), Just("\n".to_owned()),
                Just("\\".to_owned()), Just(" ".to_owned()), Just("é".to_owned()),
                "[a-z]{0,3}",
            ], 0..12).prop_map(|parts| parts.concat())) {
            prop_assert_eq!(sh_roundtrip(&word), word);
        }
    }
}
