//! Users and their MAAS-style API keys (`consumer_key:token_key:token_secret`).

use crate::crypto::{random_token, sha256_hex};
use crate::{Store, StoreError, now_ms, unique_violation};
use ingot_types::UserId;
use sqlx::Row;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub is_admin: bool,
}

/// A stored key: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub consumer_key: String,
    pub token_key: String,
    pub name: String,
}

/// A key as issued: the only moment the secret exists outside the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedApiKey {
    pub consumer_key: String,
    pub token_key: String,
    pub token_secret: String,
}

impl IssuedApiKey {
    /// The MAAS form `consumer_key:token_key:token_secret`.
    pub fn as_maas_key(&self) -> String {
        format!(
            "{}:{}:{}",
            self.consumer_key, self.token_key, self.token_secret
        )
    }
}

fn user_from_row(row: &sqlx::any::AnyRow) -> Result<User, StoreError> {
    Ok(User {
        id: UserId(row.try_get("id")?),
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        is_admin: row.try_get::<i64, _>("is_admin")? != 0,
    })
}

impl Store {
    pub async fn create_user(&self, username: &str, is_admin: bool) -> Result<User, StoreError> {
        let row = sqlx::query(
            "INSERT INTO users (username, is_admin, created_at) VALUES ($1, $2, $3) \
             RETURNING id, username, email, is_admin",
        )
        .bind(username)
        .bind(i64::from(is_admin))
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| unique_violation(e, "user", "username", username))?;
        user_from_row(&row)
    }

    pub async fn user_by_name(&self, username: &str) -> Result<User, StoreError> {
        let row =
            sqlx::query("SELECT id, username, email, is_admin FROM users WHERE username = $1")
                .bind(username)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "user",
                    id: username.to_owned(),
                })?;
        user_from_row(&row)
    }

    pub async fn user(&self, id: UserId) -> Result<User, StoreError> {
        let row = sqlx::query("SELECT id, username, email, is_admin FROM users WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "user",
                id: id.to_string(),
            })?;
        user_from_row(&row)
    }

    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query("SELECT id, username, email, is_admin FROM users ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Issues a new API key for the user. The secret is returned once and stored hashed.
    pub async fn create_api_key(
        &self,
        user: UserId,
        name: &str,
    ) -> Result<IssuedApiKey, StoreError> {
        let key = IssuedApiKey {
            consumer_key: random_token(18),
            token_key: random_token(18),
            token_secret: random_token(32),
        };
        sqlx::query(
            "INSERT INTO api_keys (user_id, consumer_key, token_key, secret_sha256, name, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(user.0)
        .bind(&key.consumer_key)
        .bind(&key.token_key)
        .bind(sha256_hex(&key.token_secret))
        .bind(name)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(key)
    }

    pub async fn list_api_keys(&self, user: UserId) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT consumer_key, token_key, name FROM api_keys WHERE user_id = $1 ORDER BY id",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiKey {
                    consumer_key: r.try_get("consumer_key")?,
                    token_key: r.try_get("token_key")?,
                    name: r.try_get("name")?,
                })
            })
            .collect()
    }

    pub async fn delete_api_key(&self, user: UserId, token_key: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM api_keys WHERE user_id = $1 AND token_key = $2")
            .bind(user.0)
            .bind(token_key)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "api key",
                id: token_key.to_owned(),
            });
        }
        Ok(())
    }

    /// Checks a presented key. `consumer_key` is checked when given (MAAS OAuth sends it).
    /// Returns None for any mismatch, without saying which part was wrong.
    pub async fn authenticate_api_key(
        &self,
        consumer_key: Option<&str>,
        token_key: &str,
        token_secret: &str,
    ) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(
            "SELECT u.id, u.username, u.email, u.is_admin, k.consumer_key, k.secret_sha256 \
             FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.token_key = $1",
        )
        .bind(token_key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("secret_sha256")?;
        let presented = sha256_hex(token_secret);
        let secret_ok: bool = stored.as_bytes().ct_eq(presented.as_bytes()).into();
        let ck: String = row.try_get("consumer_key")?;
        let consumer_ok = consumer_key.is_none_or(|c| c == ck);
        if secret_ok && consumer_ok {
            Ok(Some(user_from_row(&row)?))
        } else {
            Ok(None)
        }
    }
}
