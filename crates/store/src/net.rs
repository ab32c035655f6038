//! DHCP leases and discovered devices.

use crate::{Store, StoreError, now_ms};
use ingot_types::net::{Discovery, Lease, Sighting};
use sqlx::Row;
use std::net::Ipv4Addr;

impl Store {
    pub async fn load_leases(&self) -> Result<Vec<Lease>, StoreError> {
        let rows = sqlx::query(
            "SELECT ip, mac, subnet, hostname, starts_at, expires_at, offered FROM leases ORDER BY ip",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let ip: String = r.try_get("ip")?;
                Ok(Lease {
                    ip: ip
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("lease ip {ip}")))?,
                    mac: r.try_get("mac")?,
                    subnet: r.try_get("subnet")?,
                    hostname: r.try_get("hostname")?,
                    starts_at: r.try_get("starts_at")?,
                    expires_at: r.try_get("expires_at")?,
                    offered: r.try_get::<i64, _>("offered")? != 0,
                })
            })
            .collect()
    }

    /// Upserts leases (keyed by IP) in one transaction: all or none.
    pub async fn commit_leases(&self, leases: &[Lease]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for l in leases {
            sqlx::query(
                "INSERT INTO leases (ip, mac, subnet, hostname, starts_at, expires_at, offered) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (ip) DO UPDATE SET \
                 mac = excluded.mac, subnet = excluded.subnet, hostname = excluded.hostname, \
                 starts_at = excluded.starts_at, expires_at = excluded.expires_at, \
                 offered = excluded.offered",
            )
            .bind(l.ip.to_string())
            .bind(&l.mac)
            .bind(&l.subnet)
            .bind(l.hostname.clone())
            .bind(l.starts_at)
            .bind(l.expires_at)
            .bind(i64::from(l.offered))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_lease(&self, ip: Ipv4Addr) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leases WHERE ip = $1")
            .bind(ip.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes leases that expired before `before` (unix seconds). The DHCP core already treats
    /// expired leases as free; this only keeps the table from growing forever.
    pub async fn purge_expired_leases(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM leases WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Records a sighting: first/last seen, latest IP and architecture.
    pub async fn record_sighting(&self, s: &Sighting) -> Result<(), StoreError> {
        let at = if s.at > 0 { s.at } else { now_ms() / 1000 };
        sqlx::query(
            "INSERT INTO discoveries (mac, ip, arch, first_seen, last_seen) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (mac) DO UPDATE SET ip = COALESCE(excluded.ip, discoveries.ip), \
             arch = COALESCE(excluded.arch, discoveries.arch), last_seen = excluded.last_seen",
        )
        .bind(&s.mac)
        .bind(s.ip.map(|i| i.to_string()))
        .bind(s.arch.clone())
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn discoveries(&self) -> Result<Vec<Discovery>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.mac, d.ip, d.arch, d.first_seen, d.last_seen, mm.machine_id \
             FROM discoveries d LEFT JOIN machine_macs mm ON mm.mac = d.mac ORDER BY d.first_seen, d.mac",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let ip: Option<String> = r.try_get("ip")?;
                let mid: Option<String> = r.try_get("machine_id")?;
                Ok(Discovery {
                    mac: r.try_get("mac")?,
                    ip: ip.and_then(|i| i.parse().ok()),
                    arch: r.try_get("arch")?,
                    first_seen: r.try_get("first_seen")?,
                    last_seen: r.try_get("last_seen")?,
                    machine_id: mid.and_then(|m| ingot_types::MachineId::parse(&m).ok()),
                })
            })
            .collect()
    }
}

impl Store {
    /// Mints a one-time enlistment token bound to `mac`; returns the plaintext.
    pub async fn issue_enlist_token(&self, mac: &str, ttl_ms: i64) -> Result<String, StoreError> {
        let token = crate::crypto::random_token(40);
        let now = now_ms();
        // Expired tokens are garbage; clear them while we are here.
        sqlx::query("DELETE FROM enlist_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO enlist_tokens (token_sha256, mac, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(crate::crypto::sha256_hex(&token))
        .bind(mac)
        .bind(now + ttl_ms)
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Consumes an enlistment token: returns the MAC it was issued for, once.
    pub async fn take_enlist_token(&self, token: &str) -> Result<Option<String>, StoreError> {
        let hash = crate::crypto::sha256_hex(token);
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "DELETE FROM enlist_tokens WHERE token_sha256 = $1 AND expires_at > $2 RETURNING mac",
        )
        .bind(&hash)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(match row {
            Some(r) => Some(r.try_get("mac")?),
            None => None,
        })
    }
}
