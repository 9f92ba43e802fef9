//! The snapshot wire format and its checks, free of I/O so it is unit-tested.
//!
//! A transfer is a sequence of AMQP messages on the joiner's private reply
//! queue, each one [`Frame`]: `Accepted` (a source took the request), some
//! `Progress` while the backup is taken, `Begin` (seq, resume offset, size),
//! the file in numbered `Chunk`s, and `End` with the SHA-256 digest of the
//! whole file and, when a secret is shared (`DBAAS_SNAPSHOT_SECRET`), an
//! HMAC-SHA256 over the request id, digest, seq, resume offset and size. A
//! source that will not serve answers `Declined`; one that fails midway,
//! `Failed`. [`Incoming`] checks a transfer as it arrives: chunks in order and
//! within the announced size, and at the end the digest and the MAC.
//!
//! Body layout: one kind byte; a chunk is `b'C'`, its index (u64, big-endian)
//! and the data; every other frame is its kind byte and a JSON object.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a source announces before the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The last write in the file.
    pub seq: u64,
    /// Where the joiner resumes `syncQ`.
    pub resume_offset: u64,
    /// The file's size in bytes.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A source took the request (its pid).
    Accepted {
        source: u32,
    },
    /// Still taking the backup.
    Progress,
    /// The data follows.
    Begin(Offer),
    Chunk {
        index: u64,
        data: Vec<u8>,
    },
    /// The whole file's SHA-256 (hex) and the MAC (hex) if the source has a secret.
    End {
        digest: String,
        mac: Option<String>,
    },
    /// This source will not serve (a master while a slave can): ask again.
    Declined {
        source: u32,
        reason: String,
    },
    /// The source gave up midway.
    Failed {
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Control {
    Accepted { source: u32 },
    Progress,
    Begin(Offer),
    End { digest: String, mac: Option<String> },
    Declined { source: u32, reason: String },
    Failed { reason: String },
}

const CHUNK: u8 = b'C';
const CONTROL: u8 = b'J';

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let control = match self {
            Frame::Chunk { index, data } => {
                let mut out = Vec::with_capacity(9 + data.len());
                out.push(CHUNK);
                out.extend_from_slice(&index.to_be_bytes());
                out.extend_from_slice(data);
                return out;
            }
            Frame::Accepted { source } => Control::Accepted { source: *source },
            Frame::Progress => Control::Progress,
            Frame::Begin(offer) => Control::Begin(*offer),
            Frame::End { digest, mac } => Control::End {
                digest: digest.clone(),
                mac: mac.clone(),
            },
            Frame::Declined { source, reason } => Control::Declined {
                source: *source,
                reason: reason.clone(),
            },
            Frame::Failed { reason } => Control::Failed {
                reason: reason.clone(),
            },
        };
        let mut out = vec![CONTROL];
        // Serializing these plain structs cannot fail.
        out.extend(serde_json::to_vec(&control).unwrap_or_default());
        out
    }

    /// Decodes a frame; anything malformed is an error, never a panic.
    pub fn decode(body: &[u8]) -> Result<Frame, String> {
        match body.split_first() {
            Some((&CHUNK, rest)) => {
                if rest.len() < 8 {
                    return Err("chunk frame shorter than its index".into());
                }
                let (index, data) = rest.split_at(8);
                let mut be = [0u8; 8];
                be.copy_from_slice(index);
                Ok(Frame::Chunk {
                    index: u64::from_be_bytes(be),
                    data: data.to_vec(),
                })
            }
            Some((&CONTROL, rest)) => {
                let control: Control = serde_json::from_slice(rest)
                    .map_err(|e| format!("unreadable control frame: {e}"))?;
                Ok(match control {
                    Control::Accepted { source } => Frame::Accepted { source },
                    Control::Progress => Frame::Progress,
                    Control::Begin(offer) => Frame::Begin(offer),
                    Control::End { digest, mac } => Frame::End { digest, mac },
                    Control::Declined { source, reason } => Frame::Declined { source, reason },
                    Control::Failed { reason } => Frame::Failed { reason },
                })
            }
            Some((kind, _)) => Err(format!("unknown frame kind {kind}")),
            None => Err("empty frame".into()),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The MAC a source with `secret` sends for `offer` in answer to request `id`
/// (hex): it binds the data (its digest) to where the joiner resumes, and to
/// this request, so neither a forged file nor an old reply is accepted.
pub fn mac(secret: &[u8], id: &str, digest: &str, offer: &Offer) -> String {
    let mut message = Vec::new();
    message.extend_from_slice(b"dbaas-snapshot-v1\0");
    message.extend_from_slice(&(id.len() as u64).to_be_bytes());
    message.extend_from_slice(id.as_bytes());
    message.extend_from_slice(digest.as_bytes());
    message.extend_from_slice(&offer.seq.to_be_bytes());
    message.extend_from_slice(&offer.resume_offset.to_be_bytes());
    message.extend_from_slice(&offer.bytes.to_be_bytes());
    hex(&hmac_sha256(secret, &message))
}

/// Equality in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The sending side's running digest.
#[derive(Default)]
pub struct Outgoing {
    hasher: Sha256,
    next: u64,
}

impl Outgoing {
    /// The frame for the next piece of the file.
    pub fn chunk(&mut self, data: Vec<u8>) -> Frame {
        self.hasher.update(&data);
        let index = self.next;
        self.next += 1;
        Frame::Chunk { index, data }
    }

    pub fn chunks(&self) -> u64 {
        self.next
    }

    /// The closing frame.
    pub fn end(self, secret: Option<&[u8]>, id: &str, offer: &Offer) -> Frame {
        let digest = hex(&self.hasher.finalize());
        let mac = secret.map(|s| mac(s, id, &digest, offer));
        Frame::End { digest, mac }
    }
}

/// The receiving side's checks of one transfer.
pub struct Incoming {
    pub offer: Offer,
    hasher: Sha256,
    next: u64,
    received: u64,
}

impl Incoming {
    pub fn new(offer: Offer) -> Incoming {
        Incoming {
            offer,
            hasher: Sha256::new(),
            next: 0,
            received: 0,
        }
    }

    /// Accepts the next chunk (to be written by the caller) or says why not.
    pub fn chunk(&mut self, index: u64, data: &[u8]) -> Result<(), String> {
        if index != self.next {
            return Err(format!("chunk {index} arrived, {} expected", self.next));
        }
        let received = self.received + data.len() as u64;
        if received > self.offer.bytes {
            return Err(format!(
                "more data than the {} bytes announced",
                self.offer.bytes
            ));
        }
        self.hasher.update(data);
        self.next += 1;
        self.received = received;
        Ok(())
    }

    pub fn chunks(&self) -> u64 {
        self.next
    }

    /// Checks the end of the transfer: the size, the digest, and, with a
    /// `secret`, the MAC (a transfer without one is then refused).
    pub fn finish(
        self,
        digest: &str,
        mac_sent: Option<&str>,
        secret: Option<&[u8]>,
        id: &str,
    ) -> Result<String, String> {
        if self.received != self.offer.bytes {
            return Err(format!(
                "{} of {} bytes arrived",
                self.received, self.offer.bytes
            ));
        }
        let computed = hex(&self.hasher.finalize());
        if !same(&computed, digest) {
            return Err(format!(
                "digest mismatch: the data hashes to {computed}, the source sent {digest}"
            ));
        }
        if let Some(secret) = secret {
            let Some(sent) = mac_sent else {
                return Err("no MAC, but snapshots must be authenticated".into());
            };
            if !same(&mac(secret, id, digest, &self.offer), sent) {
                return Err("MAC mismatch: not from a holder of the snapshot secret".into());
            }
        }
        Ok(computed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(bytes: u64) -> Offer {
        Offer {
            seq: 7,
            resume_offset: 42,
            bytes,
        }
    }

    /// Sends `file` in `chunk`-byte pieces; the frames a source would send.
    fn send(file: &[u8], chunk: usize, secret: Option<&[u8]>, id: &str) -> Vec<Frame> {
        let o = offer(file.len() as u64);
        let mut out = Outgoing::default();
        let mut frames = vec![Frame::Begin(o)];
        frames.extend(file.chunks(chunk).map(|c| out.chunk(c.to_vec())));
        frames.push(out.end(secret, id, &o));
        frames
    }

    /// Receives `frames` (each encoded and decoded again) and checks them.
    fn receive(frames: &[Frame], secret: Option<&[u8]>, id: &str) -> Result<Vec<u8>, String> {
        let mut file = Vec::new();
        let mut incoming = None;
        for f in frames {
            match Frame::decode(&f.encode())? {
                Frame::Begin(o) => incoming = Some(Incoming::new(o)),
                Frame::Chunk { index, data } => {
                    incoming.as_mut().ok_or("no begin")?.chunk(index, &data)?;
                    file.extend(data);
                }
                Frame::End { digest, mac } => {
                    incoming.take().ok_or("no begin")?.finish(
                        &digest,
                        mac.as_deref(),
                        secret,
                        id,
                    )?;
                    return Ok(file);
                }
                other => return Err(format!("unexpected {other:?}")),
            }
        }
        Err("no end".into())
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn frames_round_trip_and_garbage_is_an_error() {
        for f in [
            Frame::Accepted { source: 3 },
            Frame::Progress,
            Frame::Begin(offer(10)),
            Frame::Chunk {
                index: 9,
                data: vec![1, 2, 3],
            },
            Frame::Chunk {
                index: 0,
                data: vec![],
            },
            Frame::End {
                digest: "ab".into(),
                mac: None,
            },
            Frame::Declined {
                source: 1,
                reason: "x".into(),
            },
            Frame::Failed { reason: "y".into() },
        ] {
            assert_eq!(Frame::decode(&f.encode()), Ok(f));
        }
        for bad in [
            &b""[..],
            b"C1234",
            b"J{",
            b"Jnull",
            b"X",
            b"J{\"k\":\"begin\"}",
        ] {
            assert!(Frame::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_file_in_many_chunks_arrives_whole_with_or_without_a_secret() {
        let file = data(10_000);
        for secret in [None, Some(&b"s3cret"[..])] {
            let frames = send(&file, 1024, secret, "id-1");
            assert_eq!(frames.len(), 2 + 10, "10 chunks");
            assert_eq!(receive(&frames, secret, "id-1"), Ok(file.clone()));
        }
        // An empty file is one begin and one end.
        assert_eq!(receive(&send(&[], 8, None, "e"), None, "e"), Ok(vec![]));
    }

    #[test]
    fn a_corrupted_missing_reordered_or_extra_chunk_is_rejected() {
        let file = data(5000);
        let good = send(&file, 1000, None, "id");
        let mut corrupted = good.clone();
        if let Frame::Chunk { data, .. } = &mut corrupted[2] {
            data[10] ^= 1;
        }
        assert!(receive(&corrupted, None, "id")
            .unwrap_err()
            .contains("digest mismatch"));
        let mut missing = good.clone();
        missing.remove(3);
        assert!(receive(&missing, None, "id")
            .unwrap_err()
            .contains("expected"));
        let mut reordered = good.clone();
        reordered.swap(1, 2);
        assert!(receive(&reordered, None, "id").is_err());
        let mut extra = good.clone();
        extra.insert(
            6,
            Frame::Chunk {
                index: 5,
                data: vec![0],
            },
        );
        assert!(receive(&extra, None, "id")
            .unwrap_err()
            .contains("more data"));
        let mut short = good;
        short.remove(5);
        assert!(receive(&short, None, "id").unwrap_err().contains("arrived"));
    }

    #[test]
    fn a_crafted_reply_without_the_secret_is_rejected() {
        let file = data(3000);
        let secret = &b"the shared secret"[..];
        // Signed with another key, or not at all: refused by a joiner with the secret.
        let forged = send(&file, 1000, Some(b"a guess"), "id");
        assert!(receive(&forged, Some(secret), "id")
            .unwrap_err()
            .contains("MAC mismatch"));
        let unsigned = send(&file, 1000, None, "id");
        assert!(receive(&unsigned, Some(secret), "id")
            .unwrap_err()
            .contains("no MAC"));
        // A genuine reply to another request (replayed) is refused too.
        let replayed = send(&file, 1000, Some(secret), "an older request");
        assert!(receive(&replayed, Some(secret), "id").is_err());
        // Changing the advertised offset breaks the MAC.
        let mut moved = send(&file, 1000, Some(secret), "id");
        if let Frame::Begin(o) = &mut moved[0] {
            o.resume_offset += 1;
        }
        assert!(receive(&moved, Some(secret), "id")
            .unwrap_err()
            .contains("MAC mismatch"));
        assert_eq!(
            receive(&send(&file, 1000, Some(secret), "id"), Some(secret), "id"),
            Ok(file)
        );
    }
}
