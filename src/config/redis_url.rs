//! `redis.url` read into what every Redis connection herald opens needs: one server, a
//! Sentinel set naming a master, or a cluster's seed nodes; TLS or not; the ACL user and
//! password; the database; the Sentinels' own credentials. Every part is used by every
//! connection, or refused here.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Server {
        host: String,
        port: u16,
    },
    /// `redis-sentinel://host:port,host:port/master`: the Sentinels, asked in turn.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        /// The Sentinels' own ACL user and password (`?sentinel_username=&sentinel_password=`),
        /// which may differ from the master's.
        username: Option<String>,
        password: Option<String>,
    },
    /// `redis-cluster://host:port,host:port` (or `?node=host:port`): nodes to learn the
    /// cluster's slot map from.
    Cluster {
        seeds: Vec<(String, u16)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisAddress {
    pub target: RedisTarget,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The database every connection selects (`/2`); `None` leaves Redis's default, 0.
    pub database: Option<u8>,
    /// `rediss://`, `rediss-sentinel://`, `rediss-cluster://`: every connection (to the
    /// Sentinels too) speaks TLS.
    pub tls: bool,
}

const DEFAULT_PORT: u16 = 6379;
const DEFAULT_SENTINEL_PORT: u16 = 26379;
const SCHEMES: &str = "redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster:// or rediss-cluster://";

impl RedisAddress {
    /// Reads `redis[s]://[user:password@]host[:port][/db]`,
    /// `redis[s]-sentinel://[user:password@]host[:port][,host[:port]...]/master[/db][?sentinel_username=u&sentinel_password=p]`
    /// or `redis[s]-cluster://[user:password@]host[:port][,host[:port]...][?node=host:port...]`.
    /// The credentials and the database are the master's (every node's, on a cluster).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("no scheme: must start with {SCHEMES}"))?;
        let (kind, tls) = match scheme {
            "redis" => (Kind::Server, false),
            "rediss" => (Kind::Server, true),
            "redis-sentinel" => (Kind::Sentinel, false),
            "rediss-sentinel" => (Kind::Sentinel, true),
            "redis-cluster" => (Kind::Cluster, false),
            "rediss-cluster" => (Kind::Cluster, true),
            other => return Err(format!("`{other}://` is not a Redis URL: must start with {SCHEMES}")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((c, r)) => (Some(c), r),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (username, password) = credentials.map(split_credentials).unwrap_or_default();
        let default_port = if kind == Kind::Sentinel { DEFAULT_SENTINEL_PORT } else { DEFAULT_PORT };
        let mut servers = Vec::new();
        for host in hosts.split(',') {
            servers.push(host_port(host, default_port)?);
        }
        let (mut sentinel_username, mut sentinel_password) = (None, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match (&*key, kind) {
                ("sentinel_username", Kind::Sentinel) => sentinel_username = Some(value.into_owned()),
                ("sentinel_password", Kind::Sentinel) => sentinel_password = Some(value.into_owned()),
                ("node", Kind::Cluster) => servers.push(host_port(&value, default_port)?),
                _ => {
                    let known = match kind {
                        Kind::Server => "none",
                        Kind::Sentinel => "sentinel_username, sentinel_password",
                        Kind::Cluster => "node",
                    };
                    return Err(format!("unknown URL parameter `{key}` (known for this scheme: {known})"));
                }
            }
        }
        let path = path.trim_end_matches('/');
        let (target, database) = match kind {
            Kind::Sentinel => {
                let (master, database) = match path.split_once('/') {
                    Some((master, db)) => (decode(master), Some(db)),
                    None => (decode(path), None),
                };
                if master.is_empty() {
                    return Err("a Sentinel URL names its master after the hosts: redis-sentinel://host:port,host:port/mymaster".into());
                }
                let target = RedisTarget::Sentinel { sentinels: servers, master, username: sentinel_username, password: sentinel_password };
                (target, database)
            }
            Kind::Server => {
                if servers.len() != 1 {
                    return Err("redis:// names one server (a Sentinel set is redis-sentinel://, a cluster redis-cluster://)".into());
                }
                let (host, port) = servers.remove(0);
                (RedisTarget::Server { host, port }, (!path.is_empty()).then_some(path))
            }
            Kind::Cluster => (RedisTarget::Cluster { seeds: servers }, (!path.is_empty()).then_some(path)),
        };
        let database = database.map(parse_database).transpose()?.filter(|db| *db != 0);
        if let (RedisTarget::Cluster { .. }, Some(db)) = (&target, database) {
            return Err(format!("Redis Cluster has only database 0, not {db}: remove `/{db}`"));
        }
        Ok(Self { target, username, password, database, tls })
    }

    /// The host named first in the URL (a server, the first Sentinel or seed).
    pub fn first_host(&self) -> &str {
        match &self.target {
            RedisTarget::Server { host, .. } => host,
            RedisTarget::Sentinel { sentinels: hosts, .. } | RedisTarget::Cluster { seeds: hosts } => &hosts[0].0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Server,
    Sentinel,
    Cluster,
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// `user:password`, `:password` or `password`.
fn split_credentials(c: &str) -> (Option<String>, Option<String>) {
    match c.split_once(':') {
        Some((u, p)) => ((!u.is_empty()).then(|| decode(u)), Some(decode(p))),
        None => (None, Some(decode(c))),
    }
}

/// The database number of a URL's path, 0 to 255 (Redis has 16 unless configured otherwise).
pub fn parse_database(path: &str) -> Result<u8, String> {
    path.parse().map_err(|_| format!("`/{path}` is not a database number from 0 to 255 (redis://host:6379/2 selects database 2)"))
}

fn host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    if s.is_empty() {
        return Err("a host is missing".into());
    }
    // `[::1]:6379`, `host:6379` or `host`.
    let (host, port) = match s.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']').ok_or("unclosed [ in an IPv6 host")?;
            (host, rest.strip_prefix(':'))
        }
        None => match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("bad port in `{s}`"))?,
        None => default_port,
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_as_a_server_or_a_sentinel_set() {
        let a = RedisAddress::parse("redis://127.0.0.1:6390").unwrap();
        assert_eq!(a.target, RedisTarget::Server { host: "127.0.0.1".into(), port: 6390 });
        assert_eq!((a.username, a.password), (None, None));
        let a = RedisAddress::parse("redis://app:p%40ss@redis/2#frag").unwrap();
        assert_eq!(a.target, RedisTarget::Server { host: "redis".into(), port: 6379 });
        assert_eq!((a.username.as_deref(), a.password.as_deref()), (Some("app"), Some("p@ss")));
        assert_eq!(a.database, Some(2));
        assert_eq!(RedisAddress::parse("redis://:secret@h").unwrap().password.as_deref(), Some("secret"));
        assert_eq!(RedisAddress::parse("redis://h/0").unwrap().database, None, "0 is the default: nothing to select");
        assert_eq!(RedisAddress::parse("redis://h/").unwrap().database, None);
        assert_eq!(RedisAddress::parse("redis-sentinel://s1/mymaster/3").unwrap().database, Some(3));
        assert_eq!(RedisAddress::parse("redis://[::1]:7000").unwrap().target, RedisTarget::Server { host: "::1".into(), port: 7000 });

        let s = RedisAddress::parse("redis-sentinel://:pw@10.0.0.1:26380,10.0.0.2,s3:5000/mymaster?sentinel_password=s%40p").unwrap();
        assert_eq!(
            s.target,
            RedisTarget::Sentinel {
                sentinels: vec![("10.0.0.1".into(), 26380), ("10.0.0.2".into(), 26379), ("s3".into(), 5000)],
                master: "mymaster".into(),
                username: None,
                password: Some("s@p".into()),
            }
        );
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!((s.database, s.tls), (None, false));
    }

    #[test]
    fn tls_schemes_and_cluster_seeds() {
        let a = RedisAddress::parse("rediss://default:k@cache.example:6380").unwrap();
        assert_eq!((a.tls, a.first_host()), (true, "cache.example"));
        assert!(RedisAddress::parse("rediss-sentinel://s1/m").unwrap().tls);
        let c = RedisAddress::parse("rediss-cluster://u:p@h1:7000,h2?node=h3:7002").unwrap();
        assert!(c.tls);
        assert_eq!(c.target, RedisTarget::Cluster { seeds: vec![("h1".into(), 7000), ("h2".into(), 6379), ("h3".into(), 7002)] });
        assert_eq!((c.username.as_deref(), c.password.as_deref()), (Some("u"), Some("p")));
    }

    #[test]
    fn a_cluster_has_only_database_zero() {
        assert!(RedisAddress::parse("redis-cluster://h:7000?node=h:7001").is_ok());
        assert_eq!(RedisAddress::parse("redis-cluster://u:p@h:7000/0").unwrap().database, None);
        assert!(RedisAddress::parse("redis-cluster://h:7000/2?node=h:7001").unwrap_err().contains("only database 0"));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, why) in [
            ("redis-sentinel://h:1,h:2", "names its master"),
            ("redis-sentinel://h:1/", "names its master"),
            ("redis://a:1,b:2", "names one server"),
            ("redis://h:port", "bad port"),
            ("redis://h/two", "not a database number"),
            ("redis-sentinel://h/mymaster/x", "not a database number"),
            ("redis://h/300", "from 0 to 255"),
            ("redis://", "host is missing"),
            ("http://h", "not a Redis URL"),
            ("redis://h?sentinel_password=x", "unknown URL parameter `sentinel_password`"),
            ("redis-sentinel://h/m?password=x", "known for this scheme: sentinel_username, sentinel_password"),
        ] {
            let e = RedisAddress::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
