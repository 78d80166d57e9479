//! What a client saw of one notification (a `Seen`: its sequence number and when it arrived),
//! read from the Socket.IO packet that carried it.

/// One received notification: its sequence number and when it arrived (unix microseconds).
pub type Seen = (u64, u64);

/// The unsigned integer after `key` in `text`.
pub fn field(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits: &str = &text[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sequence_number() {
        assert_eq!(field(r#"42["notification",{"userId":"b1","seq":17,"ts":5}]"#, "\"seq\":"), Some(17));
        assert_eq!(field(r#"42["notification",{}]"#, "\"seq\":"), None);
    }
}
