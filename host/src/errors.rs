//! Errors as people read them: shared by the CLI and the API, so that neither imports the
//! other.

/// An error and its causes on one line, each cause said once: many errors (ours, sqlx's,
/// serde's) already include their cause's text in their own, and printing the chain as it
/// is would repeat it.
pub fn say_once<'a>(chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>) -> String {
    let mut out = String::new();
    for cause in chain {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::say_once;

    #[test]
    fn a_cause_already_in_its_parents_text_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(io)
            .context("error communicating with database: Connection refused")
            .context("opening the queue");
        assert_eq!(
            say_once(e.chain()),
            "opening the queue: error communicating with database: Connection refused"
        );
    }
}
