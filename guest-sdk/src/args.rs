//! The `--arg key=value` pairs of an invocation.

use std::fmt::Display;
use std::str::FromStr;

use crate::ToolError;

/// The `--arg key=value` pairs of one invocation, in the order given.
///
/// A key given several times keeps every value ([`Args::get_all`]);
/// [`Args::get`] returns the last one, so a later `--arg` overrides an
/// earlier one, as on most command lines.
///
/// ```
/// use voidbox_guest::Args;
///
/// let args = Args::new(vec![("n".into(), "3".into()), ("json".into(), "".into())]);
/// assert_eq!(args.parse_or("n", 1).unwrap(), 3);
/// assert!(args.flag("json").unwrap());
/// assert!(args.require("pattern").is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    pairs: Vec<(String, String)>,
}

impl Args {
    /// Wraps the pairs as the host passes them. Public so tools can build
    /// arguments in their unit tests.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// The last value given for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value given for `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or the tool error `missing-arg` naming it.
    pub fn require(&self, key: &str) -> Result<&str, ToolError> {
        self.get(key).ok_or_else(|| {
            ToolError::new(
                "missing-arg",
                format!("this tool needs `--arg {key}=...`; add it to the invocation"),
            )
        })
    }

    /// The value of `key` parsed as `T`, `None` when absent, or the tool
    /// error `bad-arg` when it does not parse.
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>, ToolError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|err| ToolError::bad_arg(key, format!("cannot parse `{text}`: {err}"))),
        }
    }

    /// Like [`Args::parse`], with a default for an absent key.
    pub fn parse_or<T>(&self, key: &str, default: T) -> Result<T, ToolError>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.parse(key)?.unwrap_or(default))
    }

    /// A boolean switch: absent is `false`; an empty value, `true`, `yes`,
    /// `on` or `1` is `true`; `false`, `no`, `off` or `0` is `false`;
    /// anything else is the tool error `bad-arg`.
    pub fn flag(&self, key: &str) -> Result<bool, ToolError> {
        match self.get(key) {
            None => Ok(false),
            Some("" | "true" | "yes" | "on" | "1") => Ok(true),
            Some("false" | "no" | "off" | "0") => Ok(false),
            Some(other) => Err(ToolError::bad_arg(
                key,
                format!("`{other}` is not a switch value; use true or false"),
            )),
        }
    }

    /// Fails with `bad-arg` on the first key that is not in `known`, so a
    /// misspelt argument is reported instead of silently ignored.
    pub fn reject_unknown(&self, known: &[&str]) -> Result<(), ToolError> {
        match self
            .pairs
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((key, _)) => Err(ToolError::bad_arg(
                key,
                format!(
                    "this tool does not take it; it takes: {}",
                    if known.is_empty() {
                        "no arguments".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )),
        }
    }

    /// All pairs, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many pairs were given.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether no pair was given.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> Args {
        Args::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn last_value_wins_and_all_values_are_kept() {
        let a = args(&[("k", "1"), ("x", "y"), ("k", "2")]);
        assert_eq!(a.get("k"), Some("2"));
        assert_eq!(a.get_all("k").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(a.get("absent"), None);
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn parse_reports_the_key_and_the_text() {
        let a = args(&[("n", "seven")]);
        let err = a.parse::<u32>("n").unwrap_err();
        assert_eq!(err.code(), "bad-arg");
        assert!(err.message().contains("`n`"), "{}", err.message());
        assert!(err.message().contains("seven"), "{}", err.message());
        assert_eq!(a.parse_or::<u32>("m", 4).unwrap(), 4);
    }

    #[test]
    fn flags_accept_common_spellings_only() {
        let a = args(&[("a", ""), ("b", "no"), ("c", "maybe")]);
        assert!(a.flag("a").unwrap());
        assert!(!a.flag("b").unwrap());
        assert!(!a.flag("absent").unwrap());
        assert_eq!(a.flag("c").unwrap_err().code(), "bad-arg");
    }

    #[test]
    fn require_and_reject_unknown_name_the_argument() {
        let a = args(&[("patern", "x")]);
        let missing = a.require("pattern").unwrap_err();
        assert_eq!(missing.code(), "missing-arg");
        assert!(missing.message().contains("pattern"));
        let unknown = a.reject_unknown(&["pattern", "json"]).unwrap_err();
        assert!(unknown.message().contains("patern"));
        assert!(args(&[("json", "")])
            .reject_unknown(&["pattern", "json"])
            .is_ok());
    }
}
