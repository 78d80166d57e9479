//! The store-and-publish script: a retained notification is stored in its user's stream and
//! published in one atomic step, and found again (not stored twice) when a retry follows a lost reply.

use tracing::warn;

use super::link::LinkError;
use super::nodes::Nodes;

/// Stores a retained notification in the user's stream and publishes it, as one atomic step:
/// a notification is never in the history and missing from the live stream, or the reverse.
/// KEYS: stream, channel. ARGV: event, timestamp ms, payload JSON, max count, min id (age), ttl ms,
/// consumed us (live message only: the history keeps what a replay needs), origin (`''` for
/// none), and for a retry the id the first attempt could not have stored before (else `''`).
///
/// A retry first looks among the entries since then for one with the same origin and payload:
/// an earlier attempt may have stored the notification and lost only its reply. If found, it is
/// published again with its first id (which each socket's replay gate recognises) and not stored
/// twice. First attempts skip the search, so it costs nothing on the normal path.
macro_rules! store_then {
    ($publish:literal) => {
        concat!(
            "local id\n",
            "if ARGV[9] ~= '' and ARGV[8] ~= '' then\n",
            "  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[1], '+', ARGV[9], 'COUNT', ARGV[4])) do\n",
            "    local fields, origin, payload = entry[2], nil, nil\n",
            "    for i = 1, #fields, 2 do\n",
            "      if fields[i] == 'o' then origin = fields[i + 1] elseif fields[i] == 'p' then payload = fields[i + 1] end\n",
            "    end\n",
            "    if origin == ARGV[8] and payload == ARGV[3] then id = entry[1] break end\n",
            "  end\n",
            "end\n",
            "if not id then\n",
            "  if ARGV[8] == '' then\n",
            "    id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], '*', 'e', ARGV[1], 't', ARGV[2], 'p', ARGV[3])\n",
            "  else\n",
            "    id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], '*', 'e', ARGV[1], 't', ARGV[2], 'p', ARGV[3], 'o', ARGV[8])\n",
            "  end\n",
            "  redis.call('XTRIM', KEYS[1], 'MINID', ARGV[5])\n",
            "  redis.call('PEXPIRE', KEYS[1], ARGV[6])\n",
            "end\n",
            "local message = '{\"i\":\"' .. id .. '\",\"e\":' .. cjson.encode(ARGV[1]) .. ',\"t\":' .. ARGV[2] .. ',\"c\":' .. ARGV[7] .. ',\"p\":' .. ARGV[3] .. '}'\n",
            "return {id, redis.call('",
            $publish,
            "', KEYS[2], message)}\n"
        )
    };
}
pub(super) const STORE_AND_PUBLISH: &str = store_then!("PUBLISH");
/// The same for sharded Pub/Sub; the stream and channel share the user's hash tag, so both keys
/// are in one slot as Redis Cluster requires of a script.
pub(super) const STORE_AND_SPUBLISH: &str = store_then!("SPUBLISH");

/// A Lua script called by its SHA1, and loaded into Redis (every primary of a cluster) at
/// start-up, after each reconnect, and whenever Redis answers NOSCRIPT.
#[derive(Clone)]
pub(super) struct StoreScript {
    pub(super) text: &'static str,
    pub(super) sha: String,
}

impl StoreScript {
    pub(super) fn new(text: &'static str) -> Self {
        use sha1::Digest;
        let digest = sha1::Sha1::digest(text.as_bytes());
        Self { text, sha: digest.iter().map(|b| format!("{b:02x}")).collect() }
    }

    /// [`Self::load`] at start-up and reconnects; failing there is not fatal (a NOSCRIPT reply
    /// tries again), but it is shown, as a Redis ACL without `script|load` would keep failing.
    pub(super) async fn load_or_warn(&self, nodes: &Nodes) {
        if let Err(e) = self.load(nodes).await {
            warn!(error = %e, "Could not load the store script into Redis; publishing retained notifications will retry it.");
        }
    }

    /// Loads it on the server, or on every master of a cluster.
    pub(super) async fn load(&self, nodes: &Nodes) -> Result<(), LinkError> {
        nodes.everywhere(&[b"SCRIPT", b"LOAD", self.text.as_bytes()]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_named_by_the_sha1_redis_gives_it() {
        // `redis-cli SCRIPT LOAD "return 1"` answers this.
        assert_eq!(StoreScript::new("return 1").sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }
}
