//! Layered, typed configuration.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A config that can report every problem it has at once.
pub trait Validate {
    /// Returns one message per problem; empty when the config is usable.
    fn problems(&self) -> Vec<String>;
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(String),
    #[error("cannot read config: {0}")]
    Parse(String),
    #[error("invalid config:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Loads `T` from its defaults, then the TOML file (if given), then
/// environment variables `{PREFIX}__SECTION__KEY` (for example
/// `INGEST_WRITER__KAFKA__BROKERS`), then validates the result.
pub fn load_config<T>(env_prefix: &str, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.display().to_string()));
        }
        fig = fig.merge(Toml::file(path));
    }
    fig = fig.merge(Env::prefixed(&format!("{env_prefix}__")).split("__"));
    let config: T = fig
        .extract()
        .map_err(|e| ConfigError::Parse(e.to_string()))?;
    let problems = config.problems();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Sample {
        name: String,
        port: u16,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                name: "x".into(),
                port: 1,
            }
        }
    }

    impl Validate for Sample {
        fn problems(&self) -> Vec<String> {
            let mut p = Vec::new();
            if self.name.is_empty() {
                p.push("name is empty".into());
            }
            if self.port == 0 {
                p.push("port is 0".into());
            }
            p
        }
    }

    #[test]
    fn layers_and_reports_all_problems() {
        let dir = std::env::temp_dir().join(format!("iot-runtime-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "port = 7\n").unwrap();
        let c: Sample = load_config("IOT_RUNTIME_TEST_A", Some(&file)).unwrap();
        assert_eq!(
            c,
            Sample {
                name: "x".into(),
                port: 7
            }
        );

        std::fs::write(&file, "port = 0\nname = \"\"\n").unwrap();
        let err = load_config::<Sample>("IOT_RUNTIME_TEST_B", Some(&file)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("name is empty") && text.contains("port is 0"),
            "{text}"
        );

        std::fs::write(&file, "port = \"nope\"\n").unwrap();
        assert!(matches!(
            load_config::<Sample>("IOT_RUNTIME_TEST_C", Some(&file)),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            load_config::<Sample>("IOT_RUNTIME_TEST_D", Some(&dir.join("missing.toml"))),
            Err(ConfigError::MissingFile(_))
        ));
    }
}
