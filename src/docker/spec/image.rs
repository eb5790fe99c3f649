//! Image references (`dockerImageUrl`): parsing by Docker's reference grammar, and the forms
//! a pull, a container create and the spec hash need.

use std::fmt;
use std::net::Ipv6Addr;

use super::{SpecError, quoted};

/// A parsed image reference: `[registry/]repository[:tag][@digest]`, as Docker's reference
/// grammar (distribution/reference) defines it. Fields are kept as written; [`ImageRef::canonical`]
/// is the fully qualified form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `ghcr.io`, `localhost:5000`, `[::1]:5000`; `None` means Docker Hub.
    pub registry: Option<String>,
    /// Slash-separated lower-case path components: `org/some-mcp`, `x`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>` (or `sha512:<128 hex>`).
    pub digest: Option<String>,
}

impl ImageRef {
    /// The name without tag or digest: what Docker's create-image (`POST /images/create`) gets as
    /// `fromImage`.
    pub fn pull_name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// What create-image gets as `tag`: the digest when there is one (it pins the content, the
    /// tag beside it is informative only), else the tag, else `latest`.
    pub fn pull_tag(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".to_owned())
    }

    /// The reference to create containers with: `name@digest` when pinned (that is what was
    /// pulled), else `name:tag` with `latest` made explicit.
    pub fn reference(&self) -> String {
        match &self.digest {
            Some(d) => format!("{}@{d}", self.pull_name()),
            None => format!(
                "{}:{}",
                self.pull_name(),
                self.tag.as_deref().unwrap_or("latest")
            ),
        }
    }

    /// The fully qualified form, equal for every spelling of one image: Docker Hub made explicit
    /// (`x` -> `docker.io/library/x`), `latest` made explicit when there is no digest, the tag kept
    /// beside a digest. Used for the spec hash.
    pub fn canonical(&self) -> String {
        let registry = match self.registry.as_deref() {
            None | Some("docker.io") | Some("index.docker.io") => "docker.io",
            Some(r) => r,
        };
        let mut out = String::from(registry);
        out.push('/');
        if registry == "docker.io" && !self.repository.contains('/') {
            out.push_str("library/");
        }
        out.push_str(&self.repository);
        match (&self.tag, &self.digest) {
            (Some(t), _) => {
                out.push(':');
                out.push_str(t);
            }
            (None, None) => out.push_str(":latest"),
            (None, Some(_)) => {}
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(d);
        }
        out
    }
}

impl fmt::Display for ImageRef {
    /// As written: `[registry/]repository[:tag][@digest]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pull_name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

const IMAGE_EXAMPLE: &str =
    "a reference like ghcr.io/org/name:1.2.0, org/name, name@sha256:<64 hex>";

/// Parse `dockerImageUrl`. Accepts `ghcr.io/org/x:1.2.0`, `org/x`, `x`, `localhost:5000/x:tag`
/// (a port in the registry is not a tag), `x@sha256:<64 hex>`, `x:tag@sha256:<64 hex>`. The first
/// path component is a registry when it contains `.` or `:`, is `localhost`, or is a bracketed
/// IPv6 address. Refuses empty input, whitespace, URLs (`https://...`), upper-case repositories,
/// malformed tags, registries and digests.
pub fn parse_image(field: &str, image: &str) -> Result<ImageRef, SpecError> {
    let err = |msg: String| SpecError::new(field, msg);
    if image.is_empty() {
        return Err(err(format!("is empty; give {IMAGE_EXAMPLE}")));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(format!(
            "contains whitespace or control characters; give {IMAGE_EXAMPLE}"
        )));
    }
    if image.contains("://") {
        // Not echoed: a URL may carry credentials (`https://user:token@host/...`).
        return Err(err(format!(
            "is a URL; give an image reference without a scheme: {IMAGE_EXAMPLE}"
        )));
    }

    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => {
            if !valid_digest(digest) {
                return Err(err(format!(
                    "the digest {} is not valid: expected sha256: followed by 64 lower-case hex \
                     digits (or sha512: and 128)",
                    quoted(digest)
                )));
            }
            (rest, Some(digest.to_owned()))
        }
        None => (image, None),
    };

    // The tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if last_slash.is_none_or(|s| colon > s) => {
            let tag = &rest[colon + 1..];
            if !valid_tag(tag) {
                return Err(err(format!(
                    "the tag {} is not valid: 1 to 128 characters of letters, digits, '_', '.', \
                     '-', not starting with '.' or '-'",
                    quoted(tag)
                )));
            }
            (&rest[..colon], Some(tag.to_owned()))
        }
        _ => (rest, None),
    };
    if name.is_empty() {
        return Err(err(format!("has no image name; give {IMAGE_EXAMPLE}")));
    }
    if name.len() > 255 {
        return Err(err(
            "the image name is longer than 255 characters".to_owned()
        ));
    }

    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.starts_with('[') =>
        {
            if !valid_registry(first) {
                return Err(err(format!(
                    "the registry {} is not a host name or address with an optional port \
                     (e.g. ghcr.io, localhost:5000, [::1]:5000)",
                    quoted(first)
                )));
            }
            (Some(first.to_owned()), rest)
        }
        _ => (None, name),
    };
    if repository.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(err(format!(
            "the repository {} contains upper-case letters; repository names are lower-case",
            quoted(repository)
        )));
    }
    if !repository.split('/').all(valid_path_component) {
        return Err(err(format!(
            "the repository {} is not valid: '/'-separated components of a-z and 0-9, joined \
             inside a component by '.', '_', '__' or dashes",
            quoted(repository)
        )));
    }
    Ok(ImageRef {
        registry,
        repository: repository.to_owned(),
        tag,
        digest,
    })
}

fn valid_digest(d: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match d.split_once(':') {
        Some(("sha256", h)) => hex(h, 64),
        Some(("sha512", h)) => hex(h, 128),
        _ => false,
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match t.as_bytes() {
        [first, rest @ ..] => {
            word(*first)
                && t.len() <= 128
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        [] => false,
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `host[:port]` where host is dot-separated DNS labels or a bracketed IPv6 address.
fn valid_registry(r: &str) -> bool {
    let (host_ok, port) = if let Some(inner) = r.strip_prefix('[') {
        match inner.split_once(']') {
            Some((addr, after)) => {
                let port = match after {
                    "" => None,
                    p => match p.strip_prefix(':') {
                        Some(p) => Some(p),
                        None => return false,
                    },
                };
                (addr.parse::<Ipv6Addr>().is_ok(), port)
            }
            None => return false,
        }
    } else {
        let (host, port) = match r.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        };
        let label_ok = |l: &str| {
            let b = l.as_bytes();
            match (b.first(), b.last()) {
                (Some(f), Some(la)) => {
                    f.is_ascii_alphanumeric()
                        && la.is_ascii_alphanumeric()
                        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                }
                _ => false,
            }
        };
        (host.split('.').all(label_ok), port)
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
    });
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::spec::tests::{DIGEST, fails};

    fn image(s: &str) -> ImageRef {
        parse_image("dockerImageUrl", s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn image_with_registry_and_tag() {
        let i = image("ghcr.io/org/x:1.2.0");
        assert_eq!(i.registry.as_deref(), Some("ghcr.io"));
        assert_eq!(i.repository, "org/x");
        assert_eq!(i.tag.as_deref(), Some("1.2.0"));
        assert_eq!(i.digest, None);
        assert_eq!(i.pull_name(), "ghcr.io/org/x");
        assert_eq!(i.pull_tag(), "1.2.0");
        assert_eq!(i.reference(), "ghcr.io/org/x:1.2.0");
        assert_eq!(i.canonical(), "ghcr.io/org/x:1.2.0");
        assert_eq!(i.to_string(), "ghcr.io/org/x:1.2.0");
    }

    #[test]
    fn image_on_docker_hub() {
        let i = image("org/x");
        assert_eq!(
            (i.registry.as_deref(), i.repository.as_str()),
            (None, "org/x")
        );
        assert_eq!(i.pull_name(), "org/x");
        assert_eq!(i.pull_tag(), "latest");
        assert_eq!(i.reference(), "org/x:latest");
        assert_eq!(i.canonical(), "docker.io/org/x:latest");

        let i = image("x");
        assert_eq!((i.registry.as_deref(), i.repository.as_str()), (None, "x"));
        assert_eq!(i.tag, None);
        assert_eq!(i.reference(), "x:latest");
        assert_eq!(i.canonical(), "docker.io/library/x:latest");
        assert_eq!(
            image("docker.io/library/x:latest").canonical(),
            i.canonical()
        );
        assert_eq!(image("index.docker.io/x").canonical(), i.canonical());
    }

    #[test]
    fn a_registry_port_is_not_a_tag() {
        let i = image("localhost:5000/x:tag");
        assert_eq!(i.registry.as_deref(), Some("localhost:5000"));
        assert_eq!(i.repository, "x");
        assert_eq!(i.tag.as_deref(), Some("tag"));
        assert_eq!(i.pull_name(), "localhost:5000/x");

        let i = image("localhost:5000/x");
        assert_eq!(i.registry.as_deref(), Some("localhost:5000"));
        assert_eq!(i.tag, None);
        assert_eq!(i.reference(), "localhost:5000/x:latest");

        let i = image("localhost/x");
        assert_eq!(i.registry.as_deref(), Some("localhost"));

        let i = image("[::1]:5000/team/x:v1");
        assert_eq!(i.registry.as_deref(), Some("[::1]:5000"));
        assert_eq!(i.repository, "team/x");
        assert_eq!(i.tag.as_deref(), Some("v1"));

        let i = image("registry.example.com:443/a/b/c");
        assert_eq!(i.registry.as_deref(), Some("registry.example.com:443"));
        assert_eq!(i.repository, "a/b/c");
    }

    #[test]
    fn image_with_digest() {
        let i = image(&format!("x@{DIGEST}"));
        assert_eq!(i.tag, None);
        assert_eq!(i.digest.as_deref(), Some(DIGEST));
        assert_eq!(i.pull_name(), "x");
        assert_eq!(i.pull_tag(), DIGEST);
        assert_eq!(i.reference(), format!("x@{DIGEST}"));
        assert_eq!(i.canonical(), format!("docker.io/library/x@{DIGEST}"));

        let i = image(&format!("ghcr.io/org/x:1.0@{DIGEST}"));
        assert_eq!(i.tag.as_deref(), Some("1.0"));
        assert_eq!(i.digest.as_deref(), Some(DIGEST));
        assert_eq!(i.pull_tag(), DIGEST, "the digest pins the pull");
        assert_eq!(i.reference(), format!("ghcr.io/org/x@{DIGEST}"));
        assert_eq!(i.to_string(), format!("ghcr.io/org/x:1.0@{DIGEST}"));
        assert_eq!(i.canonical(), format!("ghcr.io/org/x:1.0@{DIGEST}"));

        let sha512 = format!("x@sha512:{}", "ab".repeat(64));
        assert!(image(&sha512).digest.is_some());
    }

    #[test]
    fn image_path_components_follow_docker() {
        let i = image("a/b__c/d-e--f.g_h:V1_x.y-z");
        assert_eq!(i.repository, "a/b__c/d-e--f.g_h");
        assert_eq!(i.tag.as_deref(), Some("V1_x.y-z"));
        assert!(parse_image("f", &format!("x:{}", "t".repeat(128))).is_ok());
    }

    #[test]
    fn bad_images_are_refused_naming_the_field() {
        let field = "servers[2].dockerImageUrl";
        let bad = [
            String::new(),
            " ".into(),
            " x".into(),
            "x ".into(),
            "x :1".into(),
            "x\n".into(),
            "ghcr.io/org/x\t".into(),
            "https://ghcr.io/org/x".into(),
            "X".into(),
            "Org/x".into(),
            "ghcr.io/Org/x:1".into(),
            "x@sha256:0123".into(),
            format!("x@sha256:{}", "A".repeat(64)),
            format!("x@sha256:{}", "g".repeat(64)),
            format!("x@md5:{}", "a".repeat(32)),
            "x@".into(),
            format!("x@{DIGEST}@{DIGEST}"),
            format!("@{DIGEST}"),
            "x:".into(),
            ":tag".into(),
            "x:-bad".into(),
            "x:.bad".into(),
            "x:a/b".into(),
            format!("x:{}", "t".repeat(129)),
            "ghcr.io:abc/x".into(),
            "ghcr.io:0/x".into(),
            "ghcr.io:70000/x".into(),
            "ghcr..io/x".into(),
            "-ghcr.io/x".into(),
            "[::1/x".into(),
            "[zz]:5000/x".into(),
            "-x".into(),
            "x-".into(),
            "x..y".into(),
            "x___y".into(),
            "a//b".into(),
            "x/".into(),
            "/x".into(),
            "ghcr.io/".into(),
            "ghcr.io/x/".into(),
            "ünïcode".into(),
            format!("{}/x", "a".repeat(300)),
        ];
        for b in bad {
            let r = parse_image(field, &b);
            assert!(r.is_err(), "{b:?} was accepted: {r:?}");
            fails(r, field);
        }
    }

    #[test]
    fn image_errors_say_what_is_wrong() {
        let m = fails(parse_image("f", "ghcr.io/Org/x"), "f");
        assert!(m.contains("upper-case"), "{m}");
        let m = fails(parse_image("f", "x@sha256:abc"), "f");
        assert!(m.contains("64 lower-case hex"), "{m}");
        let m = fails(parse_image("f", ""), "f");
        assert!(m.contains("ghcr.io/org/name:1.2.0"), "{m}");
        // A URL may carry credentials: it is described, not echoed.
        let m = fails(parse_image("f", "https://user:tok3n@ghcr.io/x"), "f");
        assert!(m.contains("URL") && !m.contains("tok3n"), "{m}");
    }
}
