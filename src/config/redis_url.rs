//! `redis.url` read as one server or as a Sentinel set naming a master (a cluster URL is
//! fred's to read).

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
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisAddress {
    pub target: RedisTarget,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The database every connection selects (`/2`); `None` leaves Redis's default, 0.
    pub database: Option<u8>,
}

const DEFAULT_PORT: u16 = 6379;
const DEFAULT_SENTINEL_PORT: u16 = 26379;

impl RedisAddress {
    /// Reads `redis://[user:password@]host[:port][/db]` or
    /// `redis-sentinel://[user:password@]host[:port][,host[:port]...]/master[/db]`. The
    /// credentials and the database are the master's; Sentinels are asked without them.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url.split_once("://").ok_or("no scheme")?;
        let sentinel = match scheme {
            "redis" => false,
            "redis-sentinel" => true,
            other => return Err(format!("herald's own connections do not speak `{other}://`")),
        };
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((c, r)) => (Some(c), r),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let (username, password) = match credentials {
            None => (None, None),
            Some(c) => match c.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| decode(u)), Some(decode(p))),
                None => (None, Some(decode(c))),
            },
        };
        let default_port = if sentinel { DEFAULT_SENTINEL_PORT } else { DEFAULT_PORT };
        let mut servers = Vec::new();
        for host in hosts.split(',') {
            servers.push(host_port(host, default_port)?);
        }
        let path = path.trim_end_matches('/');
        let (target, database) = if sentinel {
            let (master, database) = match path.split_once('/') {
                Some((master, db)) => (decode(master), Some(db)),
                None => (decode(path), None),
            };
            if master.is_empty() {
                return Err("a Sentinel URL names its master after the hosts: redis-sentinel://host:port,host:port/mymaster".into());
            }
            (RedisTarget::Sentinel { sentinels: servers, master }, database)
        } else {
            if servers.len() != 1 {
                return Err("redis:// names one server (a Sentinel set is redis-sentinel://, a cluster redis-cluster://)".into());
            }
            let (host, port) = servers.remove(0);
            (RedisTarget::Server { host, port }, (!path.is_empty()).then_some(path))
        };
        let database = database.map(parse_database).transpose()?.filter(|db| *db != 0);
        Ok(Self { target, username, password, database })
    }
}

/// The database number of a URL's path, 0 to 255 (Redis has 16 unless configured otherwise).
pub fn parse_database(path: &str) -> Result<u8, String> {
    path.parse().map_err(|_| format!("`/{path}` is not a database number from 0 to 255 (redis://host:6379/2 selects database 2)"))
}

/// A `redis-cluster://` URL's database, which can only be 0: a cluster has no other.
pub fn check_cluster_database(url: &str) -> Result<(), String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    match rest.split_once('/').map(|(_, path)| path.trim_end_matches('/')) {
        None | Some("") => Ok(()),
        Some(path) => match parse_database(path)? {
            0 => Ok(()),
            db => Err(format!("Redis Cluster has only database 0, not {db}: remove `/{path}`")),
        },
    }
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
        let a = RedisAddress::parse("redis://app:p%40ss@redis/2?x=1").unwrap();
        assert_eq!(a.target, RedisTarget::Server { host: "redis".into(), port: 6379 });
        assert_eq!((a.username.as_deref(), a.password.as_deref()), (Some("app"), Some("p@ss")));
        assert_eq!(a.database, Some(2));
        assert_eq!(RedisAddress::parse("redis://:secret@h").unwrap().password.as_deref(), Some("secret"));
        assert_eq!(RedisAddress::parse("redis://h/0").unwrap().database, None, "0 is the default: nothing to select");
        assert_eq!(RedisAddress::parse("redis://h/").unwrap().database, None);
        assert_eq!(RedisAddress::parse("redis-sentinel://s1/mymaster/3").unwrap().database, Some(3));
        assert_eq!(RedisAddress::parse("redis://[::1]:7000").unwrap().target, RedisTarget::Server { host: "::1".into(), port: 7000 });

        let s = RedisAddress::parse("redis-sentinel://:pw@10.0.0.1:26380,10.0.0.2,s3:5000/mymaster").unwrap();
        assert_eq!(
            s.target,
            RedisTarget::Sentinel {
                sentinels: vec![("10.0.0.1".into(), 26380), ("10.0.0.2".into(), 26379), ("s3".into(), 5000)],
                master: "mymaster".into()
            }
        );
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!(s.database, None);
    }

    #[test]
    fn a_cluster_has_only_database_zero() {
        assert_eq!(check_cluster_database("redis-cluster://h:7000?node=h:7001"), Ok(()));
        assert_eq!(check_cluster_database("redis-cluster://u:p@h:7000/0"), Ok(()));
        assert!(check_cluster_database("redis-cluster://h:7000/2?node=h:7001").unwrap_err().contains("only database 0"));
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
            ("http://h", "do not speak"),
        ] {
            let e = RedisAddress::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
