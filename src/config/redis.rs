//! The `redis` section: the URL, channel names (users, groups, broadcast), client settings.

use std::time::Duration;

use serde_json::Value;

use super::redis_tls::{RedisTls, read_tls};
use super::redis_url::{RedisAddress, RedisTarget};
use super::walk::{Section, Walk, ranged};

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub channel: ChannelPattern,
    /// Channel of one group's notifications; must contain {group}. Default `herald:group:{group}`.
    pub group_channel: ChannelPattern,
    /// The one channel of broadcasts, subscribed by every instance. Default `herald:broadcast`.
    pub broadcast_channel: String,
    /// Deadline for one Redis command, so an outage fails fast instead of hanging. Default 2000 ms.
    pub command_timeout: Duration,
    /// SSUBSCRIBE/SPUBLISH instead of SUBSCRIBE/PUBLISH, with the user id as the hash tag of
    /// its channel and stream, so a message only touches the shard that owns the user. Default:
    /// on for a `redis-cluster://` URL, off otherwise.
    pub sharded_pubsub: bool,
    /// The URL read: where every connection goes, and how it authenticates.
    pub address: RedisAddress,
    /// TLS settings, for a `rediss` URL.
    pub tls: Option<RedisTls>,
    /// Channel of one instance's own messages (long-polling requests forwarded to the instance
    /// holding their session, and the answers); must contain {instance}. Default
    /// `herald:instance:{instance}`.
    pub instance_channel: ChannelPattern,
    /// Key of a user's token revocation (`POST /api/disconnect` with `revoke_tokens`); must
    /// contain {user_id} once. Default `herald:revoked:{user_id}`.
    pub revoked_key: ChannelPattern,
}

impl RedisConfig {
    /// A `redis-cluster://` URL.
    pub fn is_cluster(&self) -> bool {
        matches!(self.address.target, RedisTarget::Cluster { .. })
    }
}

/// A Redis channel (or key) name pattern with exactly one placeholder: `{user_id}` for users'
/// channels and streams, `{group}` for groups' channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPattern {
    prefix: String,
    suffix: String,
}

impl ChannelPattern {
    pub const PLACEHOLDER: &str = "{user_id}";
    pub const GROUP_PLACEHOLDER: &str = "{group}";
    pub const INSTANCE_PLACEHOLDER: &str = "{instance}";

    pub fn parse(pattern: &str) -> Result<Self, String> {
        Self::parse_with(pattern, Self::PLACEHOLDER)
    }

    pub fn parse_with(pattern: &str, placeholder: &str) -> Result<Self, String> {
        match pattern.split_once(placeholder) {
            Some((prefix, suffix)) if !suffix.contains(placeholder) => {
                if prefix.contains(['*', '?', '[']) || suffix.contains(['*', '?', '[']) {
                    return Err("must not contain the glob characters * ? [".into());
                }
                Ok(Self { prefix: prefix.into(), suffix: suffix.into() })
            }
            Some(_) => Err(format!("must contain {placeholder} exactly once")),
            None => Err(format!("must contain {placeholder}")),
        }
    }

    /// The same pattern with the user id as the Redis Cluster hash tag (`herald:user:{u42}`),
    /// so a user's channel and stream live in the same slot.
    pub fn hash_tagged(&self) -> Self {
        Self { prefix: format!("{}{{", self.prefix), suffix: format!("}}{}", self.suffix) }
    }

    /// Braces outside the placeholder, which would change the hash tag.
    pub fn has_braces(&self) -> bool {
        self.prefix.contains(['{', '}']) || self.suffix.contains(['{', '}'])
    }

    /// The channel carrying one user's notifications.
    pub fn channel(&self, user_id: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + user_id.len() + self.suffix.len());
        s.push_str(&self.prefix);
        s.push_str(user_id);
        s.push_str(&self.suffix);
        s
    }

    /// The user id (or group) a channel belongs to, if it matches the pattern.
    pub fn user_id<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let id = channel.strip_prefix(self.prefix.as_str())?.strip_suffix(self.suffix.as_str())?;
        (!id.is_empty()).then_some(id)
    }
}

pub(super) fn read_redis(walk: &mut Walk, v: Option<&Value>) -> Option<RedisConfig> {
    walk.section(v, "redis", |walk, s| {
        let url = walk.opt::<String>(s, "url").filter(|u| !u.trim().is_empty());
        let address = url.as_deref().and_then(|u| match RedisAddress::parse(u) {
            Ok(a) => Some(a),
            Err(why) => {
                walk.error(s.path("url"), why);
                None
            }
        });
        let tls = read_tls(walk, s, address.as_ref().is_some_and(|a| a.tls));
        let channel = pattern(walk, s, "channel", "herald:user:{user_id}", ChannelPattern::PLACEHOLDER);
        let group_channel = pattern(walk, s, "group_channel", "herald:group:{group}", ChannelPattern::GROUP_PLACEHOLDER);
        let broadcast_channel: String = walk.get(s, "broadcast_channel", "herald:broadcast".into());
        if broadcast_channel.is_empty() || broadcast_channel.contains(['*', '?', '[']) {
            walk.error(s.path("broadcast_channel"), "must be a non-empty channel name without the glob characters * ? [");
        }
        // A message's channel tells whose it is: no channel may match two of the three.
        let probe = group_channel.channel("x");
        if channel.user_id(&probe).is_some() || group_channel.user_id(&channel.channel("x")).is_some() {
            walk.error(s.path("group_channel"), "must not overlap redis.channel: a group's channel would read as a user's");
        }
        if channel.user_id(&broadcast_channel).is_some() || group_channel.user_id(&broadcast_channel).is_some() {
            walk.error(s.path("broadcast_channel"), "must not match redis.channel or redis.group_channel");
        }
        let instance_channel = pattern(walk, s, "instance_channel", "herald:instance:{instance}", ChannelPattern::INSTANCE_PLACEHOLDER);
        let probe = instance_channel.channel("x");
        if channel.user_id(&probe).is_some()
            || group_channel.user_id(&probe).is_some()
            || probe == broadcast_channel
            || instance_channel.user_id(&channel.channel("x")).is_some()
            || instance_channel.user_id(&group_channel.channel("x")).is_some()
            || instance_channel.user_id(&broadcast_channel).is_some()
        {
            walk.error(s.path("instance_channel"), "must not overlap redis.channel, redis.group_channel or redis.broadcast_channel");
        }
        let revoked_key = pattern(walk, s, "revoked_key", "herald:revoked:{user_id}", ChannelPattern::PLACEHOLDER);
        let command_timeout = Duration::from_millis(ranged(walk, s, "command_timeout_ms", 2000u64, 10..=600_000));
        let cluster = matches!(address.as_ref().map(|a| &a.target), Some(RedisTarget::Cluster { .. }));
        let sharded_pubsub = walk.get(s, "sharded_pubsub", cluster);
        let (url, address) = (url?, address?);
        Some(RedisConfig {
            url,
            channel,
            group_channel,
            broadcast_channel,
            command_timeout,
            sharded_pubsub,
            address,
            tls,
            revoked_key,
            instance_channel,
        })
    })
}

/// A channel or key pattern with `placeholder` once; a bad one is reported and the default used.
pub(super) fn pattern(walk: &mut Walk, s: &Section<'_>, key: &str, default: &str, placeholder: &str) -> ChannelPattern {
    let text: String = walk.get(s, key, default.into());
    ChannelPattern::parse_with(&text, placeholder).unwrap_or_else(|why| {
        walk.error(s.path(key), why);
        ChannelPattern::parse_with(default, placeholder).expect("default pattern is valid")
    })
}
