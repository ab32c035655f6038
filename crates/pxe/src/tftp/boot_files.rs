//! The generated file iPXE fetches over TFTP when DHCP names `boot.ipxe`: a chain to its per-MAC
//! script on the HTTP boot service.

use super::files::{DynamicFiles, OpenFileError};
use crate::http::script::ScriptRenderer;
use async_trait::async_trait;
use std::net::SocketAddr;

/// File name of the chain script.
pub const CHAIN_SCRIPT: &str = "boot.ipxe";

pub struct IpxeChainFile {
    script: Vec<u8>,
}

impl IpxeChainFile {
    /// `http_base` is the boot service URL as clients reach it, e.g. `http://10.77.0.1:5248`;
    /// `http://${next-server}:5248` lets iPXE fill in the TFTP server's address itself.
    pub fn new(
        renderer: &ScriptRenderer,
        http_base: &str,
    ) -> Result<IpxeChainFile, crate::http::script::RenderScriptError> {
        Ok(IpxeChainFile {
            script: renderer.render_chain(http_base)?.into_bytes(),
        })
    }
}

#[async_trait]
impl DynamicFiles for IpxeChainFile {
    async fn open(
        &self,
        path: &str,
        _client: SocketAddr,
    ) -> Option<Result<Vec<u8>, OpenFileError>> {
        (path == CHAIN_SCRIPT).then(|| Ok(self.script.clone()))
    }
}
