//! The two forms of a device status, an alert severity and an alert state:
//! the lower-case text of release 0.1.0 (`"inactive"`, `"critical"`,
//! `"acknowledged"`; also what the database stores and GraphQL shows) and
//! the proto enum added beside each such string field ([`v1::DeviceStatus`],
//! [`v1::Severity`], [`v1::AlertState`]). The only place that maps one to
//! the other.
//!
//! Answers carry both forms. A request may give either: [`either`] reads
//! the pair, with the enum authoritative when set (not UNSPECIFIED) and a
//! disagreement an error naming the enum field.

use crate::v1;

/// An API enum with a text form for each value but UNSPECIFIED.
pub trait TextCode: Copy + Eq + Into<i32> + TryFrom<i32> + 'static {
    /// Every value but UNSPECIFIED, in order.
    const ALL: &'static [Self];

    /// The text form (`""` for UNSPECIFIED).
    fn text(self) -> &'static str;

    /// The enum's SCREAMING_SNAKE_CASE value name (`SEVERITY_CRITICAL`).
    fn name(self) -> &'static str;

    /// The value of a text form; `None` for any other text (`""`
    /// included).
    fn of_text(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.text() == text)
    }

    /// The wire value (`i32`) of a text form; UNSPECIFIED (0) for any other
    /// text. For answers built from stored text, which is always valid.
    fn code_of_text(text: &str) -> i32 {
        Self::of_text(text).map_or(0, Into::into)
    }

    /// Every text form, in order.
    fn texts() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.text()).collect()
    }
}

macro_rules! text_codes {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl TextCode for v1::$ty {
            const ALL: &'static [Self] = &[$(v1::$ty::$variant),+];

            fn text(self) -> &'static str {
                match self {
                    v1::$ty::Unspecified => "",
                    $(v1::$ty::$variant => $text,)+
                }
            }

            fn name(self) -> &'static str {
                self.as_str_name()
            }
        }

        impl v1::$ty {
            /// The value of a text form (`None` for any other text).
            pub fn from_text(text: &str) -> Option<Self> {
                <Self as TextCode>::of_text(text)
            }

            /// The text form (`""` for UNSPECIFIED).
            pub fn as_text(self) -> &'static str {
                <Self as TextCode>::text(self)
            }
        }
    };
}

text_codes!(DeviceStatus {
    Active => "active",
    Inactive => "inactive",
    Error => "error",
});

text_codes!(Severity {
    Info => "info",
    Warning => "warning",
    Critical => "critical",
});

text_codes!(AlertState {
    Open => "open",
    Acknowledged => "acknowledged",
    Resolved => "resolved",
});

impl v1::Alert {
    /// This alert with both forms of its severity and state, whichever it
    /// was encoded with (an alert event stored by release 0.1.0 has only
    /// the text). The enum wins when both are set.
    #[must_use]
    pub fn with_both_forms(mut self) -> Self {
        both_forms::<v1::Severity>(&mut self.severity, &mut self.severity_code);
        both_forms::<v1::AlertState>(&mut self.state, &mut self.state_code);
        self
    }
}

/// Sets `text` from `code` when that is a value, else `code` from `text`.
fn both_forms<E: TextCode>(text: &mut String, code: &mut i32) {
    match E::try_from(*code).ok().filter(|v| E::ALL.contains(v)) {
        Some(v) => v.text().clone_into(text),
        None => *code = E::code_of_text(text),
    }
}

/// The value a request gives as text (`text`: the string field of release
/// 0.1.0 and its name; `None`: not given) and/or as an enum (`code`: the
/// enum field's name and wire value; `None` or UNSPECIFIED: not given).
/// The enum is authoritative when set. `None` when neither is given or
/// there is a problem; each problem (an unknown text or enum value, or the
/// two disagreeing) is pushed to `problems` as `"field: what is wrong"`.
pub fn either<E: TextCode>(
    problems: &mut Vec<String>,
    text: (&str, Option<&str>),
    code: (&str, Option<i32>),
) -> Option<E> {
    let (text_field, text) = text;
    let (code_field, code) = code;
    let from_text = text.and_then(|t| {
        let v = E::of_text(t);
        if v.is_none() {
            problems.push(format!(
                "{text_field}: {t:?} is not one of {:?}",
                E::texts()
            ));
        }
        v
    });
    let from_code = code.filter(|c| *c != 0).and_then(|c| {
        let v = E::try_from(c).ok().filter(|v| E::ALL.contains(v));
        if v.is_none() {
            let names: Vec<_> = E::ALL.iter().map(|v| v.name()).collect();
            problems.push(format!("{code_field}: {c} is not one of {names:?}"));
        }
        v
    });
    match (from_code, from_text, text) {
        (Some(c), Some(t), _) if c != t => {
            problems.push(format!(
                "{code_field}: {} disagrees with {text_field} {:?}",
                c.name(),
                t.text()
            ));
            None
        }
        // An unknown text is a problem even beside a valid enum.
        (Some(_), None, Some(_)) => None,
        (Some(c), _, _) => Some(c),
        (None, t, _) => t,
    }
}

/// `Some(s)` unless `s` is empty: a plain (not `optional`) string field
/// that was left out.
pub fn given(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::{AlertState, DeviceStatus, Severity};

    #[test]
    fn text_forms_round_trip() {
        for s in Severity::ALL {
            assert_eq!(Severity::from_text(s.as_text()), Some(*s));
        }
        for s in AlertState::ALL {
            assert_eq!(AlertState::from_text(s.as_text()), Some(*s));
        }
        for s in DeviceStatus::ALL {
            assert_eq!(DeviceStatus::from_text(s.as_text()), Some(*s));
        }
        assert_eq!(
            Severity::texts(),
            ["info", "warning", "critical"],
            "in order, least severe first"
        );
        assert_eq!(DeviceStatus::texts(), ["active", "inactive", "error"]);
        assert_eq!(AlertState::texts(), ["open", "acknowledged", "resolved"]);
        assert_eq!(Severity::from_text(""), None);
        assert_eq!(Severity::from_text("CRITICAL"), None);
        assert_eq!(Severity::Unspecified.as_text(), "");
        assert_eq!(Severity::code_of_text("warning"), Severity::Warning as i32);
        assert_eq!(Severity::code_of_text("loud"), 0);
    }

    #[test]
    fn an_alert_gets_the_form_it_lacks() {
        let old = v1::Alert {
            severity: "critical".into(),
            state: "acknowledged".into(),
            ..Default::default()
        }
        .with_both_forms();
        assert_eq!(old.severity_code(), Severity::Critical);
        assert_eq!(old.state_code(), AlertState::Acknowledged);
        let new = v1::Alert {
            severity_code: Severity::Warning.into(),
            state_code: AlertState::Resolved.into(),
            ..Default::default()
        }
        .with_both_forms();
        assert_eq!(
            (new.severity.as_str(), new.state.as_str()),
            ("warning", "resolved")
        );
    }

    fn read(text: Option<&str>, code: Option<i32>) -> (Option<DeviceStatus>, Vec<String>) {
        let mut p = Vec::new();
        let v = either(&mut p, ("status", text), ("status_code", code));
        (v, p)
    }

    #[test]
    fn either_form_is_accepted_and_the_two_must_agree() {
        let inactive = DeviceStatus::Inactive as i32;
        assert_eq!(read(None, None), (None, vec![]));
        assert_eq!(read(None, Some(0)), (None, vec![]));
        assert_eq!(
            read(Some("inactive"), None),
            (Some(DeviceStatus::Inactive), vec![])
        );
        assert_eq!(
            read(None, Some(inactive)),
            (Some(DeviceStatus::Inactive), vec![])
        );
        assert_eq!(
            read(Some("inactive"), Some(inactive)),
            (Some(DeviceStatus::Inactive), vec![])
        );
        // UNSPECIFIED is "not given": the text decides.
        assert_eq!(
            read(Some("error"), Some(0)),
            (Some(DeviceStatus::Error), vec![])
        );
        let (v, p) = read(Some("active"), Some(inactive));
        assert_eq!(v, None);
        assert_eq!(
            p,
            ["status_code: DEVICE_STATUS_INACTIVE disagrees with status \"active\""]
        );
        let (v, p) = read(Some("broken"), Some(inactive));
        assert_eq!(v, None);
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("status: \"broken\""), "{p:?}");
        let (v, p) = read(None, Some(9));
        assert_eq!(v, None);
        assert_eq!(
            p,
            [
                "status_code: 9 is not one of [\"DEVICE_STATUS_ACTIVE\", \"DEVICE_STATUS_INACTIVE\", \"DEVICE_STATUS_ERROR\"]"
            ]
        );
    }
}
