//! `BACKSTOP_<SECTION>__<KEY>` overrides, and the lenient parsers that let
//! an override (always a string) stand for a number, a boolean or a
//! duration.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::ConfigError;

pub(super) fn env_name(key: &str) -> String {
    key.replace('.', "__").to_uppercase()
}

/// Sets `[section] key = value` for every `BACKSTOP_SECTION__KEY=value`.
pub(super) fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let overrides: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("BACKSTOP_") && k.contains("__"))
        .collect();
    for (name, value) in overrides {
        let rest = &name["BACKSTOP_".len()..];
        let (section, key) = rest.split_once("__").unwrap_or((rest, ""));
        let (section, key) = (section.to_lowercase(), key.to_lowercase());
        if section.is_empty() || key.is_empty() || section == "services" {
            return Err(ConfigError::Key {
                key: name.clone(),
                message: "environment overrides take the form BACKSTOP_<SECTION>__<KEY> (services are configured in the file)".into(),
            });
        }
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, toml::Value::String(value));
            }
            _ => {
                return Err(ConfigError::Key {
                    key: section,
                    message: "must be a table".into(),
                })
            }
        }
    }
    Ok(())
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{s}` is not a duration like `30s`, `5m` or `1h`: {e}"
        ))
    })
}

/// Accepts a boolean or a string holding one (env overrides are strings).
pub(super) fn de_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    de_lenient(d, "true or false")
}

/// Accepts an integer or a string holding one (env overrides are strings).
pub(super) fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_lenient(d, "a whole number")
}

/// A list of strings, or one string of comma-separated items (env
/// overrides are strings).
pub(super) fn de_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Str(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(l) => l,
        Raw::Str(s) => s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
    })
}

/// The value itself, or a string that parses as one; `what` names the
/// expected form in the error.
fn de_lenient<'de, D, T>(d: D, what: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<T> {
        Value(T),
        Str(String),
    }
    match Raw::<T>::deserialize(d)? {
        Raw::Value(v) => Ok(v),
        Raw::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not {what}"))),
    }
}
