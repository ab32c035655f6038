//! Machines: create, read, list, and the compare-and-set status transitions.

use crate::crypto::{random_token, sha256_hex};
use crate::{
    Store, StoreError, ms_to_time, now_ms, status_from, trigger_actor_message, unique_violation,
};
use ingot_types::inventory::{Disk, Inventory, Nic, SystemInfo, normalize_mac};
use ingot_types::lifecycle::{NodeStatus, Trigger, next_status};
use ingot_types::machine::{Machine, MachineEvent, NewMachine};
use ingot_types::power::{PowerParameters, PowerState, PowerType};
use ingot_types::{MachineId, UserId};
use rand::Rng;
use sqlx::Row;
use sqlx::any::AnyRow;

const MACHINE_COLUMNS: &str = "m.id, m.hostname, m.status, m.status_message, m.power_type, \
    m.power_params, m.power_state, m.power_error, m.cpu_count, m.cpu_model, m.memory_mib, \
    m.hardware, m.boot_mac, m.architecture, m.owner_id, u.username AS owner_name, m.zone, \
    m.pool, m.tags, m.osystem, m.distro_series, m.hwe_kernel, m.deadline, m.created_at, \
    m.updated_at";

/// Disks, NICs and system facts, kept together as one JSON column.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Hardware {
    #[serde(default)]
    disks: Vec<Disk>,
    #[serde(default)]
    interfaces: Vec<Nic>,
    #[serde(default)]
    system: SystemInfo,
}

fn machine_from_row(row: &AnyRow) -> Result<Machine, StoreError> {
    let corrupt =
        |what: &str, e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{what}: {e}"));
    let id: String = row.try_get("id")?;
    let power_type: String = row.try_get("power_type")?;
    let power_state: String = row.try_get("power_state")?;
    let params: String = row.try_get("power_params")?;
    let hardware: String = row.try_get("hardware")?;
    let tags: String = row.try_get("tags")?;
    let hw: Hardware = serde_json::from_str(&hardware).map_err(|e| corrupt("hardware", &e))?;
    Ok(Machine {
        id: MachineId::parse(&id).map_err(|e| corrupt("id", &e))?,
        hostname: row.try_get("hostname")?,
        status: status_from(row.try_get("status")?)?,
        status_message: row.try_get("status_message")?,
        power_type: PowerType::parse(&power_type)
            .ok_or_else(|| corrupt("power_type", &power_type))?,
        power_parameters: serde_json::from_str(&params).map_err(|e| corrupt("power_params", &e))?,
        power_state: PowerState::parse(&power_state)
            .ok_or_else(|| corrupt("power_state", &power_state))?,
        power_error: row.try_get("power_error")?,
        cpu_count: u32::try_from(row.try_get::<i64, _>("cpu_count")?).unwrap_or(0),
        cpu_model: row.try_get("cpu_model")?,
        memory_mib: u64::try_from(row.try_get::<i64, _>("memory_mib")?).unwrap_or(0),
        disks: hw.disks,
        interfaces: hw.interfaces,
        system: hw.system,
        boot_mac: row.try_get("boot_mac")?,
        architecture: row.try_get("architecture")?,
        owner: row.try_get::<Option<i64>, _>("owner_id")?.map(UserId),
        owner_name: row.try_get("owner_name")?,
        zone: row.try_get("zone")?,
        pool: row.try_get("pool")?,
        tags: serde_json::from_str(&tags).map_err(|e| corrupt("tags", &e))?,
        osystem: row.try_get("osystem")?,
        distro_series: row.try_get("distro_series")?,
        hwe_kernel: row.try_get("hwe_kernel")?,
        deadline: row.try_get::<Option<i64>, _>("deadline")?.map(ms_to_time),
        created_at: ms_to_time(row.try_get("created_at")?),
        updated_at: ms_to_time(row.try_get("updated_at")?),
    })
}

/// A field to leave alone, or to set (possibly to NULL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Set<T> {
    #[default]
    Keep,
    To(T),
}

/// What changes together with a status transition, in the same statement.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    pub owner: Set<Option<UserId>>,
    pub deadline_ms: Set<Option<i64>>,
    pub osystem: Set<String>,
    pub distro_series: Set<String>,
    pub hwe_kernel: Set<String>,
    pub user_data: Set<Option<String>>,
    pub inventory: Set<Inventory>,
    /// Clears any outstanding agent boot token.
    pub clear_boot_token: bool,
    /// Only apply if the machine is owned by this user (or unowned when None is allowed).
    pub require_owner: Option<UserId>,
}

/// List filters; every field narrows the result (MAAS semantics: values within a field OR).
#[derive(Debug, Clone, Default)]
pub struct MachineFilter {
    pub ids: Vec<String>,
    pub hostnames: Vec<String>,
    pub statuses: Vec<NodeStatus>,
    pub zone: Option<String>,
    pub pool: Option<String>,
    pub tags: Vec<String>,
    pub owner: Option<UserId>,
    /// Restrict to machines that are unowned or owned by this user (non-admin visibility).
    pub visible_to: Option<UserId>,
    pub mac: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// Allocation constraints (MAAS `op=allocate`).
#[derive(Debug, Clone, Default)]
pub struct AllocationConstraints {
    pub system_id: Option<String>,
    pub hostname: Option<String>,
    pub min_cpu_count: Option<u32>,
    pub min_memory_mib: Option<u64>,
    pub tags: Vec<String>,
    pub not_tags: Vec<String>,
    pub zone: Option<String>,
    pub pool: Option<String>,
    pub architecture: Option<String>,
}

/// Builds `$n` placeholders as values are bound.
struct Sql {
    text: String,
    args: Vec<Arg>,
}

enum Arg {
    Int(i64),
    Text(String),
    OptInt(Option<i64>),
    OptText(Option<String>),
}

impl Sql {
    fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            args: Vec::new(),
        }
    }
    fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }
    fn bind(&mut self, a: Arg) -> &mut Self {
        self.args.push(a);
        let n = self.args.len();
        self.text.push_str(&format!("${n}"));
        self
    }
    /// ` AND column IN ($a, $b, …)`; nothing when `values` is empty (no constraint).
    fn push_in(&mut self, column: &str, values: impl IntoIterator<Item = Arg>) -> &mut Self {
        let mut values = values.into_iter().peekable();
        if values.peek().is_none() {
            return self;
        }
        self.push(&format!(" AND {column} IN ("));
        for (i, v) in values.enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(v);
        }
        self.push(")")
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(self.text.as_str());
        for a in &self.args {
            q = match a {
                Arg::Int(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.as_str()),
                Arg::OptInt(v) => q.bind(*v),
                Arg::OptText(v) => q.bind(v.clone()),
            };
        }
        q
    }
}

const ADJECTIVES: &[&str] = &[
    "able", "brave", "calm", "eager", "fair", "glad", "happy", "keen", "lucky", "merry", "noble",
    "proud", "quick", "sharp", "smart", "solid", "swift", "tidy", "vivid", "wise",
];
const ANIMALS: &[&str] = &[
    "otter", "lynx", "heron", "bison", "crane", "dingo", "egret", "finch", "gecko", "ibex",
    "koala", "lemur", "marten", "newt", "orca", "panda", "quail", "raven", "stoat", "walrus",
];

fn random_machine_id() -> MachineId {
    let mut rng = rand::rngs::OsRng;
    MachineId::from_indexes(std::array::from_fn(|_| rng.r#gen::<u8>()))
}

fn random_hostname() -> String {
    let mut rng = rand::rngs::OsRng;
    format!(
        "{}-{}",
        ADJECTIVES[rng.gen_range(0..ADJECTIVES.len())],
        ANIMALS[rng.gen_range(0..ANIMALS.len())]
    )
}

impl Store {
    /// Creates a machine in status New, with its MACs, and records the creation event.
    pub async fn create_machine(
        &self,
        new: NewMachine,
        actor: &str,
    ) -> Result<Machine, StoreError> {
        let mut macs: Vec<String> = Vec::new();
        for m in new.boot_mac.iter().chain(new.macs.iter()) {
            let norm =
                normalize_mac(m).ok_or_else(|| StoreError::Corrupt(format!("bad MAC {m:?}")))?;
            if !macs.contains(&norm) {
                macs.push(norm);
            }
        }
        let boot_mac = macs.first().cloned();
        let params_json = serde_json::to_string(&new.power_parameters.redacted())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let pass_enc = new
            .power_parameters
            .power_pass
            .as_deref()
            .map(|p| self.key.encrypt(p));
        let hw = new.inventory.clone().unwrap_or_default();
        let hw_json = serde_json::to_string(&Hardware {
            disks: hw.disks.clone(),
            interfaces: hw.interfaces.clone(),
            system: hw.system.clone(),
        })
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let now = now_ms();
        // A generated id or hostname can collide; retry with fresh ones. A given hostname
        // that collides is the caller's conflict.
        for _attempt in 0..8 {
            let id = random_machine_id();
            let hostname = new
                .hostname
                .clone()
                .unwrap_or_else(|| format!("{}-{}", random_hostname(), &id.as_str()[..4]));
            let mut tx = self.pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO machines (id, hostname, status, power_type, power_params, \
                 power_pass_enc, boot_mac, architecture, zone, pool, created_at, updated_at, \
                 cpu_count, cpu_model, memory_mib, hardware) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14, $15)",
            )
            .bind(id.as_str())
            .bind(&hostname)
            .bind(i64::from(NodeStatus::New.code()))
            .bind(new.power_type.unwrap_or(PowerType::Manual).as_str())
            .bind(&params_json)
            .bind(pass_enc.clone())
            .bind(boot_mac.clone())
            .bind(
                new.architecture
                    .clone()
                    .unwrap_or_else(|| "amd64/generic".into()),
            )
            .bind(new.zone.clone().unwrap_or_else(|| "default".into()))
            .bind(new.pool.clone().unwrap_or_else(|| "default".into()))
            .bind(now)
            .bind(i64::from(hw.cpu_count))
            .bind(hw.cpu_model.clone())
            .bind(i64::try_from(hw.memory_mib).unwrap_or(i64::MAX))
            .bind(hw_json.clone())
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    tx.rollback().await?;
                    if new.hostname.is_some() && db.message().contains("hostname") {
                        return Err(StoreError::Conflict {
                            kind: "machine",
                            field: "hostname",
                            value: hostname,
                        });
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            for mac in &macs {
                sqlx::query("INSERT INTO machine_macs (mac, machine_id) VALUES ($1, $2)")
                    .bind(mac)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| unique_violation(e, "machine", "mac_address", mac))?;
            }
            insert_event(
                &mut tx,
                &id,
                actor,
                "transition",
                None,
                Some(NodeStatus::New),
                "created",
                now,
            )
            .await?;
            tx.commit().await?;
            return self.machine(&id).await;
        }
        Err(StoreError::Conflict {
            kind: "machine",
            field: "id",
            value: "(generated)".into(),
        })
    }

    pub async fn machine(&self, id: &MachineId) -> Result<Machine, StoreError> {
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machines m LEFT JOIN users u ON u.id = m.owner_id \
             WHERE m.id = $1"
        );
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "machine",
                id: id.to_string(),
            })?;
        machine_from_row(&row)
    }

    pub async fn machine_by_mac(&self, mac: &str) -> Result<Option<Machine>, StoreError> {
        let Some(mac) = normalize_mac(mac) else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machine_macs mm JOIN machines m ON m.id = mm.machine_id \
             LEFT JOIN users u ON u.id = m.owner_id WHERE mm.mac = $1"
        );
        let row = sqlx::query(&sql)
            .bind(mac)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(machine_from_row).transpose()
    }

    pub async fn list_machines(&self, f: &MachineFilter) -> Result<Vec<Machine>, StoreError> {
        let mut sql = Sql::new(format!(
            "SELECT {MACHINE_COLUMNS} FROM machines m LEFT JOIN users u ON u.id = m.owner_id WHERE 1=1"
        ));
        sql.push_in("m.id", f.ids.iter().map(|v| Arg::Text(v.clone())));
        sql.push_in(
            "m.hostname",
            f.hostnames.iter().map(|v| Arg::Text(v.clone())),
        );
        sql.push_in(
            "m.status",
            f.statuses.iter().map(|s| Arg::Int(i64::from(s.code()))),
        );
        if let Some(z) = &f.zone {
            sql.push(" AND m.zone = ").bind(Arg::Text(z.clone()));
        }
        if let Some(p) = &f.pool {
            sql.push(" AND m.pool = ").bind(Arg::Text(p.clone()));
        }
        if let Some(o) = f.owner {
            sql.push(" AND m.owner_id = ").bind(Arg::Int(o.0));
        }
        if let Some(v) = f.visible_to {
            sql.push(" AND (m.owner_id IS NULL OR m.owner_id = ")
                .bind(Arg::Int(v.0))
                .push(")");
        }
        if let Some(mac) = &f.mac {
            let mac = normalize_mac(mac).unwrap_or_else(|| mac.clone());
            sql.push(" AND m.id IN (SELECT machine_id FROM machine_macs WHERE mac = ")
                .bind(Arg::Text(mac))
                .push(")");
        }
        sql.push(" ORDER BY m.created_at, m.id");
        if let Some(l) = f.limit {
            sql.push(" LIMIT ").bind(Arg::Int(l));
            if let Some(o) = f.offset {
                sql.push(" OFFSET ").bind(Arg::Int(o));
            }
        }
        let rows = sql.query().fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let m = machine_from_row(row)?;
            // Tags live in JSON; filter here rather than per-dialect JSON SQL.
            if f.tags.iter().all(|t| m.tags.contains(t)) {
                out.push(m);
            }
        }
        Ok(out)
    }

    pub async fn count_machines(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM machines")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Applies `trigger` to the machine: decides the next status with the lifecycle, then
    /// compare-and-sets it together with `effects` and an event, in one transaction.
    /// A concurrent change makes it re-read and decide again.
    pub async fn transition(
        &self,
        id: &MachineId,
        trigger: Trigger,
        actor: &str,
        message: &str,
        effects: &Effects,
    ) -> Result<Machine, StoreError> {
        for _ in 0..16 {
            let current = self.machine(id).await?;
            if let Some(required) = effects.require_owner
                && current.owner.is_some_and(|o| o != required)
            {
                return Err(StoreError::NotFound {
                    kind: "machine",
                    id: id.to_string(),
                });
            }
            let next = next_status(current.status, trigger)?;
            if self
                .try_transition(&current, next, trigger, actor, message, effects)
                .await?
            {
                return self.machine(id).await;
            }
        }
        Err(StoreError::Conflict {
            kind: "machine",
            field: "status",
            value: "contended".into(),
        })
    }

    /// One compare-and-set attempt. Returns false if the status changed under us.
    async fn try_transition(
        &self,
        current: &Machine,
        next: NodeStatus,
        trigger: Trigger,
        actor: &str,
        message: &str,
        effects: &Effects,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let msg = trigger_actor_message(trigger, message);
        let mut sql = Sql::new("UPDATE machines SET status = ");
        sql.bind(Arg::Int(i64::from(next.code())));
        sql.push(", status_message = ").bind(Arg::Text(msg.clone()));
        sql.push(", updated_at = ").bind(Arg::Int(now));
        if let Set::To(o) = &effects.owner {
            sql.push(", owner_id = ").bind(Arg::OptInt(o.map(|u| u.0)));
        }
        if let Set::To(d) = &effects.deadline_ms {
            sql.push(", deadline = ").bind(Arg::OptInt(*d));
        }
        if let Set::To(v) = &effects.osystem {
            sql.push(", osystem = ").bind(Arg::Text(v.clone()));
        }
        if let Set::To(v) = &effects.distro_series {
            sql.push(", distro_series = ").bind(Arg::Text(v.clone()));
        }
        if let Set::To(v) = &effects.hwe_kernel {
            sql.push(", hwe_kernel = ").bind(Arg::Text(v.clone()));
        }
        if let Set::To(v) = &effects.user_data {
            sql.push(", user_data = ").bind(Arg::OptText(v.clone()));
        }
        if let Set::To(inv) = &effects.inventory {
            let hw = Hardware {
                disks: inv.disks.clone(),
                interfaces: inv.interfaces.clone(),
                system: inv.system.clone(),
            };
            let hw = serde_json::to_string(&hw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sql.push(", cpu_count = ")
                .bind(Arg::Int(i64::from(inv.cpu_count)));
            sql.push(", cpu_model = ")
                .bind(Arg::Text(inv.cpu_model.clone()));
            sql.push(", memory_mib = ")
                .bind(Arg::Int(i64::try_from(inv.memory_mib).unwrap_or(i64::MAX)));
            sql.push(", hardware = ").bind(Arg::Text(hw));
        }
        if effects.clear_boot_token {
            sql.push(", boot_token_sha256 = NULL, boot_token_expires = NULL");
        }
        sql.push(" WHERE id = ")
            .bind(Arg::Text(current.id.to_string()));
        sql.push(" AND status = ")
            .bind(Arg::Int(i64::from(current.status.code())));
        if let Some(owner) = effects.require_owner {
            sql.push(" AND (owner_id IS NULL OR owner_id = ")
                .bind(Arg::Int(owner.0))
                .push(")");
        }

        let mut tx = self.pool.begin().await?;
        let updated = sql.query().execute(&mut *tx).await?;
        if updated.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Set::To(inv) = &effects.inventory {
            for nic in &inv.interfaces {
                if let Some(mac) = normalize_mac(&nic.mac) {
                    // A MAC already claimed by another machine stays with it.
                    let owner = sqlx::query("SELECT machine_id FROM machine_macs WHERE mac = $1")
                        .bind(&mac)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if owner.is_none() {
                        sqlx::query("INSERT INTO machine_macs (mac, machine_id) VALUES ($1, $2)")
                            .bind(&mac)
                            .bind(current.id.as_str())
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
        }
        insert_event(
            &mut tx,
            &current.id,
            actor,
            "transition",
            Some(current.status),
            Some(next),
            &msg,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Allocates one Ready machine matching the constraints to `owner`. Racing allocators
    /// never get the same machine: each candidate is taken with a compare-and-set.
    pub async fn allocate(
        &self,
        c: &AllocationConstraints,
        owner: UserId,
        actor: &str,
    ) -> Result<Machine, StoreError> {
        let filter = MachineFilter {
            statuses: vec![NodeStatus::Ready],
            ids: c.system_id.iter().cloned().collect(),
            hostnames: c.hostname.iter().cloned().collect(),
            zone: c.zone.clone(),
            pool: c.pool.clone(),
            tags: c.tags.clone(),
            ..Default::default()
        };
        let mut candidates: Vec<Machine> = self
            .list_machines(&filter)
            .await?
            .into_iter()
            .filter(|m| c.min_cpu_count.is_none_or(|n| m.cpu_count >= n))
            .filter(|m| c.min_memory_mib.is_none_or(|n| m.memory_mib >= n))
            .filter(|m| !c.not_tags.iter().any(|t| m.tags.contains(t)))
            .filter(|m| {
                c.architecture.as_deref().is_none_or(|a| {
                    m.architecture == a || m.architecture.split('/').next() == Some(a)
                })
            })
            .collect();
        // Spread racing allocators over the candidates instead of all fighting for the first.
        {
            let mut rng = rand::rngs::OsRng;
            for i in (1..candidates.len()).rev() {
                candidates.swap(i, rng.gen_range(0..=i));
            }
        }
        let effects = Effects {
            owner: Set::To(Some(owner)),
            ..Default::default()
        };
        for m in candidates {
            let next = NodeStatus::Allocated;
            if self
                .try_transition(&m, next, Trigger::Allocate, actor, "allocated", &effects)
                .await?
            {
                return self.machine(&m.id).await;
            }
        }
        Err(StoreError::NoMatch)
    }

    /// Records an event that is not a status change (power, agent progress, config).
    pub async fn record_event(
        &self,
        id: &MachineId,
        actor: &str,
        kind: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_event(&mut tx, id, actor, kind, None, None, message, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn events(
        &self,
        id: &MachineId,
        limit: i64,
    ) -> Result<Vec<MachineEvent>, StoreError> {
        self.machine(id).await?;
        let rows = sqlx::query(
            "SELECT id, machine_id, at, actor, kind, from_status, to_status, message FROM events \
             WHERE machine_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(id.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MachineEvent {
                    id: r.try_get("id")?,
                    machine_id: id.clone(),
                    at: ms_to_time(r.try_get("at")?),
                    actor: r.try_get("actor")?,
                    kind: r.try_get("kind")?,
                    from_status: r
                        .try_get::<Option<i64>, _>("from_status")?
                        .map(status_from)
                        .transpose()?,
                    to_status: r
                        .try_get::<Option<i64>, _>("to_status")?
                        .map(status_from)
                        .transpose()?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }

    /// Records the BMC's answer. `error` set means power_state `error` with that message.
    pub async fn set_power_state(
        &self,
        id: &MachineId,
        state: PowerState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE machines SET power_state = $1, power_error = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(state.as_str())
        .bind(error)
        .bind(now_ms())
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "machine",
                id: id.to_string(),
            });
        }
        Ok(())
    }

    /// Replaces power type and parameters. The password is encrypted; when `params`
    /// carries none, the stored one is kept.
    pub async fn set_power_parameters(
        &self,
        id: &MachineId,
        power_type: PowerType,
        params: &PowerParameters,
        actor: &str,
    ) -> Result<Machine, StoreError> {
        let json = serde_json::to_string(&params.redacted())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        let done =
            match &params.power_pass {
                Some(p) => sqlx::query(
                    "UPDATE machines SET power_type = $1, power_params = $2, power_pass_enc = $3, \
                     updated_at = $4 WHERE id = $5",
                )
                .bind(power_type.as_str())
                .bind(&json)
                .bind(self.key.encrypt(p))
                .bind(now_ms())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?,
                None => {
                    sqlx::query(
                        "UPDATE machines SET power_type = $1, power_params = $2, updated_at = $3 \
                     WHERE id = $4",
                    )
                    .bind(power_type.as_str())
                    .bind(&json)
                    .bind(now_ms())
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?
                }
            };
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "machine",
                id: id.to_string(),
            });
        }
        insert_event(
            &mut tx,
            id,
            actor,
            "config",
            None,
            None,
            "power parameters changed",
            now_ms(),
        )
        .await?;
        tx.commit().await?;
        self.machine(id).await
    }

    /// Power type and parameters with the decrypted password, for the power drivers only.
    pub async fn power_credentials(
        &self,
        id: &MachineId,
    ) -> Result<(PowerType, PowerParameters), StoreError> {
        let row = sqlx::query(
            "SELECT power_type, power_params, power_pass_enc FROM machines WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "machine",
            id: id.to_string(),
        })?;
        let t: String = row.try_get("power_type")?;
        let p: String = row.try_get("power_params")?;
        let enc: Option<String> = row.try_get("power_pass_enc")?;
        let power_type =
            PowerType::parse(&t).ok_or_else(|| StoreError::Corrupt(format!("power_type {t}")))?;
        let mut params: PowerParameters =
            serde_json::from_str(&p).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if let Some(enc) = enc {
            params.power_pass = Some(self.key.decrypt(&enc).ok_or_else(|| {
                StoreError::Corrupt("BMC password does not decrypt with this region's key".into())
            })?);
        }
        Ok((power_type, params))
    }

    /// Updates simple descriptive fields (hostname, zone, pool, tags, architecture).
    pub async fn update_machine_fields(
        &self,
        id: &MachineId,
        hostname: Option<&str>,
        zone: Option<&str>,
        pool: Option<&str>,
        tags: Option<&[String]>,
    ) -> Result<Machine, StoreError> {
        let mut sql = Sql::new("UPDATE machines SET updated_at = ");
        sql.bind(Arg::Int(now_ms()));
        if let Some(h) = hostname {
            sql.push(", hostname = ").bind(Arg::Text(h.to_owned()));
        }
        if let Some(z) = zone {
            sql.push(", zone = ").bind(Arg::Text(z.to_owned()));
        }
        if let Some(p) = pool {
            sql.push(", pool = ").bind(Arg::Text(p.to_owned()));
        }
        if let Some(t) = tags {
            let json = serde_json::to_string(t).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sql.push(", tags = ").bind(Arg::Text(json));
        }
        sql.push(" WHERE id = ").bind(Arg::Text(id.to_string()));
        let done = sql
            .query()
            .execute(&self.pool)
            .await
            .map_err(|e| unique_violation(e, "machine", "hostname", hostname.unwrap_or("")))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "machine",
                id: id.to_string(),
            });
        }
        self.machine(id).await
    }

    pub async fn user_data(&self, id: &MachineId) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT user_data FROM machines WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "machine",
                id: id.to_string(),
            })?;
        Ok(row.try_get("user_data")?)
    }

    /// Mints a per-boot agent token for the machine, replacing any earlier one. Returns the
    /// plaintext (it goes on the kernel command line); only its hash is stored.
    pub async fn issue_boot_token(
        &self,
        id: &MachineId,
        ttl_ms: i64,
    ) -> Result<String, StoreError> {
        let token = random_token(40);
        let done = sqlx::query(
            "UPDATE machines SET boot_token_sha256 = $1, boot_token_expires = $2 WHERE id = $3",
        )
        .bind(sha256_hex(&token))
        .bind(now_ms() + ttl_ms)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "machine",
                id: id.to_string(),
            });
        }
        Ok(token)
    }

    /// The machine a live boot token belongs to, if any.
    pub async fn machine_by_boot_token(&self, token: &str) -> Result<Option<Machine>, StoreError> {
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machines m LEFT JOIN users u ON u.id = m.owner_id \
             WHERE m.boot_token_sha256 = $1 AND m.boot_token_expires > $2"
        );
        let row = sqlx::query(&sql)
            .bind(sha256_hex(token))
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(machine_from_row).transpose()
    }

    /// Machines whose workflow deadline has passed.
    pub async fn overdue_machines(&self) -> Result<Vec<Machine>, StoreError> {
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machines m LEFT JOIN users u ON u.id = m.owner_id \
             WHERE m.deadline IS NOT NULL AND m.deadline < $1"
        );
        let rows = sqlx::query(&sql)
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(machine_from_row).collect()
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &MachineId,
    actor: &str,
    kind: &str,
    from: Option<NodeStatus>,
    to: Option<NodeStatus>,
    message: &str,
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (machine_id, at, actor, kind, from_status, to_status, message) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id.as_str())
    .bind(at)
    .bind(actor)
    .bind(kind)
    .bind(from.map(|s| i64::from(s.code())))
    .bind(to.map(|s| i64::from(s.code())))
    .bind(message)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Moves a running workflow's deadline, only if the machine is still in `status`.
    pub async fn extend_deadline(
        &self,
        id: &MachineId,
        status: NodeStatus,
        deadline_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE machines SET deadline = $1 WHERE id = $2 AND status = $3 AND deadline IS NOT NULL")
            .bind(deadline_ms)
            .bind(id.as_str())
            .bind(i64::from(status.code()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
