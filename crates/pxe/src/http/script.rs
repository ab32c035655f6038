//! Which iPXE script a machine gets and how it is rendered: MAC parsing, the choice from a
//! [`BootDecision`], and tera rendering. Pure apart from optionally reading template overrides.

use ingot_types::boot::{BootDecision, BootPurpose};
use std::path::Path;

/// Templates compiled into the binary; a deployment may override them from a directory.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "ephemeral.ipxe",
        include_str!("../../../../templates/ipxe/ephemeral.ipxe.tera"),
    ),
    (
        "local.ipxe",
        include_str!("../../../../templates/ipxe/local.ipxe.tera"),
    ),
    (
        "chain.ipxe",
        include_str!("../../../../templates/ipxe/chain.ipxe.tera"),
    ),
];

#[derive(Debug, thiserror::Error)]
#[error("invalid MAC address {0:?}")]
pub struct ParseMacError(pub String);

/// Normalises a MAC from the forms firmware puts in URLs (`52:54:00:12:34:56`,
/// `52-54-00-12-34-56` from iPXE's `:hexhyp`, `525400123456`, any case) to lowercase colon form.
pub fn parse_mac(input: &str) -> Result<String, ParseMacError> {
    let err = || ParseMacError(input.to_string());
    let trimmed = input.trim();
    let hex: String = if trimmed.len() == 12 {
        trimmed.to_string()
    } else {
        let parts: Vec<&str> = trimmed.split([':', '-']).collect();
        if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
            return Err(err());
        }
        parts.concat()
    };
    if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err());
    }
    let lower = hex.to_ascii_lowercase();
    let pairs: Vec<&str> = (0..6).map(|i| &lower[i * 2..i * 2 + 2]).collect();
    Ok(pairs.join(":"))
}

#[derive(Debug, thiserror::Error)]
#[error("invalid architecture {0:?}")]
pub struct ParseArchError(pub String);

/// Accepts an architecture name as a query parameter: short, lowercase letters, digits and `-`.
pub fn parse_arch(input: &str) -> Result<String, ParseArchError> {
    let ok = !input.is_empty()
        && input.len() <= 32
        && input
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(input.to_string())
    } else {
        Err(ParseArchError(input.to_string()))
    }
}

/// The firmware family iPXE reports in `${platform}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    PcBios,
    Efi,
    Unknown,
}

impl Platform {
    pub fn from_ipxe(value: Option<&str>) -> Platform {
        match value {
            Some("pcbios") => Platform::PcBios,
            Some("efi") => Platform::Efi,
            _ => Platform::Unknown,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Platform::PcBios => "pcbios",
            Platform::Efi => "efi",
            Platform::Unknown => "unknown",
        }
    }

    /// From an architecture name as the DHCP server reports it (`bios`, `uefi-x64`, ...).
    pub fn from_arch(arch: &str) -> Platform {
        if arch == "bios" {
            Platform::PcBios
        } else if arch.starts_with("uefi") {
            Platform::Efi
        } else {
            Platform::Unknown
        }
    }

    /// The architecture name used in sightings and [`crate::backend::ClientInfo`].
    pub fn client_arch(self) -> Option<&'static str> {
        match self {
            Platform::PcBios => Some("bios"),
            Platform::Efi => Some("uefi-x64"),
            Platform::Unknown => None,
        }
    }
}

/// Where the ephemeral kernel and initrd live and what else goes on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EphemeralImage {
    /// Paths below the `/images/` route.
    pub kernel_path: String,
    pub initrd_path: String,
    /// Extra kernel arguments after Ingot's own (console settings and the like).
    pub kernel_args: Vec<String>,
}

impl Default for EphemeralImage {
    fn default() -> Self {
        EphemeralImage {
            kernel_path: "ephemeral/vmlinuz".into(),
            initrd_path: "ephemeral/initrd.gz".into(),
            kernel_args: vec!["console=tty0".into(), "console=ttyS0,115200".into()],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderScriptError {
    #[error("template error")]
    Template(#[from] tera::Error),
    #[error("reading template override {path:?}")]
    Override {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Values end up unquoted on an iPXE command line; whitespace or control characters would
    /// split or corrupt it, so they are refused rather than escaped.
    #[error("{field} {value:?} cannot go on a kernel command line")]
    UnsafeValue { field: &'static str, value: String },
    #[error("decision for {0} is an ephemeral boot without a boot token")]
    MissingToken(String),
}

pub struct ScriptRenderer {
    tera: tera::Tera,
}

impl ScriptRenderer {
    /// The embedded templates, with `*.ipxe.tera` files from `overrides` replacing them by name.
    pub fn new(overrides: Option<&Path>) -> Result<ScriptRenderer, RenderScriptError> {
        let mut templates: Vec<(String, String)> = EMBEDDED
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        if let Some(dir) = overrides {
            for (name, source) in templates.iter_mut() {
                let path = dir.join(format!("{name}.tera"));
                match std::fs::read_to_string(&path) {
                    Ok(text) => *source = text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(RenderScriptError::Override {
                            path: path.display().to_string(),
                            source: e,
                        });
                    }
                }
            }
        }
        let mut tera = tera::Tera::default();
        // Scripts are plain text; HTML escaping would corrupt URLs.
        tera.autoescape_on(vec![]);
        tera.add_raw_templates(templates)?;
        Ok(ScriptRenderer { tera })
    }

    /// The per-MAC script for `decision`. `base_url` is how the client reached this service
    /// (e.g. `http://10.77.0.1:5248`).
    pub fn render(
        &self,
        mac: &str,
        decision: &BootDecision,
        platform: Platform,
        image: &EphemeralImage,
        base_url: &str,
    ) -> Result<String, RenderScriptError> {
        let mut ctx = tera::Context::new();
        ctx.insert("mac", mac);
        ctx.insert("platform", platform.name());
        let purpose = match decision.purpose {
            BootPurpose::LocalDisk => return Ok(self.tera.render("local.ipxe", &ctx)?),
            BootPurpose::Enlist => "enlist",
            BootPurpose::Commission => "commission",
            BootPurpose::Deploy => "deploy",
        };
        let token = decision
            .boot_token
            .as_deref()
            .ok_or_else(|| RenderScriptError::MissingToken(mac.into()))?;
        let images = format!("{}/images", base_url.trim_end_matches('/'));
        let kernel_url = format!("{images}/{}", image.kernel_path.trim_start_matches('/'));
        let initrd_url = format!("{images}/{}", image.initrd_path.trim_start_matches('/'));
        let initrd_name = initrd_url
            .rsplit('/')
            .next()
            .unwrap_or("initrd")
            .to_string();
        for (field, value) in [
            ("region_url", decision.region_url.as_str()),
            ("boot_token", token),
            ("kernel_url", &kernel_url),
            ("initrd_url", &initrd_url),
        ] {
            check_cmdline_value(field, value)?;
        }
        for arg in &image.kernel_args {
            check_cmdline_value("kernel_args", arg)?;
        }
        ctx.insert("purpose", purpose);
        ctx.insert("region_url", &decision.region_url);
        ctx.insert("token", token);
        ctx.insert("kernel_url", &kernel_url);
        ctx.insert("initrd_url", &initrd_url);
        ctx.insert("initrd_name", &initrd_name);
        ctx.insert("kernel_args", &image.kernel_args);
        Ok(self.tera.render("ephemeral.ipxe", &ctx)?)
    }

    /// The generic script that makes iPXE ask for its per-MAC script (served as `boot.ipxe`).
    pub fn render_chain(&self, base_url: &str) -> Result<String, RenderScriptError> {
        check_cmdline_value("base_url", base_url)?;
        let mut ctx = tera::Context::new();
        ctx.insert("base_url", base_url.trim_end_matches('/'));
        Ok(self.tera.render("chain.ipxe", &ctx)?)
    }
}

fn check_cmdline_value(field: &'static str, value: &str) -> Result<(), RenderScriptError> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RenderScriptError::UnsafeValue {
            field,
            value: value.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms() {
        for (input, want) in [
            ("52:54:00:12:34:56", Some("52:54:00:12:34:56")),
            ("52-54-00-AB-cd-EF", Some("52:54:00:ab:cd:ef")),
            ("525400ABCDEF", Some("52:54:00:ab:cd:ef")),
            ("52:54:00:12:34", None),
            ("52:54:00:12:34:5g", None),
            ("52:54:00:12:3:456", None),
            ("${mac}", None),
            ("", None),
        ] {
            assert_eq!(parse_mac(input).ok().as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn unsafe_values_are_refused() {
        let r = ScriptRenderer::new(None).unwrap();
        let decision = BootDecision {
            purpose: BootPurpose::Commission,
            machine_id: None,
            boot_token: Some("tok en".into()),
            region_url: "http://10.0.0.1:5240".into(),
        };
        let got = r.render(
            "52:54:00:00:00:01",
            &decision,
            Platform::Efi,
            &EphemeralImage::default(),
            "http://h",
        );
        assert!(
            matches!(
                got,
                Err(RenderScriptError::UnsafeValue {
                    field: "boot_token",
                    ..
                })
            ),
            "{got:?}"
        );
        let missing = BootDecision {
            boot_token: None,
            ..decision
        };
        let got = r.render(
            "52:54:00:00:00:01",
            &missing,
            Platform::Efi,
            &EphemeralImage::default(),
            "http://h",
        );
        assert!(
            matches!(got, Err(RenderScriptError::MissingToken(_))),
            "{got:?}"
        );
    }
}
