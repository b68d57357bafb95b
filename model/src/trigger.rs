//! [`Trigger`]: what starts a pipeline run besides the API (DESIGN §8).

use serde::{Deserialize, Serialize};

/// A trigger declared in `spec.triggers`, chosen by `type`.
///
/// The default API trigger needs no declaration: every pipeline can be run
/// with `xenectl run` or the REST API.
///
/// ```yaml
/// nightly: {type: cron, cron: "0 3 * * *", timezone: Europe/Berlin}
/// on-push:
///   type: webhook
///   webhook: {provider: github, secretRef: ping-hook-secret, events: [push]}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Trigger {
    /// Fires on a schedule.
    Cron(CronTrigger),
    /// Fires on a signed HTTP request from a forge.
    Webhook(WebhookTrigger),
}

impl Trigger {
    /// The `type` names, as written in manifests.
    pub const TYPES: [&'static str; 2] = ["cron", "webhook"];
}

/// A schedule: a cron expression in a time zone (DESIGN §8.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CronTrigger {
    /// Five fields (minute hour day-of-month month day-of-week), or six with
    /// a leading seconds field.
    pub cron: String,
    /// An IANA time zone such as `Europe/Berlin`; unset means UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// What to do with fires missed while no agent held the pipeline; unset
    /// means [`CatchUp::Latest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUp>,
}

/// What happens to cron fires missed during downtime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CatchUp {
    /// Run the latest missed fire once (the default).
    #[default]
    Latest,
    /// Run every missed fire, oldest first.
    All,
    /// Run none; wait for the next fire.
    Skip,
}

impl CatchUp {
    /// Every policy with its name as written in manifests.
    pub const ALL: [(&'static str, Self); 3] = [("Latest", Self::Latest), ("All", Self::All), ("Skip", Self::Skip)];
}

/// A webhook trigger's settings, under its `webhook` key (DESIGN §8.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookTrigger {
    /// The provider, secret and event filter.
    pub webhook: Webhook,
}

/// Who sends the webhook, how it is signed and which events start a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    /// The sender, which decides the signature header.
    pub provider: WebhookProvider,
    /// The secret that holds the signing key or token.
    pub secret_ref: String,
    /// Event types that start a run (`push`, `pull_request`...); empty
    /// means every event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// A webhook sender, deciding how a delivery is verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookProvider {
    /// `X-Hub-Signature-256`.
    Github,
    /// `X-Gitea-Signature`.
    Gitea,
    /// `X-Gitea-Signature`, as Forgejo sends it.
    Forgejo,
    /// `X-Gitlab-Token`.
    Gitlab,
    /// A generic HMAC-SHA256 header.
    Generic,
}

impl WebhookProvider {
    /// Every provider with its name as written in manifests.
    pub const ALL: [(&'static str, Self); 5] = [
        ("github", Self::Github),
        ("gitea", Self::Gitea),
        ("forgejo", Self::Forgejo),
        ("gitlab", Self::Gitlab),
        ("generic", Self::Generic),
    ];
}
