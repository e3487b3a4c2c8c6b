//! The read-only guard: only one plain query (`SELECT`, `WITH`, `VALUES`) may run.
//!
//! The guard parses the SQL itself so it can name what it refuses; DataFusion's
//! own `SQLOptions` (no DDL, DML or statements) stay on as a second line.

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Statement, TableFactor, Visit, Visitor};

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

/// Checks that `sql` is one read-only query over tables; returns why not otherwise.
pub fn check(sql: &str) -> Result<(), Refused> {
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
}
