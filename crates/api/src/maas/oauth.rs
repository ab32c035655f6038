//! OAuth 1.0a PLAINTEXT as MAAS uses it: credentials `consumer_key:token_key:token_secret`,
//! an empty consumer secret, so the signature is `&<token_secret>` (usually sent as
//! `%26<secret>`). Parsing and the time check are pure; the key lookup and the nonce record
//! are the caller's.

use super::form::Params;

/// How far a request's timestamp may be from the server's clock, either way (the window of
/// the python-oauth server MAAS bundles). Nonces are remembered for as long as a timestamp
/// stays acceptable.
pub const TIMESTAMP_WINDOW_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthRequest {
    pub consumer_key: String,
    pub token_key: String,
    /// The token secret recovered from the PLAINTEXT signature.
    pub token_secret: String,
    pub timestamp: i64,
    pub nonce: String,
}

/// Why a request's OAuth credentials are refused. Shown to the client (it says which rule
/// failed, never which part of a key was wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    #[error("missing OAuth parameter {0}")]
    Missing(&'static str),
    #[error("unsupported signature method {0:?} (only PLAINTEXT)")]
    UnsupportedMethod(String),
    #[error("malformed PLAINTEXT signature")]
    MalformedSignature,
    #[error("invalid timestamp {0:?}")]
    BadTimestamp(String),
    #[error(
        "expired timestamp: given {given}, server time {now}, allowed skew {TIMESTAMP_WINDOW_SECS}s"
    )]
    Stale { given: i64, now: i64 },
    #[error("nonce already used")]
    Replayed,
    #[error("invalid consumer, token or signature")]
    BadCredentials,
    #[error("authentication required")]
    Anonymous,
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `name="value", name=value, …` after the `OAuth` scheme word. Values are percent-decoded;
/// quoted and unquoted forms are both accepted (MAAS's own scripts send unquoted ones).
fn header_params(rest: &str) -> Vec<(String, String)> {
    rest.split(',')
        .filter_map(|item| {
            let (k, v) = item.trim().split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(v);
            Some((k.trim().to_owned(), percent_decode(v)?))
        })
        .collect()
}

/// Finds OAuth parameters in the Authorization header, or else among the query/form
/// parameters. `Ok(None)` means the request carries no OAuth attempt at all (anonymous).
pub fn extract(
    authorization: Option<&str>,
    params: &Params,
) -> Result<Option<OAuthRequest>, OAuthError> {
    let pairs: Vec<(String, String)> = match authorization.map(str::trim) {
        Some(h) if h.len() > 6 && h[..6].eq_ignore_ascii_case("oauth ") => header_params(&h[6..]),
        _ => {
            let p: Vec<_> = params
                .pairs()
                .iter()
                .filter(|(k, _)| k.starts_with("oauth_"))
                .cloned()
                .collect();
            if p.is_empty() {
                return Ok(None);
            }
            p
        }
    };
    let get = |name: &'static str| -> Result<String, OAuthError> {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or(OAuthError::Missing(name))
    };
    let method = get("oauth_signature_method")?;
    if method != "PLAINTEXT" {
        return Err(OAuthError::UnsupportedMethod(method));
    }
    let signature = get("oauth_signature")?;
    let (consumer_secret, token_secret) = signature
        .split_once('&')
        .ok_or(OAuthError::MalformedSignature)?;
    let token_secret = percent_decode(token_secret).ok_or(OAuthError::MalformedSignature)?;
    // MAAS keys have an empty consumer secret; anything else cannot be one of ours.
    if !consumer_secret.is_empty() {
        return Err(OAuthError::BadCredentials);
    }
    let ts = get("oauth_timestamp")?;
    let timestamp = ts
        .parse::<i64>()
        .map_err(|_| OAuthError::BadTimestamp(ts.clone()))?;
    let nonce = get("oauth_nonce")?;
    if nonce.is_empty() || nonce.len() > 255 {
        return Err(OAuthError::Missing("oauth_nonce"));
    }
    Ok(Some(OAuthRequest {
        consumer_key: get("oauth_consumer_key")?,
        token_key: get("oauth_token")?,
        token_secret,
        timestamp,
        nonce,
    }))
}

/// The timestamp rule; returns when the nonce may be forgotten (unix ms).
pub fn check_timestamp(req: &OAuthRequest, now_secs: i64) -> Result<i64, OAuthError> {
    if (req.timestamp - now_secs).abs() > TIMESTAMP_WINDOW_SECS {
        return Err(OAuthError::Stale {
            given: req.timestamp,
            now: now_secs,
        });
    }
    Ok((req.timestamp + TIMESTAMP_WINDOW_SECS + 1) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// consumer key, token key, token secret, timestamp, nonce
    type Parsed<'a> = Option<(&'a str, &'a str, &'a str, i64, &'a str)>;

    fn check(header: &str, want: Result<Parsed<'_>, OAuthError>) {
        let got = extract(Some(header), &Params::default()).map(|o| {
            o.map(|r| {
                (
                    r.consumer_key,
                    r.token_key,
                    r.token_secret,
                    r.timestamp,
                    r.nonce,
                )
            })
        });
        let want = want.map(|o| {
            o.map(|(a, b, c, d, e)| (a.to_owned(), b.to_owned(), c.to_owned(), d, e.to_owned()))
        });
        assert_eq!(got, want, "{header}");
    }

    #[test]
    fn header_forms() {
        let ok = Ok(Some(("ck", "tk", "sec", 1700000000, "n1")));
        // python-libmaas / oauthlib: quoted, %26, realm first.
        check(
            r#"OAuth realm="OAuth", oauth_nonce="n1", oauth_timestamp="1700000000", oauth_version="1.0", oauth_signature_method="PLAINTEXT", oauth_consumer_key="ck", oauth_token="tk", oauth_signature="%26sec""#,
            ok.clone(),
        );
        // MAAS's curtin script: unquoted with a literal &.
        check(
            "OAuth oauth_version=1.0, oauth_signature_method=PLAINTEXT, oauth_consumer_key=ck, oauth_token=tk, oauth_signature=&sec, oauth_nonce=n1, oauth_timestamp=1700000000",
            ok.clone(),
        );
        check(
            r#"oauth oauth_signature_method="PLAINTEXT", oauth_consumer_key="ck", oauth_token="tk", oauth_signature="%26sec", oauth_nonce="n1", oauth_timestamp="1700000000""#,
            ok,
        );
        check(
            r#"OAuth oauth_signature_method="HMAC-SHA1", oauth_consumer_key="ck""#,
            Err(OAuthError::UnsupportedMethod("HMAC-SHA1".into())),
        );
        check(
            r#"OAuth oauth_signature_method="PLAINTEXT", oauth_signature="sec", oauth_consumer_key="ck""#,
            Err(OAuthError::MalformedSignature),
        );
        check(
            r#"OAuth oauth_signature_method="PLAINTEXT", oauth_signature="cs%26sec", oauth_consumer_key="ck""#,
            Err(OAuthError::BadCredentials),
        );
        check(
            r#"OAuth oauth_signature_method="PLAINTEXT", oauth_signature="%26sec", oauth_consumer_key="ck", oauth_token="tk", oauth_nonce="n""#,
            Err(OAuthError::Missing("oauth_timestamp")),
        );
        check(
            r#"OAuth oauth_signature_method="PLAINTEXT", oauth_signature="%26sec", oauth_timestamp="soon", oauth_nonce="n""#,
            Err(OAuthError::BadTimestamp("soon".into())),
        );
        check(
            r#"OAuth oauth_signature_method="PLAINTEXT", oauth_signature="%26sec", oauth_timestamp="1", oauth_nonce="n", oauth_token="tk""#,
            Err(OAuthError::Missing("oauth_consumer_key")),
        );
    }

    #[test]
    fn query_parameters_and_anonymous() {
        assert_eq!(
            extract(None, &Params::parse_urlencoded("op=list")),
            Ok(None)
        );
        assert_eq!(extract(Some("Bearer x"), &Params::default()), Ok(None));
        let p = Params::parse_urlencoded(
            "oauth_signature_method=PLAINTEXT&oauth_signature=%26s&oauth_consumer_key=c&oauth_token=t&oauth_timestamp=5&oauth_nonce=z",
        );
        let r = extract(None, &p).unwrap().unwrap();
        assert_eq!(
            (r.token_key.as_str(), r.token_secret.as_str(), r.timestamp),
            ("t", "s", 5)
        );
    }

    #[test]
    fn timestamp_window() {
        let mut r = OAuthRequest {
            consumer_key: "c".into(),
            token_key: "t".into(),
            token_secret: "s".into(),
            timestamp: 1000,
            nonce: "n".into(),
        };
        assert_eq!(check_timestamp(&r, 1000), Ok((1000 + 301) * 1000));
        assert!(check_timestamp(&r, 1300).is_ok());
        assert!(check_timestamp(&r, 700).is_ok());
        assert_eq!(
            check_timestamp(&r, 1301),
            Err(OAuthError::Stale {
                given: 1000,
                now: 1301
            })
        );
        r.timestamp = 2000;
        assert!(
            check_timestamp(&r, 1000).is_err(),
            "future timestamps beyond the window too"
        );
    }
}
