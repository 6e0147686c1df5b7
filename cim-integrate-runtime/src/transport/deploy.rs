//! The deployment policy: how many replicas, where, and on what storage every stream, bucket and
//! consumer is created, and how many deliveries a durable may have outstanding.
//!
//! Specs leave these settings open (`None`); the transport fills them from its [`Deployment`]
//! when it provisions, so that a service, its sagas, its process managers, its waiters and the
//! operator tools all create their assets alike, without any of them spelling replicas:
//!
//! ```
//! use cim_integrate_runtime::transport::{AssetSettings, Deployment, Placement, Storage};
//!
//! let deployment = Deployment::new()
//!     .replicas(3)
//!     .placement(Placement::cluster("east").tag("ssd"))
//!     // the audit domain's stream keeps one copy in memory
//!     .domain("audit", AssetSettings::new().replicas(1).storage(Storage::Memory))
//!     // the dedup marks of the `billing` service: five copies
//!     .bucket("cim_dedup_billing", AssetSettings::new().replicas(5));
//! assert_eq!(deployment.stream_settings("AUDIT_EVENTS").replicas, Some(1));
//! assert_eq!(deployment.stream_settings("DOCUMENT_EVENTS").replicas, Some(3));
//! ```
//!
//! From the environment ([`Deployment::from_env`], read by
//! [`NatsOptions::from_env`](crate::transport::nats::NatsOptions::from_env)):
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `NATS_REPLICAS` | replicas of every stream and bucket (1-5) | 1 |
//! | `NATS_PLACEMENT_CLUSTER` | the cluster they are placed in | the server's choice |
//! | `NATS_PLACEMENT_TAGS` | server tags they are placed on, comma-separated | none |
//! | `NATS_STORAGE` | `file` or `memory` | `file` |
//! | `NATS_MAX_AGE` | how long streams keep messages (`30d`, `24h`); buckets keep their TTL | forever |
//! | `NATS_MAX_ACK_PENDING` | deliveries outstanding per durable, shared by all its processes | 10000 |
//!
//! An existing asset is never changed. Its deployment settings (replicas, placement, storage)
//! are compared with the policy's: a difference is *drift*, logged as a warning (`asset drift`)
//! and counted in `cim_asset_drift_total{asset}`, and the asset is used as it is. Settings that
//! change what the asset means (subjects, duplicate window, max age, history) are conflicts and
//! refused, as before.

use super::{Storage, TransportError};
use std::collections::BTreeMap;
use std::time::Duration;

/// Replicas per asset: JetStream allows 1 to 5.
pub const MAX_REPLICAS: u8 = 5;
/// The default bound on deliveries outstanding per durable consumer, across all its processes.
pub const DEFAULT_MAX_ACK_PENDING: u32 = 10_000;

/// Environment variable: replicas of every stream and bucket.
pub const ENV_REPLICAS: &str = "NATS_REPLICAS";
/// Environment variable: the cluster assets are placed in.
pub const ENV_PLACEMENT_CLUSTER: &str = "NATS_PLACEMENT_CLUSTER";
/// Environment variable: server tags assets are placed on (comma-separated).
pub const ENV_PLACEMENT_TAGS: &str = "NATS_PLACEMENT_TAGS";
/// Environment variable: `file` or `memory`.
pub const ENV_STORAGE: &str = "NATS_STORAGE";
/// Environment variable: how long streams keep messages (`90s`, `30m`, `24h`, `7d`).
pub const ENV_MAX_AGE: &str = "NATS_MAX_AGE";
/// Environment variable: deliveries outstanding per durable.
pub const ENV_MAX_ACK_PENDING: &str = "NATS_MAX_ACK_PENDING";

/// Where an asset's replicas are placed: a cluster and/or server tags (all must match).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    /// The cluster's name; `None`: any.
    pub cluster: Option<String>,
    /// Tags every chosen server must have.
    pub tags: Vec<String>,
}

impl Placement {
    /// Placement in the cluster `name`.
    pub fn cluster(name: impl Into<String>) -> Self {
        Self {
            cluster: Some(name.into()),
            tags: Vec::new(),
        }
    }

    /// Placement on servers tagged `tag` (any cluster).
    pub fn tagged(tag: impl Into<String>) -> Self {
        Self::default().tag(tag)
    }

    /// Adds a required server tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// `true` if it constrains nothing.
    pub fn is_empty(&self) -> bool {
        self.cluster.is_none() && self.tags.is_empty()
    }

    fn normalized(&self) -> Self {
        let mut tags = self.tags.clone();
        tags.sort_unstable();
        tags.dedup();
        Self {
            cluster: self.cluster.clone(),
            tags,
        }
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.cluster, self.tags.is_empty()) {
            (None, true) => f.write_str("anywhere"),
            (Some(c), true) => write!(f, "cluster {c}"),
            (None, false) => write!(f, "tags {}", self.tags.join(",")),
            (Some(c), false) => write!(f, "cluster {c}, tags {}", self.tags.join(",")),
        }
    }
}

/// The deployment settings of one asset (stream, bucket or consumer). `None` leaves a setting to
/// the next level: the asset's override in the [`Deployment`], then the deployment's default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AssetSettings {
    /// Copies kept, 1-5 (consumers: `None` follows their stream).
    pub replicas: Option<u8>,
    /// Where the copies are kept.
    pub placement: Option<Placement>,
    /// On disk or in memory.
    pub storage: Option<Storage>,
    /// How long a stream keeps messages, for streams whose spec leaves it open (`max_age`
    /// `None`). Not applied to key-value buckets, whose max age is their entries' TTL.
    pub max_age: Option<Duration>,
}

impl AssetSettings {
    /// Nothing set.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the replicas.
    pub fn replicas(mut self, n: u8) -> Self {
        self.replicas = Some(n);
        self
    }
    /// Sets the placement.
    pub fn placement(mut self, p: Placement) -> Self {
        self.placement = Some(p);
        self
    }
    /// Sets the storage.
    pub fn storage(mut self, s: Storage) -> Self {
        self.storage = Some(s);
        self
    }
    /// Sets the max age of streams.
    pub fn max_age(mut self, d: Duration) -> Self {
        self.max_age = Some(d);
        self
    }

    /// Each setting left open taken from `fallback`.
    pub fn or(&self, fallback: &AssetSettings) -> AssetSettings {
        AssetSettings {
            replicas: self.replicas.or(fallback.replicas),
            placement: self.placement.clone().or_else(|| fallback.placement.clone()),
            storage: self.storage.or(fallback.storage),
            max_age: self.max_age.or(fallback.max_age),
        }
    }

    /// Checks the replicas (1-5) and the placement's names.
    pub fn validate(&self, asset: &str) -> Result<(), TransportError> {
        if let Some(r) = self.replicas
            && !(1..=MAX_REPLICAS).contains(&r)
        {
            return Err(TransportError::Invalid(format!(
                "`{asset}`: replicas must be 1-{MAX_REPLICAS}, got {r}"
            )));
        }
        super::check_durations(asset, [("max_age", self.max_age)]).map_err(TransportError::Invalid)?;
        if let Some(p) = &self.placement {
            let bad = |s: &str| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == ',');
            if p.cluster.as_deref().is_some_and(bad) || p.tags.iter().any(|t| bad(t)) {
                return Err(TransportError::Invalid(format!(
                    "`{asset}`: placement names must be non-empty, without spaces or commas ({p})"
                )));
            }
        }
        Ok(())
    }

    /// How `existing` (as found on the server) differs from these settings, or `None`.
    /// Settings left open are not compared.
    pub fn drift(&self, existing: &AssetSettings) -> Option<String> {
        let mut d = Vec::new();
        if let (Some(want), Some(have)) = (self.replicas, existing.replicas)
            && want != have
        {
            d.push(format!("replicas {have}, wanted {want}"));
        }
        if let Some(want) = &self.placement {
            let have = existing.placement.clone().unwrap_or_default();
            if want.normalized() != have.normalized() && !want.is_empty() {
                d.push(format!("placement {have}, wanted {want}"));
            }
        }
        if let (Some(want), Some(have)) = (self.storage, existing.storage)
            && want != have
        {
            d.push(format!("storage {have:?}, wanted {want:?}"));
        }
        if let Some(want) = self.max_age
            && existing.max_age != Some(want)
        {
            d.push(format!("max age {:?}, wanted {want:?}", existing.max_age));
        }
        (!d.is_empty()).then(|| d.join("; "))
    }
}

/// Reports drift of an existing asset: a warning and a counter; the asset is left as it is.
pub(crate) fn report_drift(asset: &str, detail: &str) {
    tracing::warn!(
        asset,
        drift = detail,
        "asset drift: it exists with other deployment settings and was left unchanged; reconcile it by hand (nats stream edit) if the policy is right"
    );
    metrics::counter!("cim_asset_drift_total", "asset" => asset.to_owned()).increment(1);
}

/// The deployment policy of a transport: defaults for every asset, overrides per stream and per
/// bucket, and the bound on outstanding deliveries per durable. See the [module](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    defaults: AssetSettings,
    streams: BTreeMap<String, AssetSettings>,
    buckets: BTreeMap<String, AssetSettings>,
    max_ack_pending: u32,
}

impl Default for Deployment {
    fn default() -> Self {
        Self {
            defaults: AssetSettings {
                replicas: Some(1),
                placement: None,
                storage: Some(Storage::File),
                max_age: None,
            },
            streams: BTreeMap::new(),
            buckets: BTreeMap::new(),
            max_ack_pending: DEFAULT_MAX_ACK_PENDING,
        }
    }
}

impl Deployment {
    /// One replica, file storage, the server's placement, 10,000 outstanding per durable.
    pub fn new() -> Self {
        Self::default()
    }

    /// The policy the environment describes (see the [module](self)); unset variables keep the
    /// defaults.
    pub fn from_env() -> Result<Self, TransportError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// As [`from_env`](Self::from_env), with variables from `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, TransportError> {
        let mut d = Self::new();
        if let Some(r) = lookup(ENV_REPLICAS) {
            let n = r
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|n| (1..=MAX_REPLICAS).contains(n))
                .ok_or_else(|| TransportError::Invalid(format!("{ENV_REPLICAS}: expected 1-5, got `{r}`")))?;
            d = d.replicas(n);
        }
        let cluster = lookup(ENV_PLACEMENT_CLUSTER).map(|c| c.trim().to_owned());
        let tags: Vec<String> = lookup(ENV_PLACEMENT_TAGS)
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if cluster.is_some() || !tags.is_empty() {
            d = d.placement(Placement { cluster, tags });
        }
        if let Some(s) = lookup(ENV_STORAGE) {
            let storage = match s.trim().to_ascii_lowercase().as_str() {
                "file" => Storage::File,
                "memory" => Storage::Memory,
                _ => {
                    return Err(TransportError::Invalid(format!(
                        "{ENV_STORAGE}: expected `file` or `memory`, got `{s}`"
                    )));
                }
            };
            d = d.storage(storage);
        }
        if let Some(a) = lookup(ENV_MAX_AGE) {
            let age = parse_duration(a.trim()).ok_or_else(|| {
                TransportError::Invalid(format!(
                    "{ENV_MAX_AGE}: expected a duration such as `90s`, `30m`, `24h` or `7d`, got `{a}`"
                ))
            })?;
            d.defaults.max_age = Some(age);
        }
        if let Some(m) = lookup(ENV_MAX_ACK_PENDING) {
            let n = m.trim().parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                TransportError::Invalid(format!("{ENV_MAX_ACK_PENDING}: expected a positive number, got `{m}`"))
            })?;
            d = d.max_ack_pending(n);
        }
        d.defaults.validate("deployment")?;
        Ok(d)
    }

    /// Replicas of every stream and bucket without an override.
    pub fn replicas(mut self, n: u8) -> Self {
        self.defaults.replicas = Some(n);
        self
    }
    /// Placement of every stream and bucket without an override.
    pub fn placement(mut self, p: Placement) -> Self {
        self.defaults.placement = Some(p);
        self
    }
    /// Storage of every stream and bucket without an override.
    pub fn storage(mut self, s: Storage) -> Self {
        self.defaults.storage = Some(s);
        self
    }
    /// How long streams without a max age of their own keep messages.
    pub fn max_age(mut self, d: Duration) -> Self {
        self.defaults.max_age = Some(d);
        self
    }
    /// Deliveries outstanding per durable consumer, shared by every process reading it.
    pub fn max_ack_pending(mut self, n: u32) -> Self {
        self.max_ack_pending = n.max(1);
        self
    }
    /// Overrides the settings of one domain's stream (`DOCUMENT_EVENTS` for `document`).
    pub fn domain(self, domain: &str, settings: AssetSettings) -> Self {
        let name = format!("{}_EVENTS", domain.to_ascii_uppercase().replace('-', "_"));
        self.stream(name, settings)
    }
    /// Overrides the settings of one stream, by name (`DEAD_LETTERS`, `SAGA_EVENTS`...).
    pub fn stream(mut self, name: impl Into<String>, settings: AssetSettings) -> Self {
        self.streams.insert(name.into(), settings);
        self
    }
    /// Overrides the settings of one key-value bucket, by name (`cim_dedup_{service}`...).
    pub fn bucket(mut self, name: impl Into<String>, settings: AssetSettings) -> Self {
        self.buckets.insert(name.into(), settings);
        self
    }

    /// The defaults.
    pub fn defaults(&self) -> &AssetSettings {
        &self.defaults
    }
    /// Deliveries outstanding per durable.
    pub fn ack_pending(&self) -> u32 {
        self.max_ack_pending
    }
    /// The settings a stream named `name` gets: its override, then the defaults.
    pub fn stream_settings(&self, name: &str) -> AssetSettings {
        self.streams
            .get(name)
            .map_or_else(|| self.defaults.clone(), |o| o.or(&self.defaults))
    }
    /// The settings a bucket named `name` gets: its override, then the defaults.
    pub fn bucket_settings(&self, name: &str) -> AssetSettings {
        self.buckets
            .get(name)
            .map_or_else(|| self.defaults.clone(), |o| o.or(&self.defaults))
    }
    /// `true` if streams, buckets or consumers may need more than one server.
    pub fn is_replicated(&self) -> bool {
        self.defaults.replicas.unwrap_or(1) > 1
            || self
                .streams
                .values()
                .chain(self.buckets.values())
                .any(|s| s.replicas.unwrap_or(1) > 1)
    }
}

/// `90s`, `30m`, `24h`, `7d`, `500ms`: a positive whole number and a unit.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3_600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A lookup of environment variables answering from `pairs`.
    pub(crate) fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn reads_the_environment() {
        let d = Deployment::from_lookup(env(&[
            (ENV_REPLICAS, "3"),
            (ENV_PLACEMENT_CLUSTER, "east"),
            (ENV_PLACEMENT_TAGS, "ssd, az1"),
            (ENV_STORAGE, "Memory"),
            (ENV_MAX_ACK_PENDING, "20000"),
        ]))
        .unwrap();
        let s = d.stream_settings("DOCUMENT_EVENTS");
        assert_eq!(s.replicas, Some(3));
        assert_eq!(s.storage, Some(Storage::Memory));
        assert_eq!(
            s.placement,
            Some(Placement {
                cluster: Some("east".into()),
                tags: vec!["ssd".into(), "az1".into()]
            })
        );
        assert_eq!(d.ack_pending(), 20_000);
        assert!(d.is_replicated());
        assert_eq!(Deployment::from_lookup(env(&[])).unwrap(), Deployment::new());
        let aged = Deployment::from_lookup(env(&[(ENV_MAX_AGE, "7d")])).unwrap();
        assert_eq!(aged.stream_settings("X").max_age, Some(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn refuses_bad_values() {
        for (k, v) in [
            (ENV_REPLICAS, "0"),
            (ENV_REPLICAS, "6"),
            (ENV_REPLICAS, "three"),
            (ENV_STORAGE, "ssd"),
            (ENV_MAX_ACK_PENDING, "0"),
            (ENV_PLACEMENT_CLUSTER, "a b"),
            (ENV_MAX_AGE, "7 days"),
            (ENV_MAX_AGE, "0s"),
            (ENV_MAX_AGE, "-1h"),
        ] {
            assert!(Deployment::from_lookup(env(&[(k, v)])).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn overrides_fall_back_to_defaults() {
        let d = Deployment::new()
            .replicas(3)
            .domain("audit", AssetSettings::new().storage(Storage::Memory))
            .bucket("cim_dedup_x", AssetSettings::new().replicas(5));
        let audit = d.stream_settings("AUDIT_EVENTS");
        assert_eq!((audit.replicas, audit.storage), (Some(3), Some(Storage::Memory)));
        assert_eq!(d.bucket_settings("cim_dedup_x").replicas, Some(5));
        assert_eq!(d.bucket_settings("other").replicas, Some(3));
    }

    #[test]
    fn drift_compares_what_is_set() {
        let want = AssetSettings::new()
            .replicas(3)
            .placement(Placement::tagged("b").tag("a"));
        let have = AssetSettings::new()
            .replicas(3)
            .placement(Placement::tagged("a").tag("b"))
            .storage(Storage::File);
        assert_eq!(want.drift(&have), None);
        let d = want.drift(&AssetSettings::new().replicas(1)).unwrap();
        assert!(
            d.contains("replicas 1, wanted 3") && d.contains("placement anywhere"),
            "{d}"
        );
    }
}
