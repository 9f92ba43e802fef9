//! The only place SQL text is built. Names come from the schema (already checked
//! by the request model), values are always bound parameters.

use rusqlite::types::Value;

use super::request::{Filter, ReadRequest, Scalar, WriteRequest};
use super::schema;

/// A statement and its bound parameters.
pub struct Statement {
    pub sql: String,
    pub params: Vec<Value>,
}

fn bind(v: &Scalar) -> Value {
    match v {
        Scalar::Integer(i) => Value::Integer(*i),
        Scalar::Text(s) => Value::Text(s.clone()),
    }
}

fn where_clause(filter: &Filter, params: &mut Vec<Value>) -> String {
    if filter.0.is_empty() {
        return String::new();
    }
    let terms: Vec<String> = filter
        .0
        .iter()
        .map(|c| {
            params.push(bind(&c.value));
            format!("\"{}\" {} ?{}", c.column, c.op.sql(), params.len())
        })
        .collect();
    format!(" WHERE {}", terms.join(" AND "))
}

pub fn select(r: &ReadRequest) -> Statement {
    let mut params = Vec::new();
    let projection = if r.count {
        "COUNT(*) AS \"count\"".to_string()
    } else if r.columns.is_empty() {
        let table = schema::table(r.table)
            .map(|t| t.columns)
            .unwrap_or_default();
        quoted(table.iter().map(|c| c.name))
    } else {
        quoted(r.columns.iter().copied())
    };
    let mut sql = format!("SELECT {projection} FROM \"{}\"", r.table);
    sql.push_str(&where_clause(&r.filter, &mut params));
    if !r.order_by.is_empty() && !r.count {
        let order: Vec<String> = r
            .order_by
            .iter()
            .map(|(c, desc)| format!("\"{c}\"{}", if *desc { " DESC" } else { "" }))
            .collect();
        sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
    }
    if !r.count {
        // One row more than the page, so the store can tell whether there are more.
        let peek = r.limit.saturating_add(1);
        params.push(Value::Integer(i64::try_from(peek).unwrap_or(i64::MAX)));
        params.push(Value::Integer(i64::try_from(r.offset).unwrap_or(i64::MAX)));
        sql.push_str(&format!(
            " LIMIT ?{} OFFSET ?{}",
            params.len() - 1,
            params.len()
        ));
    }
    Statement { sql, params }
}

fn quoted<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statements a write runs, in order, inside one transaction.
pub fn write(w: &WriteRequest) -> Vec<Statement> {
    match w {
        WriteRequest::Insert { table, rows } => rows
            .iter()
            .map(|values| {
                let params: Vec<Value> = values.values().map(bind).collect();
                let placeholders: Vec<String> =
                    (1..=params.len()).map(|i| format!("?{i}")).collect();
                Statement {
                    sql: format!(
                        "INSERT INTO \"{table}\" ({}) VALUES ({})",
                        quoted(values.keys().copied()),
                        placeholders.join(", ")
                    ),
                    params,
                }
            })
            .collect(),
        WriteRequest::Delete { table, filter } => {
            let mut params = Vec::new();
            let clause = where_clause(filter, &mut params);
            vec![Statement {
                sql: format!("DELETE FROM \"{table}\"{clause}"),
                params,
            }]
        }
        WriteRequest::Update { table, set, filter } => {
            let mut params: Vec<Value> = set.values().map(bind).collect();
            let assignments: Vec<String> = set
                .keys()
                .enumerate()
                .map(|(i, c)| format!("\"{c}\" = ?{}", i + 1))
                .collect();
            let clause = where_clause(filter, &mut params);
            vec![Statement {
                sql: format!("UPDATE \"{table}\" SET {}{clause}", assignments.join(", ")),
                params,
            }]
        }
        WriteRequest::Clear { table } => {
            let tables: Vec<&str> = match table {
                Some(t) => vec![t],
                None => schema::TABLES.iter().map(|t| t.name).collect(),
            };
            tables
                .into_iter()
                .map(|t| Statement {
                    sql: format!("DELETE FROM \"{t}\""),
                    params: Vec::new(),
                })
                .collect()
        }
        // The store runs a transaction's writes one by one (to report each
        // one's outcome); flattened, they are the same statements in order.
        WriteRequest::Transaction(writes) => writes.iter().flat_map(write).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::request::parse;

    #[test]
    fn select_binds_every_value() {
        let r: ReadRequest = parse(
            br#"{"table":"rides","columns":["ride_id"],"where":{"source":1,"timestamp":{">":"x"}},"order_by":[{"column":"timestamp","desc":true}],"limit":3}"#,
        )
        .expect("valid");
        let s = select(&r);
        assert_eq!(
            s.sql,
            "SELECT \"ride_id\" FROM \"rides\" WHERE \"source\" = ?1 AND \"timestamp\" > ?2 ORDER BY \"timestamp\" DESC LIMIT ?3 OFFSET ?4"
        );
        assert_eq!(s.params[2..], [Value::Integer(4), Value::Integer(0)]);
    }

    #[test]
    fn reads_get_the_default_limit_and_counts_none() {
        let r: ReadRequest = parse(br#"{"table":"users","offset":7}"#).expect("valid");
        let s = select(&r);
        assert!(s.sql.ends_with("LIMIT ?1 OFFSET ?2"), "{}", s.sql);
        assert_eq!(
            s.params,
            vec![
                Value::Integer(crate::db::request::limits::DEFAULT_LIMIT as i64 + 1),
                Value::Integer(7)
            ]
        );
        let c: ReadRequest = parse(br#"{"table":"users","count":true,"limit":0}"#).expect("valid");
        assert_eq!(
            select(&c).sql,
            "SELECT COUNT(*) AS \"count\" FROM \"users\""
        );
    }

    #[test]
    fn update_numbers_set_before_where() {
        let w: WriteRequest = parse(
            br#"{"table":"users","update":{"set":{"password":"p"},"where":{"username":"a"}}}"#,
        )
        .expect("valid");
        let s = &write(&w)[0];
        assert_eq!(
            s.sql,
            "UPDATE \"users\" SET \"password\" = ?1 WHERE \"username\" = ?2"
        );
        assert_eq!(
            s.params,
            vec![Value::Text("p".into()), Value::Text("a".into())]
        );
    }
}
