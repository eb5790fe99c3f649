//! Output text for both adapters: split a pipe's bytes into chunks that never cut a UTF-8
//! character, valid text as text and anything else as bytes (sent as base64).
//!
//! The channel's stream handle and the local API's SSE sink both keep one [`Utf8Carry`] per
//! command and pass every read through it, so both entry points encode output the same way.

use base64::Engine as _;
use dtma_protocol::{Encoding, Fd};

/// A piece of output ready to encode: text (valid UTF-8, whole characters) or other bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

impl Chunk<'_> {
    /// The chunk as the protocol's `(encoding, data)` pair.
    pub fn encode(self) -> (Encoding, String) {
        match self {
            Chunk::Text(t) => (Encoding::Utf8, t.to_owned()),
            Chunk::Binary(b) => (
                Encoding::Base64,
                base64::engine::general_purpose::STANDARD.encode(b),
            ),
        }
    }
}

/// The bytes of an incomplete UTF-8 character at the end of the last read, per pipe.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    carry: [Vec<u8>; 2],
}

fn index(fd: Fd) -> usize {
    match fd {
        Fd::Stdout => 0,
        Fd::Stderr => 1,
    }
}

impl Utf8Carry {
    /// Split the carried bytes of `fd` plus `data` into at most one chunk, keeping an incomplete
    /// trailing character for the next call.
    pub fn push(&mut self, fd: Fd, data: &[u8], emit: impl FnMut(Chunk<'_>)) {
        for_each_chunk(&mut self.carry[index(fd)], data, emit);
    }

    /// `fd` reached end of file: whatever is still carried (an incomplete character) is not
    /// text and goes out as bytes. Empty when nothing was carried.
    pub fn finish(&mut self, fd: Fd) -> Vec<u8> {
        std::mem::take(&mut self.carry[index(fd)])
    }
}

/// Split `carry + data` into chunks that never cut a UTF-8 character: valid text as
/// [`Chunk::Text`], anything that is not UTF-8 as [`Chunk::Binary`]. An incomplete character at
/// the end is carried over. Emits at most one chunk per call.
fn for_each_chunk(carry: &mut Vec<u8>, data: &[u8], mut emit: impl FnMut(Chunk<'_>)) {
    let joined;
    let buf: &[u8] = if carry.is_empty() {
        data
    } else {
        let mut v = std::mem::take(carry);
        v.extend_from_slice(data);
        joined = v;
        &joined
    };
    match std::str::from_utf8(buf) {
        Ok(text) => {
            if !text.is_empty() {
                emit(Chunk::Text(text))
            }
        }
        Err(e) if e.error_len().is_none() => {
            // Only the tail is incomplete: send the valid prefix, keep the tail (<= 3 bytes).
            let (valid, tail) = buf.split_at(e.valid_up_to());
            *carry = tail.to_vec();
            if let Ok(text) = std::str::from_utf8(valid)
                && !text.is_empty()
            {
                emit(Chunk::Text(text));
            }
        }
        Err(_) => emit(Chunk::Binary(buf)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(c: &mut Utf8Carry, data: &[u8]) -> Vec<(Encoding, String)> {
        let mut out = Vec::new();
        c.push(Fd::Stdout, data, |chunk| out.push(chunk.encode()));
        out
    }

    fn decode_all(chunks: &[(Encoding, String)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (enc, data) in chunks {
            match enc {
                Encoding::Utf8 => out.extend_from_slice(data.as_bytes()),
                Encoding::Base64 => out.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .unwrap(),
                ),
            }
        }
        out
    }

    #[test]
    fn utf8_split_never_cuts_a_character() {
        let text = "héllo wörld ✓ 𝄞".as_bytes();
        for cut in 0..text.len() {
            let mut carry = Utf8Carry::default();
            let mut chunks = split(&mut carry, &text[..cut]);
            chunks.extend(split(&mut carry, &text[cut..]));
            assert!(carry.finish(Fd::Stdout).is_empty());
            assert!(
                chunks.iter().all(|(e, _)| *e == Encoding::Utf8),
                "cut {cut}"
            );
            assert_eq!(decode_all(&chunks), text);
        }
    }

    #[test]
    fn invalid_bytes_travel_as_base64_unchanged() {
        let bytes = [0xffu8, 0xfe, b'a', 0x80, 0xc3];
        let mut carry = Utf8Carry::default();
        let chunks = split(&mut carry, &bytes);
        assert_eq!(chunks[0].0, Encoding::Base64);
        assert_eq!(decode_all(&chunks), bytes);
    }

    #[test]
    fn an_incomplete_tail_is_kept_per_pipe_until_eof() {
        let mut carry = Utf8Carry::default();
        // "é" is c3 a9: the first byte waits on stdout; stderr is independent.
        assert!(split(&mut carry, &[b'a', 0xc3])[0].1 == "a");
        let mut err = Vec::new();
        carry.push(Fd::Stderr, b"x", |c| err.push(c.encode()));
        assert_eq!(err, [(Encoding::Utf8, "x".to_owned())]);
        assert_eq!(carry.finish(Fd::Stdout), [0xc3]);
        assert!(carry.finish(Fd::Stdout).is_empty());
    }
}
