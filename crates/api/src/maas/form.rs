//! Request parameters as MAAS reads them: the query string plus a form body, either
//! `application/x-www-form-urlencoded` (gomaasapi, curl) or `multipart/form-data`
//! (python-libmaas sends multipart even for an empty body). Pure parsing, no I/O.

/// Ordered name/value pairs; a name may repeat (`id=a&id=b`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("multipart body without a boundary parameter")]
    NoBoundary,
    #[error("malformed multipart body: {0}")]
    Multipart(&'static str),
    #[error("form body is not UTF-8")]
    NotUtf8,
}

impl Params {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// Parses `a=1&b=2` (percent- and plus-decoded).
    pub fn parse_urlencoded(s: &str) -> Self {
        Self {
            pairs: serde_urlencoded::from_str::<Vec<(String, String)>>(s).unwrap_or_default(),
        }
    }

    /// Parses a body by its content type. Other content types contribute no parameters (a
    /// JSON body is not a MAAS 2.0 contract).
    pub fn parse_body(content_type: Option<&str>, body: &[u8]) -> Result<Self, FormError> {
        let Some(ct) = content_type else {
            return Ok(Self::default());
        };
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/x-www-form-urlencoded" => {
                let s = std::str::from_utf8(body).map_err(|_| FormError::NotUtf8)?;
                Ok(Self::parse_urlencoded(s))
            }
            "multipart/form-data" => {
                let boundary = ct
                    .split(';')
                    .skip(1)
                    .filter_map(|p| p.trim().split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
                    .map(|(_, v)| v.trim().trim_matches('"').to_owned())
                    .filter(|b| !b.is_empty())
                    .ok_or(FormError::NoBoundary)?;
                parse_multipart(&boundary, body)
            }
            _ => Ok(Self::default()),
        }
    }

    pub fn extend(&mut self, other: Params) {
        self.pairs.extend(other.pairs);
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Every value of `name`, with comma-separated values split (MAAS accepts both forms
    /// for list parameters such as `tags` and `mac_addresses`); empty items dropped.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.all(name)
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(k, _)| k.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() || needle.is_empty() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// RFC 7578 multipart/form-data: each part's `Content-Disposition: form-data; name="…"`
/// names the field. Parts may be `Content-Transfer-Encoding: base64` (python-libmaas sends
/// every part that way, built with Python's email package); a part without headers or name
/// carries nothing (python-libmaas's body for a call without parameters is one such part).
fn parse_multipart(boundary: &str, body: &[u8]) -> Result<Params, FormError> {
    // Every delimiter is CRLF + "--" + boundary; the first may start the body.
    let mut data = b"\r\n".to_vec();
    data.extend_from_slice(body);
    let delim = format!("\r\n--{boundary}").into_bytes();
    let mut pos =
        find(&data, &delim, 0).ok_or(FormError::Multipart("no opening boundary"))? + delim.len();
    let mut pairs = Vec::new();
    loop {
        if data[pos..].starts_with(b"--") {
            return Ok(Params { pairs });
        }
        let end = find(&data, &delim, pos)
            .ok_or(FormError::Multipart("part not closed by a boundary"))?;
        let part = &data[pos..end];
        pos = end + delim.len();
        // Transport padding after the boundary, then the CRLF that ends the boundary line.
        let part = match find(part, b"\r\n", 0) {
            Some(i) if part[..i].iter().all(|b| *b == b' ' || *b == b'\t') => &part[i + 2..],
            _ => return Err(FormError::Multipart("boundary line not terminated")),
        };
        if part.is_empty() || part == b"\r\n" {
            continue;
        }
        let (headers, content) = if let Some(rest) = part.strip_prefix(b"\r\n") {
            (&b""[..], rest)
        } else {
            let i = find(part, b"\r\n\r\n", 0)
                .ok_or(FormError::Multipart("part headers not terminated"))?;
            (&part[..i], &part[i + 4..])
        };
        let headers = std::str::from_utf8(headers).map_err(|_| FormError::NotUtf8)?;
        let header = |name: &str| {
            headers
                .split("\r\n")
                .filter_map(|h| h.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        };
        let Some(name) = header("content-disposition").and_then(disposition_name) else {
            if headers.trim().is_empty() && content.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Err(FormError::Multipart("part without a field name"));
        };
        let value = match header("content-transfer-encoding") {
            Some(cte) if cte.eq_ignore_ascii_case("base64") => {
                let text = std::str::from_utf8(content).map_err(|_| FormError::NotUtf8)?;
                if text.trim().is_empty() {
                    Vec::new()
                } else {
                    decode_base64(text).ok_or(FormError::Multipart("invalid base64 part"))?
                }
            }
            _ => content.to_vec(),
        };
        pairs.push((name, String::from_utf8_lossy(&value).into_owned()));
    }
}

/// Standard base64 with whitespace ignored (Python's `encodebytes` wraps lines).
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let clean: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if clean.is_empty() || !clean.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    let chunks = clean.len() / 4;
    for (i, chunk) in clean.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != chunks) {
            return None;
        }
        let mut n = 0u32;
        for &b in &chunk[..4 - pad] {
            n = (n << 6) | val(b)?;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

fn disposition_name(header: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case("name")).then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// MAAS booleans: `true/false`, `1/0`, `yes/no`, `on/off` (any case).
pub fn parse_bool(field: &str, v: &str) -> Result<bool, crate::error::ApiError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(crate::error::ApiError::field(
            field,
            format!("{v:?} is not a boolean"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencoded_repeats_and_decodes() {
        let p = Params::parse_body(
            Some("application/x-www-form-urlencoded"),
            b"id=a&id=b&name=x+y%21&empty=",
        )
        .unwrap();
        assert_eq!(p.all("id"), vec!["a", "b"]);
        assert_eq!(p.get("name"), Some("x y!"));
        assert_eq!(p.get("empty"), Some(""));
        assert_eq!(p.get("missing"), None);
    }

    #[test]
    fn multipart_fields_files_and_empty_body() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"user_data\"\r\n\
Content-Type: application/octet-stream\r\n\r\nI2Nsb3VkLWNvbmZpZwo=\n\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"distro_series\"\r\n\r\nnoble\r\n--XyZ--\r\n";
        let p = Params::parse_body(Some("multipart/form-data; boundary=XyZ"), body).unwrap();
        assert_eq!(p.get("user_data"), Some("I2Nsb3VkLWNvbmZpZwo=\n"));
        assert_eq!(p.get("distro_series"), Some("noble"));
        // python-libmaas sends this for calls without parameters.
        let empty = Params::parse_body(
            Some("multipart/form-data; boundary=\"XyZ\""),
            b"--XyZ--\r\n",
        )
        .unwrap();
        assert_eq!(empty, Params::default());
    }

    #[test]
    fn multipart_as_python_libmaas_builds_it() {
        // Captured from python-libmaas 0.6.8 `prepare_payload` (base64 parts, quoted boundary).
        let body = b"--===============57==\r\nContent-Type: application/octet-stream\r\nMIME-Version: 1.0\r\n\
Content-Transfer-Encoding: base64\r\nContent-Disposition: form-data; name=\"user_data\"\r\n\r\nSTJOc2IzVmsK\r\n\r\n\
--===============57==\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: form-data; name=\"distro_series\"\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n\r\nbm9ibGU=\r\n\r\n\
--===============57==\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: form-data; name=\"erase\"\r\n\r\ndHJ1ZQ==\r\n\r\n\
--===============57==--";
        let p = Params::parse_body(
            Some("multipart/form-data; boundary=\"===============57==\""),
            body,
        )
        .unwrap();
        assert_eq!(p.get("user_data"), Some("I2Nsb3Vk\n"));
        assert_eq!(p.get("distro_series"), Some("noble"));
        assert_eq!(p.get("erase"), Some("true"));
        let empty = b"--===============35==\r\n\r\n--===============35==--";
        assert_eq!(
            Params::parse_body(
                Some("multipart/form-data; boundary=\"===============35==\""),
                empty
            )
            .unwrap(),
            Params::default()
        );
    }

    #[test]
    fn base64_decoding() {
        for (input, want) in [
            ("I2Nsb3VkLWNvbmZpZwo=", Some(&b"#cloud-config\n"[..])),
            ("I2Nsb3Vk\nLWNvbmZp\nZwo=\n", Some(b"#cloud-config\n")),
            ("YQ==", Some(b"a")),
            ("YWI=", Some(b"ab")),
            ("YWJj", Some(b"abc")),
            ("#cloud-config", None),
            ("YQ==YQ==", None),
            ("Y===", None),
            ("", None),
        ] {
            assert_eq!(decode_base64(input).as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn multipart_errors() {
        for (ct, body) in [
            ("multipart/form-data", &b"--x--"[..]),
            ("multipart/form-data; boundary=x", b"no boundary here"),
            (
                "multipart/form-data; boundary=x",
                b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated",
            ),
            (
                "multipart/form-data; boundary=x",
                b"--x\r\nContent-Type: text/plain\r\n\r\nv\r\n--x--",
            ),
        ] {
            assert!(Params::parse_body(Some(ct), body).is_err(), "{ct} {body:?}");
        }
    }

    #[test]
    fn lists_split_commas() {
        let p = Params::parse_urlencoded("tags=a,b&tags=c&tags=");
        assert_eq!(p.list("tags"), vec!["a", "b", "c"]);
    }
}
