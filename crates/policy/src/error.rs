//! The errors of the policy crate.

/// What can go wrong while loading or evaluating policies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A policy or data file could not be read, parsed or compiled. The
    /// message is a single line.
    #[error("cannot load policy file {file}: {message}")]
    Load {
        /// The file concerned (its path, or `embedded:<path>` for the
        /// policies compiled into the binary).
        file: String,
        /// What is wrong with it, on one line.
        message: String,
    },
    /// A decision could not be evaluated, or the policy returned something
    /// other than `{"allow": bool, "reason": string}`.
    #[error("policy evaluation failed: {0}")]
    Eval(String),
    /// The protobuf descriptors given to the layer could not be decoded.
    #[error("invalid protobuf descriptors: {0}")]
    Descriptors(String),
}

/// Collapses a multi-line error into one line. regorus prints
/// `--> file:line:col`, the offending source line with a caret under it, and
/// `error: text`; this gives `file:line:col: text` (other lines that carry
/// text are kept, joined with ` | `).
pub(crate) fn one_line(message: &str) -> String {
    let mut location = None;
    let mut parts: Vec<&str> = Vec::new();
    for line in message.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(loc) = line.strip_prefix("-->") {
            location.get_or_insert(loc.trim());
            continue;
        }
        // Source excerpt lines look like `3 | text` or `| ^`.
        if let Some((gutter, _)) = line.split_once('|')
            && gutter.trim().chars().all(|c| c.is_ascii_digit())
        {
            continue;
        }
        parts.push(line.strip_prefix("error:").map_or(line, str::trim_start));
    }
    let text = if parts.is_empty() {
        message.trim().replace('\n', " ")
    } else {
        parts.join(" | ")
    };
    match location {
        Some(loc) => format!("{loc}: {text}"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn regorus_message_on_one_line() {
        let m = "--> a.rego:3:5\n  |\n3 | x := y\n  |      ^\nerror: var y is unsafe\n";
        assert_eq!(one_line(m), "a.rego:3:5: var y is unsafe");
        assert_eq!(one_line("plain\nsecond"), "plain | second");
    }
}
