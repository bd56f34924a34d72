//! The JSON shapes of the audit log: one transaction's metadata ([`AuditRecord`]) and the
//! bodies of the other chain entries (anchor, checkpoint, gap, recovered, retention).
//!
//! Invariants: metadata only — no payload, header value, query string or credential is a field;
//! field order is serialisation order, so new fields go at the end with a default (old lines
//! keep verifying anyway, because hashes cover the bytes on disk); times are UTC with
//! millisecond precision (`2025-07-01T03:04:05.678Z`); the entry kind names (`rec`, `anchor`,
//! `checkpoint`, `gap`, `recovered`, `retention`) are part of the log format and never change.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One gateway transaction, as the gateway hands it to [`super::AuditLog::record`].
///
/// Fields that do not apply (a request refused before authentication has no consumer; one
/// refused before routing has no service) are empty strings or `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AuditRecord {
    /// The `X-Transaction-Id` returned to the consumer and sent to the provider.
    pub txn_id: String,
    /// When the gateway received the request.
    #[serde(with = "ms_time")]
    pub at: DateTime<Utc>,
    /// The node that handled it; the writer overwrites it with its own node name.
    pub node: String,
    /// Consumer agency identifier code (QĐ 20/2020 shape), from the credential.
    pub consumer_agency: String,
    /// Consumer system id (slug), from the credential.
    pub consumer_system: String,
    /// Service context.
    pub service: String,
    /// Service version actually called (the default version resolved, not "").
    pub version: String,
    /// `test` or `production`, from the credential.
    pub environment: String,
    /// HTTP method.
    pub method: String,
    /// Request path only; the writer removes any query string or fragment and clamps it to 1024 bytes.
    pub path: String,
    /// HTTP status returned to the consumer.
    pub status: u16,
    /// Stable outcome code: `OK`, or the gateway's error code (`SUBSCRIPTION_REQUIRED`, `UPSTREAM_TIMEOUT`, ...).
    pub outcome: String,
    /// Time spent in the gateway itself, microseconds (total minus upstream).
    pub gateway_us: u64,
    /// Time waiting for the provider, microseconds; `None` when the provider was not called.
    pub upstream_us: Option<u64>,
    /// Request body bytes received from the consumer.
    pub request_bytes: u64,
    /// Response body bytes sent to the consumer.
    pub response_bytes: u64,
    /// SHA-256 (hex) of the request body as received; empty when it was not read.
    pub request_sha256: String,
    /// SHA-256 (hex) of the response body as sent; empty when there was none.
    pub response_sha256: String,
    /// `oauth2`, `httpsig-<alg>` or `none`.
    pub auth_method: String,
}

/// Longest path kept, in bytes.
pub(crate) const MAX_PATH: usize = 1024;
/// Longest other string field kept, in bytes.
pub(crate) const MAX_FIELD: usize = 256;

impl AuditRecord {
    /// What the writer stores: `node` set to the log's node, query and fragment removed from
    /// the path, every string clamped to a bounded length (on a UTF-8 boundary).
    pub(crate) fn sanitize(&mut self, node: &str) {
        node.clone_into(&mut self.node);
        if let Some(i) = self.path.find(['?', '#']) {
            self.path.truncate(i);
        }
        clamp(&mut self.path, MAX_PATH);
        for s in [
            &mut self.txn_id,
            &mut self.node,
            &mut self.consumer_agency,
            &mut self.consumer_system,
            &mut self.service,
            &mut self.version,
            &mut self.environment,
            &mut self.method,
            &mut self.outcome,
            &mut self.request_sha256,
            &mut self.response_sha256,
            &mut self.auth_method,
        ] {
            clamp(s, MAX_FIELD);
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A SHA-256 as records and chain lines write it: lower-case hex, 64 characters (by hand,
/// since this runs for every transaction).
pub fn digest_hex(digest: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// Appends [`digest_hex`] of `digest` to a line being built.
pub(crate) fn push_digest_hex(out: &mut Vec<u8>, digest: &[u8; 32]) {
    for b in digest {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
}

fn clamp(s: &mut String, max: usize) {
    if s.len() > max {
        let mut i = max;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        s.truncate(i);
    }
}

/// The body of one chain entry; serialised externally tagged: `{"rec":{...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Body {
    Rec(Box<AuditRecord>),
    Anchor(Anchor),
    Checkpoint(Checkpoint),
    Gap(Gap),
    Recovered(Recovered),
    Retention(Retention),
}

/// First entry of every segment: where this segment continues the chain, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Anchor {
    #[serde(with = "ms_time")]
    pub at: DateTime<Utc>,
    pub node: String,
    /// This file's segment number (a renamed file no longer matches).
    pub segment: u32,
    /// The oldest segment of this node that existed after retention when this one was started.
    pub oldest: u32,
    /// `genesis`, `rotation` or `recovered`.
    pub reason: String,
    /// Base64 Ed25519 signature over `segment::anchor_message`.
    pub sig: String,
    /// Base64 public key that made `sig`.
    pub key: String,
}

/// A signature over the chain head: everything before this entry is covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    #[serde(with = "ms_time")]
    pub at: DateTime<Utc>,
    /// `count`, `interval`, `rotation`, `request` or `shutdown`.
    pub reason: String,
    /// Hex hash of the previous entry (equal to this entry's `prev`).
    pub head: String,
    /// `rec` entries since the previous checkpoint or `recovered` entry.
    pub count: u64,
    /// Base64 Ed25519 signature over `segment::checkpoint_message`.
    pub sig: String,
    /// Base64 public key that made `sig`.
    pub key: String,
}

/// Records that were not logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Gap {
    #[serde(with = "ms_time")]
    pub at: DateTime<Utc>,
    /// Records dropped since the previous gap entry of this run.
    pub dropped: u64,
    /// Records dropped since this run started.
    pub total_dropped: u64,
}

/// The previous run ended without a shutdown checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Recovered {
    #[serde(with = "ms_time")]
    pub at: DateTime<Utc>,
    /// Seq of the last entry found intact, if any.
    pub previous_seq: Option<u64>,
    /// Bytes of a torn last line that were cut off.
    pub truncated_bytes: u64,
    /// Complete lines after the last intact entry that could not be read (left in place).
    pub damaged_lines: u64,
    /// Segment the previous run was writing.
    pub segment: u32,
    pub reason: String,
}

/// Retention deleted (or found missing) old segments. Written and fsynced before deleting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Retention {
    #[serde(with = "ms_time")]
    pub at: DateTime<Utc>,
    pub retention_days: u32,
    /// First and last segment deleted now.
    pub deleted: Option<(u32, u32)>,
    /// Ranges of segments that should have existed but were already gone (deleted outside
    /// lgsp); `verify` reports them as errors for as long as this entry exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<(u32, u32)>,
}

impl Retention {
    /// The oldest segment that may still exist after this entry.
    pub(crate) fn oldest_after(&self) -> u32 {
        let d = self.deleted.map_or(0, |(_, b)| b.saturating_add(1));
        self.missing.iter().map(|&(_, b)| b.saturating_add(1)).fold(d, u32::max)
    }
}

/// UTC times as RFC 3339 with exactly three fractional digits and `Z`.
pub(crate) mod ms_time {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_written_as_lower_case_hex() {
        let mut d = [0u8; 32];
        for (i, x) in d.iter_mut().enumerate() {
            *x = u8::try_from(i * 8).unwrap_or(0);
        }
        assert_eq!(digest_hex(&d), hex::encode(d));
        assert_eq!(digest_hex(&[0xff; 32]), "f".repeat(64));
        let mut line = b"x".to_vec();
        push_digest_hex(&mut line, &d);
        assert_eq!(line, [b"x".as_slice(), hex::encode(d).as_bytes()].concat());
    }

    #[test]
    fn sanitize_drops_query_and_clamps() {
        let mut r = AuditRecord { path: "/dancu/v1/x?cccd=0010&y=1#frag".into(), node: "other".into(), ..Default::default() };
        r.method = "Đ".repeat(200); // 2 bytes each: 400 bytes
        r.sanitize("n1");
        assert_eq!(r.path, "/dancu/v1/x");
        assert_eq!(r.node, "n1");
        assert!(r.method.len() <= MAX_FIELD && r.method.chars().all(|c| c == 'Đ'));
    }

    #[test]
    fn record_json_shape_is_stable() {
        let r = AuditRecord {
            txn_id: "t1".into(),
            at: DateTime::parse_from_rfc3339("2025-07-01T03:04:05.678901Z").unwrap().with_timezone(&Utc),
            status: 200,
            ..Default::default()
        };
        let j = serde_json::to_string(&Body::Rec(Box::new(r))).unwrap();
        assert!(j.starts_with(r#"{"rec":{"txn_id":"t1","at":"2025-07-01T03:04:05.678Z","node":"""#), "{j}");
        assert!(j.contains(r#""status":200,"outcome":"","gateway_us":0,"upstream_us":null,"#), "{j}");
    }
}
