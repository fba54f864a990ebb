//! The MQTT topics of commands and device state (docs/mqtt-devices.md).
//! One scheme serves MQTT 5 and 3.1.1 devices: the command id is in the
//! topic, so a 3.1.1 device needs neither a response topic nor correlation
//! data (an MQTT 5 device gets both, pointing at the same answer topic).
//! The roots are `broker.commands_root` and `broker.state_root`
//! (`commands` and `state`).

use uuid::Uuid;

use crate::broker::BrokerConfig;

#[derive(Debug, Clone)]
pub struct Topics {
    commands: String,
    state: String,
}

/// A message a device sent the registry.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Answer { device: String, command: String },
    Reported { device: String },
}

impl Topics {
    pub fn of(config: &BrokerConfig) -> Self {
        Self {
            commands: config.commands_root.clone(),
            state: config.state_root.clone(),
        }
    }

    /// Every device's answers, for the registry's subscription.
    pub fn answers(&self) -> String {
        format!("{}/+/+/result", self.commands)
    }

    /// Every device's reported states.
    pub fn reports(&self) -> String {
        format!("{}/+/reported", self.state)
    }

    /// Where a command goes: the device subscribes to `{root}/{device}/+`.
    pub fn command(&self, device: &str, id: &Uuid) -> String {
        format!("{}/{device}/{id}", self.commands)
    }

    /// Where the device answers a command.
    pub fn answer(&self, device: &str, id: &Uuid) -> String {
        format!("{}/{device}/{id}/result", self.commands)
    }

    /// Where the device's desired state is retained.
    pub fn desired(&self, device: &str) -> String {
        format!("{}/{device}/desired", self.state)
    }

    /// What a device may subscribe to (dynamic-security `subscribePattern`).
    pub fn device_subscriptions(&self, device: &str) -> [String; 2] {
        [
            format!("{}/{device}/+", self.commands),
            self.desired(device),
        ]
    }

    /// What a device may publish besides its readings (`publishClientSend`).
    pub fn device_publications(&self, device: &str) -> [String; 2] {
        [
            format!("{}/{device}/+/result", self.commands),
            format!("{}/{device}/reported", self.state),
        ]
    }

    pub fn parse(&self, topic: &str) -> Option<Incoming> {
        let device = |rest: &str, tail: &str| {
            let d = rest.strip_suffix(tail)?;
            (!d.is_empty() && !d.contains('/')).then(|| d.to_owned())
        };
        if let Some(rest) = topic
            .strip_prefix(self.commands.as_str())
            .and_then(|r| r.strip_prefix('/'))
        {
            let rest = rest.strip_suffix("/result")?;
            let (d, command) = rest.split_once('/')?;
            if d.is_empty() || command.is_empty() || command.contains('/') {
                return None;
            }
            return Some(Incoming::Answer {
                device: d.to_owned(),
                command: command.to_owned(),
            });
        }
        let rest = topic
            .strip_prefix(self.state.as_str())
            .and_then(|r| r.strip_prefix('/'))?;
        device(rest, "/reported").map(|device| Incoming::Reported { device })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_their_device_and_command() {
        let t = Topics::of(&BrokerConfig::default());
        let id = Uuid::new_v4();
        assert_eq!(
            t.command("boiler-7", &id),
            format!("commands/boiler-7/{id}")
        );
        assert_eq!(
            t.parse(&t.answer("boiler-7", &id)),
            Some(Incoming::Answer {
                device: "boiler-7".into(),
                command: id.to_string()
            })
        );
        assert_eq!(
            t.parse("state/boiler-7/reported"),
            Some(Incoming::Reported {
                device: "boiler-7".into()
            })
        );
        assert_eq!(t.parse("commands//x/result"), None);
        assert_eq!(t.parse("commands/a/b/c/result"), None);
        assert_eq!(t.parse(&t.command("boiler-7", &id)), None);
        assert_eq!(t.parse("state/boiler-7/desired"), None);
        assert_eq!(t.parse("state/a/b/reported"), None);
    }

    #[test]
    fn roots_move_every_topic() {
        let t = Topics::of(&BrokerConfig {
            commands_root: "t1/commands".into(),
            state_root: "t1/state".into(),
            ..Default::default()
        });
        assert_eq!(t.answers(), "t1/commands/+/+/result");
        assert_eq!(t.device_subscriptions("d")[1], "t1/state/d/desired");
        assert_eq!(
            t.parse("t1/state/d/reported"),
            Some(Incoming::Reported { device: "d".into() })
        );
        assert_eq!(t.parse("state/d/reported"), None);
    }
}
