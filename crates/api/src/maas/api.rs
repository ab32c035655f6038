//! `/MAAS/api/2.0/`: dispatch through the [`describe`](super::describe) table, then one
//! function per (handler, action).

use super::describe::{self, API_PREFIX, Handler, Method};
use super::form::{Params, decode_base64, parse_bool};
use super::render::{self, Lookup};
use super::{MaasError, MaasResult, base_uri, oauth_request, request_params, verify_user};
use crate::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ingot_engine::{Actor, DeployOptions, EngineError};
use ingot_store::{AllocationConstraints, GroupKind, MachineFilter, User};
use ingot_types::inventory::normalize_mac;
use ingot_types::machine::{Machine, NewMachine};
use ingot_types::power::{PowerParameters, PowerType};
use ingot_types::{MachineId, NodeStatus};
use serde_json::{Value, json};

/// The MAAS version Ingot's API answers as (the 2.0 API of MAAS 3.x).
pub const COMPAT_VERSION: &str = "3.5.0";

/// What a handler function gets.
struct Ctx {
    state: AppState,
    user: Option<User>,
    params: Params,
    path: Vec<(&'static str, String)>,
}

impl Ctx {
    fn user(&self) -> MaasResult<&User> {
        self.user
            .as_ref()
            .ok_or(MaasError::Api(ApiError::Unauthorized))
    }
    fn actor(&self) -> MaasResult<Actor> {
        Ok(Actor::user(self.user()?))
    }
    fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.is_admin)
    }
    fn require_admin(&self) -> MaasResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(MaasError::Api(ApiError::Forbidden))
        }
    }
    fn path_param(&self, name: &str) -> &str {
        self.path
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v.as_str())
    }
    fn store(&self) -> &ingot_store::Store {
        self.state.engine.store()
    }
    /// Refuses parameters this action does not take, naming the first one. MAAS ignores
    /// some; Ingot would rather say so than silently do something else.
    fn allow(&self, names: &[&str]) -> MaasResult<()> {
        for n in self.params.names() {
            if n == "op" || n.starts_with("oauth_") || names.contains(&n) {
                continue;
            }
            return Err(MaasError::bad(n, "unknown or unsupported parameter"));
        }
        Ok(())
    }
    fn opt(&self, name: &str) -> Option<&str> {
        self.params.get(name).filter(|v| !v.is_empty())
    }
    fn flag(&self, name: &str) -> MaasResult<bool> {
        self.params
            .get(name)
            .map(|v| parse_bool(name, v))
            .transpose()
            .map(|b| b.unwrap_or(false))
            .map_err(MaasError::Api)
    }
    async fn machine_id(&self) -> MaasResult<MachineId> {
        let raw = self.path_param("system_id");
        MachineId::parse(raw).map_err(|_| MaasError::not_found("machine", raw))
    }
    async fn visible_machine(&self) -> MaasResult<Machine> {
        let id = self.machine_id().await?;
        Ok(self.state.engine.machine_for(&self.actor()?, &id).await?)
    }
    async fn render_machine(&self, m: &Machine) -> MaasResult<Json<Value>> {
        let l = Lookup::load(self.store()).await?;
        Ok(Json(render::machine(m, &l)))
    }
}

fn json_response(v: Value) -> MaasResult<Response> {
    Ok(Json(v).into_response())
}

fn no_content() -> MaasResult<Response> {
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn dispatch(
    State(state): State<AppState>,
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match dispatch_inner(state, method, uri, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch_inner(
    state: AppState,
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> MaasResult<Response> {
    let rest = uri.path().strip_prefix(API_PREFIX).unwrap_or("");
    let mut segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if segments == ["describe"] && method == http::Method::GET {
        return json_response(describe::describe(&base_uri(&headers)));
    }
    let params = request_params(&uri, &headers, &body)?;
    let mut op = params
        .get("op")
        .filter(|o| !o.is_empty())
        .map(str::to_owned);
    // `.../op-allocate` is the same as `...?op=allocate`.
    if let Some(name) = segments.last().and_then(|s| s.strip_prefix("op-")) {
        op = Some(name.to_owned());
        segments.pop();
    }
    let (handler, path) =
        describe::route(&segments).ok_or_else(|| MaasError::not_found("resource", uri.path()))?;
    let verb = Method::from_http(&method);
    let action = verb
        .and_then(|m| handler.action(m, op.as_deref()))
        .ok_or_else(|| {
            MaasError::Api(ApiError::BadRequest {
                field: None,
                message: format!(
                    "Unrecognised signature: method={} op={}",
                    method,
                    op.as_deref().unwrap_or("None")
                ),
            })
        })?;
    let user = if handler.anon {
        None
    } else {
        let req = oauth_request(&headers, &params)?
            .ok_or(MaasError::Auth(super::oauth::OAuthError::Anonymous))?;
        let user = verify_user(&state, &req).await?;
        // Tenants of the cloud API act through /bmc/v1, where their quotas and isolation
        // live; letting their keys allocate here would bypass both.
        if !user.is_admin
            && state
                .engine
                .store()
                .account_of_user(user.id)
                .await?
                .is_some()
        {
            return Err(MaasError::Forbidden(
                "tenant credentials are for the cloud API (/bmc/v1), not the MAAS API".into(),
            ));
        }
        Some(user)
    };
    let ctx = Ctx {
        state,
        user,
        params,
        path,
    };
    handle(handler, action.name, &ctx).await
}

async fn handle(h: &Handler, action: &str, c: &Ctx) -> MaasResult<Response> {
    match (h.name, action) {
        ("VersionHandler", "read") => json_response(json!({
            "capabilities": [
                "networks-management", "static-ipaddresses", "ipv6-deployment-ubuntu",
                "devices-management", "storage-deployment-ubuntu", "network-deployment-ubuntu",
                "bridging-interface-ubuntu", "bridging-automatic-ubuntu", "authenticate-api",
            ],
            "version": COMPAT_VERSION,
            "subversion": format!("ingot {}", env!("CARGO_PKG_VERSION")),
        })),
        ("MachinesHandler" | "NodesHandler", "read") => list_machines(c).await,
        ("MachinesHandler", "create") => create_machine(c).await,
        ("MachinesHandler", "allocate") => allocate(c).await,
        ("MachinesHandler", "power_parameters") => bulk_power_parameters(c).await,
        ("MachinesHandler", "release") => bulk_release(c).await,
        ("MachineHandler" | "NodeHandler", "read") => {
            c.allow(&[])?;
            let m = c.visible_machine().await?;
            Ok(c.render_machine(&m).await?.into_response())
        }
        ("MachineHandler", "update") => update_machine(c).await,
        ("MachineHandler", "commission") => {
            c.allow(&[
                "enable_ssh",
                "skip_bmc_config",
                "skip_networking",
                "skip_storage",
                "commissioning_scripts",
                "testing_scripts",
                "comment",
            ])?;
            let m = c
                .state
                .engine
                .commission(&c.actor()?, &c.machine_id().await?)
                .await?;
            Ok(c.render_machine(&m).await?.into_response())
        }
        ("MachineHandler", "deploy") => deploy(c).await,
        ("MachineHandler", "release") => {
            c.allow(&["comment", "erase", "secure_erase", "quick_erase", "force"])?;
            let erase = c.flag("erase")? || c.flag("secure_erase")? || c.flag("quick_erase")?;
            let m = c
                .state
                .engine
                .release(&c.actor()?, &c.machine_id().await?, erase)
                .await?;
            Ok(c.render_machine(&m).await?.into_response())
        }
        ("MachineHandler", "abort") => {
            c.allow(&["comment"])?;
            let m = c
                .state
                .engine
                .abort(&c.actor()?, &c.machine_id().await?)
                .await?;
            Ok(c.render_machine(&m).await?.into_response())
        }
        ("MachineHandler", "power_on" | "power_off") => {
            c.allow(&["comment", "stop_mode"])?;
            if let Some(mode) = c.opt("stop_mode")
                && !matches!(mode, "hard" | "soft")
            {
                return Err(MaasError::bad(
                    "stop_mode",
                    format!("{mode:?} is not hard or soft"),
                ));
            }
            let m = c
                .state
                .engine
                .power(&c.actor()?, &c.machine_id().await?, action == "power_on")
                .await?;
            Ok(c.render_machine(&m).await?.into_response())
        }
        ("MachineHandler", "query_power_state") => {
            c.allow(&[])?;
            let state = c
                .state
                .engine
                .query_power(&c.actor()?, &c.machine_id().await?)
                .await?;
            json_response(json!({ "state": state.as_str() }))
        }
        ("MachineHandler" | "NodeHandler", "power_parameters") => {
            c.require_admin()?;
            let m = c.visible_machine().await?;
            json_response(json!(m.power_parameters.redacted()))
        }
        ("MachineHandler", "mark_broken") => {
            c.allow(&["comment", "error_description"])?;
            let why = c
                .opt("comment")
                .or(c.opt("error_description"))
                .unwrap_or("marked broken");
            let m = c
                .state
                .engine
                .mark_broken(&c.actor()?, &c.machine_id().await?, why)
                .await?;
            Ok(c.render_machine(&m).await?.into_response())
        }
        ("MachineHandler", "mark_fixed") => {
            c.allow(&["comment"])?;
            let m = c
                .state
                .engine
                .mark_fixed(&c.actor()?, &c.machine_id().await?)
                .await?;
            Ok(c.render_machine(&m).await?.into_response())
        }
        ("MachineHandler", "get_token") => {
            c.allow(&[])?;
            let k = c
                .state
                .engine
                .issue_metadata_credentials(&c.actor()?, &c.machine_id().await?)
                .await?;
            json_response(
                json!({ "consumer_key": k.consumer_key, "token_key": k.token_key, "token_secret": k.token_secret }),
            )
        }
        ("AccountHandler", "create_authorisation_token") => {
            c.allow(&["name"])?;
            let name = c.opt("name").unwrap_or("API token");
            let k = c.store().create_api_key(c.user()?.id, name).await?;
            json_response(
                json!({ "name": name, "consumer_key": k.consumer_key, "token_key": k.token_key, "token_secret": k.token_secret }),
            )
        }
        ("AccountHandler", "list_authorisation_tokens") => {
            c.allow(&[])?;
            let keys = c.store().list_api_keys(c.user()?.id).await?;
            // Secrets are stored hashed, so unlike MAAS the list cannot show them.
            json_response(json!(keys.iter().map(|k| json!({ "name": k.name, "consumer_key": k.consumer_key, "token_key": k.token_key })).collect::<Vec<_>>()))
        }
        ("AccountHandler", "delete_authorisation_token") => {
            c.allow(&["token_key"])?;
            let tk = c
                .opt("token_key")
                .ok_or_else(|| MaasError::bad("token_key", "This field is required."))?;
            c.store().delete_api_key(c.user()?.id, tk).await?;
            no_content()
        }
        ("UsersHandler", "read") => {
            c.allow(&[])?;
            let users = if c.is_admin() {
                c.store().list_users().await?
            } else {
                vec![c.user()?.clone()]
            };
            json_response(json!(users.iter().map(render::user).collect::<Vec<_>>()))
        }
        ("UsersHandler", "whoami") => {
            c.allow(&[])?;
            json_response(render::user(c.user()?))
        }
        ("UsersHandler", "create") => create_user(c).await,
        ("UserHandler", "read") => {
            c.allow(&[])?;
            let name = c.path_param("username");
            if !c.is_admin() && c.user()?.username != name {
                return Err(MaasError::not_found("user", name));
            }
            json_response(render::user(&c.store().user_by_name(name).await?))
        }
        ("SSHKeysHandler", "read") => {
            c.allow(&[])?;
            let keys = c.store().ssh_keys(c.user()?.id).await?;
            json_response(json!(keys.iter().map(render::ssh_key).collect::<Vec<_>>()))
        }
        ("SSHKeysHandler", "create") => {
            c.allow(&["key"])?;
            let key = c
                .opt("key")
                .ok_or_else(|| MaasError::bad("key", "This field is required."))?
                .trim();
            validate_ssh_key(key)?;
            let k = c.store().add_ssh_key(c.user()?.id, key).await?;
            Ok((StatusCode::CREATED, Json(render::ssh_key(&k))).into_response())
        }
        ("SSHKeyHandler", "read" | "delete") => {
            c.allow(&[])?;
            let raw = c.path_param("id");
            let id: i64 = raw
                .parse()
                .map_err(|_| MaasError::not_found("SSH key", raw))?;
            if action == "delete" {
                c.store().delete_ssh_key(c.user()?.id, id).await?;
                return no_content();
            }
            let keys = c.store().ssh_keys(c.user()?.id).await?;
            let k = keys
                .iter()
                .find(|k| k.id == id)
                .ok_or_else(|| MaasError::not_found("SSH key", raw))?;
            json_response(render::ssh_key(k))
        }
        ("ZonesHandler" | "ResourcePoolsHandler", "read") => {
            c.allow(&[])?;
            let (kind, f): (_, fn(&ingot_store::NamedGroup) -> Value) = if h.name == "ZonesHandler"
            {
                (GroupKind::Zone, render::zone)
            } else {
                (GroupKind::Pool, render::pool)
            };
            json_response(json!(
                c.store()
                    .groups(kind)
                    .await?
                    .iter()
                    .map(f)
                    .collect::<Vec<_>>()
            ))
        }
        ("ZonesHandler" | "ResourcePoolsHandler", "create") => {
            c.require_admin()?;
            c.allow(&["name", "description"])?;
            let name = c
                .opt("name")
                .ok_or_else(|| MaasError::bad("name", "This field is required."))?;
            validate_name("name", name)?;
            let desc = c.params.get("description").unwrap_or("");
            if h.name == "ZonesHandler" {
                json_response(render::zone(
                    &c.store().create_group(GroupKind::Zone, name, desc).await?,
                ))
            } else {
                json_response(render::pool(
                    &c.store().create_group(GroupKind::Pool, name, desc).await?,
                ))
            }
        }
        ("ZoneHandler", "read") => {
            c.allow(&[])?;
            json_response(render::zone(
                &c.store()
                    .group_by_name(GroupKind::Zone, c.path_param("name"))
                    .await?,
            ))
        }
        ("ZoneHandler", "delete") => {
            c.require_admin()?;
            c.store()
                .delete_group(GroupKind::Zone, c.path_param("name"))
                .await?;
            no_content()
        }
        ("ResourcePoolHandler", "read" | "delete") => {
            let raw = c.path_param("id");
            let id: i64 = raw
                .parse()
                .map_err(|_| MaasError::not_found("resource pool", raw))?;
            let pool = c.store().group_by_id(GroupKind::Pool, id).await?;
            if action == "delete" {
                c.require_admin()?;
                c.store().delete_group(GroupKind::Pool, &pool.name).await?;
                return no_content();
            }
            json_response(render::pool(&pool))
        }
        ("TagsHandler", "read") => {
            c.allow(&[])?;
            json_response(json!(
                c.store()
                    .tags()
                    .await?
                    .iter()
                    .map(render::tag)
                    .collect::<Vec<_>>()
            ))
        }
        ("TagsHandler", "create") => {
            c.require_admin()?;
            c.allow(&["name", "definition", "comment", "kernel_opts"])?;
            let name = c
                .opt("name")
                .ok_or_else(|| MaasError::bad("name", "This field is required."))?;
            validate_name("name", name)?;
            refuse_definition(c)?;
            let t = c
                .store()
                .create_tag(
                    name,
                    "",
                    c.params.get("comment").unwrap_or(""),
                    c.params.get("kernel_opts").unwrap_or(""),
                )
                .await?;
            json_response(render::tag(&t))
        }
        ("TagHandler", "read") => {
            json_response(render::tag(&c.store().tag(c.path_param("name")).await?))
        }
        ("TagHandler", "update") => {
            c.require_admin()?;
            c.allow(&["comment", "kernel_opts", "definition", "name"])?;
            refuse_definition(c)?;
            if let Some(n) = c.opt("name")
                && n != c.path_param("name")
            {
                return Err(MaasError::bad("name", "renaming tags is not supported"));
            }
            let t = c
                .store()
                .update_tag(
                    c.path_param("name"),
                    c.params.get("comment"),
                    c.params.get("kernel_opts"),
                )
                .await?;
            json_response(render::tag(&t))
        }
        ("TagHandler", "delete") => {
            c.require_admin()?;
            c.store().delete_tag(c.path_param("name")).await?;
            no_content()
        }
        ("TagHandler", "machines" | "nodes") => {
            let tag = c.store().tag(c.path_param("name")).await?;
            let mut f = MachineFilter {
                tags: vec![tag.name],
                ..Default::default()
            };
            if !c.is_admin() {
                f.visible_to = Some(c.user()?.id);
            }
            let l = Lookup::load(c.store()).await?;
            let ms = c.store().list_machines(&f).await?;
            json_response(json!(
                ms.iter()
                    .map(|m| render::machine(m, &l))
                    .collect::<Vec<_>>()
            ))
        }
        ("TagHandler", "update_nodes") => update_tag_nodes(c).await,
        ("FabricsHandler", "read") => json_response(json!([render::fabric()])),
        ("FabricHandler", "read") => {
            if c.path_param("id") != render::FABRIC_ID.to_string() {
                return Err(MaasError::not_found("fabric", c.path_param("id")));
            }
            json_response(render::fabric())
        }
        ("VlansHandler", "read") => {
            if c.path_param("fabric_id") != render::FABRIC_ID.to_string() {
                return Err(MaasError::not_found("fabric", c.path_param("fabric_id")));
            }
            json_response(json!([render::vlan()]))
        }
        ("VlanHandler", "read") => {
            if c.path_param("fabric_id") != render::FABRIC_ID.to_string()
                || c.path_param("vid") != "0"
            {
                return Err(MaasError::not_found("VLAN", c.path_param("vid")));
            }
            json_response(render::vlan())
        }
        ("SubnetsHandler", "read") => {
            let subnets = subnets(c).await?;
            json_response(json!(
                subnets
                    .iter()
                    .map(|(id, cidr)| render::subnet(*id, cidr))
                    .collect::<Vec<_>>()
            ))
        }
        ("SubnetHandler", "read") => {
            let want = c.path_param("id");
            let subnets = subnets(c).await?;
            let (id, cidr) = subnets
                .iter()
                .find(|(id, cidr)| id.to_string() == want || cidr == want)
                .ok_or_else(|| MaasError::not_found("subnet", want))?;
            json_response(render::subnet(*id, cidr))
        }
        // Ingot's DHCP ranges live in the PXE service's configuration, not in the region.
        ("IPRangesHandler", "read") => json_response(json!([])),
        ("IPRangeHandler", "read") => Err(MaasError::not_found("IP range", c.path_param("id"))),
        ("BootResourcesHandler", "read") => json_response(json!([boot_resource()])),
        ("BootResourceHandler", "read") => {
            if c.path_param("id") != "1" {
                return Err(MaasError::not_found("boot resource", c.path_param("id")));
            }
            let mut r = boot_resource();
            r["sets"] = json!({});
            json_response(r)
        }
        ("EventsHandler", "query") => events(c).await,
        ("DiscoveriesHandler", "read") => {
            let list = c.store().discoveries().await?;
            json_response(json!(
                list.iter().map(render::discovery).collect::<Vec<_>>()
            ))
        }
        ("DiscoveryHandler", "read") => {
            let want = c.path_param("discovery_id");
            let list = c.store().discoveries().await?;
            let d = list
                .iter()
                .find(|d| render::discovery_id(d) == want)
                .ok_or_else(|| MaasError::not_found("discovery", want))?;
            json_response(render::discovery(d))
        }
        ("DomainsHandler", "read") => json_response(json!([render::domain()])),
        ("DomainHandler", "read") => {
            if c.path_param("id") != "0" {
                return Err(MaasError::not_found("domain", c.path_param("id")));
            }
            json_response(render::domain())
        }
        ("MaasHandler", "get_config") => {
            c.allow(&["name"])?;
            let name = c
                .opt("name")
                .ok_or_else(|| MaasError::bad("name", "This field is required."))?;
            let v = match name {
                "maas_name" => json!("ingot"),
                "default_osystem" | "commissioning_osystem" => json!("ubuntu"),
                "default_distro_series" | "commissioning_distro_series" => json!("noble"),
                "default_min_hwe_kernel" => json!(""),
                "enable_analytics" | "enable_third_party_drivers" => json!(false),
                "node_timeout" => json!(c.state.engine.config().deploy_timeout.as_secs() / 60),
                _ => {
                    return Err(MaasError::bad(
                        "name",
                        format!("{name:?} is not a configuration item Ingot knows"),
                    ));
                }
            };
            json_response(v)
        }
        (handler, action) => {
            // The table names an action this match does not implement: a programming error.
            tracing::error!(
                handler,
                action,
                "MAAS action in the describe table has no implementation"
            );
            Err(MaasError::Api(ApiError::Internal))
        }
    }
}

fn boot_resource() -> Value {
    json!({
        "id": 1, "type": "Synced", "name": "ubuntu/noble", "architecture": "amd64/generic",
        "subarches": "generic", "title": "Ubuntu 24.04 LTS",
        "resource_uri": format!("{API_PREFIX}boot-resources/1/"),
    })
}

fn refuse_definition(c: &Ctx) -> MaasResult<()> {
    if c.opt("definition").is_some() {
        return Err(MaasError::bad(
            "definition",
            "XPath tag definitions are not supported; create a manual tag (no definition) and apply it with update_nodes",
        ));
    }
    Ok(())
}

fn validate_name(field: &str, name: &str) -> MaasResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(MaasError::bad(
            field,
            format!("{name:?}: use letters, digits, '-' and '_' only"),
        ))
    }
}

fn validate_ssh_key(key: &str) -> MaasResult<()> {
    let mut parts = key.split_whitespace();
    let (kind, blob) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let kind_ok =
        kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
    let blob_ok = blob.len() >= 16
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    if kind_ok && blob_ok && !key.contains('\n') {
        Ok(())
    } else {
        Err(MaasError::bad("key", "Invalid SSH public key."))
    }
}

/// Subnets Ingot knows of: the ones its DHCP has handed out leases in.
async fn subnets(c: &Ctx) -> MaasResult<Vec<(i64, String)>> {
    let mut cidrs: Vec<String> = c
        .store()
        .load_leases()
        .await?
        .into_iter()
        .map(|l| l.subnet)
        .collect();
    cidrs.sort();
    cidrs.dedup();
    Ok(cidrs
        .into_iter()
        .zip(1..)
        .map(|(cidr, id)| (id, cidr))
        .collect())
}

fn strip_domain(h: &str) -> &str {
    h.strip_suffix(&format!(".{}", render::DOMAIN)).unwrap_or(h)
}

fn parse_status_filter(v: &str) -> MaasResult<NodeStatus> {
    v.parse::<i32>()
        .ok()
        .and_then(NodeStatus::from_code)
        .or_else(|| NodeStatus::parse_name(v))
        .ok_or_else(|| MaasError::bad("status", format!("{v:?} is not a machine status")))
}

async fn list_machines(c: &Ctx) -> MaasResult<Response> {
    c.allow(&[
        "id",
        "hostname",
        "status",
        "zone",
        "pool",
        "tags",
        "mac_address",
        "arch",
        "domain",
        "agent_name",
        "owner",
    ])?;
    let mut f = MachineFilter {
        ids: c.params.list("id"),
        hostnames: c
            .params
            .list("hostname")
            .iter()
            .map(|h| strip_domain(h).to_owned())
            .collect(),
        statuses: c
            .params
            .list("status")
            .iter()
            .map(|s| parse_status_filter(s))
            .collect::<MaasResult<_>>()?,
        tags: c.params.list("tags"),
        ..Default::default()
    };
    let zones = c.params.list("zone");
    let pools = c.params.list("pool");
    let archs = c.params.list("arch");
    let macs = c.params.list("mac_address");
    for (i, m) in macs.iter().enumerate() {
        normalize_mac(m).ok_or_else(|| {
            MaasError::bad(
                "mac_address",
                format!("{m:?} is not a MAC address (item {i})"),
            )
        })?;
    }
    if let Some(d) = c.opt("domain")
        && d != render::DOMAIN
    {
        return json_response(json!([]));
    }
    if let Some(owner) = c.opt("owner") {
        match c.store().user_by_name(owner).await {
            Ok(u) => f.owner = Some(u.id),
            Err(_) => return json_response(json!([])),
        }
    }
    if !c.is_admin() {
        f.visible_to = Some(c.user()?.id);
    }
    if macs.len() == 1 {
        f.mac = macs.first().cloned();
    }
    let all = c.store().list_machines(&f).await?;
    let norm_macs: Vec<String> = macs.iter().filter_map(|m| normalize_mac(m)).collect();
    let l = Lookup::load(c.store()).await?;
    let out: Vec<Value> = all
        .iter()
        .filter(|m| zones.is_empty() || zones.contains(&m.zone))
        .filter(|m| pools.is_empty() || pools.contains(&m.pool))
        .filter(|m| {
            archs.is_empty()
                || archs
                    .iter()
                    .any(|a| &m.architecture == a || m.architecture.split('/').next() == Some(a))
        })
        .filter(|m| {
            norm_macs.len() < 2
                || m.interfaces.iter().any(|n| norm_macs.contains(&n.mac))
                || m.boot_mac.as_ref().is_some_and(|b| norm_macs.contains(b))
        })
        .map(|m| render::machine(m, &l))
        .collect();
    json_response(json!(out))
}

/// `power_parameters_<name>` form fields (or a JSON `power_parameters`), merged over `base`.
fn power_parameters_from(
    params: &Params,
    base: PowerParameters,
) -> MaasResult<(PowerParameters, bool)> {
    let mut map = match serde_json::to_value(&base) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let mut given = false;
    if let Some(raw) = params.get("power_parameters") {
        let v: Value = serde_json::from_str(raw)
            .map_err(|e| MaasError::bad("power_parameters", format!("not a JSON object: {e}")))?;
        let Value::Object(obj) = v else {
            return Err(MaasError::bad("power_parameters", "not a JSON object"));
        };
        for (k, v) in obj {
            map.insert(k, v);
        }
        given = true;
    }
    for (name, value) in params.pairs() {
        let Some(key) = name.strip_prefix("power_parameters_") else {
            continue;
        };
        if key == "skip_check" {
            continue;
        }
        if !PowerParameters::FIELDS.contains(&key) {
            return Err(MaasError::bad(
                name,
                format!(
                    "unknown power parameter (known: {})",
                    PowerParameters::FIELDS.join(", ")
                ),
            ));
        }
        let v = if key == "power_verify_ssl" {
            json!(parse_bool(name, value)?)
        } else {
            json!(value)
        };
        map.insert(key.to_owned(), v);
        given = true;
    }
    if let Some(d) = map.get("power_driver").and_then(Value::as_str)
        && !matches!(d, "LAN_2_0" | "LAN")
    {
        return Err(MaasError::bad(
            "power_parameters_power_driver",
            format!("{d:?} is not LAN_2_0 or LAN"),
        ));
    }
    let p: PowerParameters = serde_json::from_value(Value::Object(map))
        .map_err(|e| MaasError::bad("power_parameters", e.to_string()))?;
    Ok((p, given))
}

fn parse_power_type(v: &str) -> MaasResult<PowerType> {
    PowerType::parse(v).ok_or_else(|| {
        MaasError::bad(
            "power_type",
            format!("{v:?} is not one of ipmi, redfish, sim, manual"),
        )
    })
}

fn require_address(power_type: PowerType, p: &PowerParameters) -> MaasResult<()> {
    if matches!(
        power_type,
        PowerType::Ipmi | PowerType::Redfish | PowerType::Sim
    ) && p.power_address.as_deref().is_none_or(str::is_empty)
    {
        return Err(MaasError::bad(
            "power_parameters_power_address",
            "required for this power type",
        ));
    }
    Ok(())
}

fn validate_hostname(h: &str) -> MaasResult<()> {
    crate::native::validate_hostname(h).map_err(MaasError::Api)
}

async fn check_group(c: &Ctx, kind: GroupKind, field: &str, name: &str) -> MaasResult<()> {
    match c.store().group_by_name(kind, name).await {
        Ok(_) => Ok(()),
        Err(ingot_store::StoreError::NotFound { .. }) => {
            Err(MaasError::bad(field, format!("no {field} named {name:?}")))
        }
        Err(e) => Err(e.into()),
    }
}

fn power_field_names(params: &Params) -> Vec<&str> {
    params
        .names()
        .filter(|n| n.starts_with("power_parameters_"))
        .collect()
}

async fn create_machine(c: &Ctx) -> MaasResult<Response> {
    c.require_admin()?;
    let mut allowed = vec![
        "architecture",
        "mac_addresses",
        "hostname",
        "power_type",
        "power_parameters",
        "zone",
        "pool",
        "commission",
        "description",
        "domain",
        "subarchitecture",
        "min_hwe_kernel",
    ];
    allowed.extend(power_field_names(&c.params));
    c.allow(&allowed)?;
    let macs = c.params.list("mac_addresses");
    if macs.is_empty() {
        return Err(MaasError::bad("mac_addresses", "This field is required."));
    }
    let mut norm = Vec::new();
    for m in &macs {
        norm.push(normalize_mac(m).ok_or_else(|| {
            MaasError::bad("mac_addresses", format!("{m:?} is not a valid MAC address"))
        })?);
    }
    if let Some(h) = c.opt("hostname") {
        validate_hostname(strip_domain(h))?;
    }
    if let Some(d) = c.opt("domain")
        && d != render::DOMAIN
    {
        return Err(MaasError::bad(
            "domain",
            format!("only the {:?} domain exists", render::DOMAIN),
        ));
    }
    let power_type = c
        .opt("power_type")
        .map(parse_power_type)
        .transpose()?
        .unwrap_or(PowerType::Manual);
    let (params, _) = power_parameters_from(&c.params, PowerParameters::default())?;
    require_address(power_type, &params)?;
    if let Some(z) = c.opt("zone") {
        check_group(c, GroupKind::Zone, "zone", z).await?;
    }
    if let Some(p) = c.opt("pool") {
        check_group(c, GroupKind::Pool, "pool", p).await?;
    }
    let commission = c
        .params
        .get("commission")
        .map(|v| parse_bool("commission", v))
        .transpose()?
        .unwrap_or(true);
    let arch = c.opt("architecture").unwrap_or("amd64/generic");
    let arch = if arch.contains('/') {
        arch.to_owned()
    } else {
        format!("{arch}/generic")
    };
    let new = NewMachine {
        hostname: c.opt("hostname").map(|h| strip_domain(h).to_owned()),
        power_type: Some(power_type),
        power_parameters: params,
        boot_mac: norm.first().cloned(),
        macs: norm.into_iter().skip(1).collect(),
        architecture: Some(arch),
        zone: c.opt("zone").map(str::to_owned),
        pool: c.opt("pool").map(str::to_owned),
        inventory: None,
    };
    let actor = c.actor()?;
    let mut m = c
        .store()
        .create_machine(new, &actor.name)
        .await
        .map_err(EngineError::from)?;
    if commission {
        // As MAAS does for machines an administrator adds: commission straight away.
        m = c.state.engine.commission(&actor, &m.id).await?;
    }
    Ok(c.render_machine(&m).await?.into_response())
}

async fn update_machine(c: &Ctx) -> MaasResult<Response> {
    c.require_admin()?;
    let mut allowed = vec![
        "hostname",
        "zone",
        "pool",
        "power_type",
        "power_parameters",
        "domain",
        "description",
    ];
    allowed.extend(power_field_names(&c.params));
    c.allow(&allowed)?;
    let m = c.visible_machine().await?;
    // Validate everything before writing anything.
    if let Some(h) = c.opt("hostname") {
        validate_hostname(strip_domain(h))?;
    }
    if let Some(d) = c.opt("domain")
        && d != render::DOMAIN
    {
        return Err(MaasError::bad(
            "domain",
            format!("only the {:?} domain exists", render::DOMAIN),
        ));
    }
    if let Some(z) = c.opt("zone") {
        check_group(c, GroupKind::Zone, "zone", z).await?;
    }
    if let Some(p) = c.opt("pool") {
        check_group(c, GroupKind::Pool, "pool", p).await?;
    }
    let new_type = c.opt("power_type").map(parse_power_type).transpose()?;
    let power_type = new_type.unwrap_or(m.power_type);
    // A new power type starts from empty parameters; otherwise fields merge over the old.
    let base = if new_type.is_some_and(|t| t != m.power_type) {
        PowerParameters::default()
    } else {
        m.power_parameters.clone()
    };
    let (params, given) = power_parameters_from(&c.params, base)?;
    let power_changed = given || new_type.is_some();
    if power_changed {
        require_address(power_type, &params)?;
    }
    let actor = c.actor()?;
    if power_changed {
        c.store()
            .set_power_parameters(&m.id, power_type, &params, &actor.name)
            .await?;
    }
    let hostname = c.opt("hostname").map(strip_domain);
    let m = c
        .store()
        .update_machine_fields(&m.id, hostname, c.opt("zone"), c.opt("pool"), None)
        .await?;
    Ok(c.render_machine(&m).await?.into_response())
}

fn parse_number(field: &str, v: &str) -> MaasResult<f64> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| MaasError::bad(field, format!("Invalid number: {v:?}")))
}

async fn allocate(c: &Ctx) -> MaasResult<Response> {
    c.allow(&[
        "name",
        "system_id",
        "arch",
        "cpu_count",
        "mem",
        "tags",
        "not_tags",
        "zone",
        "pool",
        "comment",
        "agent_name",
        "bridge_all",
        "bridge_stp",
        "bridge_fd",
        "verbose",
        "dry_run",
        "fabrics",
        "not_fabrics",
        "fabric_classes",
        "not_fabric_classes",
        "subnets",
        "not_subnets",
        "interfaces",
        "storage",
        "pod",
        "not_pod",
        "pod_type",
        "not_pod_type",
        "not_in_zone",
        "not_in_pool",
    ])?;
    // Constraints Ingot cannot evaluate are refused rather than ignored: ignoring one would
    // hand out a machine that does not satisfy the request.
    for unsupported in [
        "fabrics",
        "not_fabrics",
        "fabric_classes",
        "not_fabric_classes",
        "subnets",
        "not_subnets",
        "interfaces",
        "storage",
        "pod",
        "not_pod",
        "pod_type",
        "not_pod_type",
        "not_in_zone",
        "not_in_pool",
    ] {
        if c.params.all(unsupported).iter().any(|v| !v.is_empty()) {
            return Err(MaasError::bad(
                unsupported,
                "this constraint is not supported by Ingot",
            ));
        }
    }
    if c.flag("dry_run")? {
        return Err(MaasError::bad(
            "dry_run",
            "dry runs are not supported by Ingot",
        ));
    }
    let constraints = AllocationConstraints {
        system_id: c.opt("system_id").map(str::to_owned),
        hostname: c.opt("name").map(|n| strip_domain(n).to_owned()),
        min_cpu_count: c
            .opt("cpu_count")
            .map(|v| parse_number("cpu_count", v).map(|n| n.ceil() as u32))
            .transpose()?,
        min_memory_mib: c
            .opt("mem")
            .map(|v| parse_number("mem", v).map(|n| n.ceil() as u64))
            .transpose()?,
        tags: c.params.list("tags"),
        not_tags: c.params.list("not_tags"),
        zone: c.opt("zone").map(str::to_owned),
        pool: c.opt("pool").map(str::to_owned),
        architecture: c.opt("arch").map(str::to_owned),
    };
    if let Some(z) = &constraints.zone {
        check_group(c, GroupKind::Zone, "zone", z).await?;
    }
    if let Some(p) = &constraints.pool {
        check_group(c, GroupKind::Pool, "pool", p).await?;
    }
    match c.state.engine.allocate(&c.actor()?, &constraints).await {
        Ok(m) => Ok(c.render_machine(&m).await?.into_response()),
        Err(EngineError::NoMatch) => Err(MaasError::Api(ApiError::Conflict {
            message: format!(
                "No available machine matches constraints: {}",
                describe_constraints(&c.params)
            ),
            current: None,
        })),
        Err(e) => Err(e.into()),
    }
}

fn describe_constraints(p: &Params) -> String {
    let parts: Vec<String> = p
        .pairs()
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "op" | "comment" | "agent_name") && !k.starts_with("oauth_")
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if parts.is_empty() {
        "(none)".into()
    } else {
        parts.join(", ")
    }
}

/// MAAS serves deploy user-data base64-decoded when it is valid base64, raw otherwise.
fn decode_user_data(raw: &str) -> MaasResult<String> {
    match decode_base64(raw) {
        Some(bytes) => String::from_utf8(bytes).map_err(|_| {
            MaasError::bad(
                "user_data",
                "binary (non-UTF-8) user-data is not supported by Ingot",
            )
        }),
        None => Ok(raw.to_owned()),
    }
}

async fn deploy(c: &Ctx) -> MaasResult<Response> {
    c.allow(&[
        "user_data",
        "distro_series",
        "hwe_kernel",
        "comment",
        "agent_name",
        "install_kvm",
        "register_vmhost",
        "install_rackd",
        "ephemeral_deploy",
        "enable_hw_sync",
        "bridge_all",
        "bridge_type",
        "bridge_stp",
        "bridge_fd",
        "osystem",
    ])?;
    for unsupported in [
        "install_kvm",
        "register_vmhost",
        "install_rackd",
        "ephemeral_deploy",
    ] {
        if c.flag(unsupported)? {
            return Err(MaasError::bad(unsupported, "not supported by Ingot"));
        }
    }
    let user_data = c
        .params
        .get("user_data")
        .map(decode_user_data)
        .transpose()?;
    // `ubuntu/noble`, `noble`.
    let (mut osystem, series) = match c.opt("distro_series") {
        Some(s) => match s.split_once('/') {
            Some((os, series)) => (Some(os.to_owned()), Some(series.to_owned())),
            None => (None, Some(s.to_owned())),
        },
        None => (None, None),
    };
    if let Some(os) = c.opt("osystem") {
        osystem = Some(os.to_owned());
    }
    let hwe_kernel = c.opt("hwe_kernel").map(str::to_owned);
    for (field, v) in [
        ("distro_series", &series),
        ("osystem", &osystem),
        ("hwe_kernel", &hwe_kernel),
    ] {
        if let Some(v) = v
            && (v.is_empty()
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(MaasError::bad(field, format!("{v:?} is not a valid name")));
        }
    }
    let opts = DeployOptions {
        osystem,
        distro_series: series,
        hwe_kernel,
        user_data,
    };
    let m = c
        .state
        .engine
        .deploy(&c.actor()?, &c.machine_id().await?, opts)
        .await?;
    Ok(c.render_machine(&m).await?.into_response())
}

async fn bulk_power_parameters(c: &Ctx) -> MaasResult<Response> {
    c.require_admin()?;
    c.allow(&["id"])?;
    let ids = c.params.list("id");
    let f = MachineFilter {
        ids,
        ..Default::default()
    };
    let ms = c.store().list_machines(&f).await?;
    let map: serde_json::Map<String, Value> = ms
        .iter()
        .map(|m| (m.id.to_string(), json!(m.power_parameters.redacted())))
        .collect();
    json_response(Value::Object(map))
}

async fn bulk_release(c: &Ctx) -> MaasResult<Response> {
    c.allow(&["machines", "comment"])?;
    let ids = c.params.list("machines");
    if ids.is_empty() {
        return Err(MaasError::bad("machines", "This field is required."));
    }
    let actor = c.actor()?;
    let mut parsed = Vec::new();
    for raw in &ids {
        let id = MachineId::parse(raw)
            .map_err(|_| MaasError::bad("machines", format!("unknown machine {raw:?}")))?;
        // Check every machine first so an unknown one releases nothing.
        c.state
            .engine
            .machine_for(&actor, &id)
            .await
            .map_err(|_| MaasError::bad("machines", format!("unknown machine {raw:?}")))?;
        parsed.push(id);
    }
    let mut released = Vec::new();
    for id in parsed {
        c.state.engine.release(&actor, &id, false).await?;
        released.push(id.to_string());
    }
    json_response(json!(released))
}

async fn create_user(c: &Ctx) -> MaasResult<Response> {
    c.require_admin()?;
    c.allow(&["username", "email", "password", "is_superuser"])?;
    let username = c
        .opt("username")
        .ok_or_else(|| MaasError::bad("username", "This field is required."))?;
    if username.len() > 150
        || !username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@.+-_".contains(&b))
    {
        return Err(MaasError::bad(
            "username",
            "Enter a valid username: letters, digits and @/./+/-/_ only, at most 150.",
        ));
    }
    let email = c.params.get("email").unwrap_or("");
    if !email.is_empty() && (!email.contains('@') || email.len() > 254) {
        return Err(MaasError::bad("email", "Enter a valid email address."));
    }
    let password = c.params.get("password");
    if let Some(p) = password
        && p.len() < 8
    {
        return Err(MaasError::bad("password", "at least 8 characters"));
    }
    let is_admin = c
        .params
        .get("is_superuser")
        .map(|v| parse_bool("is_superuser", v))
        .transpose()?
        .unwrap_or(false);
    let u = c.store().create_user(username, is_admin).await?;
    if !email.is_empty() {
        c.store().set_user_email(u.id, email).await?;
    }
    if let Some(p) = password {
        c.store().set_password(u.id, p).await?;
    }
    json_response(render::user(&c.store().user(u.id).await?))
}

async fn update_tag_nodes(c: &Ctx) -> MaasResult<Response> {
    c.require_admin()?;
    c.allow(&["add", "remove", "rack_controller", "definition"])?;
    let tag = c.store().tag(c.path_param("name")).await?;
    let add = c.params.list("add");
    let remove = c.params.list("remove");
    let actor = c.actor()?;
    // Resolve every id before changing anything.
    let mut machines = Vec::new();
    for (field, ids) in [("add", &add), ("remove", &remove)] {
        for raw in ids.iter() {
            let id = MachineId::parse(raw)
                .map_err(|_| MaasError::bad(field, format!("unknown machine {raw:?}")))?;
            let m = c
                .state
                .engine
                .machine_for(&actor, &id)
                .await
                .map_err(|_| MaasError::bad(field, format!("unknown machine {raw:?}")))?;
            machines.push((field == "add", m));
        }
    }
    let (mut added, mut removed) = (0, 0);
    for (adding, m) in machines {
        let current = c.store().machine(&m.id).await?;
        let mut tags = current.tags.clone();
        if adding && !tags.contains(&tag.name) {
            tags.push(tag.name.clone());
            added += 1;
        } else if !adding && tags.contains(&tag.name) {
            tags.retain(|t| t != &tag.name);
            removed += 1;
        } else {
            continue;
        }
        c.store()
            .update_machine_fields(&m.id, None, None, None, Some(&tags))
            .await?;
    }
    json_response(json!({ "added": added, "removed": removed }))
}

async fn events(c: &Ctx) -> MaasResult<Response> {
    c.allow(&[
        "hostname",
        "id",
        "mac_address",
        "zone",
        "agent_name",
        "level",
        "limit",
        "before",
        "after",
        "owner",
        "domain",
    ])?;
    let limit = match c.opt("limit") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| MaasError::bad("limit", "an integer from 1 to 1000"))?,
        None => 100,
    };
    let before = c
        .opt("before")
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| MaasError::bad("before", "an event id"))
        })
        .transpose()?;
    let after = c
        .opt("after")
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| MaasError::bad("after", "an event id"))
        })
        .transpose()?;
    let mut f = MachineFilter {
        ids: c.params.list("id"),
        hostnames: c
            .params
            .list("hostname")
            .iter()
            .map(|h| strip_domain(h).to_owned())
            .collect(),
        zone: c.opt("zone").map(str::to_owned),
        mac: c.opt("mac_address").map(str::to_owned),
        ..Default::default()
    };
    if !c.is_admin() {
        f.visible_to = Some(c.user()?.id);
    }
    let machines = c.store().list_machines(&f).await?;
    let mut all = Vec::new();
    for m in &machines {
        for e in c.store().events(&m.id, 100_000).await? {
            if before.is_some_and(|b| e.id >= b) || after.is_some_and(|a| e.id <= a) {
                continue;
            }
            all.push((m.hostname.clone(), m.owner_name.clone(), e));
        }
    }
    // Newest first, as MAAS lists them.
    all.sort_by_key(|e| std::cmp::Reverse(e.2.id));
    all.truncate(limit);
    let events: Vec<Value> = all
        .iter()
        .map(|(hostname, owner, e)| {
            json!({
                "id": e.id, "node": e.machine_id, "hostname": hostname, "username": owner.clone().unwrap_or_default(),
                "level": "INFO", "created": render::event_time(e.at), "type": e.kind, "description": e.message,
                "actor": e.actor,
            })
        })
        .collect();
    json_response(
        json!({ "count": events.len(), "events": events, "next_uri": null, "prev_uri": null }),
    )
}

/// `POST /MAAS/accounts/authenticate/` (form `username`, `password`, `consumer`): a new
/// API key for a user with a password, as python-libmaas's `login()` expects.
pub async fn authenticate(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let params = request_params(&uri, &headers, &body)?;
        let username = params
            .get("username")
            .ok_or_else(|| MaasError::bad("username", "This field is required."))?;
        let password = params
            .get("password")
            .ok_or_else(|| MaasError::bad("password", "This field is required."))?;
        let consumer = params.get("consumer").unwrap_or("API token");
        let store = state.engine.store();
        let user = store
            .check_password(username, password)
            .await?
            .ok_or(MaasError::Auth(super::oauth::OAuthError::BadCredentials))?;
        let k = store.create_api_key(user.id, consumer).await?;
        Ok::<_, MaasError>(Json(json!({
            "name": consumer, "consumer_key": k.consumer_key, "token_key": k.token_key, "token_secret": k.token_secret,
        })))
    };
    match run.await {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_decoding() {
        assert_eq!(
            decode_user_data("I2Nsb3VkLWNvbmZpZwo=").unwrap(),
            "#cloud-config\n"
        );
        assert_eq!(
            decode_user_data("#!/bin/sh\necho hi").unwrap(),
            "#!/bin/sh\necho hi"
        );
        assert!(decode_user_data("/w==").is_err(), "0xff is not UTF-8");
    }

    #[test]
    fn power_parameter_fields() {
        let p = Params::parse_urlencoded(
            "power_parameters_power_address=10.0.0.1&power_parameters_power_user=admin&power_parameters_skip_check=true",
        );
        let (pp, given) = power_parameters_from(&p, PowerParameters::default()).unwrap();
        assert!(given);
        assert_eq!(pp.power_address.as_deref(), Some("10.0.0.1"));
        assert_eq!(pp.power_user.as_deref(), Some("admin"));
        let bad = Params::parse_urlencoded("power_parameters_power_colour=blue");
        assert!(
            matches!(power_parameters_from(&bad, PowerParameters::default()), Err(MaasError::Api(ApiError::BadRequest { field: Some(f), .. })) if f == "power_parameters_power_colour")
        );
        let drv = Params::parse_urlencoded("power_parameters_power_driver=LAN_3");
        assert!(power_parameters_from(&drv, PowerParameters::default()).is_err());
    }
}
