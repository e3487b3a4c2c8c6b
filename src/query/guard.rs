//! The read-only guard: only one plain query (`SELECT`, `WITH`, `VALUES`) may run.
//!
//! The guard parses the SQL itself so it can name what it refuses; DataFusion's
//! own `SQLOptions` (no DDL, DML or statements) stay on as a second line.
//!
//! Before anything walks a syntax tree, the guard estimates how deep the tree
//! nests from the tokens alone. The parser's recursion limit does not see a
//! chain like `1+1+…+1` (it is parsed in a loop), yet the tree it builds is as
//! deep as the chain is long, and every later pass over it (this guard's
//! visitor, DataFusion's planner and optimizer, even dropping it) recurses
//! without stack protection: 30 000 terms would overflow the stack and abort
//! the process.

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Statement, TableFactor, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// Deepest nesting a query may have, as [`nesting`] estimates it. The query
/// runtime's stack (`QUERY_THREAD_STACK_BYTES`) holds several times this many
/// levels of DataFusion's planner even in a debug build.
pub const MAX_NESTING: usize = 256;

/// Why a statement was refused; the message is shown to the user as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

struct TableFunctions(Option<String>);

impl Visitor for TableFunctions {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let name = match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => Some(name.to_string()),
            TableFactor::Table { name, .. } => {
                let text = name.to_string();
                // `FROM 'file.parquet'`: a path, not a table.
                (text.contains('\'')
                    || text.contains('/')
                    || text.contains('.') && text.contains('"'))
                .then_some(text)
            }
            TableFactor::TableFunction { expr, .. } => Some(expr.to_string()),
            TableFactor::Function { name, .. } => Some(name.to_string()),
            _ => None,
        };
        match name {
            Some(name) => {
                self.0 = Some(name);
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        }
    }
}

/// An upper estimate of how deep the syntax tree of `sql` nests, from its
/// tokens and without recursion.
///
/// Each infix operator (`+`, `AND`, `UNION`, `::`, …) is a punctuation token
/// or a keyword, and adds at most one level to the chain it is in, so every
/// punctuation token and keyword counts one level; identifiers and literals
/// count none. A parenthesis (or bracket) group starts one level below where
/// it opens and counts one level in its parent once closed; a comma starts a
/// sibling (the next argument, column or list item), so the count restarts.
fn nesting(sql: &str) -> Result<usize, Refused> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| Refused(format!("cannot parse the query: {e}")))?;
    // One entry per open group: (its depth, levels counted since its last comma).
    let mut groups: Vec<(usize, usize)> = vec![(0, 0)];
    let mut deepest = 0;
    for token in &tokens {
        let counts = match token {
            Token::Whitespace(_) | Token::EOF => false,
            Token::LParen | Token::LBracket | Token::LBrace => {
                let (depth, run) = groups.last().copied().unwrap_or((0, 0));
                groups.push((depth + run + 1, 0));
                false
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                // An unbalanced closer is the parser's to report.
                if groups.len() > 1 {
                    groups.pop();
                }
                true
            }
            Token::Comma | Token::SemiColon => {
                if let Some(group) = groups.last_mut() {
                    group.1 = 0;
                }
                false
            }
            Token::Word(word) => word.keyword != Keyword::NoKeyword,
            Token::Number(..)
            | Token::Placeholder(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::HexStringLiteral(_) => false,
            _ => true,
        };
        if counts && let Some(group) = groups.last_mut() {
            group.1 += 1;
            deepest = deepest.max(group.0 + group.1);
        }
    }
    Ok(deepest)
}

/// Checks that `sql` is one read-only query over tables; returns why not otherwise.
pub fn check(sql: &str) -> Result<(), Refused> {
    let depth = nesting(sql)?;
    if depth > MAX_NESTING {
        return Err(Refused(format!(
            "the query nests too deeply: about {depth} levels of operators and parentheses, \
             at most {MAX_NESTING}; shorten long chains (many ORs of one column are one IN (…))"
        )));
    }
    let mut statements =
        DFParser::parse_sql(sql).map_err(|e| Refused(format!("cannot parse the query: {e}")))?;
    if statements.len() != 1 {
        return Err(Refused(format!(
            "send exactly one statement (got {})",
            statements.len()
        )));
    }
    let Some(statement) = statements.pop_front() else {
        return Err(Refused("send exactly one statement (got 0)".into()));
    };
    let statement = match statement {
        DfStatement::Statement(statement) => statement,
        DfStatement::CreateExternalTable(_) => {
            return Err(Refused(
                "CREATE EXTERNAL TABLE is not allowed: the query interface is read-only".into(),
            ));
        }
        DfStatement::CopyTo(_) => {
            return Err(Refused(
                "COPY is not allowed: the query interface is read-only".into(),
            ));
        }
        DfStatement::Explain(_) | DfStatement::Reset(_) => {
            return Err(Refused(
                "only queries (SELECT / WITH / VALUES) are allowed".into(),
            ));
        }
    };
    let kind = match statement.as_ref() {
        Statement::Query(_) => None,
        Statement::Insert(_)
        | Statement::Update { .. }
        | Statement::Delete(_)
        | Statement::Merge { .. }
        | Statement::Truncate { .. } => {
            Some("data changes (INSERT, UPDATE, DELETE, MERGE, TRUNCATE)")
        }
        Statement::CreateTable(_)
        | Statement::CreateView { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateFunction(_)
        | Statement::CreateIndex(_)
        | Statement::Drop { .. }
        | Statement::DropFunction(_)
        | Statement::AlterTable(_) => Some("schema changes (CREATE, DROP, ALTER)"),
        Statement::Copy { .. } => Some("COPY"),
        Statement::Set(_) => Some("SET"),
        _ => Some("this statement"),
    };
    if let Some(kind) = kind {
        return Err(Refused(format!(
            "{kind} is not allowed: the query interface is read-only; send one SELECT"
        )));
    }
    let mut functions = TableFunctions(None);
    let _ = statement.visit(&mut functions);
    if let Some(name) = functions.0 {
        return Err(Refused(format!(
            "`{name}` is not allowed: query the tables `events` and `alerts`, not files or table functions"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_queries_pass() {
        for sql in [
            "SELECT count(*) FROM events",
            "WITH x AS (SELECT * FROM alerts) SELECT id FROM x",
            "SELECT e.time FROM events e JOIN alerts a ON e.identity_key = a.identity_key",
            "SELECT 1",
        ] {
            assert_eq!(check(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn nesting_counts_operators_and_groups_not_names_or_siblings() {
        let depth = |sql: &str| nesting(sql).expect(sql);
        assert_eq!(depth("1 + 2 + 3"), 2);
        assert_eq!(depth("a, b, c"), 0);
        assert_eq!(depth("f(a + b, c + d) + 1"), 2);
        assert_eq!(depth("'(' || ')'"), 1);
        assert_eq!(
            depth(&format!("SELECT 1{}", " UNION ALL SELECT 1".repeat(100))),
            301
        );
    }

    #[test]
    fn each_forbidden_kind_is_refused_by_name() {
        let cases = [
            ("INSERT INTO events VALUES (1)", "data changes"),
            ("DELETE FROM events", "data changes"),
            ("UPDATE events SET product = 'x'", "data changes"),
            ("CREATE TABLE t AS SELECT 1", "schema changes"),
            ("CREATE VIEW v AS SELECT 1", "schema changes"),
            ("DROP TABLE events", "schema changes"),
            (
                "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc/'",
                "CREATE EXTERNAL TABLE",
            ),
            ("COPY events TO '/tmp/x.parquet'", "COPY"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("SELECT * FROM read_parquet('/etc/passwd')", "read_parquet"),
            ("SELECT * FROM '/etc/passwd'", "/etc/passwd"),
            ("SELECT 1; SELECT 2", "exactly one statement"),
            ("EXPLAIN SELECT 1", "only queries"),
        ];
        for (sql, expected) in cases {
            let refused = check(sql).expect_err(sql);
            assert!(refused.0.contains(expected), "{sql}: {refused}");
        }
    }

    #[test]
    fn a_30000_term_expression_is_refused_not_a_crash() {
        let sql = format!("SELECT 1{}", " + 1".repeat(30_000));
        let refused = check(&sql).expect_err("a 30 000-term sum must be refused");
        assert!(refused.0.contains("too deeply"), "{refused}");
    }
}
