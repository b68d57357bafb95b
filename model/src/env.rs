//! [`EnvValue`]: an environment variable's value, given literally or taken
//! from a secret (DESIGN §9.5).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An `env` map: variable names to values, in name order.
pub type Env = BTreeMap<String, EnvValue>;

/// The value of one environment variable.
///
/// ```yaml
/// env:
///   CGO_ENABLED: "0"                           # a literal string
///   TOKEN: {secretRef: ping-token}             # the secret's only (or default) value
///   PASSWORD: {secretRef: db, key: password}   # one key of a secret
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EnvValue {
    /// A literal value.
    Literal(String),
    /// A value read from a secret when the step starts; never stored in the
    /// manifest and masked in logs.
    Secret(SecretKeyRef),
}

/// A reference to a secret, or to one key of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The secret's name.
    pub secret_ref: String,
    /// The key within the secret; unset means the secret's only value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl From<&str> for EnvValue {
    fn from(value: &str) -> Self {
        Self::Literal(value.to_string())
    }
}
