//! Engine.IO session ids.

use std::fmt;

/// A session id: 20 characters of URL-safe base64 (120 random bits), kept inline. When several
/// instances share sessions, the first [`TAG_LEN`] characters name the instance holding it
/// (the other 16, 96 random bits, keep it unguessable).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sid([u8; 20]);

/// Characters of an instance tag at the start of a session id.
pub const TAG_LEN: usize = 4;

/// A random instance tag (24 bits). Two instances sharing one still work: a forwarded request
/// goes to both, and the asking instance waits for the answer of the one holding the session.
pub fn instance_tag() -> [u8; TAG_LEN] {
    let sid = Sid::random();
    sid.0[..TAG_LEN].try_into().expect("TAG_LEN characters")
}

impl Sid {
    /// A random id, starting with `tag` when there is one.
    pub fn tagged(tag: Option<&[u8; TAG_LEN]>) -> Self {
        let mut sid = Self::random();
        if let Some(tag) = tag {
            sid.0[..TAG_LEN].copy_from_slice(tag);
        }
        sid
    }

    /// The instance tag it starts with (meaningful when sessions are shared).
    pub fn tag(&self) -> &[u8; TAG_LEN] {
        self.0[..TAG_LEN].try_into().expect("TAG_LEN characters")
    }

    pub fn random() -> Self {
        let mut raw = [0u8; 15];
        getrandom::fill(&mut raw).expect("the OS random source");
        let mut out = [0u8; 20];
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_slice(raw, &mut out).expect("15 bytes are 20 characters");
        Self(out)
    }

    pub fn parse(s: &str) -> Option<Self> {
        let bytes: [u8; 20] = s.as_bytes().try_into().ok()?;
        bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_').then_some(Self(bytes))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("base64 is ASCII")
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({})", self.as_str())
    }
}
