//! Which boot file a netbooting client gets: pure functions over the firmware's DHCP options.
//!
//! Firmware tells us what it is through option 60 (vendor class: `PXEClient:Arch:xxxxx:…` for
//! PXE ROMs, `HTTPClient:…` for UEFI HTTP boot), option 93 (client architecture, RFC 4578) and,
//! for iPXE, option 77 (user class "iPXE") or option 175 (iPXE's encapsulated options).
//!
//! The chain is MAAS's and smee's: PXE firmware fetches a small iPXE binary over TFTP, iPXE then
//! asks DHCP again and gets the HTTP URL of its per-MAC script.

use super::config::{BootConfig, expand_template};
use std::net::Ipv4Addr;

/// Client architecture from option 93 (IANA "Processor Architecture Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientArch {
    Bios,
    UefiIa32,
    UefiX64,
    UefiArm64,
    UefiHttpX64,
    UefiHttpArm64,
    Other(u16),
}

impl ClientArch {
    pub fn from_code(code: u16) -> Self {
        match code {
            0 => ClientArch::Bios,
            6 => ClientArch::UefiIa32,
            // 9 is "EFI BC" (EBC) by the registry, but x64 firmware commonly sends it; MAAS and
            // dnsmasq configs treat 7 and 9 alike.
            7 | 9 => ClientArch::UefiX64,
            11 => ClientArch::UefiArm64,
            16 => ClientArch::UefiHttpX64,
            19 => ClientArch::UefiHttpArm64,
            other => ClientArch::Other(other),
        }
    }

    /// The name used in sightings and [`crate::backend::ClientInfo`].
    pub fn name(self) -> &'static str {
        match self {
            ClientArch::Bios => "bios",
            ClientArch::UefiIa32 => "uefi-ia32",
            ClientArch::UefiX64 => "uefi-x64",
            ClientArch::UefiArm64 => "uefi-arm64",
            ClientArch::UefiHttpX64 => "uefi-http",
            ClientArch::UefiHttpArm64 => "uefi-http-arm64",
            ClientArch::Other(_) => "other",
        }
    }

    /// PXE ROMs only look at option 93; when it is missing, they are BIOS (MAAS's `else`).
    fn is_uefi(self) -> bool {
        !matches!(self, ClientArch::Bios | ClientArch::Other(_))
    }
}

/// What a request says about the client's boot firmware.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootClient {
    /// Option 93, if sent.
    pub arch_code: Option<u16>,
    /// Option 60 starts with "PXEClient".
    pub pxe_client: bool,
    /// Option 60 starts with "HTTPClient" (UEFI HTTP boot).
    pub http_client: bool,
    /// iPXE: option 175 present or user class "iPXE".
    pub ipxe: bool,
}

impl BootClient {
    pub fn arch(&self) -> ClientArch {
        ClientArch::from_code(self.arch_code.unwrap_or(0))
    }

    /// Whether the client is network-booting firmware rather than an OS DHCP client.
    pub fn is_netboot(&self) -> bool {
        self.pxe_client || self.http_client || self.ipxe
    }
}

/// How the boot file is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `filename` is a TFTP path on next-server (siaddr).
    Tftp,
    /// `filename` is an absolute HTTP URL.
    Http,
}

/// Boot answer for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFile {
    pub filename: String,
    pub transport: Transport,
    /// Option 60 to send back: UEFI HTTP boot requires "HTTPClient" in the reply; PXE clients get
    /// "PXEClient" (see `mod.rs` on why echoing it avoids iPXE's ProxyDHCP wait).
    pub vendor_class: &'static str,
    /// iPXE is the client: add option 175 with no-pxedhcp so it does not wait for ProxyDHCP.
    pub ipxe: bool,
    pub arch: ClientArch,
}

/// Chooses the boot file, the way MAAS's generated `if/elsif` chain does: user class first
/// (iPXE gets its script), then architecture. Returns `None` for clients that are not
/// netbooting or whose architecture we serve nothing for.
pub fn choose_boot_file(
    boot: &BootConfig,
    client: &BootClient,
    server: Ipv4Addr,
    mac: &str,
) -> Option<BootFile> {
    if !client.is_netboot() {
        return None;
    }
    let arch = client.arch();
    let url = |template: &str| expand_template(template, server, mac, arch.name());
    let (filename, transport, vendor_class) = if client.ipxe {
        let class = if client.http_client {
            "HTTPClient"
        } else {
            "PXEClient"
        };
        (url(&boot.ipxe_script_url), Transport::Http, class)
    } else {
        match arch {
            ClientArch::UefiHttpX64 => {
                (url(&boot.uefi_http_x64_url), Transport::Http, "HTTPClient")
            }
            ClientArch::UefiHttpArm64 => (
                url(boot.uefi_http_arm64_url.as_deref()?),
                Transport::Http,
                "HTTPClient",
            ),
            _ if client.http_client => return None,
            ClientArch::Bios => (boot.bios_file.clone(), Transport::Tftp, "PXEClient"),
            ClientArch::UefiX64 => (boot.uefi_x64_file.clone(), Transport::Tftp, "PXEClient"),
            ClientArch::UefiArm64 => (boot.uefi_arm64_file.clone()?, Transport::Tftp, "PXEClient"),
            ClientArch::UefiIa32 | ClientArch::Other(_) => return None,
        }
    };
    Some(BootFile {
        filename,
        transport,
        vendor_class,
        ipxe: client.ipxe,
        arch,
    })
}

/// Whether a proxyDHCP OFFER should leave out the boot file so that the firmware asks on port
/// 4011. EDK2 classifies a proxy offer with "PXEClient" and no option 43 as "ProxyBinl" and
/// fetches the boot file with a REQUEST to port 4011; several UEFI builds ignore a boot file in
/// the proxy OFFER itself (pixiecore's and dnsmasq's workaround). BIOS ROMs and iPXE take the
/// boot file straight from the OFFER.
pub fn proxy_defers_to_4011(client: &BootClient) -> bool {
    !client.ipxe && client.arch().is_uefi() && !client.http_client
}

/// Option 43 for PXE ROMs: PXE_DISCOVERY_CONTROL (sub-option 6) = 8, "use the boot file in this
/// packet, no boot server discovery or menu", then END. Without it some PXE 2.x ROMs start boot
/// server discovery.
pub fn pxe_vendor_options() -> Vec<u8> {
    vec![6, 1, 8, 255]
}

/// Option 175 (iPXE encapsulated) with `no-pxedhcp` (176) = 1: iPXE then moves on as soon as it
/// has our OFFER instead of waiting for ProxyDHCP offers.
pub fn ipxe_encapsulated_options() -> Vec<u8> {
    vec![176, 1, 1]
}

/// Whether option 77's payload names iPXE. iPXE sends the bare string "iPXE"; RFC 3004 clients
/// send length-prefixed items, so both forms are accepted.
pub fn user_class_is_ipxe(data: &[u8]) -> bool {
    if data == b"iPXE" {
        return true;
    }
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len == 0 || len > tail.len() {
            return false;
        }
        if &tail[..len] == b"iPXE" {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const MAC: &str = "52:54:00:12:34:56";

    fn client(arch: Option<u16>, vendor: &str, ipxe: bool) -> BootClient {
        BootClient {
            arch_code: arch,
            pxe_client: vendor.starts_with("PXEClient"),
            http_client: vendor.starts_with("HTTPClient"),
            ipxe,
        }
    }

    /// `expected`: `None`, or `(filename, transport, option 60)`.
    fn check(c: BootClient, expected: Option<(&str, Transport, &str)>) {
        let got = choose_boot_file(&BootConfig::default(), &c, SERVER, MAC);
        let got = got
            .as_ref()
            .map(|b| (b.filename.as_str(), b.transport, b.vendor_class));
        assert_eq!(got, expected, "client {c:?}");
    }

    #[test]
    fn boot_file_choice() {
        use Transport::*;
        let script = "http://10.0.0.1:5248/ipxe/52:54:00:12:34:56";
        check(
            client(Some(0), "PXEClient:Arch:00000:UNDI:002001", false),
            Some(("undionly.kpxe", Tftp, "PXEClient")),
        );
        // No option 93 at all: BIOS, MAAS's fallback.
        check(
            client(None, "PXEClient", false),
            Some(("undionly.kpxe", Tftp, "PXEClient")),
        );
        check(
            client(Some(7), "PXEClient:Arch:00007:UNDI:003016", false),
            Some(("snponly.efi", Tftp, "PXEClient")),
        );
        check(
            client(Some(9), "PXEClient:Arch:00009:UNDI:003016", false),
            Some(("snponly.efi", Tftp, "PXEClient")),
        );
        check(
            client(Some(16), "HTTPClient:Arch:00016:UNDI:003001", false),
            Some(("http://10.0.0.1:5248/images/ipxe.efi", Http, "HTTPClient")),
        );
        // iPXE wins over the architecture, in BIOS and UEFI alike.
        check(
            client(Some(0), "PXEClient:Arch:00000:UNDI:002001", true),
            Some((script, Http, "PXEClient")),
        );
        check(
            client(Some(7), "PXEClient:Arch:00007:UNDI:003016", true),
            Some((script, Http, "PXEClient")),
        );
        // iPXE without a vendor class (built without PXE support) is still iPXE.
        check(client(None, "", true), Some((script, Http, "PXEClient")));
        // Not netbooting: an OS DHCP client.
        check(client(None, "", false), None);
        check(client(None, "udhcp 1.35.0", false), None);
        // Architectures we serve nothing for by default.
        check(
            client(Some(11), "PXEClient:Arch:00011:UNDI:003000", false),
            None,
        );
        check(
            client(Some(6), "PXEClient:Arch:00006:UNDI:003000", false),
            None,
        );
        check(
            client(Some(19), "HTTPClient:Arch:00019:UNDI:003000", false),
            None,
        );
        check(
            client(Some(2), "PXEClient:Arch:00002:UNDI:003000", false),
            None,
        );
    }

    #[test]
    fn configured_arm64_and_templates() {
        let boot = BootConfig {
            uefi_arm64_file: Some("snponly-arm64.efi".into()),
            uefi_http_arm64_url: Some("http://{server}/boot/{arch}/ipxe.efi".into()),
            ipxe_script_url: "http://{server}:8080/s/{mac}?a={arch}".into(),
            ..BootConfig::default()
        };
        let file = |c: BootClient| choose_boot_file(&boot, &c, SERVER, MAC).map(|b| b.filename);
        assert_eq!(
            file(client(Some(11), "PXEClient", false)).as_deref(),
            Some("snponly-arm64.efi")
        );
        assert_eq!(
            file(client(Some(19), "HTTPClient", false)).as_deref(),
            Some("http://10.0.0.1/boot/uefi-http-arm64/ipxe.efi")
        );
        assert_eq!(
            file(client(Some(7), "PXEClient", true)).as_deref(),
            Some("http://10.0.0.1:8080/s/52:54:00:12:34:56?a=uefi-x64")
        );
    }

    #[test]
    fn proxy_4011_only_for_uefi_pxe_roms() {
        assert!(!proxy_defers_to_4011(&client(Some(0), "PXEClient", false)));
        assert!(proxy_defers_to_4011(&client(Some(7), "PXEClient", false)));
        assert!(proxy_defers_to_4011(&client(Some(9), "PXEClient", false)));
        assert!(!proxy_defers_to_4011(&client(Some(7), "PXEClient", true)));
        assert!(!proxy_defers_to_4011(&client(
            Some(16),
            "HTTPClient",
            false
        )));
    }

    #[test]
    fn user_class_forms() {
        for (data, want) in [
            (&b"iPXE"[..], true),
            (b"\x04iPXE", true),
            (b"\x03abc\x04iPXE", true),
            (b"\x03abc", false),
            (b"ipxe", false),
            (b"\x09iPXE", false),
            (b"", false),
            (b"\x00", false),
        ] {
            assert_eq!(user_class_is_ipxe(data), want, "{data:?}");
        }
    }
}
