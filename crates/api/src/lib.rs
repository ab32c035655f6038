//! HTTP APIs: native /api/v1, the agent API, MAAS 2.0 and tenancy; the only crate that knows HTTP status codes.
