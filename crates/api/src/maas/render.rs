//! MAAS 2.0 JSON shapes. Field names and types follow what python-libmaas type-checks and
//! gomaasclient unmarshals (see /work/shared/reference/maas.md §1.7).

use super::describe::API_PREFIX;
use ingot_store::{NamedGroup, SshKey, Store, StoreError, Tag, User};
use ingot_types::NodeStatus;
use ingot_types::machine::Machine;
use ingot_types::net::Discovery;
use ingot_types::power::PowerState;
use serde_json::{Value, json};
use std::collections::HashMap;

/// The one DNS domain Ingot presents (MAAS's default domain name).
pub const DOMAIN: &str = "maas";
/// The single fabric and untagged VLAN every interface sits on until networks are modelled.
pub const FABRIC_ID: i64 = 0;
pub const VLAN_ID: i64 = 5001;

/// Side tables a machine's JSON refers to, loaded once per request.
pub struct Lookup {
    zones: HashMap<String, NamedGroup>,
    pools: HashMap<String, NamedGroup>,
    ips: HashMap<String, String>,
}

impl Lookup {
    pub async fn load(store: &Store) -> Result<Self, StoreError> {
        let by_name = |v: Vec<NamedGroup>| v.into_iter().map(|g| (g.name.clone(), g)).collect();
        let now = chrono::Utc::now().timestamp();
        let ips = store
            .load_leases()
            .await?
            .into_iter()
            .filter(|l| !l.offered && l.expires_at > now)
            .map(|l| (l.mac, l.ip.to_string()))
            .collect();
        Ok(Self {
            zones: by_name(store.groups(ingot_store::GroupKind::Zone).await?),
            pools: by_name(store.groups(ingot_store::GroupKind::Pool).await?),
            ips,
        })
    }
}

pub fn domain() -> Value {
    json!({
        "id": 0, "name": DOMAIN, "ttl": null, "authoritative": true, "is_default": true,
        "resource_record_count": 0, "resource_uri": format!("{API_PREFIX}domains/0/"),
    })
}

pub fn zone(g: &NamedGroup) -> Value {
    json!({ "id": g.id, "name": g.name, "description": g.description, "resource_uri": format!("{API_PREFIX}zones/{}/", g.name) })
}

pub fn pool(g: &NamedGroup) -> Value {
    json!({ "id": g.id, "name": g.name, "description": g.description, "resource_uri": format!("{API_PREFIX}resourcepool/{}/", g.id) })
}

pub fn fabric() -> Value {
    json!({ "id": FABRIC_ID, "name": "fabric-0", "class_type": null, "vlans": [vlan()], "resource_uri": format!("{API_PREFIX}fabrics/{FABRIC_ID}/") })
}

pub fn vlan() -> Value {
    json!({
        "id": VLAN_ID, "vid": 0, "name": "untagged", "fabric": "fabric-0", "fabric_id": FABRIC_ID,
        "mtu": 1500, "dhcp_on": true, "external_dhcp": null, "primary_rack": null,
        "secondary_rack": null, "relay_vlan": null, "space": "undefined",
        "resource_uri": format!("{API_PREFIX}vlans/{VLAN_ID}/"),
    })
}

pub fn subnet(id: i64, cidr: &str) -> Value {
    json!({
        "id": id, "name": cidr, "cidr": cidr, "vlan": vlan(), "space": "undefined",
        "gateway_ip": null, "dns_servers": [], "rdns_mode": 2, "active_discovery": false,
        "allow_dns": true, "allow_proxy": true, "managed": true,
        "disabled_boot_architectures": [], "description": "",
        "resource_uri": format!("{API_PREFIX}subnets/{id}/"),
    })
}

pub fn user(u: &User) -> Value {
    json!({
        "username": u.username, "email": u.email, "is_superuser": u.is_admin, "is_local": true,
        "resource_uri": format!("{API_PREFIX}users/{}/", u.username),
    })
}

pub fn ssh_key(k: &SshKey) -> Value {
    json!({ "id": k.id, "key": k.key, "keysource": null, "resource_uri": format!("{API_PREFIX}account/prefs/sshkeys/{}/", k.id) })
}

pub fn tag(t: &Tag) -> Value {
    json!({
        "name": t.name, "definition": t.definition, "comment": t.comment,
        "kernel_opts": t.kernel_opts, "resource_uri": format!("{API_PREFIX}tags/{}/", t.name),
    })
}

/// MAAS discovery ids are opaque strings; Ingot's is the MAC without separators.
pub fn discovery_id(d: &Discovery) -> String {
    d.mac.replace(':', "")
}

pub fn discovery(d: &Discovery) -> Value {
    let at = |secs: i64| {
        chrono::DateTime::from_timestamp(secs, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string())
    };
    json!({
        "discovery_id": discovery_id(d), "ip": d.ip, "mac_address": d.mac,
        "mac_organization": null, "hostname": null, "fabric_name": "fabric-0", "vid": 0,
        "first_seen": at(d.first_seen), "last_seen": at(d.last_seen),
        "architecture": d.arch, "machine": d.machine_id,
        "observer": null,
        "resource_uri": format!("{API_PREFIX}discovery/{}/", discovery_id(d)),
    })
}

pub fn fqdn(m: &Machine) -> String {
    format!("{}.{DOMAIN}", m.hostname)
}

fn interface(m: &Machine, idx: usize, nic: &ingot_types::inventory::Nic, l: &Lookup) -> Value {
    // MAAS interface ids are global; the MAC as a 48-bit number is too, and stable.
    let id = u64::from_str_radix(&nic.mac.replace(':', ""), 16).unwrap_or(idx as u64 + 1);
    let links: Vec<Value> = l
        .ips
        .get(&nic.mac)
        .map(|ip| vec![json!({ "id": id, "mode": "dhcp", "ip_address": ip, "subnet": null })])
        .unwrap_or_default();
    json!({
        "id": id, "name": nic.name, "type": "physical", "mac_address": nic.mac,
        "vlan": vlan(), "links": links, "params": {}, "parents": [], "children": [], "tags": [],
        "enabled": true, "effective_mtu": 1500, "link_connected": nic.link_up,
        "link_speed": nic.speed_mbps.unwrap_or(0), "interface_speed": nic.speed_mbps.unwrap_or(0),
        "vendor": nic.driver, "product": null, "firmware_version": null, "discovered": null,
        "system_id": m.id,
        "resource_uri": format!("{API_PREFIX}nodes/{}/interfaces/{id}/", m.id),
    })
}

fn block_device(m: &Machine, idx: usize, d: &ingot_types::inventory::Disk) -> Value {
    let id = idx + 1;
    json!({
        "id": id, "name": d.name, "type": "physical", "path": format!("/dev/disk/by-dname/{}", d.name),
        "id_path": d.wwn.as_ref().map(|w| format!("/dev/disk/by-id/wwn-{w}")),
        "size": d.size_bytes, "block_size": 512, "model": d.model, "serial": d.serial,
        "tags": [], "uuid": null, "filesystem": null, "partitions": [], "partition_table_type": null,
        "used_for": "Unused", "used_size": 0, "available_size": d.size_bytes, "storage_pool": null,
        "numa_node": 0, "system_id": m.id,
        "resource_uri": format!("{API_PREFIX}nodes/{}/blockdevices/{id}/", m.id),
    })
}

/// A machine as `GET machines/{system_id}/` returns it.
pub fn machine(m: &Machine, l: &Lookup) -> Value {
    let interfaces: Vec<Value> = m
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, n)| interface(m, i, n, l))
        .collect();
    let boot_interface = m
        .interfaces
        .iter()
        .position(|n| Some(&n.mac) == m.boot_mac.as_ref())
        .map(|i| interfaces[i].clone())
        .unwrap_or(Value::Null);
    let disks: Vec<Value> = m
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| block_device(m, i, d))
        .collect();
    let ip_addresses: Vec<&String> = m
        .interfaces
        .iter()
        .filter_map(|n| l.ips.get(&n.mac))
        .collect();
    let zone_json = l.zones.get(&m.zone).map(zone).unwrap_or_else(|| {
        json!({ "id": null, "name": m.zone, "description": "", "resource_uri": format!("{API_PREFIX}zones/{}/", m.zone) })
    });
    let pool_json = l
        .pools
        .get(&m.pool)
        .map(pool)
        .unwrap_or_else(|| json!({ "id": null, "name": m.pool, "description": "" }));
    let storage_mb: f64 = m
        .disks
        .iter()
        .map(|d| d.size_bytes as f64 / 1_000_000.0)
        .sum();
    let power_state = match m.power_state {
        PowerState::On => "on",
        PowerState::Off => "off",
        PowerState::Unknown => "unknown",
        PowerState::Error => "error",
    };
    let mut head = json!({
        "system_id": m.id,
        "hostname": m.hostname,
        "description": "",
        "hardware_uuid": null,
        "domain": domain(),
        "fqdn": fqdn(m),
        "owner": m.owner_name,
        "owner_data": {},
        "locked": false,
        "architecture": m.architecture,
        "min_hwe_kernel": "",
        "hwe_kernel": m.hwe_kernel,
        "cpu_count": m.cpu_count,
        "cpu_speed": 0,
        "memory": m.memory_mib,
        "swap_size": null,
        "storage": storage_mb,
        "hardware_info": {
            "system_vendor": m.system.vendor, "system_product": m.system.product,
            "system_serial": m.system.serial, "cpu_model": m.cpu_model,
        },
        "status": m.status.code(),
        "status_name": m.status.name(),
        "status_action": "",
        "status_message": m.status_message,
        "error_description": m.power_error.clone().unwrap_or_default(),
        // MAAS turns netboot off once the OS is installed.
        "netboot": m.status != NodeStatus::Deployed,
        "power_type": m.power_type.as_str(),
        "power_state": power_state,
        "osystem": m.osystem,
        "distro_series": m.distro_series,
        "ephemeral_deploy": false,
    });
    // Two literals: one would exceed serde_json's macro recursion limit.
    let rest = json!({
        "boot_interface": boot_interface,
        "interface_set": interfaces,
        "ip_addresses": ip_addresses,
        "default_gateways": { "ipv4": { "gateway_ip": null, "link_id": null }, "ipv6": { "gateway_ip": null, "link_id": null } },
        "address_ttl": null,
        "disable_ipv4": false,
        "boot_disk": disks.first().cloned().unwrap_or(Value::Null),
        "blockdevice_set": disks,
        "physicalblockdevice_set": disks,
        "virtualblockdevice_set": [],
        "volume_groups": [],
        "raids": [],
        "cache_sets": [],
        "bcaches": [],
        "special_filesystems": [],
        "zone": zone_json,
        "pool": pool_json,
        "tag_names": m.tags,
        "pod": null,
        "parent": null,
        "node_type": 0,
        "node_type_name": "Machine",
        "workload_annotations": {},
        "commissioning_status": 0,
        "commissioning_status_name": "Pending",
        "testing_status": 0,
        "testing_status_name": "Pending",
        "bios_boot_method": null,
        "resource_uri": format!("{API_PREFIX}machines/{}/", m.id),
    });
    if let (Value::Object(a), Value::Object(b)) = (&mut head, rest) {
        a.extend(b);
    }
    head
}

/// MAAS event timestamps: `Wed, 25 Nov. 2026 09:00:00`.
pub fn event_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%a, %d %b. %Y %H:%M:%S").to_string()
}
