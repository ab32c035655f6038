//! The only crate that knows SQL: schema, migrations, queries for SQLite and PostgreSQL.
