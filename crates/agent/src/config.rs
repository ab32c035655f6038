//! What the iPXE script tells the agent on the kernel command line
//! (`templates/ipxe/ephemeral.ipxe.tera`): region URL, per-boot token, boot purpose and the
//! MAC the firmware booted from.

use ingot_types::agent::{CMDLINE_REGION_URL, CMDLINE_TOKEN, cmdline_value};
use ingot_types::boot::BootPurpose;
use ingot_types::inventory::normalize_mac;

/// Kernel command-line key for the boot purpose (`enlist`, `commission`, `deploy`).
pub const CMDLINE_PURPOSE: &str = "ingot.purpose";
/// Optional override of how many times each call to the region is tried.
pub const CMDLINE_ATTEMPTS: &str = "ingot.attempts";
/// PXELINUX/iPXE convention: `BOOTIF=01-aa-bb-cc-dd-ee-ff` (01 = Ethernet).
pub const CMDLINE_BOOTIF: &str = "BOOTIF";

#[derive(Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub region_url: String,
    pub token: String,
    /// None when the boot loader did not say (e.g. a hand-written command line): the agent
    /// then finds out from the region.
    pub purpose: Option<BootPurpose>,
    /// Lowercase colon form; None when the command line carries no BOOTIF.
    pub boot_mac: Option<String>,
    pub attempts: Option<u32>,
}

impl std::fmt::Debug for BootConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never print it.
        f.debug_struct("BootConfig")
            .field("region_url", &self.region_url)
            .field("purpose", &self.purpose)
            .field("boot_mac", &self.boot_mac)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseBootConfigError {
    #[error("the kernel command line has no {0}= (was this machine booted by Ingot?)")]
    Missing(&'static str),
    #[error("{key}={value:?} on the kernel command line is not valid: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: &'static str,
    },
}

impl BootConfig {
    pub fn from_cmdline(cmdline: &str) -> Result<Self, ParseBootConfigError> {
        let required = |key: &'static str| {
            cmdline_value(cmdline, key)
                .filter(|v| !v.is_empty())
                .ok_or(ParseBootConfigError::Missing(key))
        };
        let region_url = required(CMDLINE_REGION_URL)?;
        if !(region_url.starts_with("http://") || region_url.starts_with("https://")) {
            return Err(ParseBootConfigError::Invalid {
                key: CMDLINE_REGION_URL,
                value: region_url.to_owned(),
                why: "not an http:// or https:// URL",
            });
        }
        let token = required(CMDLINE_TOKEN)?;
        let purpose = match cmdline_value(cmdline, CMDLINE_PURPOSE) {
            None => None,
            Some("enlist") => Some(BootPurpose::Enlist),
            Some("commission") => Some(BootPurpose::Commission),
            Some("deploy") => Some(BootPurpose::Deploy),
            Some(other) => {
                return Err(ParseBootConfigError::Invalid {
                    key: CMDLINE_PURPOSE,
                    value: other.to_owned(),
                    why: "expected enlist, commission or deploy",
                });
            }
        };
        let boot_mac = match cmdline_value(cmdline, CMDLINE_BOOTIF) {
            None => None,
            Some(v) => Some(
                parse_bootif(v).ok_or_else(|| ParseBootConfigError::Invalid {
                    key: CMDLINE_BOOTIF,
                    value: v.to_owned(),
                    why: "expected 01-aa-bb-cc-dd-ee-ff",
                })?,
            ),
        };
        let attempts = match cmdline_value(cmdline, CMDLINE_ATTEMPTS) {
            None => None,
            Some(v) => Some(v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ParseBootConfigError::Invalid {
                    key: CMDLINE_ATTEMPTS,
                    value: v.to_owned(),
                    why: "expected a positive count",
                }
            })?),
        };
        Ok(BootConfig {
            region_url: region_url.to_owned(),
            token: token.to_owned(),
            purpose,
            boot_mac,
            attempts,
        })
    }
}

/// `01-aa-bb-cc-dd-ee-ff` (hardware type 1, Ethernet) or a bare MAC.
fn parse_bootif(v: &str) -> Option<String> {
    let mac = match v.strip_prefix("01-") {
        Some(rest) if rest.len() == 17 => rest,
        _ => v,
    };
    normalize_mac(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (region URL, purpose, boot MAC, attempts); the token is always "tok".
    type Parsed<'a> = (&'a str, Option<BootPurpose>, Option<&'a str>, Option<u32>);

    fn check(cmdline: &str, want: Result<Parsed<'_>, ParseBootConfigError>) {
        let got = BootConfig::from_cmdline(cmdline)
            .map(|c| (c.region_url, c.token, c.purpose, c.boot_mac, c.attempts));
        let want = want.map(|(url, purpose, mac, attempts)| {
            (
                url.to_owned(),
                "tok".to_owned(),
                purpose,
                mac.map(str::to_owned),
                attempts,
            )
        });
        assert_eq!(got, want, "{cmdline}");
    }

    #[test]
    fn cmdline_cases() {
        use ParseBootConfigError::*;
        let url = "http://10.0.2.2:5240";
        check(
            "initrd=initrd.gz ingot.url=http://10.0.2.2:5240 ingot.token=tok ingot.purpose=enlist BOOTIF=01-52-54-00-AB-CD-01 console=ttyS0",
            Ok((
                url,
                Some(BootPurpose::Enlist),
                Some("52:54:00:ab:cd:01"),
                None,
            )),
        );
        check(
            "ingot.url=http://10.0.2.2:5240 ingot.token=tok",
            Ok((url, None, None, None)),
        );
        check(
            "ingot.url=http://10.0.2.2:5240 ingot.token=tok ingot.purpose=commission ingot.attempts=3",
            Ok((url, Some(BootPurpose::Commission), None, Some(3))),
        );
        check(
            "ingot.url=http://10.0.2.2:5240 ingot.token=tok BOOTIF=52:54:00:00:00:07",
            Ok((url, None, Some("52:54:00:00:00:07"), None)),
        );
        check("console=ttyS0 quiet", Err(Missing("ingot.url")));
        check(
            "ingot.url=http://10.0.2.2:5240",
            Err(Missing("ingot.token")),
        );
        check(
            "ingot.url=http://10.0.2.2:5240 ingot.token=",
            Err(Missing("ingot.token")),
        );
        check(
            "ingot.url=10.0.2.2:5240 ingot.token=tok",
            Err(Invalid {
                key: "ingot.url",
                value: "10.0.2.2:5240".into(),
                why: "not an http:// or https:// URL",
            }),
        );
        check(
            "ingot.url=http://x ingot.token=tok ingot.purpose=wipe",
            Err(Invalid {
                key: "ingot.purpose",
                value: "wipe".into(),
                why: "expected enlist, commission or deploy",
            }),
        );
        check(
            "ingot.url=http://x ingot.token=tok BOOTIF=01-52-54",
            Err(Invalid {
                key: "BOOTIF",
                value: "01-52-54".into(),
                why: "expected 01-aa-bb-cc-dd-ee-ff",
            }),
        );
        check(
            "ingot.url=http://x ingot.token=tok ingot.attempts=0",
            Err(Invalid {
                key: "ingot.attempts",
                value: "0".into(),
                why: "expected a positive count",
            }),
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let c = BootConfig::from_cmdline("ingot.url=http://x ingot.token=s3cret").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
