//! [`SettingsError`]: a setting a host, a saga runner or a process runner refuses before it starts.
//!
//! One type for one kind of mistake, carried by [`ServiceError::Settings`](crate::service::ServiceError::Settings),
//! [`SagaError::Settings`](crate::saga::SagaError::Settings) and
//! [`ProcessError::Settings`](crate::process::ProcessError::Settings), so that a caller reads
//! which setting of what was refused the same way everywhere:
//!
//! ```
//! use cim_integrate_runtime::SettingsError;
//!
//! let e = SettingsError::new("saga `publish`", "rescan_interval", "it is zero; give a period, or `None`");
//! assert_eq!(e.setting(), "rescan_interval");
//! assert_eq!(e.to_string(), "`rescan_interval` of saga `publish`: it is zero; give a period, or `None`");
//! ```

/// A setting that would defeat what it is for, refused before anything starts: a zero period
/// that would poll a store back to back, a zero timeout no answer can meet, de-duplication marks
/// that expire before a handler's redeliveries come.
///
/// Its message names the setting (as its builder method or field is named), what it belongs to,
/// what is wrong with the value and what to set instead (usually the default).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{setting}` of {owner}: {reason}")]
pub struct SettingsError {
    owner: String,
    setting: &'static str,
    reason: String,
}

impl SettingsError {
    /// A refusal of `setting` of `owner` (e.g. ``"process `onboarding`"``), for `reason`.
    pub fn new(owner: impl Into<String>, setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            setting,
            reason: reason.into(),
        }
    }

    /// What the setting belongs to: ``"service `search`"``, ``"saga `publish`"``,
    /// ``"process `onboarding`"``.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The setting, as its builder method or field is named (`dedup_ttl`, `rescan_interval`,
    /// `timer_interval`, `command_timeout`).
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// What is wrong with the value, and what to set instead.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}
