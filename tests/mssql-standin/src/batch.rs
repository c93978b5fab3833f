//! Splits a T-SQL batch into statements. T-SQL needs no semicolons between
//! statements, so a statement also ends where the next statement's leading
//! keyword starts at parenthesis depth 0 (outside CASE … END).

/// A lexical token with its byte range in the batch.
#[derive(Debug, Clone, PartialEq)]
struct Tok {
    word: Option<String>,
    start: usize,
    end: usize,
    ch: char,
}

fn lex(sql: &str) -> Vec<Tok> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                i += 1;
            }
            i = (i + 2).min(b.len());
        } else if c == b'\'' || ((c == b'N' || c == b'n') && b.get(i + 1) == Some(&b'\'')) {
            let start = i;
            i += if c == b'\'' { 1 } else { 2 };
            while i < b.len() {
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            out.push(Tok {
                word: None,
                start,
                end: i,
                ch: '\'',
            });
        } else if c == b'[' || c == b'"' {
            let close = if c == b'[' { b']' } else { b'"' };
            let start = i;
            i += 1;
            while i < b.len() {
                if b[i] == close {
                    if b.get(i + 1) == Some(&close) {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            out.push(Tok {
                word: None,
                start,
                end: i,
                ch: '"',
            });
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'@' || c == b'#' || c >= 0x80 {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'_'
                    || b[i] == b'@'
                    || b[i] == b'#'
                    || b[i] == b'$'
                    || b[i] >= 0x80)
            {
                i += 1;
            }
            out.push(Tok {
                word: Some(sql[start..i].to_ascii_uppercase()),
                start,
                end: i,
                ch: 'w',
            });
        } else {
            out.push(Tok {
                word: None,
                start: i,
                end: i + 1,
                ch: c as char,
            });
            i += 1;
        }
    }
    out
}

const STARTERS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "SET",
    "DECLARE",
    "EXEC",
    "EXECUTE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVE",
    "CREATE",
    "ALTER",
    "DROP",
    "IF",
    "ELSE",
    "END",
    "PRINT",
    "WITH",
    "TRUNCATE",
    "RETURN",
    "WHILE",
    "RAISERROR",
    "THROW",
    "USE",
];

/// One statement or control word (IF condition, ELSE, BEGIN, END) of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    /// Upper-cased leading word.
    pub head: String,
}

/// Splits a batch into pieces. `IF cond` and `ELSE`, `BEGIN` and `END` of
/// blocks come out as pieces of their own; [`build`] nests them.
pub fn split(sql: &str) -> Vec<Piece> {
    let toks = lex(sql);
    let mut pieces = Vec::new();
    let mut start: Option<usize> = None; // token index where the current piece starts
    let mut depth = 0i32;
    let mut case_depth = 0i32;
    let flush = |pieces: &mut Vec<Piece>, from: usize, to: usize| {
        if from < to {
            let text = sql[toks[from].start..toks[to - 1].end].trim().to_string();
            let head = toks[from].word.clone().unwrap_or_default();
            if !text.is_empty() {
                pieces.push(Piece { text, head });
            }
        }
    };
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        match t.ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ';' if depth == 0 && case_depth == 0 => {
                if let Some(s) = start.take() {
                    flush(&mut pieces, s, i);
                }
                i += 1;
                continue;
            }
            _ => {}
        }
        let word = t.word.as_deref();
        if word == Some("CASE") {
            case_depth += 1;
        } else if word == Some("END") && case_depth > 0 {
            case_depth -= 1;
            i += 1;
            continue;
        }
        if depth == 0 && case_depth == 0 {
            if let Some(w) = word {
                if STARTERS.contains(&w) {
                    let cur_head = start.and_then(|s| toks[s].word.clone()).unwrap_or_default();
                    let prev = if i > 0 {
                        toks[i - 1].word.clone()
                    } else {
                        None
                    };
                    let next = toks.get(i + 1);
                    let continues = start.is_some()
                        && continues_statement(
                            &toks,
                            start.unwrap_or(0),
                            i,
                            w,
                            &cur_head,
                            prev.as_deref(),
                            next,
                        );
                    if !continues {
                        if let Some(s) = start.take() {
                            flush(&mut pieces, s, i);
                        }
                        start = Some(i);
                        // Control words stand alone as pieces.
                        let is_block_begin = w == "BEGIN"
                            && !matches!(
                                next.and_then(|n| n.word.as_deref()),
                                Some("TRAN" | "TRANSACTION" | "DISTRIBUTED")
                            );
                        if w == "ELSE" || w == "END" || is_block_begin {
                            flush(&mut pieces, i, i + 1);
                            start = None;
                            i += 1;
                            continue;
                        }
                    }
                }
            }
        }
        if start.is_none() && t.ch != ';' {
            start = Some(i);
        }
        i += 1;
    }
    if let Some(s) = start {
        flush(&mut pieces, s, toks.len());
    }
    pieces
}

fn continues_statement(
    toks: &[Tok],
    start: usize,
    at: usize,
    w: &str,
    head: &str,
    prev: Option<&str>,
    next: Option<&Tok>,
) -> bool {
    let seen = |kw: &str| {
        toks[start..at]
            .iter()
            .any(|t| t.word.as_deref() == Some(kw))
    };
    // MERGE's WHEN clauses hold UPDATE/INSERT/DELETE; T-SQL ends MERGE with ';'.
    if head == "MERGE" {
        return true;
    }
    // ALTER TABLE t ALTER COLUMN … / DROP COLUMN … / ADD … DEFAULT …
    if head == "ALTER" && matches!(w, "ALTER" | "DROP" | "SET" | "WITH") {
        return true;
    }
    match w {
        "SELECT" => {
            matches!(prev, Some("UNION" | "ALL" | "EXCEPT" | "INTERSECT"))
                || (head == "INSERT" && !seen("VALUES") && !seen("SELECT"))
                || (head == "WITH"
                    && !seen("SELECT")
                    && !seen("INSERT")
                    && !seen("UPDATE")
                    && !seen("DELETE"))
        }
        "SET" => {
            (head == "UPDATE" && !seen("SET"))
                || matches!(prev, Some("DELETE" | "UPDATE" | "DEFAULT"))
        }
        "DELETE" | "UPDATE" => prev == Some("ON") || (head == "WITH" && !seen("SELECT")),
        "INSERT" => head == "WITH" && !seen("SELECT"),
        "WITH" => next.map(|n| n.ch == '(').unwrap_or(false) || matches!(prev, Some("CHECK")),
        "EXEC" | "EXECUTE" => head == "INSERT" && !seen("VALUES") && !seen("SELECT"),
        "END" | "BEGIN" | "ELSE" | "IF" | "CREATE" | "DROP" | "ALTER" => false,
        _ => false,
    }
}

/// A batch as a tree: IF/ELSE and BEGIN … END blocks nested.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Stmt(String),
    If {
        cond: String,
        then: Box<Node>,
        otherwise: Option<Box<Node>>,
    },
    Block(Vec<Node>),
}

/// Nests pieces into nodes; `Err` names a piece that does not fit.
pub fn build(pieces: &[Piece]) -> Result<Vec<Node>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < pieces.len() {
        out.push(node(pieces, &mut pos)?);
    }
    Ok(out)
}

fn node(pieces: &[Piece], pos: &mut usize) -> Result<Node, String> {
    let p = pieces.get(*pos).ok_or("unexpected end of batch")?;
    *pos += 1;
    match p.head.as_str() {
        "IF" => {
            let cond = p.text[2..].trim().to_string();
            let then = node(pieces, pos)?;
            let otherwise = if pieces.get(*pos).map(|p| p.head.as_str()) == Some("ELSE") {
                *pos += 1;
                Some(Box::new(node(pieces, pos)?))
            } else {
                None
            };
            Ok(Node::If {
                cond,
                then: Box::new(then),
                otherwise,
            })
        }
        "BEGIN" if p.text.eq_ignore_ascii_case("BEGIN") => {
            let mut body = Vec::new();
            loop {
                match pieces.get(*pos) {
                    None => return Err("BEGIN without END".into()),
                    Some(q) if q.head == "END" => {
                        *pos += 1;
                        break;
                    }
                    Some(_) => body.push(node(pieces, pos)?),
                }
            }
            Ok(Node::Block(body))
        }
        "ELSE" | "END" => Err(p.text.clone()),
        _ => Ok(Node::Stmt(p.text.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<String> {
        split(sql).into_iter().map(|p| p.text).collect()
    }

    #[test]
    fn splits_statements_without_semicolons() {
        assert_eq!(
            texts("SET NOCOUNT ON SELECT 1 SELECT 'a;b' ; UPDATE t SET a = 1 WHERE b = 2"),
            [
                "SET NOCOUNT ON",
                "SELECT 1",
                "SELECT 'a;b'",
                "UPDATE t SET a = 1 WHERE b = 2"
            ]
        );
        assert_eq!(
            texts("INSERT INTO t (a) SELECT b FROM u UNION ALL SELECT 2 DECLARE @id int EXEC @id = p 'x'"),
            ["INSERT INTO t (a) SELECT b FROM u UNION ALL SELECT 2", "DECLARE @id int", "EXEC @id = p 'x'"]
        );
        assert_eq!(
            texts("SELECT CASE WHEN a = 1 THEN 'x' ELSE 'y' END FROM t WITH (NOLOCK)"),
            ["SELECT CASE WHEN a = 1 THEN 'x' ELSE 'y' END FROM t WITH (NOLOCK)"]
        );
    }

    #[test]
    fn nests_if_else_and_blocks() {
        let nodes = build(&split(
            "IF OBJECT_ID('t') IS NOT NULL DROP TABLE t ELSE BEGIN SELECT 1 SELECT 2 END SELECT 3",
        ))
        .unwrap();
        assert_eq!(nodes.len(), 2);
        match &nodes[0] {
            Node::If {
                cond,
                then,
                otherwise,
            } => {
                assert_eq!(cond, "OBJECT_ID('t') IS NOT NULL");
                assert_eq!(**then, Node::Stmt("DROP TABLE t".into()));
                assert!(matches!(otherwise.as_deref(), Some(Node::Block(b)) if b.len() == 2));
            }
            other => panic!("{other:?}"),
        }
    }
}
