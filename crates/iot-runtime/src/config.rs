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

/// The config of one service binary.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default + Validate {
    /// Prefix of its environment variables, e.g. `INGEST_WRITER`.
    const ENV_PREFIX: &'static str;

    /// Defaults, then `file`, then `{ENV_PREFIX}__...` variables, validated.
    fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        load_config(Self::ENV_PREFIX, file)
    }
}

/// The tests every service config gets: the example shipped in
/// `deploy/local/` parses (and sets the admin port it names), and unknown
/// keys are refused.
#[macro_export]
macro_rules! service_config_tests {
    ($config:ty, $example:literal, $admin_port:expr) => {
        #[cfg(test)]
        mod service_config_tests {
            use $crate::ServiceConfig as _;

            #[test]
            fn shipped_example_config_parses() {
                let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../deploy/local")
                    .join($example);
                let config = <$config>::load(Some(&path)).unwrap();
                assert_eq!(config.admin_addr.port(), $admin_port);
            }

            #[test]
            fn unknown_keys_are_refused() {
                let dir = std::env::temp_dir().join(format!("cfg-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join("unknown.toml");
                std::fs::write(&path, "no_such_setting = 1\n").unwrap();
                let err = <$config>::load(Some(&path)).unwrap_err().to_string();
                assert!(err.contains("no_such_setting"), "{err}");
            }
        }
    };
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

/// A problem when `secret` (the setting `name`) is a known placeholder
/// (`change-me...`, as example files ship them): services refuse to start
/// with one rather than run with a secret everyone knows.
pub fn placeholder_problem(name: &str, secret: &str) -> Option<String> {
    secret
        .starts_with("change-me")
        .then(|| format!("{name} is a placeholder (change-me...): set a secret of your own"))
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
