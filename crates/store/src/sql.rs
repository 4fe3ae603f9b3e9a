//! Multi-row statements for both back-ends: the placeholders of a
//! `VALUES (…), (…)` list or an `IN (…)` list, and how many rows fit in one
//! statement.
//!
//! SQLite gets anonymous `?` placeholders: numbered ones (`$1`) are looked
//! up by name, one linear search per parameter, which makes a statement of
//! thousands of parameters quadratic to bind. PostgreSQL needs `$n`.
//!
//! ```
//! use trustmesh_store::Backend;
//! use trustmesh_store::sql::{list, rows};
//! assert_eq!(rows(Backend::Sqlite, 2, 3, 1), "(?, ?, ?), (?, ?, ?)");
//! assert_eq!(rows(Backend::Postgres, 2, 2, 1), "($1, $2), ($3, $4)");
//! assert_eq!(list(Backend::Postgres, 3, 5), "$5, $6, $7");
//! ```

use std::fmt::Write as _;

use sqlx::AnyConnection;

use crate::Backend;

/// The most bound parameters one SQLite statement takes
/// (`SQLITE_MAX_VARIABLE_NUMBER` since SQLite 3.32); PostgreSQL takes 65,535.
pub const MAX_PARAMETERS: usize = 32_766;

/// How many rows of `columns` bound values fit in one statement on both
/// back-ends (at least one).
pub fn max_rows(columns: usize) -> usize {
    (MAX_PARAMETERS / columns.max(1)).max(1)
}

/// The back-end `conn` talks to (`None`: a driver this store does not use).
pub fn backend_of(conn: &AnyConnection) -> Option<Backend> {
    match conn.backend_name() {
        "SQLite" => Some(Backend::Sqlite),
        "PostgreSQL" => Some(Backend::Postgres),
        _ => None,
    }
}

/// `count` placeholders separated by commas; on PostgreSQL numbered from
/// `first`.
pub fn list(backend: Backend, count: usize, first: usize) -> String {
    let mut out = String::with_capacity(count * 4);
    push_list(&mut out, backend, count, first);
    out
}

/// `rows` parenthesised groups of `columns` placeholders, separated by
/// commas (the body of a multi-row `VALUES`); on PostgreSQL numbered from
/// `first`, row after row.
pub fn rows(backend: Backend, rows: usize, columns: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * (columns * 4 + 4));
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        push_list(&mut out, backend, columns, first + row * columns);
        out.push(')');
    }
    out
}

/// `items` padded to the next power of two by repeating the last one (an
/// empty slice stays empty): the keys of an `IN (…)` or `VALUES` list whose
/// repeats change nothing. A statement whose list length varies from call
/// to call has as many shapes as lengths; padded, it has one per power of
/// two. Each new shape costs PostgreSQL a parse and a plan, and sqlx, which
/// caches 100 prepared statements per connection, two more round trips when
/// a miss evicts one.
///
/// ```
/// use trustmesh_store::sql::padded;
/// assert_eq!(padded(&[1, 2, 3]), [&1, &2, &3, &3]);
/// assert_eq!(padded(&[7, 8]), [&7, &8]);
/// ```
pub fn padded<T>(items: &[T]) -> Vec<&T> {
    let Some(last) = items.last() else {
        return Vec::new();
    };
    let width = items.len().next_power_of_two();
    items
        .iter()
        .chain(std::iter::repeat_n(last, width - items.len()))
        .collect()
}

fn push_list(out: &mut String, backend: Backend, count: usize, first: usize) {
    for i in 0..count {
        if i > 0 {
            out.push_str(", ");
        }
        match backend {
            Backend::Sqlite => out.push('?'),
            Backend::Postgres => {
                // Writing to a String cannot fail.
                let _ = write!(out, "${}", first + i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        assert_eq!(list(Backend::Sqlite, 0, 1), "");
        assert_eq!(list(Backend::Sqlite, 3, 1), "?, ?, ?");
        assert_eq!(
            rows(Backend::Postgres, 2, 3, 2),
            "($2, $3, $4), ($5, $6, $7)"
        );
        assert_eq!(max_rows(12), 2_730);
        assert_eq!(max_rows(0), MAX_PARAMETERS);
    }

    #[test]
    fn padding_repeats_the_last_item_up_to_a_power_of_two() {
        assert!(padded::<u8>(&[]).is_empty());
        assert_eq!(padded(&[1]), [&1]);
        let five: Vec<u32> = (1..=5).collect();
        assert_eq!(padded(&five), [&1, &2, &3, &4, &5, &5, &5, &5]);
        let many: Vec<u32> = (0..513).collect();
        assert_eq!(padded(&many).len(), 1_024);
    }
}
