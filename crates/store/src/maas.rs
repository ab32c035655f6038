//! What the MAAS 2.0 API needs beyond machines and users: OAuth nonces, per-machine
//! metadata credentials, SSH keys, zones, resource pools, tags and password logins.

use crate::crypto::{random_token, sha256_hex};
use crate::users::IssuedApiKey;
use crate::{Store, StoreError, User, now_ms, unique_violation};
use ingot_types::machine::Machine;
use ingot_types::{MachineId, UserId};
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;

/// A zone or a resource pool: both are a name with a description.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NamedGroup {
    pub id: i64,
    pub name: String,
    pub description: String,
}

/// Which kind of [`NamedGroup`]; picks the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    Zone,
    Pool,
}

impl GroupKind {
    fn table(self) -> &'static str {
        match self {
            GroupKind::Zone => "zones",
            GroupKind::Pool => "resource_pools",
        }
    }
    fn noun(self) -> &'static str {
        match self {
            GroupKind::Zone => "zone",
            GroupKind::Pool => "resource pool",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SshKey {
    pub id: i64,
    pub user_id: UserId,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tag {
    pub id: i64,
    pub name: String,
    pub definition: String,
    pub comment: String,
    pub kernel_opts: String,
}

fn group_from_row(r: &sqlx::any::AnyRow) -> Result<NamedGroup, StoreError> {
    Ok(NamedGroup {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
    })
}

fn tag_from_row(r: &sqlx::any::AnyRow) -> Result<Tag, StoreError> {
    Ok(Tag {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        definition: r.try_get("definition")?,
        comment: r.try_get("comment")?,
        kernel_opts: r.try_get("kernel_opts")?,
    })
}

const PBKDF2_ROUNDS: u32 = 100_000;

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // RFC 2104 over SHA-256 (block size 64); written out to keep the store's dependencies as
    // they are.
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// PBKDF2-HMAC-SHA256 with one 32-byte block (RFC 8018).
fn pbkdf2(password: &str, salt: &str, rounds: u32) -> [u8; 32] {
    let mut msg = salt.as_bytes().to_vec();
    msg.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha256(password.as_bytes(), &msg);
    let mut out = u;
    for _ in 1..rounds {
        u = hmac_sha256(password.as_bytes(), &u);
        for (o, b) in out.iter_mut().zip(u) {
            *o ^= b;
        }
    }
    out
}

fn hash_password(password: &str) -> String {
    let salt = random_token(16);
    format!(
        "pbkdf2_sha256${PBKDF2_ROUNDS}${salt}${}",
        hex::encode(pbkdf2(password, &salt, PBKDF2_ROUNDS))
    )
}

fn verify_password(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("pbkdf2_sha256"), Some(rounds), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let Ok(rounds) = rounds.parse::<u32>() else {
        return false;
    };
    let computed = hex::encode(pbkdf2(password, salt, rounds));
    computed.as_bytes().ct_eq(hash.as_bytes()).into()
}

impl Store {
    // ---- OAuth nonces ------------------------------------------------------------------

    /// Remembers `nonce` for `token_key` until `expires_at_ms`. Returns false when the pair
    /// is already remembered (a replay). A pair whose memory has expired is taken over, so
    /// purging can be lazy; expired rows are purged now and then.
    pub async fn record_oauth_nonce(
        &self,
        token_key: &str,
        nonce: &str,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "INSERT INTO oauth_nonces (token_key, nonce, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (token_key, nonce) DO UPDATE SET expires_at = excluded.expires_at \
             WHERE oauth_nonces.expires_at < $4",
        )
        .bind(token_key)
        .bind(nonce)
        .bind(expires_at_ms)
        .bind(now)
        .execute(&self.pool)
        .await?;
        // One request in 64 sweeps the table, keeping it to about one window of nonces.
        if rand::random::<u8>() < 4 {
            sqlx::query("DELETE FROM oauth_nonces WHERE expires_at < $1")
                .bind(now)
                .execute(&self.pool)
                .await?;
        }
        Ok(done.rows_affected() == 1)
    }

    // ---- per-machine metadata credentials ---------------------------------------------

    /// Issues the machine's metadata-service credentials, replacing earlier ones. The secret
    /// exists only in the return value; the store keeps its hash.
    pub async fn issue_metadata_token(&self, id: &MachineId) -> Result<IssuedApiKey, StoreError> {
        self.machine(id).await?;
        let key = IssuedApiKey {
            consumer_key: random_token(18),
            token_key: random_token(18),
            token_secret: random_token(32),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM metadata_tokens WHERE machine_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO metadata_tokens (machine_id, consumer_key, token_key, secret_sha256, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.as_str())
        .bind(&key.consumer_key)
        .bind(&key.token_key)
        .bind(sha256_hex(&key.token_secret))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(key)
    }

    /// The machine whose metadata credentials these are; None for any mismatch.
    pub async fn machine_by_metadata_token(
        &self,
        consumer_key: &str,
        token_key: &str,
        token_secret: &str,
    ) -> Result<Option<Machine>, StoreError> {
        let row = sqlx::query("SELECT machine_id, consumer_key, secret_sha256 FROM metadata_tokens WHERE token_key = $1")
            .bind(token_key)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("secret_sha256")?;
        let secret_ok: bool = stored
            .as_bytes()
            .ct_eq(sha256_hex(token_secret).as_bytes())
            .into();
        let ck: String = row.try_get("consumer_key")?;
        if !secret_ok || ck != consumer_key {
            return Ok(None);
        }
        let id: String = row.try_get("machine_id")?;
        let id = MachineId::parse(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some(self.machine(&id).await?))
    }

    // ---- SSH keys ----------------------------------------------------------------------

    pub async fn add_ssh_key(&self, user: UserId, key: &str) -> Result<SshKey, StoreError> {
        let row = sqlx::query(
            "INSERT INTO ssh_keys (user_id, key, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(user.0)
        .bind(key)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| unique_violation(e, "SSH key", "key", key))?;
        Ok(SshKey {
            id: row.try_get("id")?,
            user_id: user,
            key: key.to_owned(),
        })
    }

    pub async fn ssh_keys(&self, user: UserId) -> Result<Vec<SshKey>, StoreError> {
        let rows = sqlx::query("SELECT id, key FROM ssh_keys WHERE user_id = $1 ORDER BY id")
            .bind(user.0)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SshKey {
                    id: r.try_get("id")?,
                    user_id: user,
                    key: r.try_get("key")?,
                })
            })
            .collect()
    }

    pub async fn delete_ssh_key(&self, user: UserId, id: i64) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM ssh_keys WHERE user_id = $1 AND id = $2")
            .bind(user.0)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "SSH key",
                id: id.to_string(),
            });
        }
        Ok(())
    }

    // ---- zones and resource pools -----------------------------------------------------

    pub async fn groups(&self, kind: GroupKind) -> Result<Vec<NamedGroup>, StoreError> {
        let sql = format!(
            "SELECT id, name, description FROM {} ORDER BY id",
            kind.table()
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(group_from_row).collect()
    }

    pub async fn group_by_name(
        &self,
        kind: GroupKind,
        name: &str,
    ) -> Result<NamedGroup, StoreError> {
        let sql = format!(
            "SELECT id, name, description FROM {} WHERE name = $1",
            kind.table()
        );
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: kind.noun(),
                id: name.to_owned(),
            })?;
        group_from_row(&row)
    }

    pub async fn group_by_id(&self, kind: GroupKind, id: i64) -> Result<NamedGroup, StoreError> {
        let sql = format!(
            "SELECT id, name, description FROM {} WHERE id = $1",
            kind.table()
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: kind.noun(),
                id: id.to_string(),
            })?;
        group_from_row(&row)
    }

    pub async fn create_group(
        &self,
        kind: GroupKind,
        name: &str,
        description: &str,
    ) -> Result<NamedGroup, StoreError> {
        let sql = format!(
            "INSERT INTO {} (name, description, created_at) VALUES ($1, $2, $3) RETURNING id, name, description",
            kind.table()
        );
        let row = sqlx::query(&sql)
            .bind(name)
            .bind(description)
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| unique_violation(e, kind.noun(), "name", name))?;
        group_from_row(&row)
    }

    /// Deletes a zone or pool that no machine is in. Returns `Conflict` when one is.
    pub async fn delete_group(&self, kind: GroupKind, name: &str) -> Result<(), StoreError> {
        let column = match kind {
            GroupKind::Zone => "zone",
            GroupKind::Pool => "pool",
        };
        let mut tx = self.pool.begin().await?;
        let in_use = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM machines WHERE {column} = $1"
        ))
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        if in_use.try_get::<i64, _>("n")? > 0 || name == "default" {
            return Err(StoreError::Conflict {
                kind: kind.noun(),
                field: "name",
                value: format!("{name} (in use)"),
            });
        }
        let done = sqlx::query(&format!("DELETE FROM {} WHERE name = $1", kind.table()))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: kind.noun(),
                id: name.to_owned(),
            });
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- tags --------------------------------------------------------------------------

    pub async fn tags(&self) -> Result<Vec<Tag>, StoreError> {
        let rows =
            sqlx::query("SELECT id, name, definition, comment, kernel_opts FROM tags ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(tag_from_row).collect()
    }

    pub async fn tag(&self, name: &str) -> Result<Tag, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, definition, comment, kernel_opts FROM tags WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "tag",
            id: name.to_owned(),
        })?;
        tag_from_row(&row)
    }

    pub async fn create_tag(
        &self,
        name: &str,
        definition: &str,
        comment: &str,
        kernel_opts: &str,
    ) -> Result<Tag, StoreError> {
        let row = sqlx::query(
            "INSERT INTO tags (name, definition, comment, kernel_opts, created_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id, name, definition, comment, kernel_opts",
        )
        .bind(name)
        .bind(definition)
        .bind(comment)
        .bind(kernel_opts)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| unique_violation(e, "tag", "name", name))?;
        tag_from_row(&row)
    }

    pub async fn update_tag(
        &self,
        name: &str,
        comment: Option<&str>,
        kernel_opts: Option<&str>,
    ) -> Result<Tag, StoreError> {
        let current = self.tag(name).await?;
        sqlx::query("UPDATE tags SET comment = $1, kernel_opts = $2 WHERE name = $3")
            .bind(comment.unwrap_or(&current.comment))
            .bind(kernel_opts.unwrap_or(&current.kernel_opts))
            .bind(name)
            .execute(&self.pool)
            .await?;
        self.tag(name).await
    }

    /// Deletes the tag and takes it off every machine, in one transaction.
    pub async fn delete_tag(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM tags WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "tag",
                id: name.to_owned(),
            });
        }
        let rows = sqlx::query("SELECT id, tags FROM machines")
            .fetch_all(&mut *tx)
            .await?;
        for r in rows {
            let id: String = r.try_get("id")?;
            let tags: String = r.try_get("tags")?;
            let mut list: Vec<String> = serde_json::from_str(&tags)
                .map_err(|e| StoreError::Corrupt(format!("tags: {e}")))?;
            if list.iter().any(|t| t == name) {
                list.retain(|t| t != name);
                let json =
                    serde_json::to_string(&list).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query("UPDATE machines SET tags = $1, updated_at = $2 WHERE id = $3")
                    .bind(json)
                    .bind(now_ms())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- users: e-mail and password logins --------------------------------------------

    pub async fn set_user_email(&self, user: UserId, email: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET email = $1 WHERE id = $2")
            .bind(email)
            .bind(user.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets (or replaces) the user's password; only a salted PBKDF2 hash is stored.
    pub async fn set_password(&self, user: UserId, password: &str) -> Result<(), StoreError> {
        let hash = hash_password(password);
        sqlx::query(
            "INSERT INTO user_passwords (user_id, hash) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE SET hash = excluded.hash",
        )
        .bind(user.0)
        .bind(hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The user these credentials belong to; None for an unknown user, a user without a
    /// password, or a wrong password (indistinguishable to the caller).
    pub async fn check_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(
            "SELECT u.id, p.hash FROM users u JOIN user_passwords p ON p.user_id = u.id WHERE u.username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            // Spend the same time as a real check so timing does not reveal user names.
            let _ = verify_password(password, &hash_password("x"));
            return Ok(None);
        };
        let hash: String = row.try_get("hash")?;
        if !verify_password(password, &hash) {
            return Ok(None);
        }
        Ok(Some(self.user(UserId(row.try_get("id")?)).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_and_pbkdf2_match_published_vectors() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // PBKDF2-HMAC-SHA256, P="password", S="salt", c=2 (RFC 7914 lineage vectors).
        assert_eq!(
            hex::encode(pbkdf2("password", "salt", 2)),
            "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"
        );
    }

    #[test]
    fn password_hashes_verify_and_differ() {
        let a = hash_password("hunter2");
        assert!(verify_password("hunter2", &a));
        assert!(!verify_password("hunter3", &a));
        assert_ne!(a, hash_password("hunter2"), "salted");
        assert!(!verify_password("hunter2", "garbage"));
    }

    async fn suite(db: &crate::testing::TestDb) {
        let s = &db.store;
        // Nonces: a repeat is refused while remembered, taken over once expired.
        let later = now_ms() + 60_000;
        assert!(s.record_oauth_nonce("tk", "n1", later).await.unwrap());
        assert!(
            !s.record_oauth_nonce("tk", "n1", later).await.unwrap(),
            "replay"
        );
        assert!(
            s.record_oauth_nonce("other", "n1", later).await.unwrap(),
            "per token"
        );
        assert!(
            s.record_oauth_nonce("tk", "old", now_ms() - 1)
                .await
                .unwrap()
        );
        assert!(
            s.record_oauth_nonce("tk", "old", later).await.unwrap(),
            "expired memory"
        );
        assert!(!s.record_oauth_nonce("tk", "old", later).await.unwrap());

        // Metadata credentials name their machine; issuing again replaces them.
        let m = s
            .create_machine(ingot_types::machine::NewMachine::default(), "test")
            .await
            .unwrap();
        let k1 = s.issue_metadata_token(&m.id).await.unwrap();
        let found = s
            .machine_by_metadata_token(&k1.consumer_key, &k1.token_key, &k1.token_secret)
            .await
            .unwrap();
        assert_eq!(found.map(|x| x.id), Some(m.id.clone()));
        assert!(
            s.machine_by_metadata_token(&k1.consumer_key, &k1.token_key, "x")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            s.machine_by_metadata_token("x", &k1.token_key, &k1.token_secret)
                .await
                .unwrap()
                .is_none()
        );
        let k2 = s.issue_metadata_token(&m.id).await.unwrap();
        assert!(
            s.machine_by_metadata_token(&k1.consumer_key, &k1.token_key, &k1.token_secret)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            s.machine_by_metadata_token(&k2.consumer_key, &k2.token_key, &k2.token_secret)
                .await
                .unwrap()
                .is_some()
        );

        // Tags: deleting one takes it off machines.
        s.create_tag("gpu", "", "", "").await.unwrap();
        assert!(matches!(
            s.create_tag("gpu", "", "", "").await,
            Err(StoreError::Conflict { .. })
        ));
        let tags = vec!["gpu".to_owned(), "keep".to_owned()];
        s.update_machine_fields(&m.id, None, None, None, Some(&tags))
            .await
            .unwrap();
        s.delete_tag("gpu").await.unwrap();
        assert_eq!(
            s.machine(&m.id).await.unwrap().tags,
            vec!["keep".to_owned()]
        );
        assert!(matches!(
            s.tag("gpu").await,
            Err(StoreError::NotFound { .. })
        ));

        // Zones: the default exists, one in use cannot be deleted.
        assert_eq!(s.groups(GroupKind::Zone).await.unwrap()[0].name, "default");
        s.create_group(GroupKind::Zone, "z2", "").await.unwrap();
        s.update_machine_fields(&m.id, None, Some("z2"), None, None)
            .await
            .unwrap();
        assert!(matches!(
            s.delete_group(GroupKind::Zone, "z2").await,
            Err(StoreError::Conflict { .. })
        ));
        s.update_machine_fields(&m.id, None, Some("default"), None, None)
            .await
            .unwrap();
        s.delete_group(GroupKind::Zone, "z2").await.unwrap();
        assert!(matches!(
            s.delete_group(GroupKind::Pool, "default").await,
            Err(StoreError::Conflict { .. })
        ));

        // Passwords and SSH keys.
        let u = s.create_user("pat", false).await.unwrap();
        assert!(
            s.check_password("pat", "secret-words")
                .await
                .unwrap()
                .is_none(),
            "no password yet"
        );
        s.set_password(u.id, "secret-words").await.unwrap();
        assert_eq!(
            s.check_password("pat", "secret-words")
                .await
                .unwrap()
                .map(|x| x.id),
            Some(u.id)
        );
        assert!(s.check_password("pat", "wrong").await.unwrap().is_none());
        assert!(
            s.check_password("nobody", "secret-words")
                .await
                .unwrap()
                .is_none()
        );
        let key = s.add_ssh_key(u.id, "ssh-ed25519 AAAA pat").await.unwrap();
        assert!(matches!(
            s.add_ssh_key(u.id, "ssh-ed25519 AAAA pat").await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(s.ssh_keys(u.id).await.unwrap(), vec![key.clone()]);
        s.delete_ssh_key(u.id, key.id).await.unwrap();
        assert!(s.ssh_keys(u.id).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn maas_tables_sqlite() {
        suite(&crate::testing::sqlite().await).await;
    }

    #[tokio::test]
    async fn maas_tables_postgres() {
        let Some(db) = crate::testing::postgres().await else {
            return;
        };
        suite(&db).await;
    }
}
