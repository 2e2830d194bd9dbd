//! One-line error reports for the command-line tools (feature `proto`).

/// `error: cause: cause ...`, skipping a cause whose text the report already
/// holds (error types that print their source, then name it as a source,
/// would otherwise repeat it).
pub fn error_report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading config: {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn causes_are_not_repeated() {
        let e = Outer { source: std::io::Error::other("no such file") };
        assert_eq!(error_report(&e), "reading config: no such file");
    }
}
