//! The MAAS 2.0 handler table. One table drives both `GET describe/` (which
//! python-libmaas builds its whole client from) and request dispatch, so the two cannot
//! disagree: an action that is not in the table is not served, and vice versa.

use serde_json::{Value, json};

pub const API_PREFIX: &str = "/MAAS/api/2.0/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
    pub fn from_http(m: &http::Method) -> Option<Self> {
        Some(match *m {
            http::Method::GET => Method::Get,
            http::Method::POST => Method::Post,
            http::Method::PUT => Method::Put,
            http::Method::DELETE => Method::Delete,
            _ => return None,
        })
    }
}

#[derive(Debug)]
pub struct Action {
    pub name: &'static str,
    pub method: Method,
    /// None for the RESTful CRUD actions (read/create/update/delete).
    pub op: Option<&'static str>,
}

#[derive(Debug)]
pub struct Handler {
    /// MAAS's handler class name; clients derive their object names from it.
    pub name: &'static str,
    /// Relative to [`API_PREFIX`], with `{param}` placeholders, ending in `/`.
    pub path: &'static str,
    /// Served without credentials.
    pub anon: bool,
    pub doc: &'static str,
    pub actions: &'static [Action],
}

const fn read() -> Action {
    Action {
        name: "read",
        method: Method::Get,
        op: None,
    }
}
const fn create() -> Action {
    Action {
        name: "create",
        method: Method::Post,
        op: None,
    }
}
const fn update() -> Action {
    Action {
        name: "update",
        method: Method::Put,
        op: None,
    }
}
const fn delete() -> Action {
    Action {
        name: "delete",
        method: Method::Delete,
        op: None,
    }
}
const fn get(name: &'static str) -> Action {
    Action {
        name,
        method: Method::Get,
        op: Some(name),
    }
}
const fn post(name: &'static str) -> Action {
    Action {
        name,
        method: Method::Post,
        op: Some(name),
    }
}

pub static HANDLERS: &[Handler] = &[
    Handler {
        name: "VersionHandler",
        path: "version/",
        anon: true,
        doc: "Information about this MAAS-compatible server.",
        actions: &[read()],
    },
    Handler {
        name: "MachinesHandler",
        path: "machines/",
        anon: false,
        doc: "Manage the collection of all the machines.",
        actions: &[
            read(),
            create(),
            post("allocate"),
            get("power_parameters"),
            post("release"),
        ],
    },
    Handler {
        name: "MachineHandler",
        path: "machines/{system_id}/",
        anon: false,
        doc: "Manage an individual machine.",
        actions: &[
            read(),
            update(),
            post("commission"),
            post("deploy"),
            post("release"),
            post("abort"),
            post("power_on"),
            post("power_off"),
            get("query_power_state"),
            get("power_parameters"),
            post("mark_broken"),
            post("mark_fixed"),
            get("get_token"),
        ],
    },
    Handler {
        name: "NodesHandler",
        path: "nodes/",
        anon: false,
        doc: "Manage the collection of all the nodes.",
        actions: &[read()],
    },
    Handler {
        name: "NodeHandler",
        path: "nodes/{system_id}/",
        anon: false,
        doc: "Manage an individual node.",
        actions: &[read(), get("power_parameters")],
    },
    Handler {
        name: "AccountHandler",
        path: "account/",
        anon: false,
        doc: "Manage the current logged-in user.",
        actions: &[
            post("create_authorisation_token"),
            post("delete_authorisation_token"),
            get("list_authorisation_tokens"),
        ],
    },
    Handler {
        name: "UsersHandler",
        path: "users/",
        anon: false,
        doc: "Manage the user accounts.",
        actions: &[read(), create(), get("whoami")],
    },
    Handler {
        name: "UserHandler",
        path: "users/{username}/",
        anon: false,
        doc: "Manage a user account.",
        actions: &[read()],
    },
    Handler {
        name: "SSHKeysHandler",
        path: "account/prefs/sshkeys/",
        anon: false,
        doc: "Manage the SSH keys of the logged-in user.",
        actions: &[read(), create()],
    },
    Handler {
        name: "SSHKeyHandler",
        path: "account/prefs/sshkeys/{id}/",
        anon: false,
        doc: "Manage one SSH key.",
        actions: &[read(), delete()],
    },
    Handler {
        name: "ZonesHandler",
        path: "zones/",
        anon: false,
        doc: "Manage physical zones.",
        actions: &[read(), create()],
    },
    Handler {
        name: "ZoneHandler",
        path: "zones/{name}/",
        anon: false,
        doc: "Manage a physical zone.",
        actions: &[read(), delete()],
    },
    Handler {
        name: "ResourcePoolsHandler",
        path: "resourcepools/",
        anon: false,
        doc: "Manage resource pools.",
        actions: &[read(), create()],
    },
    Handler {
        name: "ResourcePoolHandler",
        path: "resourcepool/{id}/",
        anon: false,
        doc: "Manage a resource pool.",
        actions: &[read(), delete()],
    },
    Handler {
        name: "TagsHandler",
        path: "tags/",
        anon: false,
        doc: "Manage all tags known to MAAS.",
        actions: &[read(), create()],
    },
    Handler {
        name: "TagHandler",
        path: "tags/{name}/",
        anon: false,
        doc: "Manage a tag. Tags without a definition are applied by hand with update_nodes.",
        actions: &[
            read(),
            update(),
            delete(),
            get("machines"),
            get("nodes"),
            post("update_nodes"),
        ],
    },
    Handler {
        name: "FabricsHandler",
        path: "fabrics/",
        anon: false,
        doc: "Manage fabrics.",
        actions: &[read()],
    },
    Handler {
        name: "FabricHandler",
        path: "fabrics/{id}/",
        anon: false,
        doc: "Manage a fabric.",
        actions: &[read()],
    },
    Handler {
        name: "VlansHandler",
        path: "fabrics/{fabric_id}/vlans/",
        anon: false,
        doc: "Manage VLANs on a fabric.",
        actions: &[read()],
    },
    Handler {
        name: "VlanHandler",
        path: "fabrics/{fabric_id}/vlans/{vid}/",
        anon: false,
        doc: "Manage a VLAN on a fabric.",
        actions: &[read()],
    },
    Handler {
        name: "SubnetsHandler",
        path: "subnets/",
        anon: false,
        doc: "Manage subnets.",
        actions: &[read()],
    },
    Handler {
        name: "SubnetHandler",
        path: "subnets/{id}/",
        anon: false,
        doc: "Manage a subnet.",
        actions: &[read()],
    },
    Handler {
        name: "IPRangesHandler",
        path: "ipranges/",
        anon: false,
        doc: "Manage IP ranges.",
        actions: &[read()],
    },
    Handler {
        name: "IPRangeHandler",
        path: "ipranges/{id}/",
        anon: false,
        doc: "Manage an IP range.",
        actions: &[read()],
    },
    Handler {
        name: "BootResourcesHandler",
        path: "boot-resources/",
        anon: false,
        doc: "Manage the boot resources.",
        actions: &[read()],
    },
    Handler {
        name: "BootResourceHandler",
        path: "boot-resources/{id}/",
        anon: false,
        doc: "Manage a boot resource.",
        actions: &[read()],
    },
    Handler {
        name: "EventsHandler",
        path: "events/",
        anon: false,
        doc: "Retrieve filtered node events.",
        actions: &[get("query")],
    },
    Handler {
        name: "DiscoveriesHandler",
        path: "discovery/",
        anon: false,
        doc: "Query observed discoveries.",
        actions: &[read()],
    },
    Handler {
        name: "DiscoveryHandler",
        path: "discovery/{discovery_id}/",
        anon: false,
        doc: "Read an observed discovery.",
        actions: &[read()],
    },
    Handler {
        name: "DomainsHandler",
        path: "domains/",
        anon: false,
        doc: "Manage domains.",
        actions: &[read()],
    },
    Handler {
        name: "DomainHandler",
        path: "domains/{id}/",
        anon: false,
        doc: "Manage a domain.",
        actions: &[read()],
    },
    Handler {
        name: "MaasHandler",
        path: "maas/",
        anon: false,
        doc: "Manage the MAAS server.",
        actions: &[get("get_config")],
    },
];

impl Handler {
    /// The `{…}` names in the path, in order.
    pub fn params(&self) -> Vec<&'static str> {
        self.path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect()
    }

    /// Matches path segments (without the API prefix) against this handler's path;
    /// returns the placeholder values.
    pub fn matches(&self, segments: &[&str]) -> Option<Vec<(&'static str, String)>> {
        let pattern: Vec<&'static str> = self.path.split('/').filter(|s| !s.is_empty()).collect();
        if pattern.len() != segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (p, s) in pattern.iter().zip(segments) {
            if let Some(name) = p.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
                if s.is_empty() {
                    return None;
                }
                params.push((name, (*s).to_owned()));
            } else if p != s {
                return None;
            }
        }
        Some(params)
    }

    /// The action a (method, op) pair selects. Without `op`, CRUD by method.
    pub fn action(&self, method: Method, op: Option<&str>) -> Option<&'static Action> {
        self.actions
            .iter()
            .find(|a| a.method == method && a.op == op)
    }

    fn describe(&self, base_uri: &str) -> Value {
        let path = format!("{API_PREFIX}{}", self.path);
        json!({
            "name": self.name,
            "doc": self.doc,
            "path": path,
            "uri": format!("{base_uri}{path}"),
            "params": self.params(),
            "actions": self.actions.iter().map(|a| json!({
                "name": a.name,
                "method": a.method.as_str(),
                "op": a.op,
                "restful": a.op.is_none(),
                "doc": "",
            })).collect::<Vec<_>>(),
        })
    }
}

/// Finds the handler for a path (segments after the API prefix).
pub fn route(segments: &[&str]) -> Option<(&'static Handler, Vec<(&'static str, String)>)> {
    HANDLERS
        .iter()
        .find_map(|h| h.matches(segments).map(|p| (h, p)))
}

/// The `describe/` document. `base_uri` is `scheme://host[:port]` as the client reached us.
pub fn describe(base_uri: &str) -> Value {
    let handlers: Vec<Value> = HANDLERS.iter().map(|h| h.describe(base_uri)).collect();
    let resources: Vec<Value> = HANDLERS
        .iter()
        .zip(&handlers)
        .map(|(h, d)| {
            if h.anon {
                json!({ "name": h.name, "anon": d, "auth": null })
            } else {
                json!({ "name": h.name, "anon": null, "auth": d })
            }
        })
        .collect();
    json!({ "doc": "MAAS API", "hash": table_hash(), "resources": resources, "handlers": handlers })
}

/// A stable fingerprint of the table (clients cache describe/ keyed by it).
fn table_hash() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for handler in HANDLERS {
        for a in handler.actions {
            for b in handler
                .path
                .bytes()
                .chain(a.name.bytes())
                .chain(a.method.as_str().bytes())
            {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_actions() {
        let (h, p) = route(&["machines", "abc123"]).unwrap();
        assert_eq!(h.name, "MachineHandler");
        assert_eq!(p, vec![("system_id", "abc123".to_owned())]);
        assert_eq!(
            h.action(Method::Post, Some("deploy")).unwrap().name,
            "deploy"
        );
        assert_eq!(
            h.action(Method::Get, Some("deploy")).map(|a| a.name),
            None,
            "deploy is POST only"
        );
        assert_eq!(h.action(Method::Get, None).unwrap().name, "read");
        assert_eq!(route(&["machines"]).unwrap().0.name, "MachinesHandler");
        assert_eq!(
            route(&["fabrics", "0", "vlans", "0"]).unwrap().0.name,
            "VlanHandler"
        );
        assert!(route(&["nope"]).is_none());
        assert!(route(&["machines", "a", "b"]).is_none());
    }

    #[test]
    fn table_is_consistent() {
        let mut names = std::collections::HashSet::new();
        for h in HANDLERS {
            assert!(names.insert(h.name), "duplicate handler {}", h.name);
            assert!(
                h.path.ends_with('/') && !h.path.starts_with('/'),
                "{}",
                h.path
            );
            let mut sigs = std::collections::HashSet::new();
            for a in h.actions {
                assert!(
                    sigs.insert((a.method, a.op)),
                    "{}: duplicate signature for {}",
                    h.name,
                    a.name
                );
                // Read-only ops are GET, the rest POST (MAAS's @operation(idempotent)).
                if let Some(op) = a.op {
                    assert!(
                        matches!(a.method, Method::Get | Method::Post),
                        "{} {op}",
                        h.name
                    );
                }
            }
        }
    }

    #[test]
    fn describe_shape_for_python_libmaas() {
        let d = describe("http://region:5240");
        let machine = d["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "MachineHandler")
            .unwrap();
        assert!(machine["anon"].is_null());
        let auth = &machine["auth"];
        assert_eq!(auth["path"], "/MAAS/api/2.0/machines/{system_id}/");
        assert_eq!(
            auth["uri"],
            "http://region:5240/MAAS/api/2.0/machines/{system_id}/"
        );
        assert_eq!(auth["params"], json!(["system_id"]));
        let deploy = auth["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "deploy")
            .unwrap();
        assert_eq!(
            deploy,
            &json!({"name": "deploy", "method": "POST", "op": "deploy", "restful": false, "doc": ""})
        );
        let version = d["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "VersionHandler")
            .unwrap();
        assert!(version["auth"].is_null() && version["anon"]["path"] == "/MAAS/api/2.0/version/");
        assert_eq!(d["handlers"].as_array().unwrap().len(), HANDLERS.len());
    }
}
