//! SQLite's parameter markers in PostgreSQL's spelling.
//!
//! The store's SQL is written for SQLite: `?NNN` names parameter NNN, and a
//! bare `?` is one more than the largest number used so far (SQLite's rule).
//! PostgreSQL only knows `$N`. Markers inside string literals ('…', with ''
//! as an escaped quote), quoted identifiers ("…") and comments (`--` to the
//! end of the line, `/* … */`) are text, not markers, and stay as they are.

/// `sql` with every SQLite parameter marker written as `$N`.
pub(crate) fn rewrite(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut largest = 0usize;
    let mut i = 0;
    // Copied verbatim up to here; everything in between is ASCII-delimited,
    // so slicing at these indices stays on char boundaries.
    let mut copied = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => i = skip_quoted(bytes, i),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |n| i + n);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2);
            }
            b'?' => {
                out.push_str(&sql[copied..i]);
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let number = if digits == 0 {
                    largest + 1
                } else {
                    // More digits than a usize holds cannot be a real
                    // parameter; leave the text for the server to reject.
                    sql[i + 1..i + 1 + digits].parse().unwrap_or(usize::MAX)
                };
                if number == usize::MAX {
                    out.push_str(&sql[i..i + 1 + digits]);
                } else {
                    largest = largest.max(number);
                    out.push('$');
                    out.push_str(&number.to_string());
                }
                i += 1 + digits;
                copied = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    out
}

/// Index just past the literal or identifier that opens at `start`; a
/// doubled quote inside is an escaped quote, not the end.
fn skip_quoted(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn numbered_markers_become_dollar_numbers() {
        assert_eq!(
            rewrite("UPDATE t SET a = ?2 WHERE id = ?1 AND b = ?12"),
            "UPDATE t SET a = $2 WHERE id = $1 AND b = $12"
        );
    }

    #[test]
    fn bare_markers_count_on_from_the_largest_so_far() {
        assert_eq!(rewrite("VALUES (?, ?, ?)"), "VALUES ($1, $2, $3)");
        // SQLite: a bare ? after ?5 is 6, and ?2 later does not reset it.
        assert_eq!(rewrite("(?5, ?, ?2, ?)"), "($5, $6, $2, $7)");
    }

    #[test]
    fn markers_inside_literals_identifiers_and_comments_stay() {
        assert_eq!(
            rewrite(
                "SELECT '?', 'it''s ?1', \"col?\" FROM t WHERE a = ? -- is ?2 here?\nAND b = ?"
            ),
            "SELECT '?', 'it''s ?1', \"col?\" FROM t WHERE a = $1 -- is ?2 here?\nAND b = $2"
        );
        assert_eq!(
            rewrite("SELECT /* ?1 */ ?1, '/* ?' || ?2"),
            "SELECT /* ?1 */ $1, '/* ?' || $2"
        );
    }

    #[test]
    fn unterminated_quotes_and_comments_end_at_the_end() {
        assert_eq!(rewrite("SELECT 'open ?1"), "SELECT 'open ?1");
        assert_eq!(rewrite("SELECT ?1 /* open ?2"), "SELECT $1 /* open ?2");
        assert_eq!(rewrite("SELECT ?1 -- ?2"), "SELECT $1 -- ?2");
    }

    #[test]
    fn text_without_markers_is_unchanged_including_non_ascii() {
        let sql = "SELECT 'héllo ✓' AS \"ünï\", 1 - -2";
        assert_eq!(rewrite(sql), sql);
    }
}
