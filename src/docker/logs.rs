//! A container's log as Docker serves it (`GET /containers/{id}/logs`): one item per logged
//! message, always with Docker's timestamp, which is parsed here so that a caller can resume a
//! follow precisely after the container restarts.
//!
//! The stream is lazy: Docker's bytes are read only as fast as the caller polls it, so a caller
//! that stops polling leaves them in the socket (bounded by the kernel's buffers), never in
//! memory here.

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use bytes::Bytes;
use dtma_protocol::Fd;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::{DockerClient, Error};

/// What to ask Docker for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogsQuery {
    /// Keep the stream open for new messages until the container stops.
    pub follow: bool,
    /// Messages from the end of the log to start with; `None`: all of them.
    pub tail: Option<u32>,
    /// Only messages logged at or after this Unix time in whole seconds (Docker's API takes
    /// no finer `since` through bollard); 0: no bound.
    pub since_s: i64,
}

/// One logged message: a line (or a part of a line above Docker's 16 KiB message size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMessage {
    /// The stream the container wrote it to (`Stdout` for a container with a TTY).
    pub fd: Fd,
    /// When Docker logged it, in Unix nanoseconds; `None` if the message carries no timestamp
    /// Docker's way (never seen from a daemon, but not trusted blindly either).
    pub at: Option<i128>,
    /// The message as Docker sent it: `<RFC 3339 timestamp> <text>`.
    pub raw: Bytes,
    /// Length of the timestamp prefix and its space (0 without a timestamp).
    pub prefix: usize,
}

impl LogMessage {
    /// The message without Docker's timestamp.
    pub fn text(&self) -> Bytes {
        self.raw.slice(self.prefix..)
    }

    fn parse(fd: Fd, raw: Bytes) -> LogMessage {
        // `2025-01-20T10:00:01.123456789Z ` (RFC3339NanoFixed): 31 bytes; allow an offset.
        let head = &raw[..raw.len().min(40)];
        let at = head.iter().position(|b| *b == b' ').and_then(|space| {
            let stamp = std::str::from_utf8(&raw[..space]).ok()?;
            let t =
                time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            Some((t.unix_timestamp_nanos(), space + 1))
        });
        match at {
            Some((at, prefix)) => LogMessage {
                fd,
                at: Some(at),
                raw,
                prefix,
            },
            None => LogMessage {
                fd,
                at: None,
                raw,
                prefix: 0,
            },
        }
    }
}

impl DockerClient {
    /// The log of container `id` (stdout and stderr, with timestamps), message by message.
    /// With `follow` the stream ends when the container stops (Docker closes it); without,
    /// after the messages logged so far.
    pub fn logs(&self, id: &str, q: LogsQuery) -> BoxStream<'static, Result<LogMessage, Error>> {
        let docker = match self.connect() {
            Ok(d) => d,
            Err(e) => return futures_util::stream::once(async move { Err(e) }).boxed(),
        };
        let tail = q.tail.map_or_else(|| "all".to_owned(), |n| n.to_string());
        // bollard takes `since` as an i32; past 2038 the bound is dropped (0) rather than
        // wrapped, and the caller's own filter on each message's timestamp still applies.
        let since = i32::try_from(q.since_s.max(0)).unwrap_or(0);
        let opts = LogsOptionsBuilder::default()
            .follow(q.follow)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .since(since)
            .tail(&tail)
            .build();
        let client = self.clone();
        docker
            .logs(id, Some(opts))
            .filter_map(move |item| {
                let out = match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        Some(Ok(LogMessage::parse(Fd::Stdout, message)))
                    }
                    Ok(LogOutput::StdErr { message }) => {
                        Some(Ok(LogMessage::parse(Fd::Stderr, message)))
                    }
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(client.map_err("logs", e))),
                };
                std::future::ready(out)
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_keeps_its_timestamp_apart_from_its_text() {
        let m = LogMessage::parse(
            Fd::Stderr,
            Bytes::from_static(b"2025-01-20T10:00:01.123456789Z log 7\n"),
        );
        assert_eq!(m.at, Some(1_737_367_201_123_456_789));
        assert_eq!(m.prefix, 31);
        assert_eq!(&m.text()[..], b"log 7\n");
        assert_eq!(m.fd, Fd::Stderr);
    }

    #[test]
    fn a_message_without_a_timestamp_is_kept_whole() {
        for raw in [
            &b"no timestamp here\n"[..],
            b"",
            b"2025-13-01T00:00:00Z x\n",
        ] {
            let m = LogMessage::parse(Fd::Stdout, Bytes::copy_from_slice(raw));
            assert_eq!((m.at, m.prefix), (None, 0));
            assert_eq!(&m.text()[..], raw);
        }
    }
}
