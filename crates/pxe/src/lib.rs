//! PXE boot services: sans-IO DHCPv4/TFTP/iPXE-script cores with thin tokio servers.
