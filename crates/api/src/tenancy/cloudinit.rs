//! cloud-init user-data for tenant servers, rendered from `templates/cloud-init/*.tera`.
//!
//! Ingot's part (users, SSH keys, hostname, the microk8s profile) is a `#cloud-config`
//! document. A tenant's own `userData` travels beside it in a MIME multipart archive, with a
//! merge header so its lists extend ours instead of replacing them.

use serde::Serialize;
use std::sync::OnceLock;

const UBUNTU: &str = include_str!("../../../../templates/cloud-init/ubuntu.user-data.tera");
const DEBIAN: &str = include_str!("../../../../templates/cloud-init/debian.user-data.tera");
const MICROK8S: &str = include_str!("../../../../templates/cloud-init/microk8s.tera");

/// How long the control plane accepts the pre-generated join token, in seconds.
pub const JOIN_TOKEN_TTL_SECS: u64 = 24 * 3600;

#[derive(Debug, thiserror::Error)]
#[error("cloud-init template failed")]
pub struct RenderUserDataError(#[source] tera::Error);

/// A phoenixNAP OS id Ingot can deploy, and what it means for the engine and cloud-init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsImage {
    pub id: &'static str,
    pub osystem: &'static str,
    pub distro_series: &'static str,
    pub default_user: &'static str,
}

pub const OS_IMAGES: &[OsImage] = &[
    OsImage {
        id: "ubuntu/bionic",
        osystem: "ubuntu",
        distro_series: "bionic",
        default_user: "ubuntu",
    },
    OsImage {
        id: "ubuntu/focal",
        osystem: "ubuntu",
        distro_series: "focal",
        default_user: "ubuntu",
    },
    OsImage {
        id: "ubuntu/jammy",
        osystem: "ubuntu",
        distro_series: "jammy",
        default_user: "ubuntu",
    },
    OsImage {
        id: "ubuntu/noble",
        osystem: "ubuntu",
        distro_series: "noble",
        default_user: "ubuntu",
    },
    OsImage {
        id: "debian/bullseye",
        osystem: "debian",
        distro_series: "bullseye",
        default_user: "debian",
    },
    OsImage {
        id: "debian/bookworm",
        osystem: "debian",
        distro_series: "bookworm",
        default_user: "debian",
    },
    OsImage {
        id: "debian/trixie",
        osystem: "debian",
        distro_series: "trixie",
        default_user: "debian",
    },
];

pub fn os_image(id: &str) -> Option<OsImage> {
    OS_IMAGES.iter().copied().find(|o| o.id == id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterRole {
    ControlPlane,
    Worker,
}

/// The microk8s profile of one node.
#[derive(Debug, Clone)]
pub struct Microk8sNode {
    pub channel: String,
    pub addons: Vec<String>,
    pub role: ClusterRole,
    pub join_token: String,
    /// The control plane's private address, which the other nodes join.
    pub control_plane_address: String,
}

/// Everything a server's user-data says.
#[derive(Debug, Clone)]
pub struct UserDataInput {
    pub server_id: String,
    pub os: OsImage,
    pub hostname: String,
    pub ssh_keys: Vec<String>,
    pub private_ip: String,
    pub public_ip: Option<String>,
    pub microk8s: Option<Microk8sNode>,
}

fn tera() -> &'static tera::Tera {
    static TERA: OnceLock<tera::Tera> = OnceLock::new();
    TERA.get_or_init(|| {
        let mut t = tera::Tera::default();
        t.autoescape_on(vec![]);
        t.add_raw_templates(vec![
            ("ubuntu", UBUNTU),
            ("debian", DEBIAN),
            ("microk8s.tera", MICROK8S),
        ])
        .expect("the cloud-init templates in templates/cloud-init parse");
        t
    })
}

/// The `microk8s join` retry loop a worker runs until the control plane takes it.
pub fn join_script(address: &str, token: &str) -> String {
    format!(
        "for i in $(seq 1 180); do microk8s join {address}:25000/{token} && exit 0; sleep 10; done; \
         echo 'microk8s join did not succeed' >&2; exit 1"
    )
}

/// Renders Ingot's `#cloud-config` for a server.
pub fn render_user_data(input: &UserDataInput) -> Result<String, RenderUserDataError> {
    let mut ctx = tera::Context::new();
    ctx.insert("server_id", &input.server_id);
    ctx.insert("os", input.os.id);
    ctx.insert("hostname", &os_hostname(&input.hostname));
    ctx.insert("default_user", input.os.default_user);
    ctx.insert("ssh_keys", &input.ssh_keys);
    let info = serde_json::json!({
        "serverId": input.server_id,
        "hostname": input.hostname,
        "privateIpAddresses": [input.private_ip],
        "publicIpAddresses": input.public_ip.iter().collect::<Vec<_>>(),
    });
    ctx.insert("server_info", &format!("{info}\n"));
    match &input.microk8s {
        Some(k) => {
            ctx.insert(
                "microk8s",
                &serde_json::json!({
                    "role": k.role,
                    "channel_arg": format!("--channel={}", k.channel),
                    "addons": k.addons,
                    "join_token": k.join_token,
                    "token_ttl": JOIN_TOKEN_TTL_SECS.to_string(),
                    "join_script": join_script(&k.control_plane_address, &k.join_token),
                    "install_core": input.os.osystem == "debian",
                }),
            );
        }
        None => ctx.insert("microk8s", &false),
    }
    tera()
        .render(input.os.osystem, &ctx)
        .map_err(RenderUserDataError)
}

/// A host name the OS accepts: phoenixNAP allows `(`, `)` and `.` in server hostnames.
pub fn os_hostname(h: &str) -> String {
    let s: String = h
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-');
    let s = if s.len() > 63 {
        s[..63].trim_end_matches('-')
    } else {
        s
    };
    if s.is_empty() {
        "server".to_owned()
    } else {
        s.to_owned()
    }
}

/// Ingot's cloud-config plus the tenant's own user-data, as one MIME multipart archive
/// (cloud-init's native way to carry several parts). Without tenant data, Ingot's part alone.
pub fn combine_user_data(ours: &str, theirs: Option<&str>) -> String {
    let Some(theirs) = theirs else {
        return ours.to_owned();
    };
    let content_type = match theirs.lines().next().unwrap_or("").trim() {
        l if l.starts_with("#cloud-config") => "text/cloud-config",
        l if l.starts_with("#!") => "text/x-shellscript",
        l if l.starts_with("#cloud-boothook") => "text/cloud-boothook",
        l if l.starts_with("#include") => "text/x-include-url",
        _ => "text/plain",
    };
    // A boundary that cannot occur in either part.
    let mut boundary = String::from("==INGOT-USER-DATA==");
    while ours.contains(&boundary) || theirs.contains(&boundary) {
        boundary.push('x');
    }
    format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n\
         --{boundary}\nContent-Type: text/cloud-config; charset=\"utf-8\"\nContent-Disposition: attachment; filename=\"ingot.cfg\"\n\n{ours}\n\
         --{boundary}\nContent-Type: {content_type}; charset=\"utf-8\"\nContent-Disposition: attachment; filename=\"tenant\"\n\
         Merge-Type: list(append)+dict(no_replace,recurse_list)+str()\n\n{theirs}\n\
         --{boundary}--\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_become_os_hostnames() {
        for (input, want) in [
            ("k8s-cluster-1", "k8s-cluster-1"),
            ("Web(1).Prod", "web-1--prod"),
            ("---", "server"),
        ] {
            assert_eq!(os_hostname(input), want, "{input}");
        }
    }

    #[test]
    fn combine_keeps_both_parts_with_a_merge_header() {
        assert_eq!(
            combine_user_data("#cloud-config\n", None),
            "#cloud-config\n"
        );
        let m = combine_user_data("#cloud-config\nhostname: a\n", Some("#!/bin/sh\necho hi\n"));
        assert!(m.starts_with("Content-Type: multipart/mixed; boundary=\"==INGOT-USER-DATA==\""));
        assert!(
            m.contains("text/x-shellscript") && m.contains("echo hi") && m.contains("hostname: a")
        );
        assert!(m.ends_with("--==INGOT-USER-DATA==--\n"));
    }
}
