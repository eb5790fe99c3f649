//! Docker's event feed, narrowed to the lifecycle of the containers the agent manages.
//!
//! One long `GET /events` request, filtered by the daemon to containers with the managed label
//! and to the actions the agent reports (plus `rename`, which is how a deploy commits a server
//! under its final name). Each item is one [`ContainerEvent`]; the stream ends when the daemon
//! closes the request (a daemon restart) and yields an error when it cannot be reached. Whoever
//! reads it re-subscribes.

use std::collections::HashMap;

use bollard::query_parameters::EventsOptionsBuilder;
use futures_util::{Stream, StreamExt};

use super::{DockerClient, Error, spec};

/// The container actions the feed asks for. Docker matches `health_status` as a prefix
/// (`health_status: healthy`, ...).
const ACTIONS: [&str; 8] = [
    "start",
    "die",
    "oom",
    "restart",
    "health_status",
    "stop",
    "destroy",
    "rename",
];

/// What happened to a container, as far as the agent cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start,
    /// The main process ended; Docker's `exitCode` attribute when it gave one.
    Die {
        exit_code: Option<i64>,
    },
    Oom,
    Restart,
    /// Docker's health check: `healthy`, `unhealthy` or `starting`.
    Health(String),
    Stop,
    Destroy,
    /// The container was renamed from `old_name` (now under [`ContainerEvent::name`]).
    Rename {
        old_name: String,
    },
}

/// One event of a managed container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub action: Action,
    pub id: String,
    /// The container's name after the event (without Docker's leading `/`).
    pub name: String,
    /// The container's labels (Docker copies them into every event).
    pub labels: HashMap<String, String>,
    /// When it happened, in nanoseconds since the Unix epoch (0 when Docker gave no time).
    pub time_nanos: i128,
}

impl ContainerEvent {
    /// Map one of Docker's event messages; `None` for anything that is not a managed
    /// container's event of interest.
    fn from_message(m: bollard::models::EventMessage) -> Option<ContainerEvent> {
        let actor = m.actor?;
        let id = actor.id?;
        let mut attributes = actor.attributes.unwrap_or_default();
        let raw = m.action?;
        let action = match raw.as_str() {
            "start" => Action::Start,
            "die" => Action::Die {
                exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
            },
            "oom" => Action::Oom,
            "restart" => Action::Restart,
            "stop" => Action::Stop,
            "destroy" => Action::Destroy,
            "rename" => Action::Rename {
                old_name: attributes
                    .get("oldName")
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
            },
            other => Action::Health(other.strip_prefix("health_status:")?.trim().to_owned()),
        };
        let name = attributes
            .remove("name")
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned();
        // Docker's own attributes sit beside the labels; only the labels are kept.
        for key in ["image", "exitCode", "oldName", "signal"] {
            attributes.remove(key);
        }
        if !spec::is_managed(&attributes) {
            return None;
        }
        let time_nanos = m
            .time_nano
            .map(i128::from)
            .or_else(|| m.time.map(|s| i128::from(s) * 1_000_000_000))
            .unwrap_or(0);
        Some(ContainerEvent {
            action,
            id,
            name,
            labels: attributes,
            time_nanos,
        })
    }
}

impl DockerClient {
    /// The event feed of managed containers from `since_nanos` (Unix time in nanoseconds) on:
    /// events the daemon still holds from before the request are replayed first, so a caller
    /// that lists containers after choosing `since` misses nothing in between. With
    /// `until_nanos` the feed ends after the events up to that time (a replay of a past
    /// interval); without, it goes on live. The request is sent when the stream is first polled.
    pub fn container_events(
        &self,
        since_nanos: i128,
        until_nanos: Option<i128>,
    ) -> impl Stream<Item = Result<ContainerEvent, Error>> + Send + use<> {
        let client = self.clone();
        let filters: HashMap<String, Vec<String>> = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![spec::managed_filter()]),
            (
                "event".to_owned(),
                ACTIONS.iter().map(|a| (*a).to_owned()).collect(),
            ),
        ]);
        let mut opts = EventsOptionsBuilder::default()
            .since(&timestamp(since_nanos))
            .filters(&filters);
        if let Some(until) = until_nanos {
            opts = opts.until(&timestamp(until));
        }
        let opts = opts.build();
        let docker = self.connect();
        let stream = match docker {
            Ok(d) => d
                .events(Some(opts))
                .map(move |item| item.map_err(|e| client.map_err("events", e)))
                .boxed(),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        };
        stream.filter_map(|item| async move {
            match item {
                Ok(m) => ContainerEvent::from_message(m).map(Ok),
                Err(e) => Some(Err(e)),
            }
        })
    }
}

/// Docker's `seconds.nanoseconds` form of a Unix time.
fn timestamp(nanos: i128) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    )
}

#[cfg(test)]
mod tests {
    use bollard::models::{EventActor, EventMessage};

    use super::*;

    fn message(action: &str, attributes: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            action: Some(action.to_owned()),
            actor: Some(EventActor {
                id: Some("c0ffee".into()),
                attributes: Some(
                    attributes
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
            }),
            time: Some(1_700_000_000),
            time_nano: Some(1_700_000_000_123_456_789),
            ..EventMessage::default()
        }
    }

    const MANAGED: (&str, &str) = (spec::LABEL_MANAGED, "true");

    #[test]
    fn docker_messages_become_container_events() {
        let e = ContainerEvent::from_message(message(
            "die",
            &[
                MANAGED,
                ("exitCode", "137"),
                ("name", "dtma-mcp-a"),
                ("image", "x"),
            ],
        ))
        .expect("a managed die");
        assert_eq!(
            e.action,
            Action::Die {
                exit_code: Some(137)
            }
        );
        assert_eq!(e.name, "dtma-mcp-a");
        assert_eq!(e.time_nanos, 1_700_000_000_123_456_789);
        assert_eq!(e.labels.len(), 1, "only labels are kept: {:?}", e.labels);

        let e = ContainerEvent::from_message(message(
            "health_status: unhealthy",
            &[MANAGED, ("name", "dtma-mcp-a")],
        ))
        .expect("a health event");
        assert_eq!(e.action, Action::Health("unhealthy".into()));

        let e = ContainerEvent::from_message(message(
            "rename",
            &[
                MANAGED,
                ("name", "dtma-mcp-a"),
                ("oldName", "/dtma-mcp-a-dtma-new-1"),
            ],
        ))
        .expect("a rename");
        assert_eq!(
            e.action,
            Action::Rename {
                old_name: "dtma-mcp-a-dtma-new-1".into()
            }
        );
    }

    #[test]
    fn timestamps_are_seconds_and_nanoseconds() {
        assert_eq!(timestamp(1_700_000_000_000_000_042), "1700000000.000000042");
    }

    #[test]
    fn unmanaged_and_unknown_events_are_dropped() {
        assert!(ContainerEvent::from_message(message("start", &[("name", "x")])).is_none());
        assert!(ContainerEvent::from_message(message("exec_start: sh", &[MANAGED])).is_none());
        assert!(
            ContainerEvent::from_message(message("start", &[(spec::LABEL_MANAGED, "false")]))
                .is_none()
        );
    }
}
