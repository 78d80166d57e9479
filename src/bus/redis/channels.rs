//! The bus's channel names: one per user, one per group, one for broadcasts; and, for a message
//! read off the subscriber connection, whose channel it came on.

use crate::config::{ChannelPattern, RedisConfig};
use crate::notification::{Audience, Notification};

pub struct Channels {
    user: ChannelPattern,
    group: ChannelPattern,
    broadcast: String,
    instance: ChannelPattern,
}

/// Whose channel a message came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    User(&'a str),
    Group(&'a str),
    Broadcast,
    /// An instance's own channel (by its tag).
    Instance(&'a str),
}

impl Channels {
    /// With sharded Pub/Sub, the user id (or group) is the hash tag of its channel: a message
    /// only touches the shard owning it.
    pub fn new(config: &RedisConfig) -> Self {
        let tagged = |p: &ChannelPattern| if config.sharded_pubsub { p.hash_tagged() } else { p.clone() };
        Self {
            user: tagged(&config.channel),
            group: tagged(&config.group_channel),
            broadcast: config.broadcast_channel.clone(),
            instance: tagged(&config.instance_channel),
        }
    }

    pub fn user(&self, user_id: &str) -> String {
        self.user.channel(user_id)
    }

    pub fn group(&self, group: &str) -> String {
        self.group.channel(group)
    }

    pub fn broadcast(&self) -> &str {
        &self.broadcast
    }

    pub fn instance(&self, tag: &str) -> String {
        self.instance.channel(tag)
    }

    /// The channel a notification is published on.
    pub fn of(&self, n: &Notification) -> String {
        match &n.to {
            Audience::User(user) => self.user(user),
            Audience::Group { name, .. } => self.group(name),
            Audience::Broadcast => self.broadcast.clone(),
        }
    }

    /// Whose channel `channel` is; `None` for a channel herald does not name. Config
    /// validation keeps the three kinds from overlapping.
    pub fn owner<'a>(&self, channel: &'a str) -> Option<Owner<'a>> {
        if channel == self.broadcast {
            return Some(Owner::Broadcast);
        }
        if let Some(tag) = self.instance.user_id(channel) {
            return Some(Owner::Instance(tag));
        }
        if let Some(group) = self.group.user_id(channel) {
            return Some(Owner::Group(group));
        }
        self.user.user_id(channel).map(Owner::User)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_channel_names_its_owner() {
        let channels = |url: &str| {
            let yaml = format!("auth: {{jwt: {{secret: s}}}}\nredis: {{url: '{url}'}}");
            Channels::new(crate::config::Config::from_yaml(&yaml, ".".into(), &|_| None).unwrap().redis.as_ref().unwrap())
        };
        let plain = channels("redis://127.0.0.1:1");
        assert_eq!(plain.owner(&plain.user("u1")), Some(Owner::User("u1")));
        assert_eq!(plain.owner(&plain.group("team-7")), Some(Owner::Group("team-7")));
        assert_eq!(plain.owner(plain.broadcast()), Some(Owner::Broadcast));
        assert_eq!(plain.owner("elsewhere"), None);
        assert_eq!(plain.owner(&plain.instance("AbC_")), Some(Owner::Instance("AbC_")));
        let sharded = channels("redis-cluster://127.0.0.1:1");
        assert_eq!(sharded.group("g"), "herald:group:{g}", "the group is the hash tag");
        assert_eq!(sharded.owner("herald:group:{g}"), Some(Owner::Group("g")));
    }
}
