//! `sluice consume --format`: kcat's output tokens.
//!
//! `%t` topic, `%p` partition, `%o` offset, `%k` key, `%s` value, `%S` value length, `%K` key
//! length, `%T` timestamp (ms), `%h` headers (`k=v,k=v`), `%%` a percent sign, and the escapes
//! `\n`, `\t`, `\\`. The default prints the value alone, one record per line.

use anyhow::bail;

/// One piece of a parsed format string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    Literal(String),
    Topic,
    Partition,
    Offset,
    Key,
    KeyLength,
    Value,
    ValueLength,
    Timestamp,
    Headers,
}

/// The fields of one consumed record that a format can print.
pub struct RecordView<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub timestamp_ms: i64,
    pub headers: &'a [(String, Option<Vec<u8>>)],
}

/// A parsed `--format` string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format(Vec<Token>);

impl Default for Format {
    fn default() -> Format {
        Format(vec![Token::Value, Token::Literal("\n".into())])
    }
}

impl Format {
    /// Parses kcat's format language; unknown `%x` tokens are a usage error.
    pub fn parse(text: &str) -> anyhow::Result<Format> {
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    let token = match chars.next() {
                        Some('t') => Token::Topic,
                        Some('p') => Token::Partition,
                        Some('o') => Token::Offset,
                        Some('k') => Token::Key,
                        Some('K') => Token::KeyLength,
                        Some('s') => Token::Value,
                        Some('S') => Token::ValueLength,
                        Some('T') => Token::Timestamp,
                        Some('h') => Token::Headers,
                        Some('%') => {
                            literal.push('%');
                            continue;
                        }
                        Some(other) => bail!("unknown format token %{other}"),
                        None => bail!("format ends with a lone %"),
                    };
                    if !literal.is_empty() {
                        tokens.push(Token::Literal(std::mem::take(&mut literal)));
                    }
                    tokens.push(token);
                }
                '\\' => match chars.next() {
                    Some('n') => literal.push('\n'),
                    Some('t') => literal.push('\t'),
                    Some('\\') => literal.push('\\'),
                    Some(other) => {
                        literal.push('\\');
                        literal.push(other);
                    }
                    None => literal.push('\\'),
                },
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal));
        }
        Ok(Format(tokens))
    }

    /// Appends the rendering of `record` to `out`.
    pub fn render(&self, record: &RecordView<'_>, out: &mut Vec<u8>) {
        use std::io::Write;
        for token in &self.0 {
            // Writing into a Vec cannot fail.
            let _ = match token {
                Token::Literal(text) => out.write_all(text.as_bytes()),
                Token::Topic => out.write_all(record.topic.as_bytes()),
                Token::Partition => write!(out, "{}", record.partition),
                Token::Offset => write!(out, "{}", record.offset),
                Token::Key => out.write_all(record.key.unwrap_or_default()),
                Token::KeyLength => write!(out, "{}", record.key.map_or(-1, |k| k.len() as i64)),
                Token::Value => out.write_all(record.value.unwrap_or_default()),
                Token::ValueLength => {
                    write!(out, "{}", record.value.map_or(-1, |v| v.len() as i64))
                }
                Token::Timestamp => write!(out, "{}", record.timestamp_ms),
                Token::Headers => {
                    for (i, (key, value)) in record.headers.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(key.as_bytes());
                        out.push(b'=');
                        out.extend_from_slice(value.as_deref().unwrap_or_default());
                    }
                    Ok(())
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(format: &str) -> String {
        let headers = vec![
            ("h1".to_string(), Some(b"v1".to_vec())),
            ("h2".to_string(), None),
        ];
        let record = RecordView {
            topic: "orders",
            partition: 3,
            offset: 42,
            key: Some(b"k"),
            value: Some(b"hello"),
            timestamp_ms: 1_700_000_000_000,
            headers: &headers,
        };
        let mut out = Vec::new();
        Format::parse(format)
            .expect("valid format")
            .render(&record, &mut out);
        String::from_utf8(out).expect("utf8")
    }

    // Goal: every kcat token and escape renders as kcat would.
    #[test]
    fn tokens_render() {
        assert_eq!(
            render("%t/%p@%o %k=%s (%S,%K) %T [%h]\\n"),
            "orders/3@42 k=hello (5,1) 1700000000000 [h1=v1,h2=]\n"
        );
        assert_eq!(render("100%%\\t\\\\"), "100%\t\\");
        let mut out = Vec::new();
        let record = RecordView {
            topic: "t",
            partition: 0,
            offset: 0,
            key: None,
            value: Some(b"v"),
            timestamp_ms: 0,
            headers: &[],
        };
        Format::default().render(&record, &mut out);
        assert_eq!(out, b"v\n");
    }

    // Goal: unknown tokens are usage errors, not silently printed.
    #[test]
    fn bad_tokens_rejected() {
        assert!(Format::parse("%x").is_err());
        assert!(Format::parse("trailing %").is_err());
    }
}
